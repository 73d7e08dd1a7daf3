"""Dual BatchNorm for MBNAT: a clean and an adversarial branch per BN layer.

Every ``DualBatchNorm2d`` holds two ``BatchNorm2d`` (``clean`` and ``adv``: own affine
parameters and running statistics). The caller routes a whole batch to one branch with
:func:`set_bn_mode`; BN never sees clean and adversarial samples together, and each branch
keeps its own running statistics. For evaluation, mode ``"mix"`` interpolates the two
branches, running statistics and affine parameters alike (NoFrost, Figure 2)::

    theta(gamma) = (1 - gamma) * theta_clean + gamma * theta_adv,   gamma in [0, 1]

so ``gamma = 0`` is the clean branch and ``gamma = 1`` the adversarial one.
"""
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

BN_MODES = ("clean", "adv", "mix")


class DualBatchNorm2d(nn.Module):
    """Two BatchNorm2d branches (``clean``, ``adv``); ``mode`` picks the one a batch goes through."""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1, device=None, dtype=None):
        super().__init__()
        self.clean = nn.BatchNorm2d(num_features, eps=eps, momentum=momentum, device=device, dtype=dtype)
        self.adv = nn.BatchNorm2d(num_features, eps=eps, momentum=momentum, device=device, dtype=dtype)
        self.mode = "clean"
        self.gamma: Optional[float] = None

    def set_mode(self, mode: str, gamma: Optional[float] = None) -> None:
        self.mode, self.gamma = _check_mode(mode, gamma)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "clean":
            return self.clean(x)
        if self.mode == "adv":
            return self.adv(x)
        if self.training:
            raise RuntimeError("DualBatchNorm2d: mode 'mix' interpolates the running statistics and is for "
                               "evaluation only; call model.eval() or route the batch to 'clean' or 'adv'")
        c, a, g = self.clean, self.adv, self.gamma
        return F.batch_norm(x, torch.lerp(c.running_mean, a.running_mean, g),
                            torch.lerp(c.running_var, a.running_var, g), torch.lerp(c.weight, a.weight, g),
                            torch.lerp(c.bias, a.bias, g), training=False, momentum=0.0, eps=c.eps)

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}" + (f", gamma={self.gamma}" if self.mode == "mix" else "")


def _check_mode(mode: str, gamma: Optional[float]):
    if mode not in BN_MODES:
        raise ValueError(f"BN mode must be one of {BN_MODES}, got {mode!r}")
    if mode == "mix":
        if gamma is None or isinstance(gamma, bool) or not 0.0 <= float(gamma) <= 1.0:
            raise ValueError(f"BN mode 'mix' needs gamma in [0, 1] (0 = clean, 1 = adv), got {gamma!r}")
        return mode, float(gamma)
    if gamma is not None:
        raise ValueError(f"gamma is only used by BN mode 'mix', got gamma={gamma!r} with mode {mode!r}")
    return mode, None


def set_bn_mode(model: nn.Module, mode: str, gamma: Optional[float] = None) -> None:
    """Route every ``DualBatchNorm2d`` in ``model`` (wrappers such as DDP included) to ``mode``:
    ``"clean"``, ``"adv"``, or ``"mix"`` with ``gamma`` in [0, 1] (evaluation only)."""
    mode, gamma = _check_mode(mode, gamma)
    layers = [m for m in model.modules() if isinstance(m, DualBatchNorm2d)]
    if not layers:
        raise ValueError(f"set_bn_mode: {type(model).__name__} has no DualBatchNorm2d layer "
                         "(only dual-BN models, e.g. 'resnet50_dualbn', route batches)")
    for layer in layers:
        layer.set_mode(mode, gamma)

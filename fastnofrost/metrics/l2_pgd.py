"""L2 PGD in [0, 1] pixel space: the attack behind boundary thickness and decision margin.

Starts at x (no random start, as Yang et al.'s thickness code) and repeats

    x_adv <- x_adv + step * g / ||g||_2                       g = d objective / d x_adv
    x_adv <- clip(x + (x_adv - x) * min(1, eps / ||x_adv - x||_2), 0, 1)

with the objective CE(z, y) (untargeted) or -CE(z, t) (towards ``target``). ``eps`` and
``step`` are numbers or per-sample (N,) tensors. It runs in the frozen attack mode of
:mod:`fastnofrost.attacks` (eval mode, frozen parameters, gradients w.r.t. the input only).
An input whose gradient is zero does not move.
"""
from typing import Optional, Union

import torch

from ..attacks import Objective, Precision, attack_mode
from ..attacks.base import check_count, check_inputs, input_gradient, per_sample

Radius = Union[float, torch.Tensor]


def l2_norms(t: torch.Tensor) -> torch.Tensor:
    """Per-sample L2 norm of a (N, ...) tensor."""
    return t.flatten(1).norm(dim=1)


def _per_sample(value: Radius, name: str, like: torch.Tensor) -> torch.Tensor:
    value = torch.as_tensor(value, dtype=like.dtype, device=like.device).expand(like.shape[0])
    if not bool(torch.isfinite(value).all()) or bool((value < 0).any()):
        raise ValueError(f"{name} must be finite and >= 0 (a number or one per sample), got {value.tolist()[:4]}")
    return value


def l2_pgd(model, x: torch.Tensor, y: torch.Tensor, eps: Radius, steps: int, step: Radius, *,
           target: Optional[torch.Tensor] = None, precision: str = "fp32") -> torch.Tensor:
    """L2 PGD of radius ``eps`` (see module doc); returns x_adv.

    ``y``: the class to move away from (untargeted), or the labels checked when ``target`` (the
    class to move towards) is given.
    """
    check_inputs(x, y)
    check_count(steps, "steps")
    x = x.detach()
    eps, step = _per_sample(eps, "eps", x), _per_sample(step, "step", x)
    objective, prec = Objective("ce", y, target), Precision(precision)
    x_adv = x.clone()
    with attack_mode(model):
        for _ in range(steps):
            _, _, grad = input_gradient(model, x_adv, objective, prec)
            with torch.no_grad():
                unit = grad / per_sample(l2_norms(grad).clamp_min(1e-12), grad)
                delta = x_adv.detach() + per_sample(step, x) * unit - x
                shrink = (eps / l2_norms(delta).clamp_min(1e-12)).clamp(max=1.0)
                x_adv = (x + delta * per_sample(shrink, x)).clamp_(0.0, 1.0)
    return x_adv

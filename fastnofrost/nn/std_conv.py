"""Weight-standardized convolutions on the fused WS op: drop-in for timm's layers.

``ScaledStdConv2d`` and ``StdConv2d`` keep timm's constructors, parameters, state_dict keys
(``weight``, ``bias``, ``gain``) and math; the weight standardization runs through
:func:`fastnofrost.ops.scaled_weight_standardization` (C++ on CPU, Triton on CUDA).
"""
from typing import Optional, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..ops import check_backend, scaled_weight_standardization
from .source import WeightSource

_Size = Union[int, Tuple[int, int]]


def symmetric_padding(kernel_size: _Size, stride: _Size = 1, dilation: _Size = 1):
    """timm's default padding: ((stride - 1) + dilation * (kernel_size - 1)) // 2 per dim."""
    if any(isinstance(v, (tuple, list)) for v in (kernel_size, stride, dilation)):
        k, s, d = (v if isinstance(v, (tuple, list)) else (v, v) for v in (kernel_size, stride, dilation))
        return [symmetric_padding(*a) for a in zip(k, s, d)]
    return ((stride - 1) + dilation * (kernel_size - 1)) // 2


class _WSConv2d(nn.Conv2d):
    """Shared forward: the standardized weight from where ``source`` says (cached inside
    ``frozen_weights``; the model's step inside :meth:`fastnofrost.nn.WeightGroup.step`; else
    its own WS op: :mod:`fastnofrost.nn.source`), then conv."""

    gain: Optional[nn.Parameter]
    scale: float
    eps: float
    backend: str = "fused"

    def _init_ws(self, scale: float, eps: float, backend: str):
        if not eps > 0:
            raise ValueError(f"{type(self).__name__}: eps must be > 0, got {eps}")
        self.scale = float(scale)
        self.eps = float(eps)
        self.backend = check_backend(backend)
        self.source = WeightSource()

    def own_weight(self) -> torch.Tensor:
        """This layer's WS op on its current parameters (with their graph)."""
        return scaled_weight_standardization(self.weight, self.gain, self.scale, self.eps, self.backend)

    def standardized_weight(self) -> torch.Tensor:
        return self.source.weight(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.standardized_weight(), self.bias, self.stride, self.padding, self.dilation,
                        self.groups)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", eps={self.eps}, scale={self.scale:.6g}"


class ScaledStdConv2d(_WSConv2d):
    """Conv2d with scaled weight standardization (NF-ResNet / NFNet), as timm's ScaledStdConv2d.

    ``w_hat = gain * gamma * fan_in**-0.5 * (w - mean) / sqrt(var + eps)``.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: _Size, stride: _Size = 1,
                 padding: Optional[Union[_Size, str]] = None, dilation: _Size = 1, groups: int = 1,
                 bias: bool = True, gamma: float = 1.0, eps: float = 1e-6, gain_init: float = 1.0,
                 device=None, dtype=None, backend: str = "fused"):
        if padding is None:
            padding = symmetric_padding(kernel_size, stride, dilation)
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                         dilation=dilation, groups=groups, bias=bias, device=device, dtype=dtype)
        self.gain_init = gain_init
        self.gain = nn.Parameter(torch.full((self.out_channels, 1, 1, 1), float(gain_init), device=device,
                                            dtype=self.weight.dtype))
        self._init_ws(gamma * self.weight[0].numel() ** -0.5, eps, backend)

    def reset_parameters(self) -> None:
        super().reset_parameters()
        if getattr(self, "gain", None) is not None:
            nn.init.constant_(self.gain, self.gain_init)


class StdConv2d(_WSConv2d):
    """Conv2d with weight standardization (BiT), as timm's StdConv2d: no gain, no scale."""

    def __init__(self, in_channel: int, out_channels: int, kernel_size: _Size, stride: _Size = 1,
                 padding: Optional[Union[_Size, str]] = None, dilation: _Size = 1, groups: int = 1,
                 bias: bool = False, eps: float = 1e-6, device=None, dtype=None, backend: str = "fused"):
        if padding is None:
            padding = symmetric_padding(kernel_size, stride, dilation)
        super().__init__(in_channel, out_channels, kernel_size, stride=stride, padding=padding,
                         dilation=dilation, groups=groups, bias=bias, device=device, dtype=dtype)
        self.gain = None
        self._init_ws(1.0, eps, backend)


def set_ws_backend(model: nn.Module, backend: str) -> int:
    """Set every weight-standardized layer of ``model`` to ``backend``: 'fused' (the fused op)
    or 'reference' (eager torch, the per-layer reference; an ablation of
    benchmarks/bench_step.py). Call it before :func:`~fastnofrost.nn.group_weights`, which
    groups the fused layers only. Returns how many layers were set."""
    check_backend(backend)
    layers = [m for m in model.modules() if isinstance(m, _WSConv2d)]
    if any(m.source.group is not None for m in layers):
        raise RuntimeError("set_ws_backend: the model's weights are grouped (group_weights); ungroup_weights first")
    for layer in layers:
        layer.backend = backend
    return len(layers)

"""Swap timm's weight-standardized convolutions for ours, in any timm model.

``convert_timm(model)`` replaces every timm ``ScaledStdConv2d`` / ``StdConv2d`` (and their
TF-"SAME" variants used by the DeepMind NFNets) with fastnofrost's layer of the same
geometry, eps and scale. The parameters are moved over as they are (the same ``Parameter``
objects), so state_dict keys, values and any optimizer holding them stay valid, and the
outputs are unchanged up to float rounding.
"""
import torch.nn as nn
import torch.nn.functional as F

from .std_conv import ScaledStdConv2d, StdConv2d


def _same_pad(x, kernel_size, stride, dilation):
    """Pad the input as TF "SAME" does for this input size (extra pixel at the bottom/right)."""
    pads = []
    for size, k, s, d in zip(reversed(x.shape[-2:]), reversed(kernel_size), reversed(stride), reversed(dilation)):
        total = max((-(-size // s) - 1) * s + (k - 1) * d + 1 - size, 0)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads)


class _ScaledStdConv2dSame(ScaledStdConv2d):
    """ScaledStdConv2d with input-size dependent TF "SAME" padding (timm's dynamic case)."""

    def forward(self, x):
        return super().forward(_same_pad(x, self.kernel_size, self.stride, self.dilation))


class _StdConv2dSame(StdConv2d):
    """StdConv2d with input-size dependent TF "SAME" padding (timm's dynamic case)."""

    def forward(self, x):
        return super().forward(_same_pad(x, self.kernel_size, self.stride, self.dilation))


def _timm_classes():
    try:
        from timm.layers import ScaledStdConv2d as TScaled, ScaledStdConv2dSame as TScaledSame
        from timm.layers import StdConv2d as TStd, StdConv2dSame as TStdSame
    except ImportError as exc:
        raise ImportError("convert_timm needs timm installed (pip install timm)") from exc
    return (TScaled, TScaledSame), (TStd, TStdSame)


def _convert_layer(layer: nn.Conv2d, scaled: bool) -> nn.Module:
    dynamic = bool(getattr(layer, "same_pad", False))
    if scaled:
        cls = _ScaledStdConv2dSame if dynamic else ScaledStdConv2d
    else:
        cls = _StdConv2dSame if dynamic else StdConv2d
    new = cls(layer.in_channels, layer.out_channels, layer.kernel_size, stride=layer.stride,
              padding=layer.padding, dilation=layer.dilation, groups=layer.groups,
              bias=layer.bias is not None, eps=layer.eps, device="meta")
    new.weight, new.bias = layer.weight, layer.bias
    if scaled:
        new.gain, new.scale, new.gain_init = layer.gain, float(layer.scale), layer.gain_init
    new.train(layer.training)
    return new


def convert_timm(model: nn.Module) -> nn.Module:
    """Replace, in place, every timm ScaledStdConv2d / StdConv2d (``*Same`` included) in
    ``model`` with fastnofrost's fused layer; returns ``model`` (or the new layer when
    ``model`` itself is one)."""
    scaled_classes, std_classes = _timm_classes()

    def convert(module):
        if isinstance(module, scaled_classes):
            return _convert_layer(module, scaled=True)
        if isinstance(module, std_classes):
            return _convert_layer(module, scaled=False)
        return None

    root = convert(model)
    if root is not None:
        return root
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            new = convert(child)
            if new is not None:
                setattr(parent, name, new)
    return model

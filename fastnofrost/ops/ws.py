"""Scaled weight standardization op: CUDA (Triton) kernel, fake kernel, autograd, and the
public entry point.

    w_hat = gain * scale * (w - mean) / sqrt(var + eps)   per output channel over the fan-in

``torch.ops.fastnofrost.ws_forward(weight, gain, scale, eps) -> (w_hat, mean, rstd)``; the
statistics are float32 (float64 for float64 weights) and are saved for the backward, which
returns grads for the weight and the gain.
"""
import torch

from . import reference
from .backend import FLOAT_DTYPES, check_backend, triton_module

_OP = "fastnofrost::ws_forward"
_BWD = "fastnofrost::ws_backward"


def _stat_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def _check(weight, gain, eps):
    if weight.dim() < 2 or weight.numel() == 0:
        raise ValueError(f"fastnofrost.ws: weight must be a non-empty (C_out, fan_in...) tensor, got {tuple(weight.shape)}")
    if weight.dtype not in FLOAT_DTYPES:
        raise TypeError(f"fastnofrost.ws: weight must be float64/float32/bfloat16/float16, got {weight.dtype}")
    if not eps > 0:
        raise ValueError(f"fastnofrost.ws: eps must be > 0, got {eps}")
    if gain is not None:
        if gain.numel() != weight.shape[0]:
            raise ValueError(f"fastnofrost.ws: gain must have C_out = {weight.shape[0]} elements, got {tuple(gain.shape)}")
        if gain.dtype != weight.dtype or gain.device != weight.device:
            raise TypeError(f"fastnofrost.ws: gain ({gain.dtype}, {gain.device}) must match weight "
                            f"({weight.dtype}, {weight.device})")


@torch.library.register_kernel(_OP, "cuda")
def _ws_forward_cuda(weight, gain, scale, eps):
    _check(weight, gain, eps)
    return triton_module("ws").ws_forward(weight, gain, scale, eps)


@torch.library.register_kernel(_BWD, "cuda")
def _ws_backward_cuda(grad, weight, gain, mean, rstd, scale):
    _check(weight, gain, 1.0)
    return triton_module("ws").ws_backward(grad, weight, gain, mean, rstd, scale)


@torch.library.register_fake(_OP)
def _ws_forward_fake(weight, gain, scale, eps):
    rows = weight.shape[0]
    stat = _stat_dtype(weight.dtype)
    return (torch.empty_like(weight, memory_format=torch.contiguous_format),
            weight.new_empty(rows, dtype=stat), weight.new_empty(rows, dtype=stat))


@torch.library.register_fake(_BWD)
def _ws_backward_fake(grad, weight, gain, mean, rstd, scale):
    return (torch.empty_like(weight, memory_format=torch.contiguous_format),
            weight.new_empty(weight.shape[0], dtype=_stat_dtype(weight.dtype)))


def _setup_context(ctx, inputs, output):
    weight, gain, scale, _eps = inputs
    _, mean, rstd = output
    ctx.mark_non_differentiable(mean, rstd)
    ctx.save_for_backward(weight, gain, mean, rstd)
    ctx.scale = scale


def _backward(ctx, grad, _grad_mean, _grad_rstd):
    weight, gain, mean, rstd = ctx.saved_tensors
    if grad is None:
        return None, None, None, None
    grad_w, grad_gain = torch.ops.fastnofrost.ws_backward(grad, weight, gain, mean, rstd, ctx.scale)
    if gain is None or not ctx.needs_input_grad[1]:
        grad_gain = None
    else:
        grad_gain = grad_gain.to(gain.dtype).reshape(gain.shape)
    return grad_w.reshape(weight.shape), grad_gain, None, None


torch.library.register_autograd(_OP, _backward, setup_context=_setup_context)


def scaled_weight_standardization(weight, gain=None, scale: float = 1.0, eps: float = 1e-6,
                                  backend: str = "fused"):
    """Standardized weight ``gain * scale * (w - mean) / sqrt(var + eps)`` (shape of ``weight``).

    ``gain`` is optional (C_out elements, any shape); statistics are per output channel over
    the fan-in with biased variance. ``backend`` is ``"fused"`` (C++ on CPU, Triton on CUDA)
    or ``"reference"`` (pure torch).
    """
    _check(weight, gain, eps)
    if check_backend(backend) == "reference":
        return reference.scaled_weight_standardization(weight, gain, scale, eps)
    w_hat, _, _ = torch.ops.fastnofrost.ws_forward(weight, gain, float(scale), float(eps))
    return w_hat.view(weight.shape)

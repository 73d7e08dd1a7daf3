"""Grouped scaled weight standardization: every weight of a model in one launch each way.

    w_hat_i = gain_i * scale_i * (w_i - mean) / sqrt(var + eps_i)   per output channel, for each i

``torch.ops.fastnofrost.ws_grouped_forward(weights, gains, scales, eps) -> (flat, mean, rstd)``
(an empty tensor in ``gains`` for a weight without a gain: a schema list of optional tensors
would not be differentiable) writes every standardized weight into one flat buffer, weight
after weight, each in the memory order of its weight (a weight must be row-dense: each output
channel one dense block, as in contiguous and channels_last weights); ``mean`` / ``rstd``
cover all rows of all weights.
The backward (``ws_grouped_backward(grads, ...)``) reads one gradient per weight, each where
autograd left it, and returns one flat weight gradient and one gain-gradient vector; autograd
hands each weight and gain its piece. :func:`grouped_forward` + :func:`attach` (what the public
function and :class:`fastnofrost.nn.WeightGroup` use) give the per-weight views their gradient
through one autograd node, so autograd never concatenates the 53 gradients of a ResNet-50 into
one buffer first, as the backward of a split would. The math is the per-layer op's
(:mod:`fastnofrost.ops.ws`), which stays the reference the tests compare against.
"""
from typing import List, Optional, Sequence

import torch

from . import reference
from .backend import FLOAT_DTYPES, check_backend, triton_module

_OP = "fastnofrost::ws_grouped_forward"
_BWD = "fastnofrost::ws_grouped_backward"
_WHERE = "fastnofrost.ws_grouped"


def _stat_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def row_dense(w: torch.Tensor) -> bool:
    """Each output channel is one dense block of memory, blocks in channel order."""
    if w.is_contiguous():
        return True
    expected = 1  # dense: the dims, by increasing stride, tile memory without gaps or overlap
    for d in sorted(range(w.dim()), key=w.stride):
        if w.shape[d] > 1:
            if w.stride(d) != expected:
                return False
            expected *= w.shape[d]
    return w.stride(0) * w.shape[0] == w.numel()


def check_group(weights, gains, scales, eps) -> None:
    """One clear error for a bad group (the kernels check again, in C++ on CPU)."""
    if not isinstance(weights, (list, tuple)) or not weights:
        raise ValueError(f"{_WHERE}: weights must be a non-empty list of tensors, got {type(weights).__name__}")
    if not (len(gains) == len(scales) == len(eps) == len(weights)):
        raise ValueError(f"{_WHERE}: weights, gains, scales and eps need one entry per weight, got "
                         f"{len(weights)}, {len(gains)}, {len(scales)}, {len(eps)}")
    first = weights[0]
    for i, (w, g, e) in enumerate(zip(weights, gains, eps)):
        if w.dim() < 2 or w.numel() == 0:
            raise ValueError(f"{_WHERE}: weight {i} must be a non-empty (C_out, fan_in...) tensor, got {tuple(w.shape)}")
        if w.dtype not in FLOAT_DTYPES:
            raise TypeError(f"{_WHERE}: weight {i} must be float64/float32/bfloat16/float16, got {w.dtype}")
        if w.dtype != first.dtype or w.device != first.device:
            raise TypeError(f"{_WHERE}: every weight must share one dtype and device; weight {i} is {w.dtype} on "
                            f"{w.device}, weight 0 is {first.dtype} on {first.device}")
        if not e > 0:
            raise ValueError(f"{_WHERE}: eps must be > 0, got {e} for weight {i}")
        if g is not None and (g.numel() or g.dim() != 1):  # an empty 1-D tensor: no gain (op calls)
            if g.numel() != w.shape[0]:
                raise ValueError(f"{_WHERE}: gain {i} must have C_out = {w.shape[0]} elements, got {tuple(g.shape)}")
            if g.dtype != w.dtype or g.device != w.device:
                raise TypeError(f"{_WHERE}: gain {i} ({g.dtype}, {g.device}) must match its weight "
                                f"({w.dtype}, {w.device})")


def _check_row_dense(weights) -> None:
    for i, w in enumerate(weights):
        if not row_dense(w):
            raise ValueError(f"{_WHERE}: weight {i} (shape {tuple(w.shape)}, strides {w.stride()}) is not "
                             "row-dense: make it contiguous first")


@torch.library.register_kernel(_OP, "cuda")
def _forward_cuda(weights, gains, scales, eps):
    check_group(weights, gains, scales, eps)
    _check_row_dense(weights)
    return triton_module("ws_grouped").forward(weights, gains, scales, eps)


def _same_order(g: torch.Tensor, w: torch.Tensor) -> bool:
    return all(n == 1 or a == b for n, a, b in zip(w.shape, g.stride(), w.stride()))


def _grads_like(grads, weights) -> List[torch.Tensor]:
    """Each gradient in its weight's memory order, all in the first one's dtype (as the CPU
    kernel takes them: a gradient in another layout or dtype is converted alone)."""
    if len(grads) != len(weights):
        raise ValueError(f"{_WHERE}: grads must have one entry per weight, got {len(grads)} for {len(weights)}")
    dtype = grads[0].dtype
    for i, (g, w) in enumerate(zip(grads, weights)):
        if g.shape != w.shape or g.device != w.device:
            raise ValueError(f"{_WHERE}: grad {i} must have its weight's shape {tuple(w.shape)} on {w.device}, "
                             f"got {tuple(g.shape)} on {g.device}")
    return [g if g.dtype == dtype and _same_order(g, w) else
            torch.empty_strided(w.shape, w.stride(), dtype=dtype, device=w.device).copy_(g)
            for g, w in zip(grads, weights)]


@torch.library.register_kernel(_BWD, "cuda")
def _backward_cuda(grads, weights, gains, mean, rstd, scales):
    check_group(weights, gains, scales, [1.0] * len(weights))
    _check_row_dense(weights)
    grads = _grads_like(grads, weights)
    return triton_module("ws_grouped").backward(grads, weights, gains, mean, rstd, scales)


@torch.library.register_fake(_OP)
def _forward_fake(weights, gains, scales, eps):
    first = weights[0]
    rows = sum(w.shape[0] for w in weights)
    stat = _stat_dtype(first.dtype)
    return (first.new_empty(sum(w.numel() for w in weights)), first.new_empty(rows, dtype=stat),
            first.new_empty(rows, dtype=stat))


@torch.library.register_fake(_BWD)
def _backward_fake(grads, weights, gains, mean, rstd, scales):
    first = weights[0]
    return (first.new_empty(sum(w.numel() for w in weights)),
            first.new_empty(sum(w.shape[0] for w in weights), dtype=_stat_dtype(first.dtype)))


def shaped(chunk: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A 1-D ``chunk`` of the flat buffer, holding weight ``like`` in the order the op read it
    (its memory order; row-major for a weight read through a contiguous copy), viewed with
    its shape (view and permute: no copy, no kernel in the backward)."""
    if like.is_contiguous() or not row_dense(like):
        return chunk.view(like.shape)
    order = sorted(range(like.dim()), key=lambda d: (-like.stride(d), d))
    inverse = sorted(range(like.dim()), key=order.__getitem__)
    return chunk.view([like.shape[d] for d in order]).permute(inverse)


def _setup_context(ctx, inputs, output):
    weights, gains, scales, _eps = inputs
    _, mean, rstd = output
    ctx.mark_non_differentiable(mean, rstd)
    ctx.count = len(weights)
    ctx.save_for_backward(mean, rstd, *weights, *gains)
    ctx.scales = scales


def _weight_grads(grads, weights, gains, mean, rstd, scales):
    """Every weight's and gain's gradient from one gradient per standardized weight: ONE
    backward op, which reads each gradient where it lies."""
    grad_w, grad_gain = torch.ops.fastnofrost.ws_grouped_backward(list(grads), weights, gains, mean, rstd, scales)
    grad_gs = [c.to(g.dtype).view(g.shape) if g.numel() else None
               for c, g in zip(grad_gain.split([w.shape[0] for w in weights]), gains)]
    return split_shaped(grad_w, weights), grad_gs


def _backward(ctx, grad, _grad_mean, _grad_rstd):
    mean, rstd, *rest = ctx.saved_tensors
    weights, gains = rest[:ctx.count], rest[ctx.count:]
    if grad is None:
        return [None] * len(weights), [None] * len(gains), None, None
    grad_ws, grad_gs = _weight_grads(split_shaped(grad, weights), weights, gains, mean, rstd, ctx.scales)
    return grad_ws, grad_gs, None, None


torch.library.register_autograd(_OP, _backward, setup_context=_setup_context)


def _readable(weights: Sequence[torch.Tensor]) -> List[torch.Tensor]:
    """The weights as the op reads them: a weight that is not row-dense through a contiguous copy."""
    return [w if row_dense(w) else w.contiguous() for w in weights]


def _op_gains(weights, gains) -> List[torch.Tensor]:
    return [w.new_empty(0) if g is None else g for w, g in zip(weights, gains)]


def grouped_forward(weights: Sequence[torch.Tensor], gains: Sequence[Optional[torch.Tensor]],
                    scales: Sequence[float], eps: Sequence[float]):
    """The op on an already checked group (:class:`fastnofrost.nn.WeightGroup` checks once),
    without a graph: ``(flat, mean, rstd)``, every standardized weight in one flat buffer.
    :func:`attach` gives them their gradient."""
    with torch.no_grad(), torch.autocast(weights[0].device.type, enabled=False):
        return torch.ops.fastnofrost.ws_grouped_forward(_readable(weights), _op_gains(weights, gains),
                                                        list(scales), list(eps))


class _Attached(torch.autograd.Function):
    """The flat buffer's per-weight views as outputs whose gradient is the grouped backward.
    Autograd hands this node one gradient per weight, so nothing concatenates them first (a
    split's backward would): the backward op reads each where it lies."""

    @staticmethod
    def forward(ctx, flat, mean, rstd, cast, scales, count, *params):
        weights, gains = _readable(params[:count]), params[count:]
        ctx.save_for_backward(mean, rstd, *weights, *gains)
        ctx.count, ctx.scales = count, scales
        return tuple(split_shaped(flat if cast is None else flat.to(cast), weights))

    @staticmethod
    def backward(ctx, *grads):
        mean, rstd, *rest = ctx.saved_tensors
        weights, gains = rest[:ctx.count], rest[ctx.count:]
        grad_ws, grad_gs = _weight_grads(grads, weights, gains, mean, rstd, ctx.scales)
        return (None,) * 6 + tuple(grad_ws) + tuple(grad_gs)


def attach(flat: torch.Tensor, mean: torch.Tensor, rstd: torch.Tensor, weights: Sequence[torch.Tensor],
           gains: Sequence[Optional[torch.Tensor]], scales: Sequence[float], cast=None) -> List[torch.Tensor]:
    """The standardized weights of :func:`grouped_forward`'s result, shaped as the weights and
    cast to ``cast`` (None: their own dtype; one cast for all), each with its gradient to its
    weight and gain through one grouped backward (when grad mode is on)."""
    return list(_Attached.apply(flat, mean, rstd, cast, list(scales), len(weights), *weights,
                                *_op_gains(weights, gains)))


def split_shaped(flat: torch.Tensor, weights: Sequence[torch.Tensor]) -> List[torch.Tensor]:
    """The flat buffer as one tensor per weight, shaped as the weights (one split, views)."""
    return [shaped(c, w) for c, w in zip(flat.split([w.numel() for w in weights]), weights)]


def grouped_scaled_weight_standardization(weights: Sequence[torch.Tensor],
                                          gains: Optional[Sequence[Optional[torch.Tensor]]] = None,
                                          scales=1.0, eps=1e-6, backend: str = "fused") -> List[torch.Tensor]:
    """The standardized weights of a list of weights, in one launch each way (see the module doc).

    ``gains``: one per weight (None entries allowed) or None; ``scales`` / ``eps``: one number
    for all or one per weight. Every weight must share one dtype and device. ``backend`` is
    ``"fused"`` or ``"reference"`` (the per-layer pure-torch reference, weight by weight).
    """
    n = len(weights) if isinstance(weights, (list, tuple)) else 0
    gains = [None] * n if gains is None else list(gains)
    scales = [float(scales)] * n if isinstance(scales, (int, float)) else [float(s) for s in scales]
    eps = [float(eps)] * n if isinstance(eps, (int, float)) else [float(e) for e in eps]
    check_group(weights, gains, scales, eps)
    if check_backend(backend) == "reference":
        return [reference.scaled_weight_standardization(w, g, s, e) for w, g, s, e in zip(weights, gains, scales, eps)]
    return attach(*grouped_forward(weights, gains, scales, eps), weights, gains, scales)

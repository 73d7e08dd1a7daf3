"""Scaled weight standardization: Triton forward and backward kernels, one program per row; the
row math (ws_row_forward / ws_row_backward) is shared with the grouped kernels.

    w_hat[o, i] = gain[o] * scale * (w[o, i] - mean[o]) * rstd[o]

Rows (output channels) are at most a few thousand elements, so the statistics pass and the
write pass re-read the row from L1/L2, not from device memory.

Why the forward makes three passes over a row (mean, then the centred sum of squares, then the
write) where the CPU kernel (kernels/cpu/ws_row.h) makes two: the CPU row sums w - w[0] and its
square in one pass, in sixteen fixed lanes, shifted by the first element so that a mean far from
zero does not cancel the variance. A Triton program holds a BLOCK-wide vector and a row may span
several blocks; the exact two-pass variance (mean first) costs one more read of a row that is
already in cache, and nothing in memory traffic. The backward needs two passes either way (the
sums of g and g * x_hat, then the write).
"""
import torch
import triton
import triton.language as tl

_MAX_BLOCK = 4096


def row_block(n: int) -> int:
    """BLOCK for rows of ``n`` elements: the power of two at or above n, at most 4096 (a longer row
    loops over blocks)."""
    return min(triton.next_power_of_2(n), _MAX_BLOCK)


@triton.jit
def ws_row_forward(W, OUT, n, gain, scale, eps, ACC: tl.constexpr, BLOCK: tl.constexpr):
    """Standardize the row at W (n elements) into OUT; returns (mean, rstd). Shared with the
    grouped kernels (ws_grouped.py)."""
    cols = tl.arange(0, BLOCK)
    acc = tl.zeros([BLOCK], dtype=ACC)
    for start in range(0, n, BLOCK):
        acc += tl.load(W + start + cols, mask=start + cols < n, other=0.0).to(ACC)
    mean = tl.sum(acc, axis=0) / n
    acc = tl.zeros([BLOCK], dtype=ACC)
    for start in range(0, n, BLOCK):
        mask = start + cols < n
        x = tl.load(W + start + cols, mask=mask, other=0.0).to(ACC)
        d = tl.where(mask, x - mean, 0.0)
        acc += d * d
    rstd = 1.0 / tl.sqrt(tl.sum(acc, axis=0) / n + eps)
    a = gain * scale * rstd
    b = -mean * a
    for start in range(0, n, BLOCK):
        mask = start + cols < n
        x = tl.load(W + start + cols, mask=mask, other=0.0).to(ACC)
        tl.store(OUT + start + cols, (x * a + b).to(OUT.dtype.element_ty), mask=mask)
    return mean, rstd


@triton.jit
def ws_row_backward(G, W, DW, n, mean, rstd, gain, scale, ACC: tl.constexpr, BLOCK: tl.constexpr):
    """The gradient of one row into DW, from the saved mean / rstd; returns the gain's gradient."""
    cols = tl.arange(0, BLOCK)
    acc_g = tl.zeros([BLOCK], dtype=ACC)
    acc_gx = tl.zeros([BLOCK], dtype=ACC)
    for start in range(0, n, BLOCK):
        mask = start + cols < n
        g = tl.load(G + start + cols, mask=mask, other=0.0).to(ACC)
        x = tl.load(W + start + cols, mask=mask, other=0.0).to(ACC)
        acc_g += g
        acc_gx += g * ((x - mean) * rstd)
    sum_gx = tl.sum(acc_gx, axis=0)
    k = gain * scale * rstd
    mg = tl.sum(acc_g, axis=0) / n
    mgx = sum_gx / n
    for start in range(0, n, BLOCK):
        mask = start + cols < n
        g = tl.load(G + start + cols, mask=mask, other=0.0).to(ACC)
        x = tl.load(W + start + cols, mask=mask, other=0.0).to(ACC)
        xh = (x - mean) * rstd
        tl.store(DW + start + cols, (k * (g - mg - xh * mgx)).to(DW.dtype.element_ty), mask=mask)
    return scale * sum_gx


@triton.jit
def _gain(GAIN, row, HAS_GAIN: tl.constexpr, ACC: tl.constexpr):
    if HAS_GAIN:
        return tl.load(GAIN + row).to(ACC)
    else:
        return tl.full([], 1.0, ACC)


@triton.jit
def _ws_fwd_kernel(W, GAIN, OUT, MEAN, RSTD, n, scale, eps,
                   HAS_GAIN: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    base = row.to(tl.int64) * n
    mean, rstd = ws_row_forward(W + base, OUT + base, n, _gain(GAIN, row, HAS_GAIN, ACC), scale, eps, ACC, BLOCK)
    tl.store(MEAN + row, mean)
    tl.store(RSTD + row, rstd)


@triton.jit
def _ws_bwd_kernel(G, W, GAIN, MEAN, RSTD, DW, DGAIN, n, scale,
                   HAS_GAIN: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    base = row.to(tl.int64) * n
    mean = tl.load(MEAN + row).to(ACC)
    rstd = tl.load(RSTD + row).to(ACC)
    dgain = ws_row_backward(G + base, W + base, DW + base, n, mean, rstd, _gain(GAIN, row, HAS_GAIN, ACC), scale,
                            ACC, BLOCK)
    tl.store(DGAIN + row, dgain)


def _acc(dtype: torch.dtype):
    return (tl.float64, torch.float64) if dtype == torch.float64 else (tl.float32, torch.float32)


def ws_forward(weight: torch.Tensor, gain, scale: float, eps: float):
    w = weight.contiguous()
    rows = w.shape[0]
    n = w.numel() // rows
    acc, stat_dtype = _acc(w.dtype)
    out = torch.empty_like(w)
    mean = torch.empty(rows, dtype=stat_dtype, device=w.device)
    rstd = torch.empty(rows, dtype=stat_dtype, device=w.device)
    g = gain.contiguous() if gain is not None else w
    _ws_fwd_kernel[(rows,)](w, g, out, mean, rstd, n, float(scale), float(eps),
                            HAS_GAIN=gain is not None, ACC=acc, BLOCK=row_block(n))
    return out, mean, rstd


def ws_backward(grad: torch.Tensor, weight: torch.Tensor, gain, mean, rstd, scale: float):
    w = weight.contiguous()
    gr = grad.to(w.dtype).contiguous()
    rows = w.shape[0]
    n = w.numel() // rows
    acc, stat_dtype = _acc(w.dtype)
    dw = torch.empty_like(w)
    dgain = torch.empty(rows, dtype=stat_dtype, device=w.device)
    g = gain.contiguous() if gain is not None else w
    _ws_bwd_kernel[(rows,)](gr, w, g, mean.contiguous(), rstd.contiguous(), dw, dgain, n, float(scale),
                            HAS_GAIN=gain is not None, ACC=acc, BLOCK=row_block(n))
    return dw, dgain

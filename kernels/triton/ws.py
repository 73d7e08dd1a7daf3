"""Scaled weight standardization: Triton forward and backward kernels, one program per row.

    w_hat[o, i] = gain[o] * scale * (w[o, i] - mean[o]) * rstd[o]

Rows (output channels) are at most a few thousand elements, so the statistics pass and the
write pass re-read the row from L1/L2, not from device memory.
"""
import torch
import triton
import triton.language as tl

_MAX_BLOCK = 4096


def _block(n: int) -> int:
    return min(triton.next_power_of_2(n), _MAX_BLOCK)


@triton.jit
def _ws_fwd_kernel(W, GAIN, OUT, MEAN, RSTD, n, scale, eps,
                   HAS_GAIN: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    base = row.to(tl.int64) * n
    cols = tl.arange(0, BLOCK)
    acc = tl.zeros([BLOCK], dtype=ACC)
    for start in range(0, n, BLOCK):
        mask = start + cols < n
        acc += tl.load(W + base + start + cols, mask=mask, other=0.0).to(ACC)
    mean = tl.sum(acc, axis=0) / n
    acc = tl.zeros([BLOCK], dtype=ACC)
    for start in range(0, n, BLOCK):
        mask = start + cols < n
        x = tl.load(W + base + start + cols, mask=mask, other=0.0).to(ACC)
        d = tl.where(mask, x - mean, 0.0)
        acc += d * d
    rstd = 1.0 / tl.sqrt(tl.sum(acc, axis=0) / n + eps)
    a = scale * rstd
    if HAS_GAIN:
        a = a * tl.load(GAIN + row).to(ACC)
    b = -mean * a
    for start in range(0, n, BLOCK):
        mask = start + cols < n
        x = tl.load(W + base + start + cols, mask=mask, other=0.0).to(ACC)
        tl.store(OUT + base + start + cols, (x * a + b).to(OUT.dtype.element_ty), mask=mask)
    tl.store(MEAN + row, mean)
    tl.store(RSTD + row, rstd)


@triton.jit
def _ws_bwd_kernel(G, W, GAIN, MEAN, RSTD, DW, DGAIN, n, scale,
                   HAS_GAIN: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    base = row.to(tl.int64) * n
    cols = tl.arange(0, BLOCK)
    mean = tl.load(MEAN + row).to(ACC)
    rstd = tl.load(RSTD + row).to(ACC)
    acc_g = tl.zeros([BLOCK], dtype=ACC)
    acc_gx = tl.zeros([BLOCK], dtype=ACC)
    for start in range(0, n, BLOCK):
        mask = start + cols < n
        g = tl.load(G + base + start + cols, mask=mask, other=0.0).to(ACC)
        x = tl.load(W + base + start + cols, mask=mask, other=0.0).to(ACC)
        acc_g += g
        acc_gx += g * ((x - mean) * rstd)
    sum_g = tl.sum(acc_g, axis=0)
    sum_gx = tl.sum(acc_gx, axis=0)
    k = scale * rstd
    if HAS_GAIN:
        k = k * tl.load(GAIN + row).to(ACC)
    mg = sum_g / n
    mgx = sum_gx / n
    for start in range(0, n, BLOCK):
        mask = start + cols < n
        g = tl.load(G + base + start + cols, mask=mask, other=0.0).to(ACC)
        x = tl.load(W + base + start + cols, mask=mask, other=0.0).to(ACC)
        xh = (x - mean) * rstd
        tl.store(DW + base + start + cols, (k * (g - mg - xh * mgx)).to(DW.dtype.element_ty), mask=mask)
    tl.store(DGAIN + row, scale * sum_gx)


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
                            HAS_GAIN=gain is not None, ACC=acc, BLOCK=_block(n))
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
                            HAS_GAIN=gain is not None, ACC=acc, BLOCK=_block(n))
    return dw, dgain

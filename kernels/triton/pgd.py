"""L-inf PGD step and random start: Triton kernels, one pass over memory each.

    step:  x_adv <- clip(clip(x_adv + alpha * sign(grad), x - eps, x + eps), lo, hi)
    start: x_adv  = clip(x + eps * (2u - 1), lo, hi),  u from Philox-4x32-10 (tl.randint4x):
           element i takes output i % 4 of counter i // 4

The CPU kernel (kernels/cpu/pgd.cpp) draws the same Philox numbers for the same seed.
Inputs are processed in storage order; callers pass dense tensors of identical layout.
"""
import torch
import triton
import triton.language as tl

_BLOCK = 1024


@triton.jit
def _pgd_step_kernel(XA, G, X, OUT, n, alpha, eps, lo, hi, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    xa = tl.load(XA + offs, mask=mask, other=0.0).to(tl.float32)
    g = tl.load(G + offs, mask=mask, other=0.0).to(tl.float32)
    x = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
    sign = tl.where(g > 0, 1.0, tl.where(g < 0, -1.0, tl.where(g != g, g, 0.0)))
    v = xa + alpha * sign
    # a NaN gradient gives a NaN pixel, as on CPU (Triton's min/max would otherwise drop the NaN)
    v = tl.minimum(tl.maximum(v, x - eps, propagate_nan=tl.PropagateNan.ALL), x + eps,
                   propagate_nan=tl.PropagateNan.ALL)
    v = tl.minimum(tl.maximum(v, lo, propagate_nan=tl.PropagateNan.ALL), hi, propagate_nan=tl.PropagateNan.ALL)
    tl.store(OUT + offs, v.to(OUT.dtype.element_ty), mask=mask)


@triton.jit
def _random_start_kernel(X, OUT, n, eps, lo, hi, seed, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)  # int64: past 2**31 elements
    mask = offs < n
    x = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
    r0, r1, r2, r3 = tl.randint4x(seed, offs // 4)  # counter (c mod 2**32, c >> 32, 0, 0), as the CPU kernel
    lane = offs % 4
    u = tl.uint_to_uniform_float(tl.where(lane == 0, r0, tl.where(lane == 1, r1, tl.where(lane == 2, r2, r3))))
    v = x + (u * 2.0 - 1.0) * eps
    v = tl.minimum(tl.maximum(v, lo), hi)
    tl.store(OUT + offs, v.to(OUT.dtype.element_ty), mask=mask)


def _dense_like(ref: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return t if t.stride() == ref.stride() else t.contiguous(memory_format=_format(ref))


def _format(t: torch.Tensor):
    if t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


def _grid(n: int):
    return (triton.cdiv(n, _BLOCK),)


def pgd_step_into(x_adv, grad, x, alpha, eps, lo, hi, out):
    """Writes the step into `out` (which may be `x_adv` itself)."""
    fmt = _format(out)
    direct = out.is_contiguous(memory_format=fmt)
    dst = out if direct else torch.empty_like(out, memory_format=torch.contiguous_format)
    xa, g, xx = (_dense_like(dst, t) for t in (x_adv, grad, x))
    n = dst.numel()
    if n:
        _pgd_step_kernel[_grid(n)](xa, g, xx, dst, n, float(alpha), float(eps), float(lo), float(hi), BLOCK=_BLOCK)
    if not direct:
        out.copy_(dst)
    return out


def pgd_step(x_adv, grad, x, alpha, eps, lo, hi):
    return pgd_step_into(x_adv, grad, x, alpha, eps, lo, hi, torch.empty_like(x_adv))


def pgd_step_(x_adv, grad, x, alpha, eps, lo, hi):
    pgd_step_into(x_adv, grad, x, alpha, eps, lo, hi, x_adv)


def pgd_random_start(x, eps, lo, hi, seed):
    out = torch.empty_like(x)
    fmt = _format(out)
    direct = out.is_contiguous(memory_format=fmt)
    dst = out if direct else torch.empty_like(out, memory_format=torch.contiguous_format)
    xx = _dense_like(dst, x)
    n = dst.numel()
    if n:
        _random_start_kernel[_grid(n)](xx, dst, n, float(eps), float(lo), float(hi), int(seed), BLOCK=_BLOCK)
    if not direct:
        out.copy_(dst)
    return out

"""L-inf PGD step and random start ops: CUDA (Triton) kernels, fake kernels, public entry points.

    pgd_step:          clip(clip(x_adv + alpha * sign(grad), x - eps, x + eps), lo, hi)
    pgd_step_:         the same, written into x_adv
    pgd_random_start:  clip(x + U(-eps, eps), lo, hi)   (Philox, keyed by a seed drawn from torch's RNG)

A negative ``alpha`` steps against the gradient (targeted attacks). A NaN gradient gives a NaN
pixel on every backend (sign(NaN) = NaN; torch.sign alone would give 0 and silently not move
the pixel), so a broken gradient surfaces at the next loss. No autograd: the step is applied
to detached tensors between gradient computations.
"""
import torch

from . import reference
from .backend import FLOAT_DTYPES, check_backend, triton_module


def _check_bounds(eps, lo, hi, op):
    if not (eps >= 0 and eps < float("inf")):
        raise ValueError(f"{op}: eps must be finite and >= 0, got {eps}")
    if not lo <= hi:
        raise ValueError(f"{op}: clip range must satisfy lo <= hi, got lo={lo} hi={hi}")


def _check_step(x_adv, grad, x, eps, lo, hi):
    op = "fastnofrost.pgd_step"
    if not (x_adv.shape == x.shape == grad.shape):
        raise ValueError(f"{op}: x_adv, grad and x must have the same shape, got "
                         f"{tuple(x_adv.shape)}, {tuple(grad.shape)}, {tuple(x.shape)}")
    if not (x_adv.dtype == grad.dtype == x.dtype) or x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{op}: x_adv, grad and x must share one float dtype, got "
                        f"{x_adv.dtype}, {grad.dtype}, {x.dtype}")
    if not (x_adv.device == grad.device == x.device):
        raise ValueError(f"{op}: x_adv, grad and x must be on one device, got "
                         f"{x_adv.device}, {grad.device}, {x.device}")
    _check_bounds(eps, lo, hi, op)


@torch.library.register_kernel("fastnofrost::pgd_step", "cuda")
def _pgd_step_cuda(x_adv, grad, x, alpha, eps, lo, hi):
    _check_step(x_adv, grad, x, eps, lo, hi)
    return triton_module("pgd").pgd_step(x_adv, grad, x, alpha, eps, lo, hi)


@torch.library.register_kernel("fastnofrost::pgd_step_", "cuda")
def _pgd_step_inplace_cuda(x_adv, grad, x, alpha, eps, lo, hi):
    _check_step(x_adv, grad, x, eps, lo, hi)
    triton_module("pgd").pgd_step_(x_adv, grad, x, alpha, eps, lo, hi)


@torch.library.register_kernel("fastnofrost::pgd_random_start", "cuda")
def _pgd_random_start_cuda(x, eps, lo, hi, seed):
    _check_bounds(eps, lo, hi, "fastnofrost.pgd_random_start")
    return triton_module("pgd").pgd_random_start(x, eps, lo, hi, seed)


@torch.library.register_fake("fastnofrost::pgd_step")
def _pgd_step_fake(x_adv, grad, x, alpha, eps, lo, hi):
    return torch.empty_like(x_adv)


@torch.library.register_fake("fastnofrost::pgd_step_")
def _pgd_step_inplace_fake(x_adv, grad, x, alpha, eps, lo, hi):
    return None


@torch.library.register_fake("fastnofrost::pgd_random_start")
def _pgd_random_start_fake(x, eps, lo, hi, seed):
    return torch.empty_like(x)


def pgd_step(x_adv, grad, x, alpha: float, eps: float, lo: float = 0.0, hi: float = 1.0,
             backend: str = "fused"):
    """One L-inf PGD step; returns a new tensor."""
    _check_step(x_adv, grad, x, eps, lo, hi)
    if check_backend(backend) == "reference":
        return reference.pgd_step(x_adv, grad, x, alpha, eps, lo, hi)
    return torch.ops.fastnofrost.pgd_step(x_adv, grad, x, float(alpha), float(eps), float(lo), float(hi))


def pgd_step_(x_adv, grad, x, alpha: float, eps: float, lo: float = 0.0, hi: float = 1.0,
              backend: str = "fused"):
    """One L-inf PGD step written into ``x_adv``; returns ``x_adv``."""
    _check_step(x_adv, grad, x, eps, lo, hi)
    if check_backend(backend) == "reference":
        return x_adv.copy_(reference.pgd_step(x_adv, grad, x, alpha, eps, lo, hi))
    if torch.compiler.is_compiling():
        # Traced graphs are functionalized anyway; the functional op plus copy_ is what that
        # yields, and it keeps the write-back to a graph input that AOTAutograd drops for a
        # mutating custom op in graphs that require grad (seen with torch 2.14).
        return x_adv.copy_(torch.ops.fastnofrost.pgd_step(x_adv, grad, x, float(alpha), float(eps),
                                                          float(lo), float(hi)))
    torch.ops.fastnofrost.pgd_step_(x_adv, grad, x, float(alpha), float(eps), float(lo), float(hi))
    return x_adv


def pgd_random_start(x, eps: float, lo: float = 0.0, hi: float = 1.0, generator=None, seed=None,
                     backend: str = "fused"):
    """``clip(x + U(-eps, eps), lo, hi)``.

    The fused kernels draw Philox numbers keyed by ``seed``; without one, the seed is drawn from
    ``generator`` (or torch's default generator for x's device), so ``torch.manual_seed`` makes
    the start reproducible. The same seed gives the same noise on CPU and CUDA.
    """
    _check_bounds(eps, lo, hi, "fastnofrost.pgd_random_start")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"fastnofrost.pgd_random_start: x must be a float tensor, got {x.dtype}")
    if check_backend(backend) == "reference":
        return reference.pgd_random_start(x, eps, lo, hi, generator)
    if seed is None:
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator,
                                 device=generator.device if generator is not None else "cpu").item())
    return torch.ops.fastnofrost.pgd_random_start(x, float(eps), float(lo), float(hi), int(seed))

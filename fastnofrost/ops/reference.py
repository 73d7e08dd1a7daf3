"""Pure-torch references of the fused ops (``backend="reference"``).

Written for clarity, computing in float32 (float64 for float64 inputs) and rounding once,
as the fused kernels do. Tests compare the kernels against these and against float64 math.
"""
import torch


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def scaled_weight_standardization(weight, gain=None, scale: float = 1.0, eps: float = 1e-6):
    """gain * scale * (w - mean) / sqrt(var + eps), per output channel over the fan-in."""
    if eps <= 0:
        raise ValueError(f"fastnofrost.ws: eps must be > 0, got {eps}")
    w = weight.reshape(weight.shape[0], -1).to(_acc_dtype(weight.dtype))
    mean = w.mean(dim=1, keepdim=True)
    var = w.var(dim=1, unbiased=False, keepdim=True)
    out = (w - mean) * torch.rsqrt(var + eps) * scale
    if gain is not None:
        out = out * gain.reshape(-1, 1).to(out.dtype)
    return out.to(weight.dtype).reshape(weight.shape)


def pgd_step(x_adv, grad, x, alpha: float, eps: float, lo: float = 0.0, hi: float = 1.0):
    """clip(clip(x_adv + alpha * sign(grad), x - eps, x + eps), lo, hi); a NaN gradient gives
    a NaN pixel, as in the fused kernels (torch.sign alone would map NaN to 0)."""
    acc = _acc_dtype(x_adv.dtype)
    xf = x.to(acc)
    g = grad.to(acc)
    v = x_adv.to(acc) + alpha * torch.where(g.isnan(), g, g.sign())
    v = torch.minimum(torch.maximum(v, xf - eps), xf + eps)
    return v.clamp(lo, hi).to(x_adv.dtype)


def pgd_random_start(x, eps: float, lo: float = 0.0, hi: float = 1.0, generator=None):
    """clip(x + U(-eps, eps), lo, hi) with torch's own generator."""
    acc = _acc_dtype(x.dtype)
    u = torch.rand(x.shape, generator=generator, dtype=torch.float32, device=x.device).to(acc)
    return (x.to(acc) + (u * 2 - 1) * eps).clamp(lo, hi).to(x.dtype)

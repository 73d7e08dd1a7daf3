"""PGD step and random start ops: C++ CPU kernels and Triton kernels (interpreter on CPU)
against float64 math; layouts, in-place variant, determinism, distribution, bad input."""
import math

import pytest
import torch

import fastnofrost  # noqa: F401
from fastnofrost.ops import pgd_random_start, pgd_step, pgd_step_

from helpers import poisoned_outputs

SHAPES = [(7,), (1, 1, 1, 1), (3, 1000), (2, 3, 5, 5), (4, 3, 32, 32), (2, 1, 28, 28), (70001,)]
DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64]
STEP_ATOL = {torch.float64: 1e-12, torch.float32: 1e-6, torch.float16: 1e-3, torch.bfloat16: 8e-3}


def step64(x_adv, grad, x, alpha, eps, lo, hi):
    xa, g, xx = (t.double() for t in (x_adv, grad, x))
    v = xa + alpha * torch.where(g.isnan(), g, torch.sign(g))  # a NaN gradient is not silently no step
    v = torch.where(v < xx - eps, xx - eps, v)
    v = torch.where(v > xx + eps, xx + eps, v)
    return v.clamp(lo, hi)


def make(shape, dtype):
    x = torch.rand(shape).to(dtype)
    x_adv = (x.double() + (torch.rand(shape, dtype=torch.float64) * 2 - 1) * 0.03).clamp(0, 1).to(dtype)
    grad = torch.randn(shape).to(dtype)
    grad.view(-1)[:: 5] = 0  # sign(0) = 0 must hold
    return x_adv, grad, x


def check_step(out, x_adv, grad, x, alpha, eps, lo, hi, dtype):
    assert out.dtype == dtype and out.shape == x.shape
    assert not out.isnan().any(), "unwritten element"
    ref = step64(x_adv, grad, x, alpha, eps, lo, hi)
    torch.testing.assert_close(out.double(), ref.to(dtype).double(), atol=STEP_ATOL[dtype], rtol=0)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_step_cpu(shape, dtype):
    x_adv, grad, x = make(shape, dtype)
    alpha, eps = 2.5 / 255, 8 / 255
    with poisoned_outputs():
        out = torch.ops.fastnofrost.pgd_step(x_adv, grad, x, alpha, eps, 0.0, 1.0)
    check_step(out, x_adv, grad, x, alpha, eps, 0.0, 1.0, dtype)
    inplace = x_adv.clone()
    pgd_step_(inplace, grad, x, alpha, eps)
    assert torch.equal(inplace, out)


@pytest.mark.parametrize("dtype", DTYPES)
def test_step_special_gradients(dtype):
    """NaN, +-inf, -0.0 and subnormal gradients: a NaN gradient gives a NaN pixel (not a silent
    no-step as torch.sign's 0 would), infinities a full step, zeros none; fused and reference
    alike, over a length that covers the vectorized body and the scalar tail."""
    special = torch.tensor([float("nan"), float("inf"), -float("inf"), -0.0, 0.0, 1e-40, -1e-40, 3.0],
                           dtype=torch.float64)
    n = 8 * 37 + 5
    x_adv, _, x = make((n,), dtype)
    grad = special.repeat(38)[:n].to(dtype)
    out = torch.ops.fastnofrost.pgd_step(x_adv, grad, x, 0.01, 0.03, 0.0, 1.0)
    ref = step64(x_adv, grad, x, 0.01, 0.03, 0.0, 1.0).to(dtype)
    torch.testing.assert_close(out, ref, atol=STEP_ATOL[dtype], rtol=0, equal_nan=True)
    torch.testing.assert_close(pgd_step(x_adv, grad, x, 0.01, 0.03, backend="reference"), ref,
                               atol=STEP_ATOL[dtype], rtol=0, equal_nan=True)
    assert out.isnan().sum() == grad.isnan().sum() > 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_step_layouts(dtype):
    """channels_last, mixed layouts and non-dense (sliced) inputs all give the same answer."""
    x_adv, grad, x = make((3, 4, 9, 9), dtype)
    alpha, eps = 0.01, 0.03
    ref = step64(x_adv, grad, x, alpha, eps, 0, 1).to(dtype)
    cl = lambda t: t.contiguous(memory_format=torch.channels_last)  # noqa: E731
    out = pgd_step(cl(x_adv), cl(grad), cl(x), alpha, eps)
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, ref, atol=STEP_ATOL[dtype], rtol=0)
    torch.testing.assert_close(pgd_step(cl(x_adv), grad, x, alpha, eps), ref, atol=STEP_ATOL[dtype], rtol=0)
    big = torch.zeros(3, 4, 9, 18, dtype=dtype)
    big[..., ::2] = x_adv
    sliced = big[..., ::2]
    assert not sliced.is_contiguous()
    pgd_step_(sliced, grad, x, alpha, eps)
    torch.testing.assert_close(big[..., ::2], ref, atol=STEP_ATOL[dtype], rtol=0)
    assert (big[..., 1::2] == 0).all(), "in-place step wrote outside its view"


def test_step_targeted_negative_alpha_and_custom_range():
    x_adv, grad, x = make((5, 50), torch.float32)
    out = pgd_step(x_adv, grad, x, -0.02, 0.05, lo=0.1, hi=0.9)
    check_step(out, x_adv, grad, x, -0.02, 0.05, 0.1, 0.9, torch.float32)
    assert out.min() >= 0.1 and out.max() <= 0.9


def test_step_stays_in_ball_over_many_steps():
    x = torch.rand(4, 3, 16, 16)
    x_adv = x.clone()
    eps = 8 / 255
    for _ in range(20):
        pgd_step_(x_adv, torch.randn_like(x), x, 2 / 255, eps)
    assert (x_adv - x).abs().max() <= eps + 1e-6
    assert x_adv.min() >= 0 and x_adv.max() <= 1


def test_step_opcheck():
    x_adv, grad, x = make((2, 3, 4, 4), torch.float32)
    torch.library.opcheck(torch.ops.fastnofrost.pgd_step.default, (x_adv, grad, x, 0.01, 0.03, 0.0, 1.0))
    torch.library.opcheck(torch.ops.fastnofrost.pgd_step_.default, (x_adv.clone(), grad, x, 0.01, 0.03, 0.0, 1.0))
    torch.library.opcheck(torch.ops.fastnofrost.pgd_random_start.default, (x, 0.03, 0.0, 1.0, 7),
                          test_utils=("test_schema", "test_faketensor"))


@pytest.mark.parametrize("dtype", DTYPES)
def test_random_start_bounds_and_distribution(dtype):
    eps = 0.1
    x = torch.full((200_000,), 0.5, dtype=dtype)
    with poisoned_outputs():
        out = pgd_random_start(x, eps)
    assert not out.isnan().any()
    d = out.double() - x.double()
    tol = {torch.float64: 1e-12, torch.float32: 1e-7, torch.float16: 5e-4, torch.bfloat16: 4e-3}[dtype]
    assert d.abs().max() <= eps + tol
    # U(-eps, eps): mean 0, variance eps^2 / 3, flat histogram (10 bins, chi-square style bound)
    n = d.numel()
    assert abs(d.mean().item()) < 5 * eps / math.sqrt(3 * n) + tol
    if dtype in (torch.float64, torch.float32):
        assert abs(d.var().item() - eps**2 / 3) < 0.02 * eps**2
        counts = torch.histc(d.float(), bins=10, min=-eps, max=eps)
        expected = n / 10
        chi2 = ((counts - expected) ** 2 / expected).sum().item()
        assert chi2 < 40, f"noise is not uniform: chi2={chi2:.1f} over 9 dof"


def test_random_start_clips_and_is_reproducible():
    x = torch.rand(8, 3, 12, 12)
    x[0] = 0.0
    x[1] = 1.0
    eps = 8 / 255
    torch.manual_seed(123)
    a = pgd_random_start(x, eps)
    torch.manual_seed(123)
    b = pgd_random_start(x, eps)
    assert torch.equal(a, b), "same torch seed must give the same start"
    c = pgd_random_start(x, eps)
    assert not torch.equal(a, c), "next draw must differ"
    assert a.min() >= 0 and a.max() <= 1
    assert (a - x).abs().max() <= eps + 1e-7
    assert (a[0] > 0).float().mean() > 0.3 and (a[1] < 1).float().mean() > 0.3
    assert torch.equal(pgd_random_start(x, eps, seed=5), pgd_random_start(x, eps, seed=5))
    g = torch.Generator().manual_seed(9)
    g2 = torch.Generator().manual_seed(9)
    assert torch.equal(pgd_random_start(x, eps, generator=g), pgd_random_start(x, eps, generator=g2))


def test_random_start_channels_last_keeps_layout():
    x = torch.rand(2, 3, 8, 8).contiguous(memory_format=torch.channels_last)
    out = pgd_random_start(x, 0.05, seed=3)
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert (out - x).abs().max() <= 0.05 + 1e-7


def test_reference_backend():
    x_adv, grad, x = make((3, 40), torch.float32)
    out = pgd_step(x_adv, grad, x, 0.01, 0.03, backend="reference")
    check_step(out, x_adv, grad, x, 0.01, 0.03, 0, 1, torch.float32)
    r = pgd_random_start(x, 0.03, backend="reference")
    assert (r - x).abs().max() <= 0.03 + 1e-7 and r.min() >= 0 and r.max() <= 1


@pytest.mark.parametrize("call, exc, match", [
    (lambda t: pgd_step(t, t, t[:, :2], 0.1, 0.1), ValueError, "same shape"),
    (lambda t: pgd_step(t, t.double(), t, 0.1, 0.1), TypeError, "dtype"),
    (lambda t: pgd_step(t.long(), t.long(), t.long(), 0.1, 0.1), TypeError, "dtype"),
    (lambda t: pgd_step(t, t, t, 0.1, -0.1), ValueError, "eps"),
    (lambda t: pgd_step(t, t, t, 0.1, float("nan")), ValueError, "eps"),
    (lambda t: pgd_step(t, t, t, 0.1, 0.1, lo=1.0, hi=0.0), ValueError, "lo <= hi"),
    (lambda t: pgd_step(t, t, t.to("meta"), 0.1, 0.1), ValueError, "one device"),
    (lambda t: pgd_random_start(t, -1.0), ValueError, "eps"),
    (lambda t: pgd_random_start(t.long(), 0.1), TypeError, "float"),
])
def test_bad_input(call, exc, match):
    with pytest.raises(exc, match=match):
        call(torch.rand(3, 4))


def test_cpp_kernel_checks_direct_calls():
    t = torch.rand(3, 4)
    with pytest.raises(RuntimeError, match="same shape"):
        torch.ops.fastnofrost.pgd_step(t, t, t[:2], 0.1, 0.1, 0.0, 1.0)
    with pytest.raises(RuntimeError, match="seed"):
        torch.ops.fastnofrost.pgd_random_start(t, 0.1, 0.0, 1.0, -3)


# ---- Triton kernels (interpreter on CPU, compiled on a GPU) ----

def _dev():
    return "cuda" if torch.cuda.is_available() else "cpu"


@pytest.mark.parametrize("shape", [(7,), (2, 3, 5, 5), (3, 1000), (5000,)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_triton_step(shape, dtype):
    from fastnofrost.triton_kernels import pgd as tpgd

    x_adv, grad, x = (t.to(_dev()) for t in make(shape, dtype))
    with poisoned_outputs():
        out = tpgd.pgd_step(x_adv, grad, x, 0.01, 0.03, 0.0, 1.0)
    check_step(out.cpu(), x_adv.cpu(), grad.cpu(), x.cpu(), 0.01, 0.03, 0.0, 1.0, dtype)
    inplace = x_adv.clone()
    tpgd.pgd_step_(inplace, grad, x, 0.01, 0.03, 0.0, 1.0)
    assert torch.equal(inplace, out)


def test_triton_step_special_gradients():
    """The Triton step treats NaN / inf / signed-zero gradients as the CPU kernel does."""
    from fastnofrost.triton_kernels import pgd as tpgd

    special = torch.tensor([float("nan"), float("inf"), -float("inf"), -0.0, 0.0, 3.0, -3.0])
    x_adv, _, x = make((7 * 9,), torch.float32)
    grad = special.repeat(9)
    out = tpgd.pgd_step(x_adv.to(_dev()), grad.to(_dev()), x.to(_dev()), 0.01, 0.03, 0.0, 1.0).cpu()
    torch.testing.assert_close(out, torch.ops.fastnofrost.pgd_step(x_adv, grad, x, 0.01, 0.03, 0.0, 1.0),
                               atol=1e-6, rtol=0, equal_nan=True)
    assert out.isnan().sum() == 9


def test_triton_layouts():
    from fastnofrost.triton_kernels import pgd as tpgd

    x_adv, grad, x = (t.to(_dev()) for t in make((2, 3, 6, 6), torch.float32))
    ref = step64(x_adv.cpu(), grad.cpu(), x.cpu(), 0.01, 0.03, 0, 1).float()
    cl = x_adv.contiguous(memory_format=torch.channels_last)
    out = tpgd.pgd_step(cl, grad, x, 0.01, 0.03, 0.0, 1.0)
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out.cpu(), ref, atol=1e-6, rtol=0)
    big = torch.zeros(2, 3, 6, 12, device=_dev())
    big[..., ::2] = x_adv
    tpgd.pgd_step_(big[..., ::2], grad, x, 0.01, 0.03, 0.0, 1.0)
    torch.testing.assert_close(big[..., ::2].cpu(), ref, atol=1e-6, rtol=0)
    assert (big[..., 1::2] == 0).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_triton_random_start_equals_cpu_kernel(dtype):
    """Same seed, same Philox stream: the CUDA (Triton) and CPU starts agree element-wise."""
    from fastnofrost.triton_kernels import pgd as tpgd

    x = torch.rand(3, 3, 17, 17).to(dtype)
    seed = int(torch.randint(0, 2**31 - 1, (1,)))
    a = tpgd.pgd_random_start(x.to(_dev()), 0.05, 0.0, 1.0, seed).cpu()
    b = torch.ops.fastnofrost.pgd_random_start(x, 0.05, 0.0, 1.0, seed)
    # one rounding of slack: the GPU may contract x + noise * eps into an FMA
    torch.testing.assert_close(a, b, atol=STEP_ATOL[dtype], rtol=0)
    assert (a.double() - x.double()).abs().max() <= 0.05 + STEP_ATOL[dtype]

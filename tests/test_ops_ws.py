"""Scaled weight standardization op: C++ CPU kernel, Triton kernel (interpreter on CPU),
autograd, fake kernel, bad input -- all against float64 math."""
import pytest
import torch

import fastnofrost  # noqa: F401
from fastnofrost.ops import scaled_weight_standardization as ws

from helpers import assert_close, poisoned_outputs

# (C_out, C_in / groups, kh, kw): 1x1, 3x3, 7x7 stem, grouped, depthwise, fan_in 45,
# C_out = 1, large C_out, fan_in 4608 (> one Triton block).
SHAPES = [(64, 32, 1, 1), (32, 16, 3, 3), (16, 3, 7, 7), (32, 4, 3, 3), (32, 1, 3, 3),
          (24, 5, 3, 3), (1, 16, 3, 3), (2048, 8, 1, 1), (8, 512, 3, 3)]
# The Triton interpreter runs one Python program per row: keep its shapes small.
TRITON_SHAPES = [(64, 32, 1, 1), (16, 3, 7, 7), (32, 1, 3, 3), (24, 5, 3, 3), (1, 16, 3, 3),
                 (256, 8, 1, 1), (4, 512, 3, 3)]
DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def ws64_graph(w, gain, scale, eps):
    """Float64 math, differentiable, written out (independent of the op and the reference)."""
    flat = w.reshape(w.shape[0], -1)
    mean = flat.mean(1, keepdim=True)
    var = ((flat - mean) ** 2).mean(1, keepdim=True)
    out = (flat - mean) / torch.sqrt(var + eps) * scale
    if gain is not None:
        out = out * gain.reshape(-1, 1)
    return out.reshape(w.shape)


def ws64(w, gain, scale, eps):
    """Float64 math on the (already rounded) inputs."""
    return ws64_graph(w.detach().double(), gain.detach().double() if gain is not None else None, scale, eps)


def make(shape, dtype, with_gain=True):
    w = (torch.randn(shape) * 0.3 + 0.05).to(dtype)
    gain = (torch.rand(shape[0], 1, 1, 1) + 0.5).to(dtype) if with_gain else None
    scale = 1.7139588594436646 * (w[0].numel() ** -0.5)
    return w, gain, scale


def grads64(w, gain, scale, eps, grad_out):
    wd = w.detach().double().requires_grad_()
    gd = gain.detach().double().requires_grad_() if gain is not None else None
    ws64_graph(wd, gd, scale, eps).backward(grad_out.double())
    return wd.grad, (gd.grad if gd is not None else None)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("with_gain", [True, False])
def test_forward_cpu(shape, dtype, with_gain):
    w, gain, scale = make(shape, dtype, with_gain)
    with poisoned_outputs():
        out, mean, rstd = torch.ops.fastnofrost.ws_forward(w, gain, scale, 1e-5)
    assert out.shape == w.shape and out.dtype == dtype
    assert_close(out, ws64(w, gain, scale, 1e-5), dtype, "w_hat")
    w64 = w.double().reshape(shape[0], -1)
    # Statistics are float32 sums over up to 4608 elements: judge the mean on the row's scale.
    std = w64.std(1, unbiased=False)
    torch.testing.assert_close(mean.double(), w64.mean(1), atol=5e-5 * std.max().item() + 1e-7, rtol=1e-5)
    torch.testing.assert_close(rstd.double(), (w64.var(1, unbiased=False) + 1e-5).rsqrt(), atol=1e-5, rtol=5e-5)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("with_gain", [True, False])
def test_backward_cpu(shape, dtype, with_gain):
    w, gain, scale = make(shape, dtype, with_gain)
    grad_out = torch.randn(shape).to(dtype)
    ref_w, ref_g = grads64(w, gain, scale, 1e-5, grad_out)
    wq = w.clone().requires_grad_()
    gq = gain.clone().requires_grad_() if gain is not None else None
    with poisoned_outputs():
        ws(wq, gq, scale, 1e-5).backward(grad_out)
    # Gradients are sums over the fan-in: scale tolerances by the reference's magnitude.
    tol = {torch.float32: 1e-4, torch.bfloat16: 3e-2, torch.float16: 3e-3}[dtype]
    torch.testing.assert_close(wq.grad.double(), ref_w, atol=tol * ref_w.abs().max().item(), rtol=tol)
    if gain is not None:
        assert gq.grad.shape == gain.shape and gq.grad.dtype == dtype
        torch.testing.assert_close(gq.grad.double(), ref_g, atol=tol * ref_g.abs().max().item(), rtol=tol)


@pytest.mark.parametrize("with_gain", [True, False])
@pytest.mark.parametrize("shape", [(3, 2, 3, 3), (1, 5, 1, 1), (4, 7)])
def test_gradcheck_float64(shape, with_gain):
    w = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    args = [w]
    if with_gain:
        args.append((torch.rand(shape[0], 1, 1, 1, dtype=torch.float64) + 0.5).requires_grad_())
    fn = (lambda w, g: ws(w, g, 0.7, 1e-3)) if with_gain else (lambda w: ws(w, None, 0.7, 1e-3))
    assert torch.autograd.gradcheck(fn, tuple(args), eps=1e-6, atol=1e-7)


def test_opcheck():
    """torch.library's own consistency checks (schema, fake kernel, autograd registration)."""
    w, gain, scale = make((8, 4, 3, 3), torch.float32)
    torch.library.opcheck(torch.ops.fastnofrost.ws_forward.default, (w.requires_grad_(), gain, scale, 1e-5))
    mean = w.detach().reshape(8, -1).mean(1)
    rstd = (w.detach().reshape(8, -1).var(1, unbiased=False) + 1e-5).rsqrt()
    torch.library.opcheck(torch.ops.fastnofrost.ws_backward.default,
                          (torch.randn_like(w), w.detach(), gain, mean, rstd, scale))


def test_reference_backend_matches():
    w, gain, scale = make((16, 8, 3, 3), torch.float32)
    assert_close(ws(w, gain, scale, 1e-5, backend="reference"), ws64(w, gain, scale, 1e-5), torch.float32)
    with pytest.raises(ValueError, match="backend"):
        ws(w, gain, scale, 1e-5, backend="fast")


def test_float64_weights_keep_float64_stats():
    w = torch.randn(4, 3, 3, 3, dtype=torch.float64)
    out, mean, rstd = torch.ops.fastnofrost.ws_forward(w, None, 1.0, 1e-6)
    assert mean.dtype == rstd.dtype == torch.float64
    torch.testing.assert_close(out, ws64(w, None, 1.0, 1e-6), atol=1e-12, rtol=1e-12)


def test_non_contiguous_weight_handled():
    base = torch.randn(3, 3, 16, 8)
    w = base.permute(3, 2, 0, 1)  # (8, 16, 3, 3), non-contiguous
    assert not w.is_contiguous()
    assert_close(ws(w, None, 0.5, 1e-5), ws64(w, None, 0.5, 1e-5), torch.float32)
    leaf = base.clone().requires_grad_()
    g = torch.randn(8, 16, 3, 3).transpose(2, 3)  # a non-contiguous incoming gradient too
    ws(leaf.permute(3, 2, 0, 1), None, 0.5, 1e-5).backward(g)
    ref, _ = grads64(w, None, 0.5, 1e-5, g)
    torch.testing.assert_close(leaf.grad.permute(3, 2, 0, 1).double(), ref, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("bad, exc, match", [
    (lambda: ws(torch.randint(0, 5, (4, 3, 3, 3)), None, 1.0, 1e-5), TypeError, "float"),
    (lambda: ws(torch.randn(8), None, 1.0, 1e-5), ValueError, "C_out"),
    (lambda: ws(torch.randn(0, 3, 3, 3), None, 1.0, 1e-5), ValueError, "non-empty"),
    (lambda: ws(torch.randn(4, 3, 3, 3), None, 1.0, 0.0), ValueError, "eps"),
    (lambda: ws(torch.randn(4, 3, 3, 3), None, 1.0, -1e-5), ValueError, "eps"),
    (lambda: ws(torch.randn(4, 3, 3, 3), torch.ones(5), 1.0, 1e-5), ValueError, "gain"),
    (lambda: ws(torch.randn(4, 3, 3, 3), torch.ones(4, dtype=torch.float64), 1.0, 1e-5), TypeError, "gain"),
    (lambda: ws(torch.randn(4, 3, 3, 3), torch.ones(4, device="meta"), 1.0, 1e-5), TypeError, "gain"),
])
def test_bad_input(bad, exc, match):
    with pytest.raises(exc, match=match):
        bad()


def test_cpp_kernel_checks_direct_calls():
    """The op itself (bypassing the Python wrapper) rejects bad input with a clear message."""
    with pytest.raises(RuntimeError, match="eps must be > 0"):
        torch.ops.fastnofrost.ws_forward(torch.randn(4, 3), None, 1.0, 0.0)
    with pytest.raises(RuntimeError, match="float64/float32/bfloat16/float16"):
        torch.ops.fastnofrost.ws_forward(torch.ones(4, 3, dtype=torch.int32), None, 1.0, 1e-5)


# ---- Triton kernels, run by the interpreter on CPU tensors (compiled for real on a GPU) ----

def _triton_device():
    return "cuda" if torch.cuda.is_available() else "cpu"


@pytest.mark.parametrize("shape", TRITON_SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_triton_forward_backward(shape, dtype):
    from fastnofrost.triton_kernels import ws as tws

    dev = _triton_device()
    w, gain, scale = make(shape, dtype)
    w, gain = w.to(dev), gain.to(dev)
    with poisoned_outputs():
        out, mean, rstd = tws.ws_forward(w, gain, scale, 1e-5)
    assert_close(out.cpu(), ws64(w.cpu(), gain.cpu(), scale, 1e-5), dtype, "triton w_hat")
    grad_out = torch.randn(shape).to(dtype).to(dev)
    with poisoned_outputs():
        dw, dg = tws.ws_backward(grad_out, w, gain, mean, rstd, scale)
    ref_w, ref_g = grads64(w.cpu(), gain.cpu(), scale, 1e-5, grad_out.cpu())
    tol = {torch.float32: 1e-4, torch.bfloat16: 3e-2, torch.float16: 3e-3}[dtype]
    torch.testing.assert_close(dw.cpu().double(), ref_w, atol=tol * ref_w.abs().max().item(), rtol=tol)
    torch.testing.assert_close(dg.cpu().double(), ref_g.reshape(-1), atol=tol * ref_g.abs().max().item(), rtol=tol)


def test_triton_matches_cpu_kernel_float64():
    from fastnofrost.triton_kernels import ws as tws

    w = torch.randn(6, 5, 3, 3, dtype=torch.float64)
    gain = torch.rand(6, 1, 1, 1, dtype=torch.float64)
    a = tws.ws_forward(w.to(_triton_device()), gain.to(_triton_device()), 0.3, 1e-5)
    b = torch.ops.fastnofrost.ws_forward(w, gain, 0.3, 1e-5)
    # Triton passes Python float arguments (scale, eps) as float32: on CUDA a float64 weight is
    # standardized to float64 except for that one float32 rounding of the scale (~1e-8 relative).
    tol = 1e-12 if a[0].device.type == "cpu" else 1e-7
    for x, y in zip(a, b):
        torch.testing.assert_close(x.cpu(), y, atol=tol, rtol=tol)


@pytest.mark.parametrize("offset", [0.0, 3.0, -50.0])
def test_large_mean_small_variance(offset):
    """A mean far from zero must not cancel the variance (one-pass moments are shifted)."""
    std = 1e-2
    w = offset + std * torch.randn(16, 4608)
    ref = ws64(w, None, 1.0, 1e-8)
    # (w - mean) in float32 is exact only to an ulp of |offset|: that bounds any algorithm.
    # A naive unshifted E[w^2] - E[w]^2 would be off by O(1) here.
    atol = 1e-5 + 4 * torch.finfo(torch.float32).eps * abs(offset) / std
    from fastnofrost.triton_kernels import ws as tws

    for out in (ws(w, None, 1.0, 1e-8), tws.ws_forward(w.to(_triton_device()), None, 1.0, 1e-8)[0].cpu()):
        torch.testing.assert_close(out.double(), ref, atol=atol, rtol=1e-4)
        assert abs(out.double().std(1, unbiased=False).mean().item() - 1) < 1e-3

"""Grouped scaled weight standardization op: C++ CPU kernel, Triton kernel (interpreter on CPU),
autograd, fake kernel, bad input -- against float64 math and against the per-layer op."""
import pytest
import torch

import fastnofrost  # noqa: F401
from fastnofrost.ops import grouped_scaled_weight_standardization as gws
from fastnofrost.ops import scaled_weight_standardization as ws

from helpers import assert_close, poisoned_outputs
from test_ops_ws import grads64, ws64

# A mixed list: 1x1, 3x3, the 7x7 stem, grouped, depthwise, C_out = 1, fan_in 45 (not a power
# of two), fan_in 4608 (more than one Triton block), and a large C_out.
SHAPES = [(64, 32, 1, 1), (32, 16, 3, 3), (16, 3, 7, 7), (32, 4, 3, 3), (32, 1, 3, 3), (1, 16, 3, 3),
          (24, 5, 3, 3), (8, 512, 3, 3), (512, 8, 1, 1)]
# The Triton interpreter runs one Python program per row: keep its list small.
TRITON_SHAPES = [(16, 8, 1, 1), (8, 4, 3, 3), (4, 3, 7, 7), (8, 1, 3, 3), (1, 16, 3, 3), (6, 5, 3, 3),
                 (2, 512, 3, 3)]
DTYPES = [torch.float64, torch.float32, torch.bfloat16, torch.float16]
GRAD_TOL = {torch.float64: 1e-10, torch.float32: 1e-4, torch.bfloat16: 3e-2, torch.float16: 3e-3}


def group(shapes, dtype, gains=True, device="cpu"):
    """Weights with means off zero, every other one with a gain (all, with gains="all")."""
    weights = [(torch.randn(s, dtype=torch.float64) * 0.3 + 0.05).to(dtype).to(device) for s in shapes]
    gain = [(torch.rand(s[0], 1, 1, 1, dtype=torch.float64) + 0.5).to(dtype).to(device)
            if gains == "all" or (gains and i % 2 == 0) else None for i, s in enumerate(shapes)]
    scales = [1.7139588594436646 * (w[0].numel() ** -0.5) for w in weights]
    eps = [1e-5 if i % 3 else 1e-4 for i in range(len(shapes))]
    return weights, gain, scales, eps


def leaves(weights, gains):
    ws_ = [w.clone().requires_grad_() for w in weights]
    gs = [None if g is None else g.clone().requires_grad_() for g in gains]
    return ws_, gs


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("gains", ["all", True, False])
def test_forward_backward_against_float64_and_per_layer(dtype, gains):
    weights, gain, scales, eps = group(SHAPES, dtype, gains)
    if dtype == torch.float32:  # more than kStreamBytes: the float32 kernels' non-temporal stores
        weights.append(torch.randn(1024, 64, 3, 3) * 0.3)
        gain.append(torch.rand(1024, 1, 1, 1) + 0.5)
        scales.append(0.02)
        eps.append(1e-5)
    ws_, gs = leaves(weights, gain)
    with poisoned_outputs():
        out = gws(ws_, gs, scales, eps)
    per_layer = [ws(w, g, s, e) for w, g, s, e in zip(weights, gain, scales, eps)]
    grads_out = [torch.randn(w.shape, dtype=torch.float64).to(dtype) for w in weights]
    with poisoned_outputs():
        torch.autograd.backward(out, grads_out)
    assert len(out) == len(weights)
    for i, (o, w, g, s, e) in enumerate(zip(out, weights, gain, scales, eps)):
        assert o.shape == w.shape and o.dtype == dtype
        assert_close(o, ws64(w, g, s, e), dtype, f"w_hat {i}")
        # the same row math as the per-layer op (the compiler may sum a row in another order)
        assert_close(o.detach(), per_layer[i], dtype, f"weight {i} against the per-layer op")
        ref_w, ref_g = grads64(w, g, s, e, grads_out[i])
        tol = GRAD_TOL[dtype]
        torch.testing.assert_close(ws_[i].grad.double(), ref_w, atol=tol * ref_w.abs().max().item(), rtol=tol)
        if g is not None:
            assert gs[i].grad.shape == g.shape and gs[i].grad.dtype == dtype
            torch.testing.assert_close(gs[i].grad.double(), ref_g, atol=tol * ref_g.abs().max().item(), rtol=tol)


def test_statistics_cover_every_row_in_order():
    weights, gain, scales, eps = group(SHAPES, torch.float32)
    flat, mean, rstd = torch.ops.fastnofrost.ws_grouped_forward(
        weights, [torch.empty(0) if g is None else g for g in gain], scales, eps)
    assert flat.numel() == sum(w.numel() for w in weights) and mean.numel() == sum(w.shape[0] for w in weights)
    rows = torch.cat([w.double().reshape(w.shape[0], -1).mean(1) for w in weights])
    torch.testing.assert_close(mean.double(), rows, atol=1e-6, rtol=1e-5)
    f64 = [1.0 / (w.double().reshape(w.shape[0], -1).var(1, unbiased=False) + e).sqrt() for w, e in zip(weights, eps)]
    torch.testing.assert_close(rstd.double(), torch.cat(f64), atol=1e-5, rtol=5e-5)


@pytest.mark.parametrize("gains", [True, False])
def test_gradcheck_float64(gains):
    weights, gain, scales, eps = group([(3, 2, 3, 3), (1, 5, 1, 1), (4, 7), (2, 1, 3, 3)], torch.float64, gains)
    ws_, gs = leaves(weights, gain)
    present = [g for g in gs if g is not None]

    def fn(*args):
        it = iter(args[len(ws_):])
        return tuple(gws(list(args[:len(ws_)]), [None if g is None else next(it) for g in gs], scales, eps))

    assert torch.autograd.gradcheck(fn, tuple(ws_ + present), eps=1e-6, atol=1e-7)


def test_channels_last_weights_read_in_place():
    """A channels_last weight is row-dense: read without a copy, its w_hat and gradient keep
    its strides, and the values equal float64 math."""
    weights = [torch.randn(8, 4, 3, 3, dtype=torch.float64).to(memory_format=torch.channels_last),
               torch.randn(6, 3, 1, 1, dtype=torch.float64)]
    ws_ = [w.clone(memory_format=torch.preserve_format).requires_grad_() for w in weights]
    out = gws(ws_, None, [0.5, 0.7], 1e-5)
    assert out[0].stride() == weights[0].stride()
    for o, w, s in zip(out, weights, [0.5, 0.7]):
        torch.testing.assert_close(o.detach(), ws64(w, None, s, 1e-5), atol=1e-12, rtol=1e-12)
    g = [torch.randn(w.shape, dtype=torch.float64) for w in weights]
    torch.autograd.backward(out, g)
    for leaf, w, s, gi in zip(ws_, weights, [0.5, 0.7], g):
        torch.testing.assert_close(leaf.grad, grads64(w, None, s, 1e-5, gi)[0], atol=1e-12, rtol=1e-10)


def test_non_row_dense_weight_is_read_through_a_copy():
    base = torch.randn(3, 3, 16, 8, dtype=torch.float64, requires_grad=True)
    w = base.permute(3, 2, 0, 1)  # (8, 16, 3, 3): an output channel is not one dense block
    out = gws([w, torch.randn(4, 2, dtype=torch.float64)], None, 0.5, 1e-5)
    torch.testing.assert_close(out[0], ws64(w, None, 0.5, 1e-5), atol=1e-12, rtol=1e-12)
    g = torch.randn(w.shape, dtype=torch.float64)
    out[0].backward(g)
    torch.testing.assert_close(base.grad.permute(3, 2, 0, 1), grads64(w, None, 0.5, 1e-5, g)[0], atol=1e-12,
                               rtol=1e-10)
    w = w.detach()
    with pytest.raises(RuntimeError, match="not row-dense"):  # the op itself refuses them
        torch.ops.fastnofrost.ws_grouped_forward([w], [torch.empty(0, dtype=w.dtype)], [0.5], [1e-5])


def test_opcheck():
    """torch.library's own consistency checks (schema, fake kernel, autograd registration)."""
    weights, gain, scales, eps = group([(8, 4, 3, 3), (4, 8, 1, 1), (2, 3)], torch.float32)
    ws_ = [w.requires_grad_() for w in weights]
    gs = [torch.empty(0) if g is None else g.requires_grad_() for g in gain]
    torch.library.opcheck(torch.ops.fastnofrost.ws_grouped_forward.default, (ws_, gs, scales, eps))
    _, mean, rstd = torch.ops.fastnofrost.ws_grouped_forward([w.detach() for w in ws_], gs, scales, eps)
    grads = [torch.randn(w.shape) for w in weights]
    torch.library.opcheck(torch.ops.fastnofrost.ws_grouped_backward.default,
                          (grads, [w.detach() for w in ws_], [g.detach() for g in gs], mean, rstd, scales))


def test_reference_backend_is_the_per_layer_reference():
    weights, gain, scales, eps = group(SHAPES[:4], torch.float32)
    for a, w, g, s, e in zip(gws(weights, gain, scales, eps, backend="reference"), weights, gain, scales, eps):
        assert_close(a, ws64(w, g, s, e), torch.float32)
    with pytest.raises(ValueError, match="backend"):
        gws(weights, gain, scales, eps, backend="fast")


W = torch.randn(4, 3, 3, 3)


@pytest.mark.parametrize("bad, exc, match", [
    (lambda: gws([], None), ValueError, "non-empty list"),
    (lambda: gws(W, None), ValueError, "non-empty list"),
    (lambda: gws([W, W.double()], None), TypeError, "one dtype and device"),
    (lambda: gws([W, W.to("meta")], None), TypeError, "one dtype and device"),
    (lambda: gws([W, W], [None, torch.ones(5)]), ValueError, "gain 1 must have C_out = 4"),
    (lambda: gws([W], [torch.ones(4, dtype=torch.float64)]), TypeError, "gain 0"),
    (lambda: gws([W, W], None, eps=[1e-5, 0.0]), ValueError, "eps must be > 0"),
    (lambda: gws([W], None, eps=-1.0), ValueError, "eps must be > 0"),
    (lambda: gws([W, W], None, scales=[1.0]), ValueError, "one entry per weight"),
    (lambda: gws([torch.randint(0, 3, (4, 3))], None), TypeError, "float64/float32"),
    (lambda: gws([torch.randn(0, 3)], None), ValueError, "non-empty"),
])
def test_bad_input(bad, exc, match):
    with pytest.raises(exc, match=match):
        bad()


def test_cpp_kernel_checks_direct_calls():
    """The op itself (bypassing the Python wrapper) rejects bad groups with a clear message."""
    none = torch.empty(0)
    with pytest.raises(RuntimeError, match="one dtype and device"):
        torch.ops.fastnofrost.ws_grouped_forward([W, W.double()], [none, none.double()], [1.0, 1.0], [1e-5, 1e-5])
    with pytest.raises(RuntimeError, match="eps must be > 0"):
        torch.ops.fastnofrost.ws_grouped_forward([W], [none], [1.0], [0.0])
    with pytest.raises(RuntimeError, match="gain must have C_out = 4"):
        torch.ops.fastnofrost.ws_grouped_forward([W], [torch.ones(3)], [1.0], [1e-5])
    with pytest.raises(RuntimeError, match="one entry per weight"):
        torch.ops.fastnofrost.ws_grouped_forward([W, W], [none], [1.0], [1e-5])


# ---- Triton kernels, run by the interpreter on CPU tensors (compiled for real on a GPU) ----

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("gains", ["all", True, False])
def test_triton_forward_backward(dtype, gains):
    from fastnofrost.triton_kernels import ws_grouped as tws

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    weights, gain, scales, eps = group(TRITON_SHAPES, dtype, gains, device=dev)
    gs = [w.new_empty(0) if g is None else g for w, g in zip(weights, gain)]
    with poisoned_outputs():
        flat, mean, rstd = tws.forward(weights, gs, scales, eps)
    sizes = [w.numel() for w in weights]
    for i, (o, w, g, s, e) in enumerate(zip(flat.split(sizes), weights, gain, scales, eps)):
        ref = ws64(w.cpu(), None if g is None else g.cpu(), s, e)
        # Triton passes the float64 table of scales / eps as it is; on CUDA float64 math keeps 1e-10
        assert_close(o.cpu().view(w.shape), ref, dtype if dtype != torch.float64 else torch.float32, f"w_hat {i}")
    grads_out = [torch.randn(w.shape, dtype=torch.float64).to(dtype) for w in weights]
    with poisoned_outputs():
        dw, dgain = tws.backward([g.to(dev) for g in grads_out], weights, gs, mean, rstd, scales)
    rows = [w.shape[0] for w in weights]
    for i, (a, b, w, g, s, e, go) in enumerate(zip(dw.split(sizes), dgain.split(rows), weights, gain, scales, eps,
                                                 grads_out)):
        ref_w, ref_g = grads64(w.cpu(), None if g is None else g.cpu(), s, e, go)
        tol = max(GRAD_TOL[dtype], 1e-6)
        torch.testing.assert_close(a.cpu().double().view(w.shape), ref_w, atol=tol * ref_w.abs().max().item(), rtol=tol)
        if g is not None:
            torch.testing.assert_close(b.cpu().double(), ref_g.reshape(-1), atol=tol * ref_g.abs().max().item(),
                                       rtol=tol)


def test_triton_launches_follow_the_row_lengths():
    """One launch per block size; each row in the launch whose BLOCK is the power of two at or
    above its length (at most 4096), exactly once (the outputs above are poisoned: a row left
    out fails there)."""
    from fastnofrost.triton_kernels import ws_grouped as tws

    weights, gain, scales, eps = group(TRITON_SHAPES, torch.float32, True)
    gs = [w.new_empty(0) if g is None else g for w, g in zip(weights, gain)]
    launches = tws._group(weights, gs, scales, eps)[3]
    block_of_row = {}
    for block, ids, count in launches:
        assert len(ids) == count
        block_of_row.update({int(r): block for r in ids})
    lengths = [w[0].numel() for w in weights for _ in range(w.shape[0])]  # per row, in order
    assert len(block_of_row) == len(lengths) == sum(count for _, _, count in launches)
    assert [block_of_row[r] for r in range(len(lengths))] == [min(1 << (n - 1).bit_length(), 4096) for n in lengths]
    assert sorted(b for b, _, _ in launches) == sorted({block_of_row[r] for r in block_of_row})  # one per size


def test_backward_reads_gradients_of_another_dtype_or_layout():
    """Autocast hands the backward bf16 gradients of float32 weights, and a conv may hand a
    gradient in another memory order: the kernels read the first as they are (both the C++ and
    the Triton kernel) and convert the second alone; either way the gradient is the one of the
    same values given in the weights' dtype and layout."""
    from fastnofrost.triton_kernels import ws_grouped as tws

    weights, gain, scales, eps = group(TRITON_SHAPES, torch.float32, True)
    gs = [w.new_empty(0) if g is None else g for w, g in zip(weights, gain)]
    _, mean, rstd = torch.ops.fastnofrost.ws_grouped_forward(weights, gs, scales, eps)
    low = [torch.randn(w.shape).to(torch.bfloat16) for w in weights]
    expected = torch.ops.fastnofrost.ws_grouped_backward([g.float() for g in low], weights, gs, mean, rstd, scales)
    mixed = [g.to(memory_format=torch.channels_last) if g.dim() == 4 and g.shape[1] > 1 and g.shape[2] > 1 else g
             for g in low]
    assert any(not g.is_contiguous() for g in mixed)
    for got in (torch.ops.fastnofrost.ws_grouped_backward(mixed, weights, gs, mean, rstd, scales),
                tws.backward(low, weights, gs, mean, rstd, scales)):
        for a, b in zip(got, expected):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    with pytest.raises(RuntimeError, match="grads must have one entry per weight"):
        torch.ops.fastnofrost.ws_grouped_backward(low[:-1], weights, gs, mean, rstd, scales)
    with pytest.raises(RuntimeError, match="grad 1 must have its weight's shape"):
        torch.ops.fastnofrost.ws_grouped_backward([low[0], low[0]] + low[2:], weights, gs, mean, rstd, scales)


def test_triton_equals_cpu_kernel_in_float64():
    from fastnofrost.triton_kernels import ws_grouped as tws

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    weights, gain, scales, eps = group(TRITON_SHAPES, torch.float64, True)
    gs = [w.new_empty(0) if g is None else g for w, g in zip(weights, gain)]
    a = tws.forward([w.to(dev) for w in weights], [g.to(dev) for g in gs], scales, eps)
    b = torch.ops.fastnofrost.ws_grouped_forward(weights, gs, scales, eps)
    for x, y in zip(a, b):
        torch.testing.assert_close(x.cpu(), y, atol=1e-12, rtol=1e-12)

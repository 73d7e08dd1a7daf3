"""CUDA dispatch of the fused ops (Triton compiled for real) against the CPU kernels.
Skipped without a GPU; run by benchmarks/gpu_suite.sh."""
import pytest
import torch

from fastnofrost.nn import ScaledStdConv2d, frozen_weights
from fastnofrost.ops import pgd_random_start, pgd_step, pgd_step_, scaled_weight_standardization as ws

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("shape", [(64, 64, 3, 3), (2048, 512, 1, 1), (256, 2048, 1, 1), (64, 3, 7, 7), (1, 4608, 1, 1)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_ws_cuda_matches_cpu(shape, dtype):
    w = torch.randn(shape).to(dtype)
    gain = (torch.rand(shape[0], 1, 1, 1) + 0.5).to(dtype)
    wc, gc = w.cuda().requires_grad_(), gain.cuda().requires_grad_()
    wh, gh = w.clone().requires_grad_(), gain.clone().requires_grad_()
    out_c, out_h = ws(wc, gc, 0.2, 1e-5), ws(wh, gh, 0.2, 1e-5)
    tol = dict(atol=1e-5, rtol=1e-4) if dtype == torch.float32 else dict(atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(out_c.cpu().float(), out_h.float(), **tol)
    g = torch.randn(shape).to(dtype)
    out_c.backward(g.cuda())
    out_h.backward(g)
    for a, b in ((wc.grad, wh.grad), (gc.grad, gh.grad)):
        scale = b.float().abs().max().item()
        torch.testing.assert_close(a.cpu().float(), b.float(), atol=tol["atol"] * scale + 1e-6, rtol=tol["rtol"])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_pgd_cuda_matches_cpu(dtype):
    x = torch.rand(64, 3, 224, 224).to(dtype)
    x_adv = (x.float() + 0.01).clamp(0, 1).to(dtype)
    g = torch.randn_like(x)
    out_c = pgd_step(x_adv.cuda(), g.cuda(), x.cuda(), 2 / 255, 8 / 255)
    torch.testing.assert_close(out_c.cpu(), pgd_step(x_adv, g, x, 2 / 255, 8 / 255), atol=1e-2 if dtype != torch.float32 else 1e-6, rtol=0)
    xa = x_adv.cuda()
    pgd_step_(xa, g.cuda(), x.cuda(), 2 / 255, 8 / 255)
    assert torch.equal(xa, out_c)
    r_c = pgd_random_start(x.cuda(), 8 / 255, seed=11).cpu()
    r_h = pgd_random_start(x, 8 / 255, seed=11)
    torch.testing.assert_close(r_c, r_h, atol=1e-6 if dtype == torch.float32 else 1e-2, rtol=0)


def test_frozen_and_compile_on_cuda():
    conv = ScaledStdConv2d(16, 32, 3, gamma=1.7139588594436646, eps=1e-5).cuda()
    x = torch.rand(8, 16, 32, 32, device="cuda")
    ref = conv(x)
    with frozen_weights(), torch.autocast("cuda", dtype=torch.bfloat16):
        y = conv(x)
    torch.testing.assert_close(y.float(), ref, atol=5e-2, rtol=5e-2)
    compiled = torch.compile(conv, fullgraph=True)
    torch.testing.assert_close(compiled(x), ref, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_grouped_ws_cuda_matches_cpu_and_channels_last(dtype):
    """The grouped Triton kernels against the grouped CPU kernels over the 53 weight shapes of a
    ResNet-50 (contiguous and channels_last), forward and backward."""
    from fastnofrost.ops import grouped_scaled_weight_standardization as gws

    shapes = [(64, 3, 7, 7)] + [(256, 64, 1, 1), (64, 64, 3, 3), (2048, 512, 1, 1), (512, 512, 3, 3)] * 13
    host = [torch.randn(s).to(dtype) for s in shapes]
    gains = [(torch.rand(s[0], 1, 1, 1) + 0.5).to(dtype) for s in shapes]
    scales = [0.2] * len(shapes)
    tol = dict(atol=1e-5, rtol=1e-4) if dtype == torch.float32 else dict(atol=2e-2, rtol=2e-2)
    for layout in (torch.contiguous_format, torch.channels_last):
        wc = [w.cuda().to(memory_format=layout).requires_grad_() for w in host]
        wh = [w.clone().requires_grad_() for w in host]
        out_c, out_h = gws(wc, [g.cuda() for g in gains], scales, 1e-5), gws(wh, gains, scales, 1e-5)
        grads = [torch.randn(s).to(dtype) for s in shapes]
        torch.autograd.backward(out_c, [g.cuda() for g in grads])
        torch.autograd.backward(out_h, grads)
        for a, b, ga, gb in zip(out_c, out_h, wc, wh):
            torch.testing.assert_close(a.detach().cpu().float(), b.detach().float(), **tol)
            scale = gb.grad.float().abs().max().item()
            torch.testing.assert_close(ga.grad.cpu().float(), gb.grad.float(), atol=tol["atol"] * scale + 1e-6,
                                       rtol=tol["rtol"])


def test_grouped_step_on_cuda_has_no_sync_and_equals_per_layer():
    """A NoFrost step of a grouped nf_resnet26_small on CUDA: no host sync after warm-up (the
    address table is cached), and the per-layer path's loss and gradients (fp32; a sign step
    on a near-zero input gradient may flip between the two paths' roundings, hence the
    tolerance: the exact comparison is tests/test_grouped.py's, in float64)."""
    import copy

    from fastnofrost.attacks import PGD
    from fastnofrost.methods import build_method
    from fastnofrost.models import create_model
    from fastnofrost.nn import group_weights

    torch.manual_seed(0)
    per_layer = create_model("nf_resnet26_small", num_classes=10, width=0.25).cuda().train()
    grouped = copy.deepcopy(per_layer)
    group = group_weights(grouped)
    x, y = torch.rand(16, 3, 32, 32, device="cuda"), torch.randint(0, 10, (16,), device="cuda")
    method = build_method("nofrost", PGD(eps=8 / 255, steps=3))

    def step(model, group=None):
        model.zero_grad(set_to_none=True)
        torch.manual_seed(1)
        with group.step() if group is not None else torch.enable_grad():
            out = method(model, model, x, y)
            out.loss.backward()
        return out.loss.detach()

    step(grouped, group)  # warm-up: Triton compiles, the address tables are built
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        loss_b = step(grouped, group)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    loss_a = step(per_layer)
    torch.testing.assert_close(loss_b, loss_a, rtol=1e-3, atol=1e-5)
    for p, q in zip(per_layer.parameters(), grouped.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-2, atol=1e-2 * p.grad.abs().max().item() + 1e-7)

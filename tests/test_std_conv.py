"""fastnofrost.nn.ScaledStdConv2d / StdConv2d against timm's layers, the frozen-weights
context, torch.compile without graph breaks, and the missing-extension message."""
import subprocess
import sys

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from fastnofrost.nn import ScaledStdConv2d, StdConv2d, frozen_weights
from fastnofrost.ops import pgd_step, pgd_step_

from helpers import CountOps

timm_std_conv = pytest.importorskip("timm.layers.std_conv", reason="timm (dev extra) is needed for parity tests")

SCALED_CONFIGS = [
    dict(in_channels=8, out_channels=16, kernel_size=3),
    dict(in_channels=8, out_channels=16, kernel_size=3, stride=2, gamma=1.7139588594436646, eps=1e-5),
    dict(in_channels=3, out_channels=12, kernel_size=7, stride=2, bias=False),
    dict(in_channels=8, out_channels=8, kernel_size=3, groups=8, padding=2, dilation=2),
    dict(in_channels=8, out_channels=24, kernel_size=1, gain_init=0.0),
    dict(in_channels=6, out_channels=6, kernel_size=(3, 1), groups=2, stride=(2, 1)),
]
STD_CONFIGS = [
    dict(in_channel=8, out_channels=16, kernel_size=3),
    dict(in_channel=8, out_channels=16, kernel_size=1, stride=2, bias=True, eps=1e-8),
]


def _pair(ours_cls, timm_cls, cfg):
    theirs = timm_cls(**cfg)
    ours = ours_cls(**cfg)
    ours.load_state_dict(theirs.state_dict())  # strict: same keys and shapes
    if hasattr(theirs, "gain"):
        with torch.no_grad():  # a non-trivial gain, so its gradient is exercised
            theirs.gain.uniform_(0.5, 1.5)
            ours.gain.copy_(theirs.gain)
    return ours, theirs


def _compare(ours, theirs, in_ch, size=9):
    x = torch.randn(4, in_ch, size, size)
    xo, xt = x.clone().requires_grad_(), x.clone().requires_grad_()
    yo, yt = ours(xo), theirs(xt)
    torch.testing.assert_close(yo, yt, atol=2e-5, rtol=1e-4)
    g = torch.randn_like(yo)
    yo.backward(g)
    yt.backward(g)
    torch.testing.assert_close(xo.grad, xt.grad, atol=2e-5, rtol=1e-4)
    for (name, po), (_, pt) in zip(ours.named_parameters(), theirs.named_parameters()):
        scale = pt.grad.abs().max().item() + 1e-12
        torch.testing.assert_close(po.grad, pt.grad, atol=2e-5 * scale + 1e-6, rtol=1e-3, msg=name)


@pytest.mark.parametrize("cfg", SCALED_CONFIGS)
def test_scaled_std_conv_matches_timm(cfg):
    ours, theirs = _pair(ScaledStdConv2d, timm_std_conv.ScaledStdConv2d, cfg)
    assert ours.scale == pytest.approx(theirs.scale) and ours.eps == theirs.eps
    assert ours.padding == theirs.padding
    assert list(ours.state_dict()) == list(theirs.state_dict())
    _compare(ours, theirs, cfg["in_channels"])
    theirs.load_state_dict(ours.state_dict())  # and back


@pytest.mark.parametrize("cfg", STD_CONFIGS)
def test_std_conv_matches_timm(cfg):
    ours, theirs = _pair(StdConv2d, timm_std_conv.StdConv2d, cfg)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    _compare(ours, theirs, cfg["in_channel"])


def test_same_init_stream_as_timm():
    torch.manual_seed(0)
    theirs = timm_std_conv.ScaledStdConv2d(4, 8, 3)
    torch.manual_seed(0)
    ours = ScaledStdConv2d(4, 8, 3)
    for k, v in theirs.state_dict().items():
        assert torch.equal(ours.state_dict()[k], v), k


def test_bad_constructor_args():
    with pytest.raises(ValueError, match="eps"):
        ScaledStdConv2d(3, 4, 3, eps=0.0)
    with pytest.raises(ValueError, match="backend"):
        ScaledStdConv2d(3, 4, 3, backend="cuda")


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = ScaledStdConv2d(3, 8, 3, gamma=1.7139588594436646, eps=1e-5)
        self.c2 = ScaledStdConv2d(8, 8, 3, stride=2, groups=2)
        self.c3 = StdConv2d(8, 16, 1)
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        x = F.relu(self.c1(x))
        x = F.relu(self.c2(x))
        x = self.c3(x)
        return self.fc(x.mean((2, 3)))


def test_frozen_weights_standardize_once_per_layer():
    net = _Net()
    x = torch.rand(2, 3, 12, 12, requires_grad=True)
    with CountOps() as counter:
        with frozen_weights():
            for _ in range(5):
                out = net(x)
                (g,) = torch.autograd.grad(out.sum(), x)
    assert counter.counts.get("fastnofrost.ws_forward") == 3, counter.counts
    assert "fastnofrost.ws_backward" not in counter.counts, "a weight gradient was computed"
    assert all(p.grad is None for p in net.parameters())
    # outside the context: one standardization per layer per forward again
    with CountOps() as counter:
        net(x)
        net(x)
    assert counter.counts["fastnofrost.ws_forward"] == 6


def test_frozen_weights_equal_unfrozen_and_see_weight_changes():
    net = _Net()
    x = torch.rand(2, 3, 12, 12)
    ref = net(x)
    with frozen_weights():
        torch.testing.assert_close(net(x), ref)
        with torch.no_grad():
            net.c1.weight.mul_(1.5).add_(0.1)  # in-place change -> version counter bump
            net.c2.gain.mul_(2.0)
        changed = net(x)
        torch.testing.assert_close(net(x), changed)
    torch.testing.assert_close(net(x), changed)
    assert not torch.allclose(changed, ref)
    assert net.c1.source.frozen is None and net.c1.source.kind() == "own", "cache must be dropped on exit"


def test_frozen_weights_cache_autocast_dtype():
    net = _Net()
    x = torch.rand(2, 3, 12, 12)
    with frozen_weights(), torch.autocast("cpu", dtype=torch.bfloat16):
        y = net(x)
        assert net.c1.source.kind() == "frozen" and net.c1.source.frozen.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), net(x), atol=5e-2, rtol=5e-2)


def test_torch_compile_fullgraph_no_graph_break():
    torch._dynamo.reset()
    net = _Net()
    x = torch.rand(2, 3, 12, 12)

    def step(x_adv, g, x):  # a PGD step feeding the model, out of place
        x_new = pgd_step(x_adv, g, x, 2 / 255, 8 / 255)
        return net(x_new), x_new

    def step_(x_adv, g, x):  # the same with the in-place (mutating) op
        pgd_step_(x_adv, g, x, 2 / 255, 8 / 255)
        return net(x_adv)

    compiled_net = torch.compile(net, fullgraph=True, backend="inductor")
    torch.testing.assert_close(compiled_net(x), net(x), atol=1e-5, rtol=1e-5)
    xr = x.clone().requires_grad_()
    compiled_net(xr).sum().backward()
    w_grad = net.c1.weight.grad.clone()
    net.zero_grad()
    xe = x.clone().requires_grad_()
    net(xe).sum().backward()
    torch.testing.assert_close(w_grad, net.c1.weight.grad, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(xr.grad, xe.grad, atol=1e-5, rtol=1e-4)
    x_adv, g = (x + 0.01).clamp(0, 1), torch.randn_like(x)
    torch.testing.assert_close(torch.compile(step, fullgraph=True)(x_adv, g, x), step(x_adv, g, x),
                               atol=1e-5, rtol=1e-5)
    a, b = x_adv.clone(), x_adv.clone()
    torch.testing.assert_close(torch.compile(step_, fullgraph=True)(a, g, x), step_(b, g, x), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_missing_extension_says_so():
    code = ("import sys; sys.modules['fastnofrost._C'] = None\n"
            "try:\n    import fastnofrost\nexcept ImportError as e:\n    print('ERR', e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "ERR fastnofrost: the compiled extension fastnofrost._C is missing" in out.stdout, out.stdout + out.stderr
    assert "pip install --no-build-isolation" in out.stdout

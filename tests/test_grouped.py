"""Grouped weight standardization of a whole model (fastnofrost.nn.grouped): training steps equal
the per-layer path (float64), one grouped launch each way per step, autocast, gradient
accumulation, sequential views, compiled attacks and convert_timm models."""
import copy

import pytest
import timm
import torch
import torch.nn.functional as F

from helpers import needs_inductor_cpu
from fastnofrost.attacks import PGD, pgd
from fastnofrost.data import build_loader
from fastnofrost.methods import build_method
from fastnofrost.models import create_model
from fastnofrost.nn import ScaledStdConv2d, convert_timm, group_weights, ungroup_weights, weight_group

ATTACK = PGD(eps=8 / 255, steps=3)
WS_OPS = ("fastnofrost::ws_forward", "fastnofrost::ws_backward", "fastnofrost::ws_grouped_forward",
          "fastnofrost::ws_grouped_backward")


@pytest.fixture(scope="module")
def digits_batch():
    loader = build_loader("digits", batch_size=16, image_size=16, seed=0)
    loader.set_epoch(0)
    x, y = next(iter(loader))
    return x.double(), y


def nf_model(kind):
    torch.manual_seed(0)
    if kind == "ours":
        return create_model("nf_resnet26_small", num_classes=10, width=0.25).double().train()
    model = timm.create_model("nf_resnet26", width_factor=0.25, num_classes=10)
    with torch.no_grad():  # timm starts the residual gains at 0: make every block count
        for name, p in model.named_parameters():
            if name.endswith("skipinit_gain") or name.endswith(".gain"):
                p.copy_(torch.rand_like(p) + 0.5)
    return convert_timm(model).double().train()


def pair(kind):
    """The per-layer model and a grouped copy of it (the same parameters' values)."""
    per_layer = nf_model(kind)
    grouped = copy.deepcopy(per_layer)
    return per_layer, grouped, group_weights(grouped)


def ws_calls(fn):
    """(fn(), {WS op: calls}), counted by the profiler."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        result = fn()
    counts = {e.key: e.count for e in prof.key_averages() if e.key in WS_OPS}
    return result, {op: counts.get(op, 0) for op in WS_OPS}


def step(method, model, x, y, group=None, passes="one"):
    """One training step's loss and backward, inside the group's step when there is one."""
    def backward(term, last):
        if group is not None:
            group.last_pass(last)
        term.backward()

    torch.manual_seed(1)
    sequential = passes == "several"
    with group.step(passes) if group is not None else torch.enable_grad():
        out = method(model, model, x, y, backward=backward if sequential else None)
        if not out.backpropagated:
            out.loss.backward()
    return out.loss.detach()


def assert_same_step(a, b, loss_a, loss_b, tol=1e-10):
    torch.testing.assert_close(loss_b, loss_a, rtol=tol, atol=tol)
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        assert (p.grad is None) == (q.grad is None), name
        if p.grad is not None:
            torch.testing.assert_close(q.grad, p.grad, rtol=tol, atol=tol, msg=name)


@pytest.mark.parametrize("kind", ["ours", "timm"])
@pytest.mark.parametrize("name, passes", [("nofrost", "one"), ("st", "one"), ("trades", "one"),
                                          ("nofrost", "several")])
def test_steps_equal_the_per_layer_path(kind, name, passes, digits_batch):
    """NoFrost, ST and TRADES steps (and NoFrost with sequential views): the grouped model's
    loss and every gradient equal the per-layer model's (float64, 1e-10), with one grouped
    forward and one grouped backward and no per-layer WS call."""
    x, y = digits_batch
    if kind == "timm":
        x = F.interpolate(x, size=32)  # timm's NF-ResNet downsamples 32x
    per_layer, grouped, group = pair(kind)
    method = build_method(name, ATTACK, smoothing=0.1, beta=6.0)
    loss_a = step(method, per_layer, x, y, passes=passes)
    loss_b, counts = ws_calls(lambda: step(method, grouped, x, y, group, passes))
    assert counts["fastnofrost::ws_grouped_forward"] == 1 and counts["fastnofrost::ws_grouped_backward"] == 1
    assert counts["fastnofrost::ws_forward"] == counts["fastnofrost::ws_backward"] == 0
    assert_same_step(per_layer, grouped, loss_a, loss_b)


def test_nofrost_step_of_nf_resnet50_launches_ws_twice():
    """One NoFrost-10 step of the full-depth nf_resnet50 (width 0.25): per layer, 53 weights
    are standardized in the attack, again in the training forward, and backpropagated: 159 WS
    calls; grouped: one forward and one backward, 2 in all. Counted by the profiler."""
    torch.manual_seed(0)
    model = create_model("nf_resnet50", num_classes=10, width=0.25).train()
    x, y = torch.rand(2, 3, 32, 32), torch.tensor([1, 7])
    method = build_method("nofrost", PGD(eps=8 / 255, steps=10))
    layers = sum(isinstance(m, ScaledStdConv2d) for m in model.modules())
    assert layers == 53
    _, per_layer = ws_calls(lambda: step(method, model, x, y))
    assert per_layer["fastnofrost::ws_forward"] == 2 * layers and per_layer["fastnofrost::ws_backward"] == layers
    assert sum(per_layer.values()) == 159
    group = group_weights(model)
    _, grouped = ws_calls(lambda: step(method, model, x, y, group))
    assert grouped == {"fastnofrost::ws_forward": 0, "fastnofrost::ws_backward": 0,
                       "fastnofrost::ws_grouped_forward": 1, "fastnofrost::ws_grouped_backward": 1}
    ungroup_weights(model)  # back to the reference path
    assert weight_group(model) is None and sum(ws_calls(lambda: step(method, model, x, y))[1].values()) == 159


def test_gradient_accumulation_one_grouped_pass_each_way_per_micro_batch(digits_batch):
    x, y = digits_batch
    per_layer, grouped, group = pair("ours")
    method = build_method("nofrost", ATTACK, smoothing=0.1)
    halves = [(x[:8], y[:8]), (x[8:], y[8:])]
    loss_a = sum(step(method, per_layer, xb, yb) for xb, yb in halves)
    loss_b, counts = ws_calls(lambda: sum(step(method, grouped, xb, yb, group) for xb, yb in halves))
    assert counts["fastnofrost::ws_grouped_forward"] == 2 and counts["fastnofrost::ws_grouped_backward"] == 2
    assert_same_step(per_layer, grouped, loss_a, loss_b)


def test_autocast_reads_the_weights_cast_once(digits_batch):
    """Under bf16 autocast the training forward reads weights cast for all layers in one op, the
    values autocast's per-layer casts give: the same loss and gradients up to bf16 rounding (a
    float32 ulp between the two paths' w_hat may round to another bf16 value), so the two paths
    differ by less than the per-layer path differs from float64 math."""
    x, y = digits_batch
    per_layer, grouped, group = pair("ours")
    exact = copy.deepcopy(per_layer)  # float64, no autocast
    per_layer.float(), grouped.float()
    method = build_method("st", ATTACK)

    def run(model, group=None, autocast=True):
        torch.manual_seed(1)
        with group.step(cast=torch.bfloat16) if group is not None else torch.enable_grad():
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                loss = method.ce(model(x.to(next(model.parameters()).dtype)), y)
            loss.backward()
        return loss.detach()

    run(exact, autocast=False)
    def casts(model, group=None):
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            loss = run(model, group)
        return loss, sum(e.count for e in prof.key_averages() if e.key == "aten::_to_copy")

    (loss_a, per_layer_casts), (loss_b, grouped_casts) = casts(per_layer), casts(grouped, group)
    # autocast casts each standardized weight on its own, and its gradient back; the group casts
    # them in one op, and its backward kernel reads the bf16 gradients as they are (inputs,
    # biases and the classifier are cast alike on both paths)
    assert grouped_casts == per_layer_casts - 2 * len(group.layers) + 1, (grouped_casts, per_layer_casts)
    torch.testing.assert_close(loss_b, loss_a, rtol=1e-4, atol=0)
    for (name, p), q, r in zip(per_layer.named_parameters(), grouped.parameters(), exact.parameters()):
        bf16_error = (p.grad.double() - r.grad).abs().max().item()
        assert (q.grad - p.grad).abs().max().item() <= bf16_error, name


@needs_inductor_cpu
def test_compiled_attack_reads_one_persistent_buffer(digits_batch):
    """A compiled attack inside a step reads the step's weights from one persistent buffer: the
    same addresses every step (CUDA graphs keep their static inputs), the eager result, one
    graph for every step whatever the weights."""
    x, y = digits_batch
    x, y = x[:8], y[:8]
    per_layer, grouped, group = pair("ours")
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    addresses = []
    for _ in range(2):
        eager = pgd(per_layer, x, y, 8 / 255, 2, 0.03, random_start=False)
        with torch.no_grad(), group.step():
            with torch.enable_grad():
                compiled = pgd(grouped, x, y, 8 / 255, 2, 0.03, random_start=False, compile_step=True)
        torch.testing.assert_close(compiled, eager, atol=1e-12, rtol=0)
        addresses.append(group.store.data_ptr())
        with torch.no_grad():  # an optimizer step between two attacks
            for model in (per_layer, grouped):
                next(model.parameters()).mul_(0.5)
    assert addresses[0] == addresses[1]
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1


def test_frozen_context_without_a_step_fills_every_layer_at_once(digits_batch):
    """An attack outside a training step (evaluation): one grouped forward fills every layer;
    an in-place weight change inside the context is seen (the caches are keyed by version)."""
    x, y = digits_batch
    per_layer, grouped, _ = pair("ours")
    _, counts = ws_calls(lambda: pgd(grouped, x, y, 8 / 255, 3, 0.01, random_start=False))
    assert counts["fastnofrost::ws_grouped_forward"] == 1 and counts["fastnofrost::ws_forward"] == 0
    torch.testing.assert_close(pgd(grouped, x, y, 8 / 255, 3, 0.01, random_start=False),
                               pgd(per_layer, x, y, 8 / 255, 3, 0.01, random_start=False), atol=1e-12, rtol=0)


def test_a_layer_alone_and_reference_layers_stay_per_layer():
    conv = ScaledStdConv2d(4, 8, 3)
    assert group_weights(conv) is not None  # a lone layer may opt in as well ...
    ungroup_weights(conv)
    out = conv(torch.rand(1, 4, 8, 8))  # ... and works as a drop-in without
    assert out.shape == (1, 8, 8, 8)
    ref = torch.nn.Sequential(ScaledStdConv2d(4, 8, 3, backend="reference"))
    assert group_weights(ref) is None  # backend="reference" is the reference: never grouped


def test_bad_groups_and_steps_get_one_clear_error():
    mixed = torch.nn.Sequential(ScaledStdConv2d(4, 8, 3), ScaledStdConv2d(8, 8, 3).double())
    with pytest.raises(TypeError, match="one dtype and device"):
        group_weights(mixed)
    group = group_weights(torch.nn.Sequential(ScaledStdConv2d(4, 8, 3)))
    with pytest.raises(ValueError, match="passes must be"):
        with group.step("two"):
            pass
    with group.step():
        with pytest.raises(RuntimeError, match="do not nest"):
            with group.step():
                pass
    assert group.flat is None  # the failed inner step left the outer one's exit intact


def test_each_layer_says_where_its_weight_comes_from(digits_batch):
    """layer.source is the one place that decides: its own WS op outside any context, the
    group's view (in the step's dtype) inside a step, the frozen cache inside an attack, the
    frozen cache dropped after it; a forward under another autocast than the step's is refused."""
    x, y = digits_batch
    _, grouped, group = pair("ours")
    layer = group.layers[0]
    seen = []
    attack = lambda: seen.append(layer.source.kind()) or grouped(x)  # noqa: E731
    assert layer.source.kind() == "own" and layer.source.group is group and layer.source.index == 0
    with group.step():
        assert layer.source.kind() == "step" and group.views[0].dtype == torch.float64
        assert layer.standardized_weight() is group.views[0]
        from fastnofrost.attacks.base import attack_mode
        with attack_mode(grouped):
            attack()
            assert layer.source.frozen is not None and layer.source.frozen.requires_grad is False
        assert seen == ["frozen"] and layer.source.frozen is None
        with torch.autocast("cpu", dtype=torch.bfloat16), pytest.raises(RuntimeError, match="cast="):
            grouped(x.float())
    assert layer.source.kind() == "own" and group.views == []


@needs_inductor_cpu
def test_a_compiled_forward_reads_the_step_without_recompiling(digits_batch):
    """Two forwards in one step (validation's clean and adversarial ones) and in the next step
    run one compiled graph: the step's views exist before the forward, so nothing the forward
    reads changes between them."""
    x, y = digits_batch
    _, grouped, group = pair("ours")
    grouped.eval().compile()
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    for _ in range(2):
        with torch.no_grad(), group.step():
            grouped(x), grouped(x)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1

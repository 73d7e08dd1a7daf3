"""The library's ablation switches (what benchmarks/bench_step.py's ablations turn off): each
changes exactly its one thing in a NoFrost step, by the op counts of the step.

- ``PGD(cache_weights=False)``: the attack standardizes every weight at every step;
- ``PGD(weight_grads=True)``: every attack step also computes the weight gradients;
- ``PGD(backend="reference")``: random start and step by eager torch instead of the fused ops;
- ``Method(one_pass=False)``: the clean and adversarial views in two forwards;
- ``nn.set_ws_backend(model, "reference")``: WS by eager torch instead of the fused op.
"""
import dataclasses

import pytest
import torch

from fastnofrost.attacks import PGD
from fastnofrost.methods import build_method
from fastnofrost.models import create_model
from fastnofrost.nn import ScaledStdConv2d, StdConv2d, group_weights, set_ws_backend

from helpers import CountOps

K = 3
ATTACK = PGD(eps=8 / 255, steps=K)


def model_and_batch():
    torch.manual_seed(0)
    model = create_model("nf_resnet26_small", num_classes=10, in_chans=1, width=0.25).train()
    return model, torch.rand(4, 1, 16, 16), torch.randint(0, 10, (4,))


def ws_count(model) -> int:
    return sum(isinstance(m, (ScaledStdConv2d, StdConv2d)) for m in model.modules())


def step_signature(model, x, y, attack=ATTACK, **method_fields) -> dict:
    """One NoFrost step (loss and backward) counted: WS forwards and backwards, weight-gradient
    convolutions, fused PGD ops, training forwards of the model, and eager ops."""
    method = build_method("nofrost", attack, **method_fields)
    forwards = []
    hook = model.register_forward_hook(lambda m, i, o: forwards.append(len(i[0])) if m.training else None)
    try:
        with CountOps() as counter:
            method(model, model, x, y).loss.backward()
    finally:
        hook.remove()
        model.zero_grad(set_to_none=True)
    c = counter.counts
    return dict(ws_forward=c.get("fastnofrost.ws_forward", 0), ws_backward=c.get("fastnofrost.ws_backward", 0),
                weight_grad_convs=counter.weight_grad_convs,
                fused_pgd=sum(n for op, n in c.items() if op.startswith("fastnofrost.pgd")),
                training_forwards=forwards, eager_ops=sum(n for op, n in c.items() if op.startswith("aten.")))


def changed(base: dict, other: dict) -> dict:
    return {k: (base[k], other[k]) for k in base if base[k] != other[k]}


def test_the_default_step():
    model, x, y = model_and_batch()
    n = ws_count(model)
    s = step_signature(model, x, y)
    # attack: WS once per layer, no weight gradient, K fused steps + the fused random start;
    # training: one forward of clean + adversarial, one WS forward and backward per layer
    assert (s["ws_forward"], s["ws_backward"], s["weight_grad_convs"]) == (2 * n, n, n)
    assert s["fused_pgd"] == K + 1 and s["training_forwards"] == [2 * len(y)]


@pytest.mark.parametrize("switch", ["cache_weights", "weight_grads", "backend", "one_pass"])
def test_each_switch_changes_exactly_its_one_thing(switch):
    model, x, y = model_and_batch()
    n = ws_count(model)
    base = step_signature(model, x, y)
    if switch == "cache_weights":
        other = step_signature(model, x, y, dataclasses.replace(ATTACK, cache_weights=False))
        expected = {"ws_forward": (2 * n, (K + 1) * n)}  # K attack forwards, one WS each per layer
    elif switch == "weight_grads":
        other = step_signature(model, x, y, dataclasses.replace(ATTACK, weight_grads=True))
        expected = {"weight_grad_convs": (n, n + K * n)}  # every attack step, every conv
    elif switch == "backend":
        other = step_signature(model, x, y, dataclasses.replace(ATTACK, backend="reference"))
        expected = {"fused_pgd": (K + 1, 0)}
    else:
        other = step_signature(model, x, y, one_pass=False)
        # the training forward runs per view; per-layer WS then runs per forward as well
        expected = {"training_forwards": ([2 * len(y)], [len(y), len(y)]), "ws_forward": (2 * n, 3 * n),
                    "ws_backward": (n, 2 * n), "weight_grad_convs": (n, 2 * n)}
    diff = changed(base, other)
    eager = diff.pop("eager_ops", None)
    assert diff == expected
    if switch == "backend":  # the fused ops' work is done by eager ops
        assert eager is not None and eager[1] > eager[0]


def test_the_switches_keep_the_math():
    """Same step loss and gradients with every switch (float64; the ablations change how the
    step computes, not what). No random start: the fused and the eager random start draw their
    noise differently (each is tested against the uniform law in test_ops_pgd.py)."""
    model, x, y = model_and_batch()
    model, x = model.double(), x.double()
    attack = dataclasses.replace(ATTACK, random_start=False)

    def loss_and_grads(attack, **fields):
        torch.manual_seed(1)
        loss = build_method("nofrost", attack, **fields)(model, model, x, y).loss
        return loss.detach(), torch.autograd.grad(loss, list(model.parameters()))

    base = loss_and_grads(attack)
    variants = [loss_and_grads(dataclasses.replace(attack, cache_weights=False)),
                loss_and_grads(dataclasses.replace(attack, weight_grads=True)),
                loss_and_grads(dataclasses.replace(attack, backend="reference")),
                loss_and_grads(attack, one_pass=False)]
    for loss, grads in variants:
        torch.testing.assert_close(loss, base[0], rtol=1e-10, atol=1e-12)
        for a, b in zip(grads, base[1]):
            torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)
    assert all(p.requires_grad for p in model.parameters())  # weight_grads restored the flags


def test_set_ws_backend_switches_the_ws_op():
    model, x, y = model_and_batch()
    n = ws_count(model)
    assert set_ws_backend(model, "reference") == n
    s = step_signature(model, x, y)
    assert (s["ws_forward"], s["ws_backward"]) == (0, 0)
    assert set_ws_backend(model, "fused") == n
    assert step_signature(model, x, y)["ws_forward"] == 2 * n
    with pytest.raises(ValueError, match="backend"):
        set_ws_backend(model, "triton")
    group_weights(model)
    with pytest.raises(RuntimeError, match="grouped"):
        set_ws_backend(model, "reference")


def test_switch_values_are_checked():
    for bad in (dict(cache_weights=1), dict(weight_grads="yes"), dict(backend="cuda")):
        with pytest.raises(ValueError):
            PGD(**bad)

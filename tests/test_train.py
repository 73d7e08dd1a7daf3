"""The training engine: every method trains, NoFrost's one pass equals two, BN never mixes views,
config validation, the CLI end to end (1 rank, 2 DeepSpeed ranks on CPU), exact resume after
SIGKILL, non-finite losses."""
import contextlib
import copy
import dataclasses
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch
import torch.nn as nn

from helpers import needs_inductor_cpu
from fastnofrost.config import DEMO, ConfigError, TrainConfig, load_config, validate
from fastnofrost.data import build_loader
from fastnofrost.attacks import PGD, PRECISIONS
from fastnofrost.methods import METHODS, build_method, couples_samples
from fastnofrost.models import create_model
from fastnofrost.training.engine import auto_precision
from fastnofrost.training.logger import read_log

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = os.path.join(REPO, "fastnofrost", "train.py")
ATTACK = PGD(eps=8 / 255, steps=3)
pytestmark = pytest.mark.usefixtures("deepspeed_op")  # built once, before the first run


@pytest.fixture(scope="module")
def digits_batch():
    loader = build_loader("digits", batch_size=32, image_size=16, seed=0)
    loader.set_epoch(0)
    return next(iter(loader))


def tiny(name, **kw):
    return create_model(name, num_classes=10, width=0.25, **kw)


def model_for(method):
    return tiny("resnet26_dualbn_small") if method == "mbnat" else tiny("nf_resnet26_small")


# ------------------------------------------------------------------ methods

@pytest.mark.parametrize("name", sorted(METHODS))
def test_each_method_trains_and_moves_the_loss(name, digits_batch):
    torch.manual_seed(0)
    x, y = digits_batch
    model = model_for(name)
    method = build_method(name, ATTACK, smoothing=0.1, lam=0.5, beta=6.0, tau=1)
    x_aug = x.flip(3) if method.needs_views else None
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    losses = []
    for _ in range(6):
        model.train()
        out = method(model, model, x, y, x_aug)
        assert out.loss.requires_grad and torch.isfinite(out.loss)
        assert set(out.correct) <= {"clean", "aug", "adv"} and out.parts
        assert all(0 <= int(c) <= len(y) for c in out.correct.values())
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(out.loss.item())
    assert losses[-1] < losses[0] - 0.05, losses  # a fixed batch: the loss must come down
    assert all(p.requires_grad for p in model.parameters())  # the attack restored the model


class _IntoStatic(torch.autograd.Function):
    """``out`` copied into ``static``, returned as a view of it; the gradient passes through."""

    @staticmethod
    def forward(ctx, out, static):
        return static.copy_(out).view_as(static)

    @staticmethod
    def backward(ctx, grad):
        return grad, None


def replaying_compile(fn, **_):
    """A stand-in for torch.compile(mode='reduce-overhead') on CPU: the function's output lives
    in one static buffer that the next call overwrites, as a CUDA-graph replay overwrites the
    previous one's."""
    static = {}

    def replay(*args):
        out = fn(*args)
        buf = static.get("out")
        if buf is None or (buf.shape, buf.dtype) != (out.shape, out.dtype):
            buf = static["out"] = torch.empty_like(out, requires_grad=False)
        return _IntoStatic.apply(out, buf)
    return replay


@pytest.mark.parametrize("name", sorted(METHODS))
def test_no_kept_tensor_aliases_a_compiled_output(name, digits_batch, monkeypatch):
    """Each method with its attack step 'compiled' by :func:`replaying_compile`: every tensor
    kept across two calls of the step (TRADES' KL reference among them) is a copy, so the losses,
    parts and gradients equal the eager run's exactly."""
    from fastnofrost.attacks import step

    x, y = digits_batch
    x_aug = x.flip(3)
    initial = model_for(name).train()
    runs = []
    for compile_step in (False, "reduce-overhead"):
        model = copy.deepcopy(initial)  # BN running statistics as they were
        monkeypatch.setattr(step, "COMPILED", {})
        monkeypatch.setattr(step.torch, "compile", replaying_compile)
        method = build_method(name, dataclasses.replace(ATTACK, compile_step=compile_step, seed=0), smoothing=0.1,
                              lam=0.5, beta=6.0, tau=1)
        torch.manual_seed(0)
        out = method(model, model, x, y, x_aug if method.needs_views else None)
        model.zero_grad()
        out.loss.backward()
        runs.append((out.loss.detach(), out.parts, [p.grad.clone() for p in model.parameters()]))
    (l_eager, p_eager, g_eager), (l_replay, p_replay, g_replay) = runs
    assert torch.equal(l_eager, l_replay) and p_eager == p_replay
    assert all(torch.equal(a, b) for a, b in zip(g_eager, g_replay))


def test_nofrost_star_requires_views(digits_batch):
    x, y = digits_batch
    model = tiny("nf_resnet26_small")
    with pytest.raises(ValueError, match="x_aug"):
        build_method("nofrost_star", ATTACK)(model, model, x, y)


def test_methods_take_exactly_their_own_settings():
    """A method's settings are its dataclass fields; another method's knob is ignored, so SAT
    gets no early stop from --tau (only FAT and TRADES-FAT do)."""
    knobs = dict(lam=0.3, beta=2.0, tau=2, gamma=0.25, deepaugment=None)
    own = {"st": {}, "sat": {}, "trades": {"beta": 2.0}, "fat": {"tau": 2}, "trades_fat": {"beta": 2.0, "tau": 2},
           "nofrost": {"lam": 0.3}, "nofrost_star": {"deepaugment": None}, "mbnat": {"lam": 0.3, "gamma": 0.25}}
    assert set(own) == set(METHODS)
    for name, expected in own.items():
        method = build_method(name, ATTACK, 0.1, **knobs)
        assert dataclasses.asdict(method) == {"attack_settings": dataclasses.asdict(ATTACK), "smoothing": 0.1,
                                              "one_pass": True, **expected}, name
        assert method.early_stop() == (2 if name in ("fat", "trades_fat") else None), name


def test_attack_variants_are_built_once_and_follow_the_settings(monkeypatch):
    """TRADES' and FAT's attacks are ``dataclasses.replace`` variants of the run's PGD: built (and
    checked) once over many steps, rebuilt when the settings object is replaced."""
    built = []
    replace = dataclasses.replace
    monkeypatch.setattr(dataclasses, "replace", lambda *a, **k: built.append(k) or replace(*a, **k))
    method = build_method("trades_fat", ATTACK, tau=1)
    first = [method.attack_variant(dict(loss="kl", random_start=0.001, early_stop=1)) for _ in range(3)]
    assert len(built) == 1 and first[0] is first[1] is first[2]
    assert (first[0].loss, first[0].random_start, first[0].early_stop, first[0].eps) == ("kl", 0.001, 1, ATTACK.eps)
    assert method.attack_variant({}) is method.attack_settings
    method.attack_settings = replace(ATTACK, eps=2 / 255)
    again = method.attack_variant(dict(loss="kl", random_start=0.001, early_stop=1))
    assert len(built) == 2 and again.eps == 2 / 255 and again.loss == "kl"
    assert method.attack_variant(dict(loss="kl", random_start=0.001, early_stop=2)).early_stop == 2


def test_mbnat_evaluates_at_its_bn_mix_and_restores_the_clean_branch():
    from fastnofrost.nn import DualBatchNorm2d

    model = tiny("resnet26_dualbn_small")
    layers = [m for m in model.modules() if isinstance(m, DualBatchNorm2d)]
    with build_method("mbnat", ATTACK, gamma=0.25).evaluation(model):
        assert {(m.mode, m.gamma) for m in layers} == {("mix", 0.25)}
    assert {(m.mode, m.gamma) for m in layers} == {("clean", None)}
    with build_method("nofrost", ATTACK).evaluation(model):  # nothing to set for the others
        assert {(m.mode, m.gamma) for m in layers} == {("clean", None)}


def test_mbnat_refuses_a_model_without_dual_bn():
    with pytest.raises(ValueError, match="dual-BN"):
        build_method("mbnat", ATTACK).check_model(tiny("nf_resnet26_small"))


@pytest.mark.parametrize("name", ["nofrost", "trades", "nofrost_star"])
def test_one_pass_equals_two_passes_on_normalizer_free_models(name, digits_batch):
    """The concatenated forward/backward of a normalizer-free model gives the loss and gradients
    of separate passes (the ``one_pass`` switch; float64, no dropout: nothing couples samples)."""
    x, y = digits_batch
    x, x_aug = x.double(), x.flip(3).double()
    model = tiny("nf_resnet26_small").double().train()
    assert not couples_samples(model)
    results = []
    for one_pass in (True, False):
        method = build_method(name, ATTACK, smoothing=0.1, one_pass=one_pass)
        calls = []
        def count(module, inputs, output):
            if module.training:  # training forwards only, not the attack's
                calls.append(len(inputs[0]))

        hook = model.register_forward_hook(count)
        torch.manual_seed(1)
        out = method(model, model, x, y, x_aug)
        hook.remove()
        grads = torch.autograd.grad(out.loss, list(model.parameters()))
        views = 3 if name == "nofrost_star" else 2
        assert calls == ([views * len(y)] if one_pass else [len(y)] * views)
        results.append((out.loss.detach(), grads))
    (l1, g1), (l2, g2) = results
    torch.testing.assert_close(l1, l2, rtol=1e-12, atol=1e-12)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("name", ["nofrost", "nofrost_star", "mbnat", "sat", "st"])
def test_sequential_views_give_the_concatenated_gradient(name, digits_batch):
    """views='sequential' (a forward and a backward per view) accumulates the gradient of the
    one concatenated backward (float64, no dropout), runs one view per training forward, and
    calls ``backward`` once per view with ``last`` on the final one only."""
    x, y = digits_batch
    x, x_aug = x.double(), x.flip(3).double()
    model = model_for(name).double().train()
    method = build_method(name, ATTACK, smoothing=0.1, lam=0.3)
    params = list(model.parameters())
    state = {k: v.clone() for k, v in model.state_dict().items()}  # BN running statistics move
    torch.manual_seed(1)
    concat = method(model, model, x, y, x_aug)
    expected = torch.autograd.grad(concat.loss, params)
    assert not concat.backpropagated
    lasts, sizes = [], []
    hook = model.register_forward_hook(lambda m, inp, out: sizes.append(len(inp[0])) if m.training else None)

    def backward(term, last):
        lasts.append(last)
        term.backward()

    model.load_state_dict(state)
    torch.manual_seed(1)
    sequential = method(model, model, x, y, x_aug, backward=backward)
    hook.remove()
    views = {"nofrost": 2, "nofrost_star": 3, "mbnat": 2}.get(name, 1)
    assert lasts == [False] * (views - 1) + [True] and sizes == [len(y)] * views
    assert sequential.backpropagated and not sequential.loss.requires_grad
    torch.testing.assert_close(sequential.loss, concat.loss.detach(), rtol=1e-12, atol=1e-12)
    assert sequential.parts.keys() == concat.parts.keys() and sequential.correct.keys() == concat.correct.keys()
    for p, g in zip(params, expected):
        torch.testing.assert_close(p.grad, g, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("name", ["trades", "trades_fat"])
def test_coupled_losses_refuse_sequential_views(name, digits_batch):
    x, y = digits_batch
    model = tiny("nf_resnet26_small")
    with pytest.raises(ValueError, match="couples its views"):
        build_method(name, ATTACK)(model, model, x, y, backward=lambda term, last: None)


@needs_inductor_cpu
@pytest.mark.parametrize("ws", ["per-layer", "grouped"])
def test_compile_full_equals_eager_in_float64(ws, digits_batch):
    """What --compile full does to the model (engine.compile: module.compile(), and the attack
    step compiled) gives eager's losses and gradients over 3 SGD steps of NoFrost, in float64
    (inductor reorders float sums; float64 keeps the attack's sign steps stable). Dynamo traces
    two graphs, the attack's forward and the training forward with its backward, without a graph
    break, and nothing recompiles after the first step. The same with the grouped WS (each step
    inside the model's WeightGroup step, as train.py runs it) against eager per-layer WS."""
    from torch._dynamo.utils import counters
    from fastnofrost.nn import group_weights

    x, y = (t[:16] for t in digits_batch)
    x = x.double()
    eager = tiny("nf_resnet26_small").double().train()
    compiled = tiny("nf_resnet26_small").double().train()
    compiled.load_state_dict(eager.state_dict())
    group = group_weights(compiled) if ws == "grouped" else None
    compiled.compile()
    runs = {}
    torch._dynamo.reset()
    counters.clear()
    for name, model, compile_step in (("eager", eager, False), ("compiled", compiled, True)):
        method = build_method("nofrost", PGD(eps=8 / 255, steps=3, compile_step=compile_step),
                              smoothing=0.1)
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        runs[name], graphs = [], []
        for step in range(3):
            torch.manual_seed(step)
            opt.zero_grad()
            with group.step() if group is not None and model is compiled else contextlib.nullcontext():
                out = method(model, model, x, y)
                out.loss.backward()
            runs[name].append((out.loss.detach(), [p.grad.clone() for p in model.parameters()]))
            opt.step()
            graphs.append(counters["stats"]["unique_graphs"])
    assert graphs == [2, 2, 2] and not counters["graph_break"]
    for (l_eager, g_eager), (l_comp, g_comp) in zip(runs["eager"], runs["compiled"]):
        torch.testing.assert_close(l_comp, l_eager, rtol=1e-10, atol=1e-12)
        for a, b in zip(g_comp, g_eager):
            torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)


BF16_RUNS = {"nofrost-concat": ("nofrost", "nf_resnet26_small", "concat"),
             "nofrost-sequential": ("nofrost", "nf_resnet26_small", "sequential"),
             "trades": ("trades", "nf_resnet26_small", "concat"),
             "mbnat": ("mbnat", "resnet26_dualbn_small", "concat")}


def bf16_steps(method_name, model, views, compile_step, x, y, bf16=True, steps=2):
    """``steps`` SGD steps as train.py runs them in bf16: the attack under bf16 autocast (its
    perturbation in fp32), the training forward under bf16 autocast (DeepSpeed's torch_autocast),
    a grouped model inside its step (cast once to bf16); ``bf16=False``: the same steps without
    autocast (the float64 reference). Returns [(loss, grads)] and the graph count after each step."""
    from torch._dynamo.utils import counters
    from fastnofrost.nn import weight_group

    group = weight_group(model)
    precision = "bf16" if bf16 else "fp32"
    method = build_method(method_name, PGD(eps=8 / 255, steps=2, precision=precision, compile_step=compile_step),
                          smoothing=0.1)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    sequential = views == "sequential"

    def forward(inputs):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            return model(inputs)

    def backward(term, last):
        group.last_pass(last)
        term.backward()

    runs, graphs = [], []
    for step in range(steps):
        torch.manual_seed(step)
        opt.zero_grad()
        passes = "several" if sequential else "one"
        with group.step(passes, cast=PRECISIONS[precision]) if group is not None else contextlib.nullcontext():
            out = method(forward, model, x, y, backward=backward if sequential else None)
            if not out.backpropagated:
                out.loss.backward()
        runs.append((out.loss.detach().double(), [p.grad.double() for p in model.parameters()]))
        opt.step()
        graphs.append(counters["stats"]["unique_graphs"])
    return runs, graphs


@needs_inductor_cpu
@pytest.mark.parametrize("run_name", sorted(BF16_RUNS))
def test_bf16_compile_full_traces_without_breaks_or_recompiles(run_name, digits_batch, one_thread):
    """The CUDA default on CPU: --precision bf16 --compile full (the model compiled as
    engine.compile() does, the attack step compiled, both under bf16 autocast; grouped WS with
    its bf16 views, concat or sequential). Dynamo traces it without a graph break and compiles
    nothing at the second step; the losses and gradients are those of eager bf16 within
    bf16's own error: the distance to eager bf16 is at most twice eager bf16's distance to the
    same steps in float64 (plus a floor of bf16's resolution, 2**-8 relative)."""
    from torch._dynamo.utils import counters
    from fastnofrost.nn import group_weights

    method_name, model_name, views = BF16_RUNS[run_name]
    x, y = (t[:8] for t in digits_batch)
    initial = tiny(model_name).train()
    models = {kind: copy.deepcopy(initial) for kind in ("exact", "eager", "compiled")}
    models["exact"].double()
    for model in models.values():
        group_weights(model)
    models["compiled"].compile()
    torch._dynamo.reset()
    counters.clear()
    exact, _ = bf16_steps(method_name, models["exact"], views, False, x.double(), y, bf16=False)
    eager, _ = bf16_steps(method_name, models["eager"], views, False, x, y)
    compiled, graphs = bf16_steps(method_name, models["compiled"], views, True, x, y)
    assert not counters["graph_break"], dict(counters["graph_break"])
    assert graphs[1] == graphs[0] >= 2  # the attack's graphs and the training's, built at the first step
    for (l_x, g_x), (l_e, g_e), (l_c, g_c) in zip(exact, eager, compiled):
        assert (l_c - l_e).abs() <= 2 * (l_e - l_x).abs() + 2**-8 * l_x.abs()
        for a, b, c in zip(g_x, g_e, g_c):
            assert (c - b).norm() <= 2 * (b - a).norm() + 2**-8 * a.norm()


@pytest.mark.parametrize("name", ["nofrost", "trades", "nofrost_star", "mbnat"])
def test_batch_norm_never_sees_mixed_views(name, digits_batch):
    x, y = digits_batch
    model = tiny("resnet26_dualbn_small" if name == "mbnat" else "resnet26_small").train()
    seen = []
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    hooks = [bn.register_forward_hook(lambda m, inp, out: seen.append(len(inp[0]))) for bn in bns]
    build_method(name, ATTACK)(model, model, x, y, x.flip(3))
    for h in hooks:
        h.remove()
    assert seen and set(seen) == {len(y)}  # attack forwards and training forwards: one view per call


# ------------------------------------------------------------------ configuration

@pytest.mark.parametrize("argv, message", [
    (["--method", "madry"], "--method 'madry' is unknown"),
    (["--model", "resnet9000"], "--model 'resnet9000' is unknown"),
    (["--lambda", "1.5"], "--lambda must be in [0, 1]"),
    (["--eps", "0"], "--eps must be in (0, 255]"),
    (["--steps", "0"], "--steps must be an integer in [1, 1000]"),
    (["--alpha", "-1"], "--alpha must be in (0, 255]"),
    (["--batch-size", "30", "--grad-accum", "4"], "--batch-size 30 must be a positive multiple"),
    (["--data", "/no/such/folder"], "--data /no/such/folder is neither a folder nor one of"),
    (["--zero-stage", "3"], "--zero-stage must be 0, 1 or 2"),
    (["--precision", "fp8"], "--precision must be one of"),
    (["--method", "mbnat"], "--method mbnat needs a dual-BN model"),
    (["--tau", "20"], "--tau must be in [0, steps=10]"),
    (["--deepaugment-edsr", "/no/edsr.pt", "--method", "nofrost_star"], "--deepaugment-edsr /no/edsr.pt does not exist"),
    (["--compile", "max"], "--compile must be one of auto, none, attack, full"),
    (["--compile-attack", "default"], "--compile-attack was replaced by --compile none|attack|full"),
    (["--views", "zip"], "--views must be one of concat, sequential"),
    (["--ws", "fused"], "--ws must be one of grouped, per-layer"),
    (["--views", "sequential", "--method", "trades"], "--views sequential needs a loss that is a sum over views"),
    (["--views", "sequential", "--precision", "fp16"], "--views sequential cannot skip an fp16 batch"),
])
def test_bad_fields_get_one_clear_sentence(argv, message):
    with pytest.raises(ConfigError) as info:
        load_config(argv)
    assert message in str(info.value)
    assert str(info.value).count("\n") == 1  # exactly one bad field reported


def test_every_bad_field_is_listed_and_batch_checked_against_world_size():
    with pytest.raises(ConfigError) as info:
        load_config(["--lambda", "2", "--steps", "0", "--smoothing", "1"])
    assert str(info.value).count("\n") == 3
    with pytest.raises(ConfigError, match="multiple of world size"):
        load_config(["--batch-size", "63"], world_size=2)


def test_defaults_reproduce_the_recipe_and_the_demo_preset():
    c = validate(TrainConfig())
    assert (c.model, c.method, c.eps, c.steps, c.lam, c.epochs) == ("nf_resnet50", "nofrost", 8.0, 10, 0.5, 90)
    assert (c.momentum, c.nesterov, c.wd, c.smoothing, c.drop, c.drop_path) == (0.9, True, 5e-5, 0.1, 0.25, 0.1)
    assert c.peak_lr == pytest.approx(0.1) and TrainConfig(batch_size=1024).peak_lr == pytest.approx(0.4)
    demo = load_config([])
    assert demo.data == "digits" and demo.method == "nofrost" and demo.model == DEMO["model"]
    explicit = load_config(["--data", "digits", "--model", "nf_resnet26_small"])
    assert explicit.width == 1.0 and explicit.epochs == 90  # no preset once data is given


def test_official_script_recipe_sets_exactly_its_fields_and_the_flags_override_it(tmp_path):
    paper = load_config(["--data", "digits"])
    official = load_config(["--data", "digits", "--recipe", "official-script"])
    changed = {f.name: (getattr(paper, f.name), getattr(official, f.name)) for f in dataclasses.fields(TrainConfig)
               if getattr(paper, f.name) != getattr(official, f.name)}
    assert changed == {"recipe": ("paper", "official-script"), "steps": (10, 7), "val_steps": (10, 5), "val_alpha": ("auto", "train"),
                       "lr_schedule": ("step", "epoch"), "decay_all": (False, True)}
    mixed = load_config(["--data", "digits", "--recipe", "official-script", "--steps", "3", "--lr-schedule", "step"])
    assert (mixed.steps, mixed.lr_schedule, mixed.val_steps, mixed.decay_all) == (3, "step", 5, True)
    path = tmp_path / "run.yaml"  # a config file overrides the preset too, and the flags the file
    path.write_text("recipe: official-script\nval-steps: 9\n")
    c = load_config(["--config", str(path), "--data", "digits", "--decay-all", "false"])
    assert (c.steps, c.val_steps, c.decay_all, c.lr_schedule) == (7, 9, False, "epoch")
    with pytest.raises(ConfigError, match="--recipe must be one of paper, official-script"):
        load_config(["--recipe", "pgdat"])
    with pytest.raises(ConfigError, match="--lr-schedule must be one of step, epoch"):
        load_config(["--lr-schedule", "hourly"])


def test_validation_attack_step_is_pgds_default_or_the_training_attacks(monkeypatch):
    """--val-alpha auto: PGD's own default for --val-steps; train (official-script): the training
    attack's step, as PGDAT.py's attacker_val; validate() hands it to the attack."""
    import fastnofrost.training.validate as validation

    step = lambda eps, steps: min(1.25 * eps, eps + 4) / steps / 255  # noqa: E731  (the recipe's, in pixels)
    assert load_config(["--data", "digits"]).val_alpha_pixels is None
    assert load_config(["--data", "digits", "--recipe", "official-script"]).val_alpha_pixels == pytest.approx(
        step(8, 7))
    assert load_config(["--data", "digits", "--val-alpha", "train", "--steps", "3", "--eps", "4"]).val_alpha_pixels \
        == pytest.approx(step(4, 3))
    assert load_config(["--data", "digits", "--val-alpha", "train", "--alpha", "2"]).val_alpha_pixels == 2 / 255
    seen = []
    real = validation.pgd
    monkeypatch.setattr(validation, "pgd", lambda *a, **kw: seen.append(a[3:6]) or real(*a, **kw))
    loader = build_loader("digits", train=False, batch_size=16, image_size=16)
    validation.validate(tiny("nf_resnet26_small"), loader, eps=4 / 255, steps=2, examples=16, precision="fp32",
                        device=torch.device("cpu"), alpha=1 / 255)
    assert seen == [(4 / 255, 2, 1 / 255)]


def test_per_epoch_cosine_is_torch_cosine_annealing_stepped_per_epoch():
    from fastnofrost.training.schedule import cosine_with_warmup

    epochs, per_epoch = 6, 4
    factor = cosine_with_warmup(epochs * per_epoch, 0, per_epoch)
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    reference = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    for epoch in range(epochs):
        for i in range(per_epoch):
            assert factor(epoch * per_epoch + i) == pytest.approx(optimizer.param_groups[0]["lr"], abs=1e-12)
        optimizer.step()
        reference.step()
    per_step = cosine_with_warmup(epochs * per_epoch, 0)
    assert per_step(1) < per_step(0) == factor(1)  # the default moves every step


def test_decay_all_puts_every_parameter_under_weight_decay():
    from fastnofrost.training.engine import param_groups

    model = tiny("nf_resnet26_small")
    params = list(model.parameters())
    decay, no_decay = param_groups(TrainConfig(), model)
    assert no_decay["params"] and no_decay["weight_decay"] == 0.0  # biases and 1-d parameters
    assert all(p.ndim <= 1 for p in no_decay["params"]) and len(decay["params"]) + len(no_decay["params"]) == len(params)
    decay, no_decay = param_groups(TrainConfig(decay_all=True, wd=1e-3), model)
    assert len(decay["params"]) == len(params) and decay["weight_decay"] == 1e-3 and not no_decay["params"]


def test_help_groups_flags_by_section_and_switches_take_a_value_or_none():
    """--help follows config.py's sections, each field in its own; a boolean works as a bare
    switch (true) or with true/false."""
    from fastnofrost.config import parser

    assert "--val-strong-examples" in parser().format_help()  # every help text formats (no stray %)
    groups = {g.title: [a.dest for a in g._group_actions] for g in parser()._action_groups}
    for f in dataclasses.fields(TrainConfig):
        assert f.name in groups[f.metadata["section"]], f.name
    assert groups["model"][:2] == ["model", "width"] and "resume" in groups["run"] and "data" in groups["data"]
    assert ["recipe", "model", "method", "optimization", "data", "run"] == [t for t in groups if t in (
        "recipe", "model", "method", "optimization", "data", "run")]
    c = load_config(["--resume", "--epochs", "3", "--progress", "false", "--tensorboard"])
    assert (c.resume, c.epochs, c.progress, c.tensorboard) == ("true", 3, False, True)
    assert [load_config(["--resume", v]).resume for v in ("false", "no", "auto", "AUTO")] == ["false", "false", "auto",
                                                                                             "auto"]
    with pytest.raises(SystemExit):
        load_config(["--resume", "maybe"])


def test_demo_preset_is_announced_with_the_fields_it_set():
    notices = []
    c = load_config(["--width", "0.5", "--method", "st"], notices=notices)
    assert c.width == 0.5 and c.model == DEMO["model"] and len(notices) == 1
    preset = {k: v for k, v in DEMO.items() if k != "width"}
    assert notices[0].startswith("no --data: this is the embedded demo")
    assert all(f"{k.replace('_', '-')}={v}" in notices[0] for k, v in preset.items()) and "width=" not in notices[0]
    assert "for a real run pass --data" in notices[0]
    for given in (["--data", "digits"], ["--data-backend", "synthetic"]):
        quiet = []
        load_config(given, notices=quiet)
        assert quiet == []


def test_resume_refuses_each_field_the_data_order_schedule_or_model_depend_on():
    """config.json's record against a resume's: the fields in RESUME_SAFE may change, every
    other field, the world size and the resolved precision and data backend may not."""
    from fastnofrost.config import RESOLVED, RESUME_SAFE, resume_changes, run_record

    base = load_config(["--data", "digits"])
    saved = json.loads(json.dumps(run_record(base, "fp32", "torch", 1)))  # as config.json holds it
    safe = load_config(["--data", "digits", "--log-every", "3", "--keep-last", "5", "--compile", "attack",
                        "--max-steps", "7", "--resume", "auto", "--out", "elsewhere", "--workers", "2"])
    assert resume_changes(saved, run_record(safe, "fp32", "torch", 1)) == []
    changed = load_config(["--data", "digits", "--batch-size", "128", "--model", "nf_resnet26_small", "--epochs", "91"])
    assert resume_changes(saved, run_record(changed, "fp32", "torch", 1)) == [
        "--model nf_resnet50 -> nf_resnet26_small", "--epochs 90 -> 91", "--batch-size 256 -> 128"]
    assert resume_changes(saved, run_record(load_config(["--data", "digits", "--precision", "fp32"]), "fp32", "torch",
                                            1)) == []  # auto and fp32 resolving alike
    assert resume_changes(saved, run_record(base, "bf16", "dali-cpu", 2)) == [
        "--precision (as resolved) fp32 -> bf16", "--data-backend (as resolved) torch -> dali-cpu", "world size 1 -> 2"]
    older = {k: v for k, v in saved.items() if k != "nesterov"}  # a record without a field: at its default
    assert resume_changes(older, run_record(base, "fp32", "torch", 1)) == []
    for f in dataclasses.fields(TrainConfig):
        other = {**saved, f.name: "other"}
        found = resume_changes(other, run_record(base, "fp32", "torch", 1))
        allowed = f.name in RESUME_SAFE or f.name in RESOLVED
        assert found == ([] if allowed else [found[0]]) and (allowed or found[0].startswith(f.metadata.get("flag") or
                                                                                         "--" + f.name.replace("_", "-"))), f.name


def test_yaml_config_and_precedence(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("method: trades\nlambda: 0.25\nbatch-size: 128\nbeta: 3\n")
    c = load_config(["--config", str(path), "--beta", "4"])
    assert (c.method, c.lam, c.batch_size, c.beta) == ("trades", 0.25, 128, 4.0)
    path.write_text("methd: trades\n")
    with pytest.raises(ConfigError, match="unknown field 'methd'"):
        load_config(["--config", str(path)])
    path.write_text("eps: eight\n")
    with pytest.raises(ConfigError, match="field 'eps' has a bad value"):
        load_config(["--config", str(path)])


# ------------------------------------------------------------------ the command line, end to end

def train_cmd(out, *extra, precision="fp32"):
    """train.py on a tiny run. The precision is pinned (auto is bf16 on a CPU with native bf16,
    fp32 elsewhere, and CI hosts differ), the validation every epoch and PGD's alone (the
    validation attacks' own test below); a later flag in ``extra`` wins."""
    return [sys.executable, TRAIN, "--out", str(out), "--progress", "false", "--tensorboard", "false",
            "--width", "0.25", "--image-size", "16", "--batch-size", "32", "--steps", "2", "--epochs", "2",
            "--val-examples", "64", "--val-every", "1", "--val-attacks", "pgd", "--precision", precision, *extra]


def env(**kw):
    return {**os.environ, "OMP_NUM_THREADS": "1", **kw}


def run(cmd, **kw):
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env(), timeout=600, **kw)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def losses(out):
    return {r["step"]: r["loss"] for r in read_log(str(out)) if r["kind"] == "train"}


def test_cli_trains_logs_plots_and_checkpoints(tmp_path):
    out = tmp_path / "run"
    proc = run(train_cmd(out, "--max-steps", "6", "--log-every", "2", "--keep-last", "2", "--save-every", "2",
                         "--tensorboard", "true", precision="auto"))
    # the run's first lines (after DeepSpeed's own): no --data, so the demo preset's sentence, then
    # the precision auto chose on this host, and why
    precision, why = auto_precision(torch.device("cpu"))
    ours = proc.stdout[proc.stdout.index("\nno --data: this is the embedded demo") + 1:].splitlines()
    assert ours[1] == f"precision {precision} ({why})" and ours[2].startswith("nofrost on nf_resnet26_small")
    assert json.loads((out / "config.json").read_text())["precision_resolved"] == precision
    for name in ("config.json", "log.jsonl", "loss.png", "accuracy.png", "final.safetensors", "summary.json",
                 "best_clean.safetensors", "best_robust.safetensors"):
        assert (out / name).is_file(), name
    assert any((out / "tb").iterdir())
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 6 and summary["ranks_in_sync"] and 0 <= summary["clean"] <= 100
    tags = sorted(os.listdir(out / "checkpoints"))
    assert tags == ["latest", "step4", "step6"]  # keep-last 2, nothing half-written left
    assert (out / "checkpoints" / "latest").read_text() == "step6"
    records = read_log(str(out))
    assert [r["step"] for r in records if r["kind"] == "train"] == [2, 4, 6]
    assert {"loss_clean", "loss_adv", "acc_clean", "acc_adv", "img_s", "lr"} <= set(records[0])
    # a second run into the same folder without --resume is refused, and so is a resume that
    # changes the batch size and the seed, losing nothing
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    proc = subprocess.run(train_cmd(out), capture_output=True, text=True, env=env(), timeout=600)
    assert proc.returncode == 1 and "already holds a run" in proc.stderr
    proc = subprocess.run(train_cmd(out, "--resume", "auto", "--batch-size", "64", "--seed", "3", "--log-every", "1",
                                    precision="auto"), capture_output=True, text=True, env=env(), timeout=600)
    refusal = [line for line in proc.stderr.splitlines() if "--resume:" in line]
    assert proc.returncode == 1 and len(refusal) == 1, proc.stderr  # one sentence
    assert "(--batch-size 32 -> 64; --seed 0 -> 3)" in refusal[0] and "--log-every" not in refusal[0]
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == before


def test_resume_true_without_a_checkpoint_exits_before_any_work(tmp_path):
    proc = subprocess.run(train_cmd(tmp_path / "r", "--resume"), capture_output=True, text=True, env=env())
    assert proc.returncode == 1 and "holds no checkpoint" in proc.stderr and "--resume auto" in proc.stderr


def test_validation_attacks_equal_evaluate_on_the_same_attacks_seed_and_examples(tmp_path):
    """The validation attacks of a run (their subset, seed, budgets) give the numbers
    ``python -m fastnofrost.evaluate --run`` gives the final weights on the same attacks, seed and
    examples; the run reports them in its log line, log.jsonl, summary.json and accuracy.png."""
    out = tmp_path / "run"
    proc = run(train_cmd(out, "--val-attacks", "pgd,apgd-ce,apgd-t", "--val-strong-examples", "24", "--max-steps", "2",
                         "--seed", "3", "--val-steps", "3"))
    assert "validation attacks pgd, apgd-ce, apgd-t on 24 examples spread over the validation set" in proc.stdout
    assert "worst case of pgd,apgd-ce,apgd-t" in proc.stdout and "masking check" in proc.stdout
    record = [r for r in read_log(str(out)) if r["kind"] == "val"][-1]
    assert record["strong_n"] == 24 and record["worst"] <= min(record[f"strong_{n}"] for n in ("pgd", "apgd-ce",
                                                                                                  "apgd-t"))
    assert record["best_robust"] and record["best_robust_pgd"] and isinstance(record["warnings"], list)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["worst"] == record["worst"] and summary["best_robust"] == record["worst"]
    assert summary["best_robust_pgd"] == record["robust"] and (out / "accuracy.png").is_file()
    report_dir = tmp_path / "eval"
    run([sys.executable, "-m", "fastnofrost.evaluate", "--run", str(out), "--which", "final", "--attacks",
         "clean,pgd,apgd-ce,apgd-t", "--steps", "3", "--n-examples", "24", "--seed", "3", "--batch-size", "32",
         "--precision", "fp32", "--workers", "0", "--no-progress", "--out", str(report_dir)])
    report = json.loads((report_dir / "report.json").read_text())
    assert {n: r["accuracy"] for n, r in report["attacks"].items()} == {
        n: record[f"strong_{n}"] for n in ("clean", "pgd", "apgd-ce", "apgd-t")}
    assert report["worst_case"]["all"]["accuracy"] == record["worst"]


def test_apgd_t_on_too_few_classes_stops_before_the_first_epoch(tmp_path):
    from fastnofrost.data.samples import make_class_folder

    make_class_folder(tmp_path / "data", classes=3, per_class=(("train", 4), ("val", 2)), size_range=(16, 24))
    proc = subprocess.run(train_cmd(tmp_path / "r", "--data", str(tmp_path / "data"), "--workers", "0",
                                    "--batch-size", "4", "--val-attacks", "pgd,apgd-t"),
                          capture_output=True, text=True, env=env(), timeout=600)
    assert proc.returncode == 1 and "APGD-T targets the 9 most likely other classes, and the data has 3" in proc.stderr
    assert not (tmp_path / "r" / "log.jsonl").exists() or "train" not in (tmp_path / "r" / "log.jsonl").read_text()


def test_bad_flag_exits_before_any_work(tmp_path):
    proc = subprocess.run(train_cmd(tmp_path / "r", "--lambda", "3"), capture_output=True, text=True, env=env())
    assert proc.returncode == 2 and "--lambda must be in [0, 1], got 3.0" in proc.stderr
    assert not (tmp_path / "r").exists()


RESUME_RUN = ["--method", "nofrost", "--max-steps", "12", "--log-every", "1", "--save-every", "3",
              "--drop", "0.25", "--drop-path", "0.1", "--val-every", "0"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The losses of RESUME_RUN without interruption (12 steps, one rank)."""
    out = tmp_path_factory.mktemp("uninterrupted") / "run"
    run(train_cmd(out, *RESUME_RUN, "--resume", "auto"))  # no checkpoint yet: a new run
    assert sorted(losses(out)) == list(range(1, 13))
    return losses(out)


def wait_for_step(proc, out, step, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if (out / "log.jsonl").exists() and max(losses(out), default=0) >= step:
            return
        time.sleep(0.05)
    raise AssertionError(f"the run ended (rc {proc.poll()}) or stalled before step {step}")


def test_resume_after_sigkill_is_bit_exact(tmp_path, uninterrupted):
    killed = tmp_path / "killed"
    proc = subprocess.Popen(train_cmd(killed, *RESUME_RUN), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=env())
    wait_for_step(proc, killed, 8)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = losses(killed)
    assert 8 <= max(before) < 12, "the run must die mid-way (after a checkpoint, before the end)"
    assert (killed / "checkpoints" / "latest").read_text() in ("step6", "step9")
    run(train_cmd(killed, *RESUME_RUN, "--resume", "auto", "--keep-last", "3"))  # a field a resume may change
    assert losses(killed) == uninterrupted  # every step's loss, bit for bit (floats from JSON)
    assert not [t for t in os.listdir(killed / "checkpoints") if t.startswith("tmp-")]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1], ids=["SIGTERM", "SIGUSR1"])
def test_preemption_signal_checkpoints_the_step_and_resume_is_bit_exact(tmp_path, uninterrupted, sig):
    """A cluster's stop signal mid-epoch: the run finishes its step, writes that step's
    checkpoint (not a --save-every one), exits with the documented code, and --resume goes on
    with every loss bit for bit the uninterrupted run's."""
    from fastnofrost.training.preemption import EXIT_CODE

    out = tmp_path / "run"
    proc = subprocess.Popen(train_cmd(out, *RESUME_RUN), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env())
    wait_for_step(proc, out, 4)
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == EXIT_CODE, stderr[-3000:]
    stopped = max(losses(out))
    assert 4 <= stopped < 12, "the run must stop mid-way"
    assert f"stopped by {sig.name} after step {stopped}" in stderr and "--resume true" in stderr
    assert (out / "checkpoints" / "latest").read_text() == f"step{stopped}"
    assert not (out / "final.safetensors").exists() and not (out / "summary.json").exists()
    run(train_cmd(out, *RESUME_RUN, "--resume", "true"))
    assert losses(out) == uninterrupted
    assert json.loads((out / "summary.json").read_text())["steps"] == 12


def train_records(out):
    return [r for r in read_log(str(out)) if r["kind"] == "train"]


def kill_after(out, cmd, step):
    """Start ``cmd`` and SIGKILL it once the log holds ``step``."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env())
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        if (out / "log.jsonl").exists() and max(losses(out), default=0) >= step:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


@needs_inductor_cpu
def test_compile_full_trains_like_eager_without_recompiles_through_a_resume(tmp_path):
    """--compile full end to end, killed (SIGKILL) in epoch 2 and resumed: the losses of eager
    training (fp32: within 1e-3, as inductor reorders float sums and a sign step on a near-zero
    gradient may flip; the float64 equality is test_compile_full_equals_eager_in_float64), no
    graph break, and in each process no graph compiled after warm-up (its first epoch and
    validation): later steps, validations and the resumed epochs reuse the graphs, and no
    torch.compile wrapper is built after the first step."""
    common = ["--method", "nofrost", "--train-examples", "128", "--epochs", "3", "--log-every", "1",
              "--save-every", "3", "--val-examples", "32"]
    eager, full = tmp_path / "eager", tmp_path / "full"
    run(train_cmd(eager, *common, "--compile", "none"))
    kill_after(full, train_cmd(full, *common, "--compile", "full"), 7)
    assert 7 <= max(losses(full)) < 12 and (full / "checkpoints" / "latest").read_text() == "step6"
    run(train_cmd(full, *common, "--compile", "full", "--resume", "true"))
    l_eager, l_full = losses(eager), losses(full)
    assert sorted(l_full) == sorted(l_eager) == list(range(1, 13))  # 4 steps an epoch
    assert [l_full[s] for s in l_full] == pytest.approx([l_eager[s] for s in l_full], rel=1e-3)
    graphs = {r["step"]: r["graphs"] for r in train_records(full)}  # steps 1-6: the killed process
    warm = graphs[5]  # epoch 2's first step: epoch 1 and its validation compiled everything
    assert graphs[6] == warm  # the killed process, after warm-up
    assert [graphs[s] for s in (9, 10, 11, 12)] == [warm] * 4  # the resumed process, past its validation
    # each process built two compiled wrappers, the training module's and the attack step's, at its first step
    assert {r["compiles"] for r in train_records(full)} == {2}
    summary = json.loads((full / "summary.json").read_text())
    assert summary["compile"] == "full" and summary["graphs"] == warm and summary["graph_breaks"] == 0
    assert summary["compiles"] == 2
    assert "graphs" not in train_records(eager)[0]


def test_sequential_views_under_zero_2_and_accumulation_equal_concat(tmp_path):
    """--views sequential (two backwards per micro-batch, the boundary set by the run) under
    DeepSpeed ZeRO 2 with 2 accumulation steps trains as --views concat under ZeRO 0: same
    number of optimizer steps and the same losses and weights (fp32, rounding apart)."""
    common = ["--method", "nofrost", "--max-steps", "3", "--grad-accum", "2", "--val-every", "0", "--log-every", "1"]
    run(train_cmd(tmp_path / "concat", *common))
    run(train_cmd(tmp_path / "seq", *common, "--views", "sequential", "--zero-stage", "2"))
    l_concat, l_seq = losses(tmp_path / "concat"), losses(tmp_path / "seq")
    assert sorted(l_seq) == sorted(l_concat) == [1, 2, 3]
    assert [l_seq[s] for s in l_concat] == pytest.approx([l_concat[s] for s in l_concat], rel=1e-4)
    from safetensors.torch import load_file

    a, b = (load_file(str(tmp_path / d / "final.safetensors")) for d in ("concat", "seq"))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-5)
    assert json.loads((tmp_path / "seq" / "summary.json").read_text())["views"] == "sequential"


def test_grouped_ws_trains_as_per_layer_under_zero_0_1_2_and_accumulation(tmp_path):
    """--ws grouped (the default) under ZeRO 0, 1 and 2 with 2 accumulation steps trains as the
    per-layer reference: the same losses and weights, float32 rounding apart (the grouped rows
    are computed as the per-layer ones, but the compiler may sum a row in another order)."""
    common = ["--method", "nofrost", "--max-steps", "3", "--grad-accum", "2", "--val-every", "0", "--log-every", "1"]
    run(train_cmd(tmp_path / "per-layer", *common, "--ws", "per-layer"))
    from safetensors.torch import load_file

    ref = load_file(str(tmp_path / "per-layer" / "final.safetensors"))
    for zero in (0, 1, 2):
        out = tmp_path / f"zero{zero}"
        run(train_cmd(out, *common, "--zero-stage", str(zero)))
        assert json.loads((out / "summary.json").read_text())["ws"] == "grouped"
        got, tol = load_file(str(out / "final.safetensors")), 1e-5
        assert losses(out) == pytest.approx(losses(tmp_path / "per-layer"), rel=tol)
        for key in ref:
            torch.testing.assert_close(got[key], ref[key], rtol=tol, atol=tol, msg=f"ZeRO {zero}: {key}")


def test_two_deepspeed_ranks_equal_one_rank_on_the_full_batch(tmp_path):
    """`deepspeed --num_gpus 2` on CPU (gloo): parameters identical on both ranks and equal (fp32)
    to one rank on the full batch (ST, no dropout: nothing random differs between the runs)."""
    deepspeed = os.path.join(os.path.dirname(sys.executable), "deepspeed")
    common = ["--method", "st", "--max-steps", "4", "--drop", "0", "--drop-path", "0", "--val-every", "0",
              "--smoothing", "0.1", "--log-every", "1"]
    run(train_cmd(tmp_path / "one", *common))
    proc = run([deepspeed, "--num_gpus", "2", *train_cmd(tmp_path / "two", *common)[1:]])
    summary = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["ranks_in_sync"] is True, proc.stdout[-2000:]
    from safetensors.torch import load_file

    one, two = (load_file(str(tmp_path / d / "final.safetensors")) for d in ("one", "two"))
    assert one.keys() == two.keys()
    for key in one:
        torch.testing.assert_close(two[key], one[key], rtol=1e-5, atol=1e-6)
    l1, l2 = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert sorted(l1) == sorted(l2) == [1, 2, 3, 4]
    assert [l2[s] for s in l2] == pytest.approx([l1[s] for s in l2], rel=1e-5)  # same losses on the full batch
    assert l1[4] != l1[1]  # the weights moved


def test_preemption_of_one_rank_stops_both_in_step_and_resume_is_exact(tmp_path):
    """2 DeepSpeed ranks on CPU; SIGTERM reaches rank 1 only: both ranks stop after the same
    step and write one checkpoint, the launcher exits with the documented code, and the resumed
    run's losses (all-reduced over the ranks) equal an uninterrupted 2-rank run's, bit for bit,
    with the ranks' parameters identical at the end."""
    import psutil

    from fastnofrost.training.preemption import EXIT_CODE

    deepspeed = os.path.join(os.path.dirname(sys.executable), "deepspeed")
    common = [*RESUME_RUN[:RESUME_RUN.index("--max-steps")], "--max-steps", "8",
              *RESUME_RUN[RESUME_RUN.index("--max-steps") + 2:]]
    two = lambda out, *extra: [deepspeed, "--num_gpus", "2", *train_cmd(out, *common, *extra)[1:]]  # noqa: E731
    run(two(tmp_path / "full"))
    out = tmp_path / "stopped"
    proc = subprocess.Popen(two(out), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env())
    wait_for_step(proc, out, 3)
    ranks = {c.environ().get("LOCAL_RANK"): c for c in psutil.Process(proc.pid).children(recursive=True)
             if TRAIN in " ".join(c.cmdline())}
    ranks["1"].send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == EXIT_CODE, output[-3000:]
    stopped = max(losses(out))
    assert 3 <= stopped < 8 and output.count(f"stopped by SIGTERM after step {stopped}") == 2, output[-3000:]
    assert (out / "checkpoints" / "latest").read_text() == f"step{stopped}"
    assert {"rng_rank0.pt", "rng_rank1.pt"} <= set(os.listdir(out / "checkpoints" / f"step{stopped}"))
    run(two(out, "--resume", "true"))
    assert losses(out) == losses(tmp_path / "full") and len(losses(out)) == 8
    assert json.loads((out / "summary.json").read_text())["ranks_in_sync"] is True


SAVE_UNDER_SIGNALS = """
import os, signal, sys, torch, deepspeed
from fastnofrost import distributed
from fastnofrost.training.checkpoint import Checkpoints
from fastnofrost.training.preemption import Preemption
mode, root = sys.argv[1:]
distributed.init("cpu")
model = torch.nn.Linear(4, 2, bias=False)
engine, *_ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config={"train_batch_size": 1},
                                  optimizer=torch.optim.SGD(model.parameters(), lr=0.1))
checkpoints = Checkpoints(root)
if mode == "load":
    state = checkpoints.load(engine)
    print("loaded", checkpoints.latest(), state["n"], float(model.weight.sum()))
    sys.exit(0)
preemption = Preemption()
with torch.no_grad():
    model.weight.fill_(1.0)
checkpoints.save(engine, "step1", {"n": 1})
write = engine.save_checkpoint

def write_under_signals(*args, **kw):  # the stop signal, then a second one, in the middle of the write
    write(*args, **kw)
    os.kill(os.getpid(), signal.SIGTERM)
    os.kill(os.getpid(), signal.SIGUSR1 if mode == "signal" else signal.SIGKILL)

engine.save_checkpoint = write_under_signals
with torch.no_grad():
    model.weight.fill_(2.0)
checkpoints.save(engine, "step2", {"n": 2})
print("requested", preemption.requested())
"""


@pytest.mark.parametrize("second", ["signal", "kill"])
def test_a_second_signal_during_the_checkpoint_write_keeps_a_loadable_checkpoint(tmp_path, second):
    """SIGTERM, then SIGUSR1 or SIGKILL, while a checkpoint is being written: a second stop
    signal is recorded and the write completes; SIGKILL leaves the previous checkpoint as the
    latest, and it loads."""
    root = str(tmp_path / "checkpoints")
    script = lambda mode: [sys.executable, "-c", SAVE_UNDER_SIGNALS, mode, root]  # noqa: E731
    proc = subprocess.run(script(second), capture_output=True, text=True, env=env(), timeout=300)
    if second == "signal":
        assert proc.returncode == 0 and "requested SIGTERM" in proc.stdout, proc.stderr[-3000:]
    else:
        assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
        assert "tmp-step2" in os.listdir(root)  # the write was cut off half-way
    tag, n, total = ("step2", 2, 16.0) if second == "signal" else ("step1", 1, 8.0)
    loaded = run(script("load")).stdout
    assert f"loaded {tag} {n} {total}" in loaded, loaded


@pytest.mark.parametrize("save_every,log_every", [(1, 50), (0, 4)])
def test_non_finite_loss_stops_with_a_clear_message(tmp_path, save_every, log_every):
    """The loss is watched on the device and read at log boundaries and before saves: the run
    stops at the first of them after the blow-up, names the step, and no checkpoint holds
    non-finite weights."""
    out = tmp_path / "r"
    proc = subprocess.run(train_cmd(out, "--lr", "1e9", "--max-steps", "30", "--val-every", "0",
                                    "--save-every", str(save_every), "--log-every", str(log_every)),
                          capture_output=True, text=True, env=env(), timeout=600)
    assert proc.returncode == 1 and "non-finite loss at step" in proc.stderr, proc.stderr[-2000:]
    assert "clean=" in proc.stderr and "adv=" in proc.stderr and "stopping without writing a checkpoint" in proc.stderr
    bad = int(proc.stderr.split("non-finite loss at step ")[1].split()[0])
    logged = [r["step"] for r in read_log(str(out)) if r["kind"] == "train"]
    assert all(step < bad for step in logged)  # no log line after the blow-up
    if not save_every:  # stopped at the next log boundary: nothing was logged there or after
        assert logged == [s for s in range(log_every, bad, log_every)]
    ckpts = out / "checkpoints"
    saved = [t for t in os.listdir(ckpts) if t.startswith("step")] if ckpts.exists() else []
    assert all(int(t[4:]) < bad for t in saved)
    for tag in saved:  # the checkpoints written before the blow-up hold finite weights
        state = torch.load(ckpts / tag / "mp_rank_00_model_states.pt", weights_only=False)["module"]
        assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


def test_a_skipped_fp16_batch_keeps_the_accumulation_boundary(tmp_path):
    """--precision fp16 --grad-accum 2, the loss of the 2nd micro-batch (the first window's
    boundary) NaN: the batch is skipped with a warning, yet it counts as a micro-batch for the
    run and for DeepSpeed alike, so 3 optimizer steps take exactly 6 micro-batches and DeepSpeed
    steps at every 2nd one (its counts after each engine.step())."""
    report = tmp_path / "fp16.json"
    proc = run([sys.executable, os.path.join(REPO, "tests", "fp16_skip.py"), str(report), "2", "--",
                *train_cmd(tmp_path / "r", "--precision", "fp16", "--grad-accum", "2", "--max-steps", "3",
                           "--log-every", "1", "--val-every", "0")[2:]])
    result = json.loads(report.read_text())
    assert result["rc"] == 0 and "batch skipped (fp16)" in proc.stdout + proc.stderr, proc.stderr[-2000:]
    assert result["micro_batches"] == 6
    assert result["steps"] == [[1, 0], [2, 1], [3, 1], [4, 2], [5, 2], [6, 3]]
    assert [r["step"] for r in train_records(tmp_path / "r")] == [1, 2, 3]


# The host reads a method needs inside a step, per attack, with the reason.
NEEDED_READS = {
    "item in pgd.py:pgd_random_start": "the random start's seed, drawn from torch's CPU generator: a host "
                                       "tensor on every device, so no device sync",
}


@pytest.mark.parametrize("method,extra", [
    ("nofrost", ()), ("trades", ()), ("fat", ()), ("mbnat", ("--model", "resnet26_dualbn_small")),
    ("nofrost", ("--data-backend", "synthetic")),
], ids=["nofrost", "trades", "fat", "mbnat", "nofrost-synthetic"])
def test_no_host_read_inside_training_steps(tmp_path, method, extra):
    """Between log boundaries a step reads no tensor on the host (no .item(), bool(), ...) and
    nothing synchronizes the device (DeepSpeed's timers included): the host queues the next
    kernels while the device works. Counted by tests/host_reads.py over 4 steps; only the reads
    of NEEDED_READS (and FAT's early stop) are allowed, each an exact number of times."""
    report = tmp_path / "reads.json"
    run([sys.executable, os.path.join(REPO, "tests", "host_reads.py"), str(report), "--",
         *train_cmd(tmp_path / "r", "--method", method, "--max-steps", "4", "--log-every", "2", "--val-every", "0",
                    *extra)[2:]])
    result = json.loads(report.read_text())
    assert result["rc"] == 0
    attacks, steps = 4, 2  # one attack per step; PGD-2 (train_cmd's --steps)
    expected = {name: attacks for name in NEEDED_READS if method != "trades"}  # TRADES: a Gaussian start
    if method == "fat":  # the early stop asks the host, per PGD step, whether any sample still moves
        expected["__bool__ in pgd.py:run"] = attacks * steps
    assert result["calls"] == expected
    assert result["syncs"] == {}


@pytest.mark.parametrize("stage,config", [(1, "ours"), (2, "ours"), (2, "deepspeed-default")])
def test_bf16_gradients_are_reduced_in_fp32_under_zero(tmp_path, stage, config):
    """Two DeepSpeed ranks on CPU, bf16 autocast, a BN baseline (nn.Conv2d and nn.Linear, the
    modules DeepSpeed's default lower_precision_safe_modules communicate in bf16): with the
    generated config the reduced gradients equal an fp32 all-reduce of the same local gradients
    (up to the rounding of the lr-1 SGD step that exposes them, ~1e-5); with DeepSpeed's default
    list they are off by bf16's rounding (~4e-3), which the check must see."""
    deepspeed = os.path.join(os.path.dirname(sys.executable), "deepspeed")
    report = tmp_path / "reduction.json"
    from fastnofrost.distributed import free_port

    run([deepspeed, "--num_gpus", "2", "--master_port", str(free_port()), os.path.join(REPO, "tests", "bf16_reduction.py"),
         str(report), str(stage), config])
    error = json.loads(report.read_text())["error"]
    if config == "ours":
        assert error < 1e-4
    else:
        assert error > 1e-3


def test_a_stale_extension_build_lock_stops_the_start_with_its_name(tmp_path, monkeypatch):
    """torch <= 2.11 (FileBaton) waits forever on a build lock file that a killed build left; the
    run waits a bounded time, then names the lock. A lock released meanwhile (another run's build
    done) lets it go on. Newer torch holds an OS lock on a file that stays: no wait at all."""
    from torch.utils import cpp_extension
    from fastnofrost.distributed import wait_for_build_locks

    lock = tmp_path / "py311_cpu" / "deepspeed_shm_comm" / "lock"
    lock.parent.mkdir(parents=True)
    lock.write_text("")
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    said = []
    monkeypatch.delattr(cpp_extension, "FileBaton", raising=False)  # torch 2.14: OS locks
    wait_for_build_locks(timeout=0, poll=0.05, say=said.append)  # returns at once, says nothing
    assert not said and lock.exists()
    monkeypatch.setattr(cpp_extension, "FileBaton", object, raising=False)  # torch 2.11: lock files
    with pytest.raises(RuntimeError, match=f"{lock} has been held for over 0 s.*delete {lock}"):
        wait_for_build_locks(timeout=0.3, poll=0.05, say=said.append)
    assert len(said) == 1 and said[0].startswith(f"waiting for {lock}")
    release = threading.Timer(0.3, lock.unlink)
    release.start()
    wait_for_build_locks(timeout=30, poll=0.05, say=said.append)
    release.join()
    assert not lock.exists()


def test_auto_data_backend_uses_dali_only_when_it_imports(monkeypatch):
    from fastnofrost.training import engine

    def missing():
        raise ImportError("the dali-gpu and dali-cpu data backends need NVIDIA DALI: pip install X")

    folder, cuda = TrainConfig(data="/data/imagenet"), torch.device("cuda")
    monkeypatch.setattr(engine, "import_dali", missing)
    resolved = engine.resolve(folder, cuda)
    assert resolved.backend == "torch" and "DALI does not import" in resolved.backend_why
    assert "pip install X" in resolved.backend_why  # how to install it, in the one log line
    assert engine.resolve(dataclasses.replace(folder, data_backend="dali-gpu"), cuda).backend == "dali-gpu"
    monkeypatch.setattr(engine, "import_dali", lambda: None)
    resolved = engine.resolve(folder, cuda)
    assert (resolved.backend, resolved.backend_why) == ("dali-gpu", "")
    for cfg, device in ((folder, torch.device("cpu")), (TrainConfig(data="digits"), cuda)):
        resolved = engine.resolve(cfg, device)
        assert (resolved.backend, resolved.backend_why) == ("torch", "")


def test_deepspeed_config_from_flags_and_checked_file(tmp_path, caplog):
    from fastnofrost.training.engine import config_problems, deepspeed_config

    cfg = TrainConfig(batch_size=256, grad_accum=2, zero_stage=1)
    ds = deepspeed_config(cfg, world=4, precision="bf16")
    assert (ds["train_batch_size"], ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"]) == (
        256, 32, 2)
    assert ds["zero_optimization"] == {"stage": 1}
    assert ds["torch_autocast"] == {"enabled": True, "dtype": "bfloat16", "lower_precision_safe_modules": []}
    assert ds["wall_clock_breakdown"] is False and ds["timers"] == {"throughput": {"enabled": False}}
    assert config_problems(ds) == []
    assert "torch_autocast" not in deepspeed_config(cfg, 4, "fp32")
    path = tmp_path / "ds.json"
    path.write_text(json.dumps({"bf16": {"enabled": True}}))
    with pytest.raises(ConfigError, match="torch_autocast"):
        deepspeed_config(TrainConfig(deepspeed_config=str(path)), 1, "fp32")
    path.write_text(json.dumps({"train_batch_size": 512}))
    with pytest.raises(ConfigError, match="disagree"):
        deepspeed_config(TrainConfig(deepspeed_config=str(path)), 1, "fp32")
    # a user's file: the no-sync settings and fp32 reduction filled in where it says nothing ...
    path.write_text(json.dumps({"torch_autocast": {"enabled": True, "dtype": "bfloat16"}}))
    ds = deepspeed_config(TrainConfig(deepspeed_config=str(path)), 1, "bf16")
    assert ds["timers"] == {"throughput": {"enabled": False}} and ds["torch_autocast"]["lower_precision_safe_modules"] == []
    with pytest.raises(ConfigError, match="disagrees with --precision fp32"):
        deepspeed_config(TrainConfig(deepspeed_config=str(path)), 1, "fp32")
    path.write_text(json.dumps({"zero_optimization": {"stage": 2}}))  # no autocast section: --precision's
    assert deepspeed_config(TrainConfig(deepspeed_config=str(path)), 1, "bf16")["torch_autocast"] == {
        "enabled": True, "dtype": "bfloat16", "lower_precision_safe_modules": []}
    # ... and a warning for each setting that syncs the device in a step or reduces below fp32
    path.write_text(json.dumps({"wall_clock_breakdown": True, "timers": {"throughput": {"enabled": True}},
                                "torch_autocast": {"enabled": True, "dtype": "bfloat16",
                                                   "lower_precision_safe_modules": ["torch.nn.Linear"]}}))
    with caplog.at_level(logging.WARNING, logger="fastnofrost.train"):
        deepspeed_config(TrainConfig(deepspeed_config=str(path)), 1, "bf16")
    said = " ".join(r.getMessage() for r in caplog.records)
    assert "wall_clock_breakdown synchronizes" in said and "throughput timer synchronizes" in said
    assert "lower_precision_safe_modules communicates" in said

"""Attack suite on a small real classifier (scikit-learn digits, trained in the fixture).

Agreement with independent implementations (torchattacks, pyautoattack), eps-ball / box
containment for every attack, the frozen attack mode (WS once per layer per attack, no weight
gradient, no graph across steps, state restored), mixed precision, compile, argument checks.
"""
import copy
import sys
import weakref

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from fastnofrost.attacks import ATTACKS, apgd, attack_loss, autoattack, get_attack, pgd, rays, square
from fastnofrost.attacks.base import Precision, attack_mode, input_gradient
from fastnofrost.attacks.losses import Objective
from fastnofrost.nn import ScaledStdConv2d, StdConv2d
from fastnofrost.ops import pgd_random_start

from helpers import BENCHMARKS, CountOps, needs_inductor_cpu

sys.path.insert(0, BENCHMARKS)
from official import official_attack, official_model  # noqa: E402  (not a package)

EPS = 0.1  # on 8x8 digits (16 grey levels): robust accuracy around 55-65%, clean 97%
RELU_GAMMA = 1.7139588594436646


class DigitsNet(nn.Module):
    """Three scaled-WS convs + dropout + linear: small, normalizer-free, WS caching exercised."""

    def __init__(self):
        super().__init__()
        self.c1 = ScaledStdConv2d(1, 16, 3, gamma=RELU_GAMMA)
        self.c2 = ScaledStdConv2d(16, 32, 3, stride=2, gamma=RELU_GAMMA)
        self.c3 = ScaledStdConv2d(32, 64, 3, stride=2, gamma=RELU_GAMMA)
        self.drop = nn.Dropout(0.1)
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        x = F.relu(self.c3(F.relu(self.c2(F.relu(self.c1(x))))))
        return self.fc(self.drop(x.mean((2, 3))))


@pytest.fixture(scope="module")
def digits(one_thread):
    """(model, x_test, y_test): DigitsNet trained 15 epochs on 1197 digits, 600 held out."""
    datasets = pytest.importorskip("sklearn.datasets")
    data = datasets.load_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16
    y = torch.tensor(data.target, dtype=torch.int64)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    train, test = perm[:1197], perm[1197:]
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = DigitsNet()
        opt = torch.optim.Adam(model.parameters(), 5e-3)
        for _ in range(15):
            for idx in train[torch.randperm(len(train))].split(128):
                loss = F.cross_entropy(model(x[idx]), y[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
    model.zero_grad(set_to_none=True)  # tests check that attacks leave .grad None
    model.eval()
    assert accuracy(model, x[test], y[test]) > 0.95
    return model, x[test], y[test]


@pytest.fixture(scope="module")
def digits64(digits):
    """The digits model and data in float64: for exact comparisons of sign-step iterates and
    argmax decisions, which in float32 can follow a host's rounding (a gradient or a logit gap
    near zero)."""
    model, x, y = digits
    return copy.deepcopy(model).double(), x.double(), y


def accuracy(model, x, y):
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def assert_informative(acc, name):
    assert 0.1 < acc < 0.9, f"{name}: robust accuracy {acc:.3f} is not informative; retune EPS"


def assert_in_ball(x_adv, x, eps):
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype and not x_adv.requires_grad
    assert not x_adv.isnan().any()
    assert (x_adv - x).abs().max().item() <= eps + 1e-6
    assert x_adv.min().item() >= 0.0 and x_adv.max().item() <= 1.0


def ws_layers(model):
    return [m for m in model.modules() if isinstance(m, (ScaledStdConv2d, StdConv2d))]


# ------------------------------------------------------------ agreement with other implementations

def test_pgd_robust_accuracy_matches_torchattacks(digits):
    torchattacks = pytest.importorskip("torchattacks")
    model, x, y = digits
    steps, alpha = 20, 2.5 * EPS / 20
    ours = accuracy(model, pgd(model, x, y, EPS, steps, alpha, generator=torch.Generator().manual_seed(0)), y)
    theirs = accuracy(model, torchattacks.PGD(model, EPS, alpha, steps, random_start=True)(x, y), y)
    assert_informative(ours, "pgd")
    assert abs(ours - theirs) <= 0.02, (ours, theirs)


@pytest.mark.parametrize("name, reference", [("bim", "BIM"), ("mia", "MIFGSM")])
def test_deterministic_attacks_equal_torchattacks(digits64, name, reference):
    """No random start: the same iterates as torchattacks' BIM / MI-FGSM (decay 1.0), in float64
    (sign steps on near-zero gradient components would follow each host's float32 rounding)."""
    torchattacks = pytest.importorskip("torchattacks")
    model, x, y = digits64
    ours = get_attack(name, eps=EPS, steps=10, alpha=0.02)(model, x, y)
    theirs = getattr(torchattacks, reference)(model, EPS, 0.02, 10)(x, y)
    assert theirs.dtype == torch.float64
    torch.testing.assert_close(ours, theirs, atol=1e-12, rtol=0)


@pytest.mark.parametrize("loss, targeted", [("ce", False), ("dlr", False), ("dlr", True)])
def test_apgd_robust_accuracy_matches_pyautoattack(digits, loss, targeted):
    autopgd = pytest.importorskip("pyautoattack.autopgd_base")
    model, x, y = digits
    steps = 10 if targeted else 40
    ours = apgd(model, x, y, EPS, steps, loss=loss, targeted=targeted, generator=torch.Generator().manual_seed(0))
    if targeted:
        ref = autopgd.APGDAttack_targeted(model, norm="Linf", eps=EPS, n_iter=steps, n_restarts=1, seed=0,
                                          device="cpu")  # 9 target classes, as ours
    else:
        ref = autopgd.APGDAttack(model, norm="Linf", eps=EPS, n_iter=steps, n_restarts=1, loss=loss, seed=0,
                                 device="cpu")
    ours_acc, theirs_acc = accuracy(model, ours, y), accuracy(model, ref.perturb(x, y), y)
    assert_informative(ours_acc, f"apgd {loss}")
    assert abs(ours_acc - theirs_acc) <= 0.02, (ours_acc, theirs_acc)


def test_square_robust_accuracy_matches_pyautoattack(digits):
    square_ref = pytest.importorskip("pyautoattack.square")
    model, x, y = digits
    ours = accuracy(model, square(model, x, y, EPS, 1000, generator=torch.Generator().manual_seed(0)), y)
    ref = square_ref.SquareAttack(model, p_init=0.8, n_queries=1000, eps=EPS, norm="Linf", n_restarts=1, seed=0,
                                  device="cpu")
    theirs = accuracy(model, ref.perturb(x, y), y)
    assert_informative(ours, "square")
    assert abs(ours - theirs) <= 0.02, (ours, theirs)


# ------------------------------------------------------------ every attack: ball, box, state, strength

BUDGETS = {"pgd": dict(steps=10, seed=0), "pgd_targeted": dict(steps=10, seed=0), "cw": dict(steps=10, seed=0),
           "mia": dict(steps=10), "bim": dict(steps=10), "apgd_ce": dict(steps=10, seed=0),
           "apgd_dlr": dict(steps=10, seed=0), "apgd_t": dict(steps=5, n_target_classes=3, seed=0),
           "square": dict(queries=200, seed=0), "rays": dict(queries=200)}


def test_budgets_cover_every_attack():
    assert set(BUDGETS) | {"autoattack"} == set(ATTACKS)


@pytest.mark.parametrize("name", sorted(BUDGETS))
def test_attack_stays_in_ball_and_restores_model(digits, name):
    model, x, y = digits
    x, y = x[:150], y[:150]
    model.train()  # the attack must switch dropout off and restore the mode afterwards
    try:
        x_adv = get_attack(name, eps=EPS, **BUDGETS[name])(model, x, y)
        assert model.training and model.drop.training
        assert all(p.requires_grad and p.grad is None for p in model.parameters())
    finally:
        model.eval()
    assert_in_ball(x_adv, x, EPS)
    assert accuracy(model, x_adv, y) < accuracy(model, x, y) - 0.03, f"{name} barely attacks"


def test_autoattack_standard_in_attack_mode(digits):
    pytest.importorskip("pyautoattack")
    model, x, y = digits
    x, y = x[:40], y[:40]
    with CountOps() as counter:
        x_adv = autoattack(model, x, y, EPS)
    assert_in_ball(x_adv, x, EPS)
    # the whole AutoAttack run (4 attacks, hundreds of gradient steps) standardizes each weight once
    assert counter.counts["fastnofrost.ws_forward"] == len(ws_layers(model))
    assert counter.weight_grad_convs == 0 and "fastnofrost.ws_backward" not in counter.counts
    robust = accuracy(model, x_adv, y)
    ours_apgd = accuracy(model, apgd(model, x, y, EPS, 100, generator=torch.Generator().manual_seed(0)), y)
    assert robust <= ours_apgd + 1 / 40  # AutoAttack starts with the same APGD-CE and adds three attacks


def test_autoattack_refuses_a_model_of_fewer_than_ten_classes(digits):
    """'standard' targets 9 other classes: with 4 classes the reference package would fail deep
    inside APGD-T with an IndexError; ours names the cause first."""
    pytest.importorskip("pyautoattack")
    _, x, _ = digits
    four = nn.Sequential(nn.Flatten(), nn.Linear(x[0].numel(), 4))
    with pytest.raises(ValueError, match="needs at least 10 classes; this model has 4"):
        autoattack(four, x[:8], torch.zeros(8, dtype=torch.long), EPS)


def test_black_box_attacks_report_success_and_spend_at_most_their_budget(digits):
    model, x, y = digits
    x, y = x[:100], y[:100]
    rows = []
    handle = model.register_forward_pre_hook(lambda m, args: rows.append(args[0].shape[0]))
    try:
        for attack, budget in ((square, 150), (rays, 150)):
            rows.clear()
            x_adv, success = attack(model, x, y, EPS, budget, return_success=True)
            assert sum(rows) <= budget * len(y), attack.__name__
            with torch.no_grad():
                assert torch.equal(success, model(x_adv).argmax(1) != y), attack.__name__
            assert 0 < success.sum() < len(y)
    finally:
        handle.remove()


def test_targeted_pgd_reaches_given_targets(digits):
    model, x, y = digits
    target = (y + 3) % 10
    x_adv, success = pgd(model, x, y, 0.3, 20, 0.03, target=target, return_success=True,
                         generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        pred = model(x_adv).argmax(1)
    assert torch.equal(success, pred == target)
    assert success.float().mean() > 0.5  # chance is 0.1
    for loss in ("ce", "cw"):
        gen = torch.Generator().manual_seed(1)
        x_rand, success = pgd(model, x, y, 0.3, 20, 0.03, loss=loss, target="random", return_success=True,
                              generator=gen)
        assert success.float().mean() > 0.5, loss


def test_random_targets_differ_from_labels():
    from fastnofrost.attacks.losses import random_targets
    y = torch.arange(10).repeat(100)
    t = random_targets(y, 10, torch.Generator().manual_seed(0))
    assert (t != y).all() and t.min() >= 0 and t.max() < 10
    assert len(set(((t - y) % 10).tolist())) == 9  # every other class is drawn


# ------------------------------------------------------------ the fused loop: exactness, frozen world

def test_pgd_equals_the_official_attack(digits64):
    """Fused loop (WS once, fused step) against the official code's attack on the model with
    timm's WS recomputed in every forward: the same iterates, in float64 (exact sign steps). The
    official attack computes no weight gradient either (advertorch freezes the parameters)."""
    model, x, y = digits64
    official = official_model(model)
    steps = 10
    start = pgd_random_start(x, EPS, generator=torch.Generator().manual_seed(3))
    ours = pgd(model, x, y, EPS, steps, generator=torch.Generator().manual_seed(3))
    with CountOps() as counter:
        ref = official_attack(official, x, y, EPS, steps, min(1.25 * EPS, EPS + 4 / 255) / steps, start)
    torch.testing.assert_close(ours, ref, atol=1e-12, rtol=0)
    assert counter.weight_grad_convs == 0 and counter.counts["aten.convolution_backward"] >= steps * 3
    assert all(p.grad is None and p.requires_grad for p in official.parameters())


def nf_resnet_or_skip():
    models = pytest.importorskip("fastnofrost.models")
    return models.create_model("nf_resnet26_small", num_classes=10, in_chans=1, width=0.25).eval()


@pytest.mark.parametrize("model_name", ["digits_net", "nf_resnet26_small"])
@pytest.mark.parametrize("attack", ["pgd", "mia", "apgd_ce"])
def test_ws_once_per_layer_and_no_weight_gradient(digits, model_name, attack):
    model, x, y = digits
    x, y = x[:16], y[:16]
    if model_name != "digits_net":
        model = nf_resnet_or_skip()
        with torch.no_grad():  # labelled by its own predictions: APGD skips misclassified inputs
            y = model(x).argmax(1)
    steps = 6
    with CountOps() as counter:
        get_attack(attack, eps=EPS, steps=steps)(model, x, y)
    assert counter.counts.get("aten.convolution_backward", 0) >= steps * len(ws_layers(model))  # backwards ran
    assert counter.counts["fastnofrost.ws_forward"] == len(ws_layers(model)), counter.counts
    assert "fastnofrost.ws_backward" not in counter.counts
    assert counter.weight_grad_convs == 0
    assert all(p.grad is None for p in model.parameters())
    # the counter does see weight gradients where they happen: the naive attack (parameters requiring grad)
    try:
        with CountOps() as counter:
            official_attack(model, x, y, EPS, 2, 0.02, x.clone(), noparamgrad=False)
    finally:
        model.zero_grad(set_to_none=True)
    assert counter.weight_grad_convs > 0 and counter.counts["fastnofrost.ws_backward"] > 0


def test_no_graph_outlives_its_step(digits):
    """Memory flat in K: every tensor saved for a backward is freed before the next forward."""
    model, x, y = digits
    x, y = x[:32], y[:32]

    class Saved:
        def __init__(self, t):
            self.t = t

    saved, alive_at_forward = [], []

    def pack(t):
        holder = Saved(t)
        saved.append(weakref.ref(holder))
        return holder

    # on the first layer: PGD runs the model's bare forward, without the top module's hooks
    # (fastnofrost/attacks/step.py), so every attack's forwards reach it
    handle = model.c1.register_forward_pre_hook(
        lambda m, args: alive_at_forward.append(sum(ref() is not None for ref in saved)))
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda holder: holder.t):
            pgd(model, x, y, EPS, 8)
            get_attack("mia", eps=EPS, steps=8)(model, x, y)
            apgd(model, x, y, EPS, 8)
    finally:
        handle.remove()
    assert len(saved) > 0 and len(alive_at_forward) >= 24
    assert max(alive_at_forward) == 0, alive_at_forward


def test_deterministic_under_seed(digits):
    model, x, y = digits
    x, y = x[:64], y[:64]
    for name in ("pgd", "apgd_ce", "square"):
        kw = dict(queries=100) if name == "square" else dict(steps=5)
        a = get_attack(name, eps=EPS, seed=7, **kw)(model, x, y)
        b = get_attack(name, eps=EPS, seed=7, **kw)(model, x, y)
        c = get_attack(name, eps=EPS, seed=8, **kw)(model, x, y)
        assert torch.equal(a, b), name
        assert not torch.equal(a, c), name

def test_batch_size_agnostic(digits64):
    """One batch or chunks of 7: the same iterates (float64: a convolution's summation order
    depends on the batch size, and float32 rounding could flip a sign step)."""
    model, x, y = digits64
    x, y = x[:64], y[:64]
    whole = pgd(model, x, y, EPS, 5, random_start=False)
    parts = torch.cat([pgd(model, x[i:i + 7], y[i:i + 7], EPS, 5, random_start=False) for i in range(0, 64, 7)])
    torch.testing.assert_close(whole, parts, atol=1e-12, rtol=0)


# ------------------------------------------------------------ mixed precision and compile

def test_bf16_attack_close_to_fp32(digits):
    model, x, y = digits
    dtypes = []
    handle = model.c2.register_forward_hook(lambda m, args, out: dtypes.append(out.dtype))
    try:
        steps, alpha = 20, 2.5 * EPS / 20
        x_bf16 = pgd(model, x, y, EPS, steps, alpha, precision="bf16", generator=torch.Generator().manual_seed(0))
    finally:
        handle.remove()
    assert set(dtypes) == {torch.bfloat16} and x_bf16.dtype == torch.float32
    x_fp32 = pgd(model, x, y, EPS, steps, alpha, generator=torch.Generator().manual_seed(0))
    acc_bf16, acc_fp32 = accuracy(model, x_bf16, y), accuracy(model, x_fp32, y)
    assert_informative(acc_fp32, "pgd")
    assert abs(acc_bf16 - acc_fp32) <= 0.02, (acc_bf16, acc_fp32)


def test_fp16_loss_scale_keeps_small_gradients():
    """A model whose input gradients are ~1e-8: fp16 without scaling flushes many to zero (signs
    lost); with the default scale (1024) the signs match fp32."""
    class Shrink(nn.Module):
        def forward(self, t):
            return t * 1e-6

    torch.manual_seed(0)
    model = nn.Sequential(ScaledStdConv2d(1, 8, 3), Shrink(), nn.Flatten(), nn.Linear(8 * 64, 10))
    x, y = torch.rand(16, 1, 8, 8), torch.randint(0, 10, (16,))
    assert Precision("fp16").loss_scale == 1024 and Precision("bf16").loss_scale == 1
    with attack_mode(model):
        signs = {}
        for name, scale in (("fp32", None), ("fp16", 1.0), ("fp16", None)):
            _, _, grad = input_gradient(model, x.clone(), Objective("ce", y), Precision(name, scale))
            signs[name, scale] = grad.sign()
    ref = signs["fp32", None]
    assert (signs["fp16", None] == ref).float().mean() > 0.99
    assert (signs["fp16", 1.0] == ref).float().mean() < 0.9


@needs_inductor_cpu
def test_compile_step_matches_eager(digits64):
    """Same iterates compiled or eager, also after a weight update (no stale weights, no graph
    break: one compiled graph serves both attacks). In float64: inductor fuses and reorders
    float arithmetic, and in float32 a sign step on a near-zero gradient could flip."""
    model, x, y = digits64
    model, x, y = copy.deepcopy(model), x[:16], y[:16]
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    for _ in range(2):
        compiled = pgd(model, x, y, EPS, 2, 0.03, random_start=False, compile_step=True)
        eager = pgd(model, x, y, EPS, 2, 0.03, random_start=False)
        torch.testing.assert_close(compiled, eager, atol=1e-12, rtol=0)
        assert all(p.grad is None and p.requires_grad for p in model.parameters())
        with torch.no_grad():  # an optimizer step between two attacks
            model.c2.weight.mul_(-1.0)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1


@needs_inductor_cpu
def test_compiled_step_is_built_once_and_never_nested(digits, monkeypatch):
    """Every compiled attack of a process reuses one compiled step (per mode): three attacks on
    two models make one torch.compile call and one entry in dynamo's backend cache. On a module
    compiled for training (module.compile(), what DeepSpeed's engine.compile() does) the
    attack runs the bare forward: the module's compiled call is never entered, and its graphs
    are not the attack's."""
    from fastnofrost.attacks import step

    model, x, y = digits
    models = [copy.deepcopy(model), copy.deepcopy(model)]
    x, y = x[:16], y[:16]
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    monkeypatch.setattr(step, "COMPILED", {})
    compiles, compile = [], torch.compile
    monkeypatch.setattr(torch, "compile", lambda *a, **k: compiles.append(k.get("mode")) or compile(*a, **k))
    models[0].compile()  # training's compile
    entered, training_call = [], models[0]._compiled_call_impl
    models[0]._compiled_call_impl = lambda *a, **k: entered.append(1) or training_call(*a, **k)
    wrappers = step.compiled_wrappers()
    for model in (models[0], models[1], models[0]):
        pgd(model, x, y, EPS, 2, 0.03, compile_step=True)
        with torch.no_grad():  # an optimizer step between two attacks
            model.c2.weight.mul_(-1.0)
    assert compiles == [None, None]  # module.compile(), then the attack step, once
    assert step.compiled_wrappers() == wrappers + 1 and not entered
    assert step.COMPILED.keys() == {None}
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] <= 2  # the attack's, per model at most


@needs_inductor_cpu
def test_compile_step_standardizes_once(digits):
    """A compiled attack also runs the WS kernel once per layer per attack, not once per step:
    the weights are standardized eagerly into persistent tensors that enter the compiled graph
    as inputs. Counted with the profiler, which also sees the kernel when inductor's compiled
    code calls it."""
    model, x, y = digits
    model, x, y = copy.deepcopy(model), x[:16], y[:16]
    torch._dynamo.reset()
    addresses = []
    for _ in range(2):  # the first attack compiles, the second reuses the graph
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            pgd(model, x, y, EPS, 4, 0.03, random_start=False, compile_step=True)
        calls = sum(e.count for e in prof.key_averages() if e.key == "fastnofrost::ws_forward")
        assert calls == len(ws_layers(model)), (calls, len(ws_layers(model)))
        addresses.append([layer.source.store.data_ptr() for layer in ws_layers(model)])
        with torch.no_grad():  # an optimizer step between two attacks
            model.c2.weight.mul_(-1.0)
    # the graph's weight inputs stay at one address per layer (CUDA graphs would re-record otherwise)
    assert addresses[0] == addresses[1]


@pytest.mark.gpu
@pytest.mark.parametrize("precision, compile_step", [("bf16", False), ("fp16", False), ("fp32", "reduce-overhead"),
                                                     ("bf16", "reduce-overhead")])
def test_cuda_precisions_and_cuda_graphs(precision, compile_step):
    """On CUDA, autocast and the CUDA-graph step attack as well as fp32 eager (robust accuracy within
    2 points), keep the perturbation fp32 inside the ball, and compute no weight gradient. The model
    is a random DigitsNet labelled by its own predictions (clean accuracy 100%)."""
    torch.manual_seed(0)
    model = DigitsNet().cuda().eval()
    x = torch.rand(1024, 1, 8, 8, device="cuda")
    with torch.no_grad():
        y = model(x).argmax(1)
    eps, steps = 0.02, 10
    x_ref = pgd(model, x, y, eps, steps, generator=torch.Generator().manual_seed(0))
    x_adv = pgd(model, x, y, eps, steps, precision=precision, compile_step=compile_step,
                generator=torch.Generator().manual_seed(0))
    assert_in_ball(x_adv, x, eps)
    assert all(p.grad is None and p.requires_grad for p in model.parameters())
    acc_ref, acc = accuracy(model, x_ref, y), accuracy(model, x_adv, y)
    assert_informative(acc_ref, "pgd cuda")
    assert abs(acc - acc_ref) <= 0.02, (acc, acc_ref)


def trades_reference(model, x, steps, alpha, generator):
    """TRADES' inner maximization as its paper's code writes it: KL from the model's clean
    prediction (reduction sum), Gaussian start of std 0.001, sign steps, eps-ball then box."""
    with torch.no_grad():
        p_clean = F.softmax(model(x), dim=1)
    noise = torch.randn(x.shape, generator=generator, dtype=x.dtype)
    x_adv = torch.min(torch.max(x + 0.001 * noise, x - EPS), x + EPS).clamp(0, 1)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        loss = F.kl_div(F.log_softmax(model(x_adv), dim=1), p_clean, reduction="sum")
        (grad,) = torch.autograd.grad(loss, x_adv)
        with torch.no_grad():
            x_adv = torch.min(torch.max(x_adv + alpha * grad.sign(), x - EPS), x + EPS).clamp(0, 1)
    return x_adv


def test_trades_attack_equals_its_definition(digits64):
    """Ours equals the paper code's loop, iterate for iterate. In float64: the KL objective has a
    zero gradient at the clean point and the attack starts 0.001 away from it, so in float32 the
    first sign steps follow each host's rounding. The comparison sees a wrong mode: the same loop
    on the model in train mode (dropout on) lands elsewhere."""
    model, x, y = digits64
    model = copy.deepcopy(model).train()  # as in training: the attack must switch to eval mode itself
    steps, alpha = 5, 0.02
    ours = pgd(model, x, y, EPS, steps, alpha, loss="kl", random_start=0.001, generator=torch.Generator().manual_seed(4))
    ref_model = copy.deepcopy(model)
    ref = trades_reference(ref_model.eval(), x, steps, alpha, torch.Generator().manual_seed(4))
    torch.testing.assert_close(ours, ref, atol=1e-12, rtol=0)
    assert (ours - x).abs().amax() > 0.5 * EPS  # it moved
    torch.manual_seed(0)
    in_train_mode = trades_reference(ref_model.train(), x, steps, alpha, torch.Generator().manual_seed(4))
    assert (in_train_mode - ours).abs().amax() > 0.5 * alpha


@pytest.mark.parametrize("tau", [0, 2])
def test_fat_early_stop_equals_per_sample_loop(digits64, tau):
    """FAT's early-stopped PGD against the paper code's per-sample bookkeeping: a sample
    misclassified with budget 0 stops; one with budget left spends one unit and steps. In
    float64: the reference runs sub-batches, and float32 argmax near-ties or sign steps could
    follow the batch size's summation order."""
    model, x, y = digits64
    steps, alpha = 10, 0.02
    ours = pgd(model, x, y, EPS, steps, alpha, random_start=False, early_stop=tau)
    x_adv, budget, active = x.clone(), [tau] * len(y), list(range(len(y)))
    for _ in range(steps):
        if not active:
            break
        xa = x_adv[active].clone().requires_grad_(True)
        out = model(xa)
        (grad,) = torch.autograd.grad(F.cross_entropy(out, y[active], reduction="sum"), xa)
        keep = []
        for row, i in enumerate(active):
            if out[row].argmax().item() != y[i].item():
                if budget[i] == 0:
                    continue  # stops here, unmoved
                budget[i] -= 1
            keep.append(row)
        with torch.no_grad():
            rows = torch.tensor(keep, dtype=torch.long)
            idx = torch.tensor(active, dtype=torch.long)[rows]
            moved = x_adv[idx] + alpha * grad[rows].sign()
            x_adv[idx] = torch.min(torch.max(moved, x[idx] - EPS), x[idx] + EPS).clamp(0, 1)
        active = idx.tolist()
    torch.testing.assert_close(ours, x_adv, atol=1e-12, rtol=0)
    plain = pgd(model, x, y, EPS, steps, alpha, random_start=False)
    assert not torch.equal(ours, plain)  # early stopping changed something


# ------------------------------------------------------------ losses against their formulas

def test_losses_against_formulas():
    torch.manual_seed(0)
    logits = torch.randn(32, 10, dtype=torch.float64) * 3
    y, t = torch.randint(0, 10, (32,)), torch.randint(0, 10, (32,))
    t = torch.where(t == y, (t + 1) % 10, t)
    for i in range(32):
        z, yi, ti = logits[i].tolist(), int(y[i]), int(t[i])
        top = sorted(z, reverse=True)
        other_y = max(v for j, v in enumerate(z) if j != yi)
        other_t = max(v for j, v in enumerate(z) if j != ti)
        lse = torch.logsumexp(logits[i], 0).item()
        expected = {
            ("ce", False): lse - z[yi], ("ce", True): -(lse - z[ti]),
            ("cw", False): min(other_y - z[yi], 50.0), ("cw", True): min(z[ti] - other_t, 50.0),
            ("dlr", False): -(z[yi] - other_y) / (top[0] - top[2] + 1e-12),
            ("dlr", True): -(z[yi] - z[ti]) / (top[0] - 0.5 * (top[2] + top[3]) + 1e-12),
        }
        for (name, targeted), value in expected.items():
            got = attack_loss(name, logits[i:i + 1], y[i:i + 1], t[i:i + 1] if targeted else None)
            assert got.item() == pytest.approx(value, rel=1e-9, abs=1e-9), (name, targeted)
    ref = torch.randn(32, 10, dtype=torch.float64)
    p = ref.softmax(1)
    expected_kl = (p * (p.log() - logits.log_softmax(1))).sum(1)
    torch.testing.assert_close(attack_loss("kl", logits, y, reference=ref), expected_kl, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="clean logits"):
        attack_loss("kl", logits, y)
    capped = attack_loss("cw", torch.tensor([[0.0, 100.0]]), torch.tensor([0]), confidence=50.0)
    assert capped.item() == 50.0


# ------------------------------------------------------------ argument checks

def budget_arg(name):
    return "queries" if name in ("square", "rays") else "steps"


def test_declaring_an_attack_registers_it_and_bad_declarations_fail():
    from dataclasses import dataclass

    from fastnofrost.attacks import PGD
    from fastnofrost.attacks.base import REGISTRY, Attack

    try:
        @dataclass(frozen=True)
        class Probe(Attack):
            name = "probe_test"
            menu = column = None
            eps: float = 0.1

            def run(self, model, x, y):
                return x

        assert REGISTRY["probe_test"] is Probe and Probe().eps == 0.1
        with pytest.raises(TypeError, match="two attacks are named"):
            type("Again", (Attack,), {"name": "probe_test", "menu": None, "column": None})
        with pytest.raises(TypeError, match="own menu and column"):
            type("Inherits", (PGD,), {"name": "probe_variant"})
        with pytest.raises(TypeError, match="'pgd''s"):
            type("Clash", (PGD,), {"name": "probe_clash", "menu": "pgd", "column": 20})
        with pytest.raises(TypeError, match="go together"):
            type("Half", (PGD,), {"name": "probe_half", "menu": "half", "column": None})
    finally:
        for name in ("probe_test", "probe_variant", "probe_clash", "probe_half"):
            REGISTRY.pop(name, None)
    assert list(ATTACKS)[:10] == ["pgd", "apgd_ce", "apgd_dlr", "apgd_t", "mia", "cw", "pgd_targeted", "rays",
                                  "square", "autoattack"]


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_bad_constructor_arguments(name):
    for kw, match in ((dict(eps=-0.1), "eps"), (dict(eps=1.5), "eps"), (dict(norm="L2"), "norm")):
        with pytest.raises(ValueError, match=match):
            get_attack(name, **kw)
    if name != "autoattack":
        with pytest.raises(ValueError, match=budget_arg(name)):
            get_attack(name, **{budget_arg(name): 0})
    with pytest.raises(ValueError, match="unknown attack"):
        get_attack("fgsm_typo")


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_bad_inputs_raise_and_restore_the_model(digits, name):
    model, x, y = digits
    x, y = x[:8], y[:8]
    attack = get_attack(name, eps=EPS)
    cases = [
        ((x * 2, y), ValueError, r"\[0, 1\]"),
        ((x - 0.5, y), ValueError, r"\[0, 1\]"),
        ((x, torch.full_like(y, 10)), ValueError, "out of range"),
        ((x, y - 20), ValueError, ">= 0"),
        ((x, y[:5]), ValueError, "shape"),
        ((x.half(), y), TypeError, "float32"),
        ((x, y.float()), ValueError, "int64"),
    ]
    model.train()
    try:
        for args, error, match in cases:
            with pytest.raises(error, match=match):
                attack(model, *args)
            assert model.training and all(p.requires_grad for p in model.parameters())
    finally:
        model.eval()


def test_bad_function_arguments(digits):
    model, x, y = digits
    x, y = x[:8], y[:8]
    with pytest.raises(ValueError, match="steps"):
        pgd(model, x, y, EPS, 0)
    with pytest.raises(ValueError, match="alpha"):
        pgd(model, x, y, EPS, 5, -0.1)
    with pytest.raises(ValueError, match="loss"):
        pgd(model, x, y, EPS, loss="hinge")
    with pytest.raises(ValueError, match="precision"):
        pgd(model, x, y, EPS, precision="fp8")
    with pytest.raises(ValueError, match="target"):
        pgd(model, x, y, EPS, target="nearest")
    with pytest.raises(ValueError, match="target"):
        pgd(model, x, y, EPS, target=torch.full_like(y, 12))
    with pytest.raises(ValueError, match="n_target_classes"):
        apgd(model, x, y, EPS, 5, loss="dlr", targeted=True, n_target_classes=10)
    with pytest.raises(ValueError, match="images"):
        square(model, x.flatten(1), y, EPS)


def test_model_without_input_gradient_gets_zero_gradient():
    """A non-differentiable front (a hard threshold) leaves white-box attacks without a gradient:
    they must run (and find nothing), so the evaluation can expose the masking."""
    class Thresholded(nn.Module):
        def __init__(self):
            super().__init__()
            self.front, self.head = nn.Linear(16, 16), nn.Linear(16, 3)

        def forward(self, x):
            return self.head((self.front(x.flatten(1)) > 0).float())

    torch.manual_seed(0)
    x, y = torch.rand(4, 1, 4, 4), torch.tensor([0, 1, 2, 0])
    x_adv = pgd(Thresholded(), x, y, 0.1, 3, random_start=False)
    assert torch.equal(x_adv, x)

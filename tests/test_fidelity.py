"""benchmarks/fidelity.py and its official engine: tiny runs (on digits, through the real training
engine and the official loop) write their table, JSON and figure; MBNAT's curve is read at
NoFrost's robustness by hand-checked interpolation; the mean +- sd over seeds and the verdict rule
by hand; the official loop's step against a transcription of PGDAT.py's loop body (float64).
No accuracy or timing assertions."""
import copy
import json
import math
import os
import statistics
import subprocess
import sys

import torch
import torch.nn as nn

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(REPO, "benchmarks")
sys.path.insert(0, BENCH)

from fidelity import MBNAT_GAMMAS, aggregate, comparisons, mbnat_clean_at, verdicts  # noqa: E402  (not a package)
from official import official_attack, official_model, official_optimizer, official_step  # noqa: E402
from fastnofrost.models import create_model  # noqa: E402
from fastnofrost.training.engine import auto_precision  # noqa: E402
pytestmark = pytest.mark.usefixtures("deepspeed_op")  # built once, before the first run

CURVE = [{"gamma": 0.0, "clean": 90.0, "pgd20": 10.0}, {"gamma": 0.5, "clean": 80.0, "pgd20": 40.0},
         {"gamma": 1.0, "clean": 70.0, "pgd20": 60.0}]


@pytest.mark.parametrize("robust, expected", [(10.0, 90.0), (25.0, 85.0), (50.0, 75.0), (60.0, 70.0),
                                              (5.0, None), (61.0, None)])
def test_mbnat_clean_at_interpolates_along_the_curve(robust, expected):
    assert mbnat_clean_at(CURVE, robust) == (None if expected is None else pytest.approx(expected))


def test_comparisons_are_nofrost_minus_baseline():
    results = {"nofrost": {"clean": 85.0, "pgd20": 50.0, "aa": 40.0},
               "sat_bn": {"clean": 80.0, "pgd20": 52.0, "aa": 41.0},
               "mbnat": {"clean": 80.0, "pgd20": 40.0, "curve": CURVE}}
    by_baseline = {c["baseline"]: c for c in comparisons(results)}
    assert by_baseline["sat_bn"] == {"baseline": "sat_bn", "clean": 5.0, "pgd20": -2.0, "aa": -1.0}
    assert by_baseline["mbnat"] == {"baseline": "mbnat", "clean": 5.0, "pgd20": 10.0}
    assert by_baseline["mbnat_curve_at_nofrost_pgd20"]["clean"] == pytest.approx(10.0)
    assert comparisons({"sat_bn": results["sat_bn"]}) == []


def test_tiny_run_writes_table_json_and_figure(tmp_path):
    env = dict(os.environ, OUT=str(tmp_path / "results"))
    command = [sys.executable, os.path.join(BENCH, "fidelity.py"), "--quick", "--data", "digits", "--device", "cpu",
               "--methods", "mbnat,nofrost", "--jobs", "2", "--threads", "1", "--out", str(tmp_path / "runs"),
               "--epochs", "1", "--train-examples", "64", "--image-size", "8", "--steps", "1",
               "--eval-examples", "16", "--aa-examples", "0"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    result = json.loads((tmp_path / "results" / "fidelity_quick.json").read_text())
    assert result["data"] == "digits" and result["schedule"]["epochs"] == 1
    assert set(result["results"]) == {"ours"} and set(result["results"]["ours"]) == {"mbnat", "nofrost"}
    assert [(r["key"], r["engine"], r["seed"]) for r in result["runs"]] == [("mbnat", "ours", 0), ("nofrost", "ours", 0)]
    for r in result["runs"]:
        assert "error" not in r and r["n"] == 16 and "aa" not in r
        assert all(0 <= r[m] <= 100 for m in ("clean", "pgd20", "apgd_ce")) and r["train_s"] > 0
    assert [c["gamma"] for c in result["results"]["ours"]["mbnat"]["curve"]] == list(MBNAT_GAMMAS)
    assert {c["baseline"] for c in result["comparisons"]} == {"mbnat", "mbnat_curve_at_nofrost_pgd20"}
    precision = auto_precision(torch.device("cpu"))[0]  # --ours-precision auto, as train.py resolves it
    assert result["precisions"] == {"ours": precision}
    markdown = (tmp_path / "results" / "fidelity_quick.md").read_text()
    assert f"| NoFrost | NF | ours {precision} |" in markdown
    assert f"| MBNAT (gamma 0.5) | dual BN | ours {precision} |" in markdown
    assert (tmp_path / "results" / "fidelity_quick.png").stat().st_size > 0


def run(engine, key, seed, clean, pgd20, apgd_ce, n=1000):
    return dict(engine=engine, key=key, seed=seed, clean=clean, pgd20=pgd20, apgd_ce=apgd_ce, n=n, train_s=10.0,
                train_cpu_s=20.0)


def test_mean_sd_over_seeds_and_the_verdict_rule_by_hand():
    runs = [run("ours", "nofrost", 0, 80.0, 50.0, 40.0), run("ours", "nofrost", 1, 82.0, 52.0, 40.0),
            run("ours", "nofrost", 2, 84.0, 54.0, 40.0),
            run("official", "nofrost", 0, 78.0, 50.0, 50.0), run("official", "nofrost", 1, 80.0, 52.0, 50.0),
            run("official", "nofrost", 2, 82.0, 54.0, 50.0)]
    results = aggregate(runs)
    ours = results["ours"]["nofrost"]
    assert (ours["clean"], ours["clean_sd"], ours["n_seeds"]) == (82.0, 2.0, 3)  # mean 82, sd sqrt(8 / 2)
    assert ours["apgd_ce_sd"] == 0.0 and ours["train_s"] == 10.0
    (v,) = verdicts(results)
    # clean: +2 with se sqrt(2 * (2 / sqrt 3)^2) = 1.63: within 2 se; PGD-20: 0; APGD-CE: -10, both
    # sds 0, so each mean's se is the binomial one on 1000 examples: 100 sqrt(.4 .6 / 1000), 100 sqrt(.5 .5 / 1000)
    assert v["metrics"]["clean"]["diff"] == 2.0
    assert math.isclose(v["metrics"]["clean"]["se"], math.sqrt(2) * 2 / math.sqrt(3))
    assert math.isclose(v["metrics"]["apgd_ce"]["se"], math.hypot(math.sqrt(2.4), math.sqrt(2.5)))
    assert (v["equal"], v["differs_on"]) == (False, ["apgd_ce"])
    # within noise everywhere (APGD-CE -4 with se 2.23): equal
    close = [dict(r, apgd_ce=r["apgd_ce"] + (6.0 if r["engine"] == "ours" else 0.0)) for r in runs]
    (v,) = verdicts(aggregate(close))
    assert (v["equal"], v["differs_on"]) == (True, [])
    # a method trained by one engine only gets no verdict
    assert verdicts(aggregate([r for r in runs if r["engine"] == "ours"])) == []


def test_two_engines_with_two_seeds_end_to_end(tmp_path):
    env = dict(os.environ, OUT=str(tmp_path / "results"))
    command = [sys.executable, os.path.join(BENCH, "fidelity.py"), "--quick", "--data", "digits", "--device", "cpu",
               "--methods", "nofrost", "--engines", "ours,official", "--ours-precision", "fp32", "--seeds", "2",
               "--jobs", "2", "--threads", "1",
               "--out", str(tmp_path / "runs"), "--epochs", "2", "--train-examples", "128", "--image-size", "8",
               "--steps", "1", "--eval-examples", "32", "--aa-examples", "0"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    result = json.loads((tmp_path / "results" / "fidelity_quick.json").read_text())
    assert sorted((r["engine"], r["seed"]) for r in result["runs"]) == [("official", 0), ("official", 1),
                                                                        ("ours", 0), ("ours", 1)]
    for r in result["runs"]:
        assert "error" not in r and r["n"] == 32
        run_dir = tmp_path / "runs" / f"nofrost-{r['engine']}-fp32-seed{r['seed']}"
        summary = json.loads((run_dir / "summary.json").read_text())
        if r["engine"] == "ours":  # train.py at --ours-precision
            assert json.loads((run_dir / "config.json").read_text())["precision_resolved"] == "fp32"
        assert summary["wall_s"] > 0 and (summary.get("engine") == "official") == (r["engine"] == "official")
    for engine in ("ours", "official"):
        values = [r["clean"] for r in result["runs"] if r["engine"] == engine]
        entry = result["results"][engine]["nofrost"]
        assert entry["clean"] == statistics.fmean(values) and entry["clean_sd"] == statistics.stdev(values)
    (v,) = result["verdicts"]
    assert v["key"] == "nofrost" and set(v["metrics"]) == {"clean", "pgd20", "apgd_ce"}
    assert v["equal"] == all(abs(d["diff"]) < 2 * d["se"] for d in v["metrics"].values())
    markdown = (tmp_path / "results" / "fidelity_quick.md").read_text()
    assert "| NoFrost | NF | official fp32 |" in markdown and "| NoFrost | NF | ours fp32 |" in markdown
    assert "ours minus official" in markdown


def test_official_engine_refuses_methods_the_official_script_does_not_train(tmp_path):
    done = subprocess.run([sys.executable, os.path.join(BENCH, "fidelity.py"), "--quick", "--methods", "trades_bn",
                           "--engines", "ours,official", "--out", str(tmp_path)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2 and "the official loop trains" in done.stderr


# ------------------------------------------------------------ the official loop's step against PGDAT.py

class _Delta:  # advertorch's perturb_iterative, transcribed (L-inf, sign step, ball then box)
    @staticmethod
    def perturb(predict, x, y, eps, nb_iter, eps_iter, delta):
        loss_fn = nn.CrossEntropyLoss(reduction="sum")
        delta.requires_grad_()
        for _ in range(nb_iter):
            loss = loss_fn(predict(x + delta), y)
            loss.backward()
            grad_sign = delta.grad.data.sign()
            delta.data = delta.data + eps_iter * grad_sign
            delta.data = torch.clamp(delta.data, -eps, eps)
            delta.data = torch.clamp(x.data + delta.data, 0.0, 1.0) - x.data
            delta.grad.data.zero_()
        return torch.clamp(x + delta, 0.0, 1.0)


def label_smoothing_ce(x, target, smoothing=0.1):  # timm's LabelSmoothingCrossEntropy, transcribed
    logprobs = torch.log_softmax(x, dim=-1)
    nll_loss = -logprobs.gather(dim=-1, index=target.unsqueeze(1)).squeeze(1)
    smooth_loss = -logprobs.mean(dim=-1)
    return ((1.0 - smoothing) * nll_loss + smoothing * smooth_loss).mean()


def pgdat_loop_body(model, optimizer, images, labels, eps, nb_iter, eps_iter, lam):
    """PGDAT.py's training loop body, transcribed: clean forward, the attack (advertorch's
    PGDAttack with rand_init inside ctx_noparamgrad_and_eval), adversarial forward, mixed loss."""
    logits = model(images)
    loss_clean = label_smoothing_ce(logits, labels)
    training = {m: m.training for m in model.modules()}
    flags = {p: p.requires_grad for p in model.parameters()}
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    delta = torch.zeros_like(images)
    delta.data.uniform_(-1, 1)  # rand_init_delta
    delta.data = eps * delta.data
    delta.data = torch.clamp(images + delta.data, 0.0, 1.0) - images
    images_adv = _Delta.perturb(model, images, labels, eps, nb_iter, eps_iter, delta).detach()
    for m, t in training.items():
        m.training = t
    for p, f in flags.items():
        p.requires_grad_(f)
    logits_adv = model(images_adv)
    loss_adv = label_smoothing_ce(logits_adv, labels)
    loss = (1 - lam) * loss_clean + lam * loss_adv
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss.item()


def test_official_step_equals_a_transcription_of_pgdat_loop_body():
    torch.manual_seed(0)
    base = official_model(create_model("nf_resnet26_small", num_classes=10, in_chans=1, width=0.25)).double()
    with torch.no_grad():  # timm's init zeroes each block's last gain: give the branches signal
        for name, p in base.named_parameters():
            if name.endswith("gain"):
                p.uniform_(0.5, 1.5)
    x, y = torch.rand(8, 1, 16, 16, dtype=torch.float64), torch.randint(0, 10, (8,))
    eps, steps, alpha, lam = 8 / 255, 3, 2 / 255, 0.5
    models = [copy.deepcopy(base).train(), copy.deepcopy(base).train()]
    optimizers = [official_optimizer(m, 0.1, 0.9, 5e-5) for m in models]
    losses = []
    for _ in range(2):  # two steps: momentum and weight decay of the second step too
        torch.manual_seed(1)
        ours = official_step(models[0], optimizers[0], steps, eps, alpha, lam, smoothing=0.1)(x, y)[1]
        torch.manual_seed(1)
        theirs = pgdat_loop_body(models[1], optimizers[1], x, y, eps, steps, alpha, lam)
        losses.append((ours, theirs))
    for ours, theirs in losses:
        assert math.isclose(ours, theirs, rel_tol=1e-12)
    for a, b in zip(models[0].parameters(), models[1].parameters()):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    assert any((a - b).abs().max() > 0 for a, b in zip(models[0].parameters(), base.parameters()))


# ------------------------------------------------------------ the fidelity diagnostics of official_train.py

def _trained_pair(method: str, official_order: bool, decay_all: bool, monkeypatch):
    """One BatchNorm model trained three steps by ours' step (``method`` at Lambda 1; torch SGD on
    train.py's groups) and by ``official_step`` at Lambda 1 (attack first unless
    ``official_order``; train.py's groups unless ``decay_all``), float64, every attack started at x
    (deterministic)."""
    import official
    from fastnofrost.attacks import PGD
    from fastnofrost.methods import build_method
    from fastnofrost.training.engine import param_groups
    from types import SimpleNamespace

    monkeypatch.setattr(official, "official_attack",
                        lambda model, x, *a, **k: official_attack(model, x, *a, start=x, **k))
    torch.manual_seed(0)
    base = create_model("resnet26_small", num_classes=10, in_chans=1, width=0.25).double().train()
    x, y = torch.rand(16, 1, 16, 16, dtype=torch.float64), torch.randint(0, 10, (16,))
    base(torch.rand(64, 1, 16, 16, dtype=torch.float64) * 0.3)  # running statistics far from x's batch statistics
    eps, steps, alpha, wd = 8 / 255, 3, 2 / 255, 5e-2

    def sgd(model, all_params):
        groups = param_groups(SimpleNamespace(decay_all=all_params, wd=wd), model)
        return torch.optim.SGD(groups, lr=0.1, momentum=0.9, nesterov=True)

    ours_model, theirs_model = copy.deepcopy(base), copy.deepcopy(base)
    ours_opt, theirs_opt = sgd(ours_model, False), sgd(theirs_model, decay_all)
    ours = build_method(method, PGD(eps, steps, alpha, random_start=False, precision="fp32"), 0.1, lam=1.0)
    theirs = official_step(theirs_model, theirs_opt, steps, eps, alpha, lam=1.0, smoothing=0.1,
                           attack_first=not official_order)
    for _ in range(3):
        out = ours(ours_model, ours_model, x, y)
        ours_opt.zero_grad()
        out.loss.backward()
        ours_opt.step()
        theirs(x, y)
    return ours_model, theirs_model


def _same_state(a, b) -> bool:
    return all(torch.allclose(p, q, rtol=1e-9, atol=1e-12) for p, q in zip(a.state_dict().values(),
                                                                          b.state_dict().values()))


@pytest.mark.parametrize("method, official_order, decay_all, same", [
    ("nofrost", False, False, True),   # --attack-first --no-decay-1d: ours' step, to float64 rounding
    ("nofrost", True, False, False),   # the official order alone differs
    ("nofrost", False, True, False),   # the decay of 1-d parameters alone differs
    ("sat", False, False, False),      # ours' SAT: no clean forward, so no clean batch in the running statistics
])
def test_official_step_with_the_step_diagnostics_is_ours(method, official_order, decay_all, same, monkeypatch):
    """With --attack-first and --no-decay-1d the official loop's step at Lambda 1 is ours at Lambda 1
    with a clean view of weight 0 (``--method nofrost --lambda 1``; BatchNorm model, float64, three
    steps): the attack's order, the 1-d weight decay and (ours' SAT) the clean batches in the
    running statistics are the only differences of the step itself (docs/fidelity.md)."""
    assert _same_state(*_trained_pair(method, official_order, decay_all, monkeypatch)) is same


def test_official_data_order_ours_reads_train_py_batches():
    """--data-order ours: the official loop's batches of epochs 0 and 1 are the ones train.py's
    loader yields for the same seed (digits, 2 seeds); the default order is another."""
    import official_train
    from fastnofrost.data import build_loader

    for seed in (0, 3):
        args = official_train.parse(["--data", "digits", "--method", "sat", "--model", "resnet26_small", "--out",
                                     "/nonexistent", "--image-size", "8", "--epochs", "2", "--batch-size", "32",
                                     "--lr", "0.1", "--eps", "8", "--steps", "1", "--train-examples", "256",
                                     "--seed", str(seed), "--data-order", "ours"])
        x, y, position = official_train.training_set(args)
        loader = build_loader("digits", train=True, batch_size=32, image_size=8, subset=256, seed=seed, workers=0)
        for epoch in (0, 1):
            order = official_train.epoch_order(args, position, epoch)
            loader.set_epoch(epoch)
            batches = list(loader)
            assert len(batches) == len(order) // 32 == 8
            for i, (xb, yb) in enumerate(batches):
                rows = order[i * 32:(i + 1) * 32]
                assert torch.equal(x[rows], xb) and torch.equal(y[rows], yb)
        args.data_order = "torch"
        assert not torch.equal(official_train.epoch_order(args, position, 0), order)


def test_official_no_decay_1d_uses_train_py_groups():
    import official_train

    args = official_train.parse(["--data", "digits", "--method", "sat", "--model", "resnet26_small", "--out",
                                 "/nonexistent", "--image-size", "8", "--epochs", "1", "--batch-size", "32",
                                 "--lr", "0.1", "--eps", "8", "--steps", "1"])
    model = create_model("resnet26_small", num_classes=10, in_chans=1, width=0.25)
    decays = lambda opt: {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}  # noqa: E731
    assert set(decays(official_train.optimizer_for(args, model)).values()) == {5e-5}  # PGDAT.py: every parameter
    args.no_decay_1d = True
    got = decays(official_train.optimizer_for(args, model))
    assert got == {id(p): (0.0 if p.ndim <= 1 else 5e-5) for p in model.parameters()}
    assert any(v == 0.0 for v in got.values()) and any(v == 5e-5 for v in got.values())


def test_variants_get_their_own_rows_names_and_verdicts():
    """--ours-variants / --official-variants: each flag set is one more engine, named by its flags,
    with its own run folder and a verdict against every engine of the other side."""
    from fidelity import ROWS, Job, parse

    args = parse(["--quick", "--methods", "sat_bn", "--engines", "ours,official",
                  "--official-variants", ";--attack-first;--no-decay-1d  --data-order ours",
                  "--ours-variants", ";--method nofrost --lambda 1"])[0]
    assert args.variants == {"ours": ["", "--method nofrost --lambda 1"],
                             "official": ["", "--attack-first", "--no-decay-1d --data-order ours"]}
    sat = next(r for r in ROWS if r.key == "sat_bn")
    job = Job(sat, "official", "fp32", 2, "--no-decay-1d --data-order ours")
    assert job.label == "official --no-decay-1d --data-order ours"
    assert job.name == "sat_bn-official+no-decay-1d+data-order+ours-fp32-seed2"
    assert Job(sat, "ours", "fp32", 0).name == "sat_bn-ours-fp32-seed0"  # unchanged: --reuse finds older runs
    with pytest.raises(SystemExit):
        parse(["--quick", "--engines", "ours", "--official-variants", "--attack-first"])
    runs = [run(engine, "sat_bn", seed, 70.0 + seed + shift, 60.0 + seed, 50.0)
            for engine, shift in (("ours", 0.0), ("ours --method nofrost --lambda 1", 1.0), ("official", 0.0),
                                  ("official --attack-first", 10.0)) for seed in range(3)]
    got = {(v["engine"], v["against"]): v for v in verdicts(aggregate(runs))}
    assert set(got) == {(o, a) for o in ("ours", "ours --method nofrost --lambda 1")
                        for a in ("official", "official --attack-first")}
    assert got[("ours", "official")]["equal"] is True
    assert got[("ours", "official --attack-first")]["differs_on"] == ["clean"]
    assert got[("ours --method nofrost --lambda 1", "official")]["metrics"]["clean"]["diff"] == pytest.approx(1.0)

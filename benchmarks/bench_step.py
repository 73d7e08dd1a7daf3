"""Training-step benchmark: ours vs the official code's step vs ours minus one optimization at a time.

Full training steps, side by side in one run. A step is the method's PGD-K attack (eps 8/255,
step min(1.25 eps, eps + 4/255) / K, random start), the NoFrost loss (1 - lambda) CE(x) +
lambda CE(x*) (lambda 0.5, label smoothing 0.1), backward and an SGD Nesterov step (train.py's
optimizer); K = 0 is plain ST, CE(x). The model trains as in the recipe (dropout 0.25,
drop-path 0.1). Engines:

  ours        the library path: build_method('nofrost' | 'st', PGD(...)) called as
              method(forward, model, x, y) inside the model's WeightGroup step (train.py's
              --ws grouped: every weight standardized by one op, once per step): fused ops,
              no weight gradients in the loop, clean + adversarial halves in one forward; at
              --precision (default auto, as train.py: bf16 autocast on CUDA and on a CPU with native
              bf16, else fp32; the 'fp32' ablation is ours at fp32), channels_last on CUDA;
              --compile adds PGD.compile_step
  ours-full   ours as train.py --compile full runs it: the attack step compiled (CUDA graphs on
              CUDA) and the model's training forward and backward compiled (module.compile())
  ours-sequential  ours with train.py's --views sequential: the clean view's backward before
              the adversarial forward (at most one view's activations alive); K=0 and the
              largest K, for its memory
  official    PGDAT.py's step (official.py, which maps it line by line): timm's WS recomputed in
              every forward, clean forward FIRST with its graph alive through the attack,
              advertorch's PGDAttack inside ctx_noparamgrad_and_eval (eval mode, parameters
              frozen: input gradients only; loss.backward() on the perturbation, sign, clamps),
              a separate adversarial forward, torch SGD Nesterov; fp32, NCHW. The baseline of
              every "vs official" figure and of the goals.
  naive-attack  NOT the official code: the official step with the parameters left requiring
              grad in the attack (a common mistake: each PGD step also computes every weight
              gradient); shown for scale, never a baseline
  ablations   ours with exactly one optimization removed (table ABLATIONS below)

Per config: median of --repeats steps after --warmup steps (CUDA events on CUDA), images/s
(clean images per second), overhead ratio (step time / ST step time of the same engine), the
FLOP-model floor of that ratio, peak memory (CUDA: max_memory_allocated; CPU: peak RSS of a
process that ran only that config), step memory (CPU: that peak minus the RSS before the first
step; CUDA: the peak) and speedup vs the official step at the same K and batch.

    python benchmarks/bench_step.py                     # CPU: nf_resnet26_small, 32x32, batch 32
    python benchmarks/bench_step.py --device cuda --compile [--model nf_resnet50]
    python benchmarks/bench_step.py --quick --device cpu    # smoke test (seconds)
    python benchmarks/bench_step.py --engines ours,fp32,official --ks 0,10   # a bf16 CPU: bf16 vs fp32 vs official

Prints a table and a goals block; writes bench_step_<model>[_compile][_quick].json and a .png
(img/s vs K: ours, the official step, the floor) under benchmarks/results/<device>/ (or $OUT/).
CPU configs run one process each (--no-isolate: all in this one); on a CPU shared with other
jobs, OMP_NUM_THREADS=1 avoids OpenMP spin-waits that slow every engine several times over.
"""
import argparse
import contextlib
import dataclasses
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from typing import Optional

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from bench_attack import describe_device  # benchmarks/ is on sys.path when run as a script
from official import naive_attack_step, official_model, official_optimizer, official_step
from results_io import save_result, set_allocator
from fastnofrost.attacks import PGD, PRECISIONS, attack_mode, default_alpha
from fastnofrost.attacks.base import Precision, attack_compile_step
from fastnofrost.config import PRECISIONS as PRECISION_CHOICES, TrainConfig
from fastnofrost.device import prepare
from fastnofrost.methods import build_method
from fastnofrost.models import create_model
from fastnofrost.nn import group_weights, set_ws_backend, weight_group
from fastnofrost.training.engine import build_optimizer, param_groups, resolve, resolve_precision

RECIPE = TrainConfig()  # the official recipe's defaults
EPS, LAMBDA, SMOOTHING, DROP, DROP_PATH = RECIPE.eps_pixels, RECIPE.lam, RECIPE.smoothing, RECIPE.drop, RECIPE.drop_path
ROW_TAG = "BENCH_STEP_ROW "   # how a --one child hands its measurement to the parent

DEFAULTS = {  # per device; --quick: a smoke test of every engine (tiny model, batch and K)
    "cuda": dict(model="nf_resnet26", image_size=224, width=1.0, num_classes=1000, batch_sizes="128",
                 ks="0,1,3,5,10", warmup=3, repeats=10),
    "cpu": dict(model="nf_resnet26_small", image_size=32, width=1.0, num_classes=10, batch_sizes="32",
                ks="0,1,3,5,10", warmup=1, repeats=3),
    "quick": dict(model="nf_resnet26_small", image_size=16, width=0.25, num_classes=10, batch_sizes="4",
                  ks="0,1,2", warmup=1, repeats=1),
}
GOALS = {  # (engine, metric, threshold, higher is better) at the largest K
    "cuda": [("ours-full", "speedup", 5.0, True), ("ours-full", "ratio_vs_floor", 1.0, False),
             ("ours-full", "img_s", 700.0, True), ("ours-sequential", "memory_vs_official", 0.6, False)],
    "cpu": [("ours", "speedup", 1.5, True), ("ours-full", "speedup", 2.0, True),
            ("ours-sequential", "memory_vs_official", 0.6, False)],
}
GOAL_TEXT = {"speedup": "throughput / official's", "ratio_vs_floor": "overhead ratio / FLOP floor",
             "img_s": "images/s", "memory_vs_official": "step memory / official's"}
BASELINES = {"official": official_step, "naive-attack": naive_attack_step}  # engine: step builder (official.py)
FULL_KS = ("ours", "ours-full", "official")  # engines run at every --ks; the others at --ablation-ks


# ------------------------------------------------------------------ FLOP model

def count_flops(model, x, y) -> dict:
    """Forward, input-gradient and weight-gradient FLOPs per image (FlopCounterMode; eval mode).

    input-grad: backward with frozen parameters and x requiring grad (the attack's backward);
    weight-grad: a backward with parameters and x requiring grad, minus the input-grad one.
    """
    def counted(fn):
        with FlopCounterMode(display=False) as counter:
            out = fn()
        return out, counter.get_total_flops() / len(x)

    x_in = x.clone().requires_grad_(True)
    with attack_mode(model):  # eval mode, frozen parameters
        loss, fwd = counted(lambda: F.cross_entropy(model(x_in), y))
        _, igrad = counted(lambda: torch.autograd.grad(loss, x_in))
    model.eval()
    _, full = counted(F.cross_entropy(model(x_in), y).backward)
    return dict(fwd=fwd, igrad=igrad, wgrad=full - igrad)


def flop_floor(k: int, fwd: float, igrad: float, wgrad: float) -> float:
    """Lowest possible step time / ST step time by FLOPs: a NoFrost step is K x (forward +
    input-grad) for the attack plus forward + full backward of the 2x batch; ST is one forward
    + full backward. K = 0 is ST itself: 1."""
    train = fwd + igrad + wgrad
    if k == 0:
        return 1.0
    return (k * (fwd + igrad) + 2 * train) / train


# ------------------------------------------------------------------ engines

@dataclasses.dataclass(frozen=True)
class Setup:
    """How an engine of ours runs: precision of the training forward and of the attack, the
    attack's compile_step, memory format, WS backend, whether the model itself is compiled
    (train.py --compile full), the views (--views), grouped or per-layer WS (--ws), and the
    library's ablation switches: the attack's ``cache_weights``, ``weight_grads`` and step
    ``backend`` (fields of fastnofrost.attacks.PGD) and the method's ``one_pass``."""
    precision: str
    compile_step: object
    channels_last: bool
    ws_backend: str = "fused"
    compile_model: bool = False
    views: str = "concat"
    ws: str = "grouped"
    cache_weights: bool = True
    weight_grads: bool = False
    step_backend: str = "fused"
    one_pass: bool = True

    def but(self, **changes) -> "Setup":
        return dataclasses.replace(self, **changes)


ABLATIONS = {  # name: (what is removed, Setup -> Setup, or None where ours does not use it)
    "per-layer-ws": ("grouped WS once per step: one WS op per layer and use (--ws per-layer)",
                     lambda s: s.but(ws="per-layer")),
    "no-ws-cache": ("WS cached per attack: per layer, standardize every PGD step (PGD(cache_weights=False))",
                    lambda s: s.but(cache_weights=False, ws="per-layer")),
    "weight-grads": ("no weight grads in the loop: each step also differentiates every parameter and "
                     "standardized weight (PGD(weight_grads=True))", lambda s: s.but(weight_grads=True)),
    "two-forwards": ("one clean+adv forward: two forwards (Method one_pass=False)", lambda s: s.but(one_pass=False)),
    "unfused-pgd": ("fused PGD ops: random start and step in eager torch (PGD(backend='reference'))",
                    lambda s: s.but(step_backend="reference")),
    "unfused-ws": ("fused WS kernel: layers' backend='reference' (per layer, nn.set_ws_backend)",
                   lambda s: s.but(ws_backend="reference", ws="per-layer")),
    "fp32": ("bf16 autocast: fp32", lambda s: None if s.precision == "fp32" else s.but(precision="fp32")),
    "no-compile": ("compiled attack step: eager", lambda s: s.but(compile_step=False) if s.compile_step else None),
    "nchw": ("channels_last: NCHW", lambda s: s.but(channels_last=False) if s.channels_last else None),
}


def ours_setup(device: str, compile_attack: bool, precision: str = "auto") -> Setup:
    """What train.py does on this device by default (memory format; precision: train.py's
    --precision, default auto), plus --compile."""
    resolved = resolve(dataclasses.replace(RECIPE, precision=precision), torch.device(device))
    compile_step = attack_compile_step("attack" if compile_attack else "none", device)
    return Setup(precision=resolved.precision, compile_step=compile_step, channels_last=resolved.channels_last)


def engine_setups(names, device, compile_attack, precision: str = "auto") -> dict:
    """{engine: Setup} for ours and the applicable ablations; the baselines map to None."""
    ours = ours_setup(device, compile_attack, precision)
    setups = {}
    for name in names:
        if name == "ours":
            setups[name] = ours
        elif name == "ours-full":
            setups[name] = ours_setup(device, True, precision).but(compile_model=True)
        elif name == "ours-sequential":
            setups[name] = ours.but(views="sequential")
        elif name in BASELINES:
            setups[name] = None
        elif name == "ablations":
            setups.update({k: s for k, (_, fn) in ABLATIONS.items() if (s := fn(ours)) is not None})
        elif name in ABLATIONS:
            setup = ABLATIONS[name][1](ours)
            if setup is None:
                raise SystemExit(f"bench_step: ablation {name!r} does not apply here (ours does not use it)")
            setups[name] = setup
        else:
            raise SystemExit(f"bench_step: unknown engine {name!r}; use ours, ours-full, ours-sequential, official, "
                             f"naive-attack, ablations or one of "
                             f"{', '.join(ABLATIONS)}")
    return setups


# ------------------------------------------------------------------ one training step per engine

def autocast_forward(model, precision: str, device: str):
    """The training forward: the model, under autocast for bf16 (as DeepSpeed's torch_autocast)."""
    if precision == "fp32":
        return model

    def forward(x):
        with Precision(precision).autocast(device):
            return model(x)
    return forward


def ours_step(model, optimizer, setup: Setup, k: int, device: str):
    """One library training step, as train.py runs one: inside the model's WeightGroup step
    (grouped WS), method(forward, model, x, y), backward (sequential views: one per view, inside
    the method), SGD step."""
    attack = PGD(eps=EPS, steps=max(k, 1), precision=setup.precision, compile_step=setup.compile_step,  # ST: unused
                 cache_weights=setup.cache_weights, weight_grads=setup.weight_grads, backend=setup.step_backend)
    method = build_method("nofrost" if k else "st", attack, smoothing=SMOOTHING, lam=LAMBDA, one_pass=setup.one_pass)
    forward = autocast_forward(model, setup.precision, device)
    group = weight_group(model)
    sequential = setup.views == "sequential"

    def backward(term, last):
        if group is not None:
            group.last_pass(last)
        term.backward()

    def step(x, y):
        with contextlib.ExitStack() as stack:
            model.train()
            optimizer.zero_grad(set_to_none=True)
            if group is not None:
                stack.enter_context(group.step("several" if sequential else "one", cast=PRECISIONS[setup.precision]))
            out = method(forward, model, x, y, backward=backward if sequential else None)
            if not out.backpropagated:
                out.loss.backward()
        optimizer.step()
    return step


# ------------------------------------------------------------------ measuring

def build(args, setup: Optional[Setup], batch: int):
    """Model, optimizer and one synthetic batch for an engine (same seed: same weights and data)."""
    torch.manual_seed(0)
    model = create_model(args.model, num_classes=args.num_classes, width=args.width, drop_rate=DROP,
                         drop_path_rate=DROP_PATH).to(args.device)
    x = torch.rand(batch, 3, args.image_size, args.image_size, device=args.device)
    y = torch.randint(0, args.num_classes, (batch,), device=args.device)
    cfg = TrainConfig(batch_size=batch)  # the recipe's SGD: lr 0.1 x batch/256, Nesterov, wd 5e-5
    if setup is None:  # a baseline: timm's WS, NCHW, torch SGD over every parameter, as PGDAT.py
        model = official_model(model)
        return model, official_optimizer(model, cfg.peak_lr, cfg.momentum, cfg.wd), x, y
    set_ws_backend(model, setup.ws_backend)
    if setup.channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    if setup.ws == "grouped":
        group_weights(model)
    if setup.compile_model:
        model.compile()  # what engine.compile() does in train.py
    optimizer = build_optimizer(cfg, param_groups(cfg, model), torch.device(args.device), {})
    return model, optimizer, x, y


def time_steps(step, x, y, warmup: int, repeats: int, device: str):
    """Milliseconds of each of ``repeats`` steps after ``warmup`` steps."""
    for _ in range(warmup):
        step(x, y)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeats):
        if device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            step(x, y)
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            step(x, y)
            times.append((time.perf_counter() - t0) * 1e3)
    return times


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def rss_mib() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def measure(args, engine: str, setup: Optional[Setup], ks, batch: int):
    """Rows for one engine at each K, on one model instance (compiled graphs are reused across K);
    a process of its own (``--one``, not ``--in-process``) also reports its peak RSS."""
    isolated = not args.in_process
    model, optimizer, x, y = build(args, setup, batch)
    rss_start = rss_mib() if isolated else None  # the process before any step: interpreter, torch, model
    rows = []
    for k in ks:
        if setup is None:
            step = BASELINES[engine](model, optimizer, k, EPS, default_alpha(EPS, max(k, 1)), LAMBDA, SMOOTHING)
        else:
            step = ours_step(model, optimizer, setup, k, args.device)
        times = time_steps(step, x, y, args.warmup, args.repeats, args.device)
        if args.device == "cuda":
            memory = torch.cuda.max_memory_allocated() / 2**20
        else:
            memory = peak_rss_mib() if isolated else None
        ms = statistics.median(times)
        rows.append(dict(engine=engine, precision=setup.precision if setup else "fp32", k=k, batch=batch, ms=ms,
                         all_ms=times, img_s=batch / ms * 1e3,
                         peak_mib=memory, rss_start_mib=rss_start))
        print(f"  {engine:<13} K={k:<3} batch {batch:<4} {ms:10.1f} ms/step", file=sys.stderr, flush=True)
    return rows


def run_isolated(argv, engine: str, k: int, batch: int) -> dict:
    """One (engine, K, batch) config in a fresh process of this script, so its peak RSS is its own."""
    cmd = [sys.executable, os.path.abspath(__file__), *argv, "--one", f"{engine}:{k}:{batch}"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    sys.stderr.write(done.stderr)
    rows = [line[len(ROW_TAG):] for line in done.stdout.splitlines() if line.startswith(ROW_TAG)]
    if done.returncode or not rows:
        raise SystemExit(f"bench_step: config {engine} K={k} batch {batch} failed (exit {done.returncode})")
    return json.loads(rows[-1])


def run_all(args, argv, setups: dict, record) -> None:
    """Every config, each row handed to ``record``, the whole sweep ``--rounds`` times. Isolated
    (CPU): one process per config, K-major so load drift spreads over the engines; else here,
    engine-major, each engine's model built once (compiled graphs are reused across K), compile
    caches and CUDA-graph memory pools dropped between engines so each engine's peak memory is
    its own."""
    plan = [(name, batch, args.ks if name in FULL_KS else args.ablation_ks)
            for batch in args.batch_sizes for name in setups]
    for _ in range(args.rounds):
        if args.in_process:
            for name, batch, ks in plan:
                record(measure(args, name, setups[name], ks, batch))
                if args.compile or name == "ours-full":
                    torch._dynamo.reset()
                if args.device == "cuda":
                    torch.cuda.empty_cache()
            continue
        for batch in args.batch_sizes:
            for k in sorted(set(args.ks) | set(args.ablation_ks)):
                for name, b, ks in plan:
                    if b == batch and k in ks:
                        record([run_isolated(argv, name, k, batch)])


def merge_row(rows: list, row: dict) -> None:
    """Add a measured row; a config measured again (another round) pools its step times: the
    median over all of them, the largest peak memory."""
    same = next((r for r in rows if (r["engine"], r["k"], r["batch"]) == (row["engine"], row["k"], row["batch"])),
                None)
    if same is None:
        rows.append(row)
        return
    same["all_ms"] = same["all_ms"] + row["all_ms"]
    same["ms"] = statistics.median(same["all_ms"])
    same["img_s"] = same["batch"] / same["ms"] * 1e3
    if row["peak_mib"] is not None:
        same["peak_mib"] = max(same["peak_mib"], row["peak_mib"])


# ------------------------------------------------------------------ reporting

def add_ratios(rows, flops) -> None:
    """Overhead ratio (vs the same engine's ST), floor, ratio/floor, speedup vs the official step."""
    by = {(r["engine"], r["k"], r["batch"]): r for r in rows}
    for r in rows:
        r["step_mib"] = step_memory(r)
    for r in rows:
        st = by.get((r["engine"], 0, r["batch"]))
        ref = by.get(("official", r["k"], r["batch"]))
        r["floor"] = flop_floor(r["k"], **flops)
        r["overhead"] = r["ms"] / st["ms"] if st else None
        r["ratio_vs_floor"] = r["overhead"] / r["floor"] if st else None
        r["speedup"] = ref["ms"] / r["ms"] if ref else None
        r["memory_vs_official"] = r["step_mib"] / ref["step_mib"] if ref and r["step_mib"] and ref["step_mib"] else None


def step_memory(row):
    """MiB a step needs: on CPU the peak RSS minus the RSS before the first step (interpreter,
    torch and model left out); on CUDA max_memory_allocated (weights and optimizer state in)."""
    if row["peak_mib"] is None:
        return None
    return row["peak_mib"] - (row["rss_start_mib"] or 0.0)


def fmt(value, spec: str, suffix: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{suffix}"


def print_table(rows) -> None:
    head = (f"{'engine':<15} {'prec':<5} {'K':>3} {'batch':>5} {'ms/step':>10} {'img/s':>9} {'overhead':>9} {'floor':>6} "
            f"{'ratio/floor':>11} {'peak MiB':>9} {'step MiB':>9} {'vs off':>7}")
    print(head + "\n" + "-" * len(head))
    for r in sorted(rows, key=lambda r: (r["batch"], r["k"])):
        print(f"{r['engine']:<15} {r['precision']:<5} {r['k']:>3} {r['batch']:>5} {r['ms']:>10.1f} {r['img_s']:>9.1f} "
              f"{fmt(r['overhead'], '.2f', 'x'):>9} {r['floor']:>6.2f} {fmt(r['ratio_vs_floor'], '.2f'):>11} "
              f"{fmt(r['peak_mib'], '.0f'):>9} {fmt(r['step_mib'], '.0f'):>9} {fmt(r['speedup'], '.2f', 'x'):>7}")


def goals(rows, device: str) -> list:
    """Each goal of the device at the largest K, per batch: dicts with the value and met / not
    (None: the engine or the baseline was not measured)."""
    out = []
    for batch in sorted({r["batch"] for r in rows}):
        k = max(r["k"] for r in rows if r["batch"] == batch)
        for engine, metric, threshold, higher in GOALS[device]:
            row = next((r for r in rows if (r["engine"], r["k"], r["batch"]) == (engine, k, batch)), None)
            value = row.get(metric) if row else None
            met = None if value is None else (value >= threshold if higher else value <= threshold)
            out.append(dict(engine=engine, precision=row.get("precision") if row else None, metric=metric, k=k,
                            batch=batch, value=value, threshold=threshold,
                            goal=f"{'>=' if higher else '<='} {threshold}", met=met))
    return out


def print_goals(results) -> None:
    print(f"\ngoals on {results['config']['device']} ({results['config']['model']}):")
    for g in results["goals"]:
        state = "not measured" if g["met"] is None else ("met" if g["met"] else "NOT met")
        print(f"  {g['engine']} ({g['precision'] or '-'}) {GOAL_TEXT[g['metric']]} at K={g['k']}, batch {g['batch']}: {fmt(g['value'], '.2f')} "
              f"(goal {g['goal']}): {state}")


def plot(rows, title: str, path) -> None:
    """img/s vs K: ours, the official step, and the FLOP bound (ours' ST throughput / FLOP floor)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for batch in sorted({r["batch"] for r in rows}):
        for engine, style in (("ours", "o-"), ("ours-full", "^-"), ("official", "s-")):
            pts = sorted((r["k"], r["img_s"]) for r in rows if r["engine"] == engine and r["batch"] == batch)
            if pts:
                ax.plot(*zip(*pts), style, label=f"{engine}, batch {batch}")
        st = next((r for r in rows if (r["engine"], r["k"], r["batch"]) == ("ours", 0, batch)), None)
        if st:
            pts = sorted((r["k"], st["img_s"] / r["floor"]) for r in rows
                         if r["engine"] == "ours" and r["batch"] == batch)
            ax.plot(*zip(*pts), "k--", lw=1, label=f"FLOP bound: ours' ST img/s / floor, batch {batch}")
    ax.set_xticks(sorted({r["k"] for r in rows}))
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("PGD steps K (0 = ST)")
    ax.set_ylabel("training images / s")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"wrote {path}")


def results_record(args, setups, flops, rows, complete: bool) -> dict:
    """The JSON record: device, config, engines, FLOPs, floors, rows (with ratios) and goals."""
    add_ratios(rows, flops)
    engines = {name: (BASELINES[name].__doc__.split("\n\n")[0] if setup is None else
                      dict(dataclasses.asdict(setup), removes=ABLATIONS[name][0] if name in ABLATIONS else None))
               for name, setup in setups.items()}
    ks = sorted({r["k"] for r in rows} | set(args.ks))
    memory = ("cuda max_memory_allocated after warm-up" if args.device == "cuda" else
              "peak RSS of a process running only that config" if not args.in_process else None)
    config = dict(device=args.device, model=args.model, image_size=args.image_size, width=args.width,
                  num_classes=args.num_classes, batch_sizes=args.batch_sizes, ks=args.ks, ablation_ks=args.ablation_ks,
                  warmup=args.warmup, repeats=args.repeats, rounds=args.rounds, compile=args.compile,
                  in_process=args.in_process,
                  memory=memory, allocator=args.allocator, eps=EPS, lam=LAMBDA, smoothing=SMOOTHING, drop=DROP, drop_path=DROP_PATH,
                  img_s="clean training images per second (the adversarial copies are not counted)")
    info = dict(describe_device(args.device), loadavg_start=args.loadavg_start, loadavg_end=os.getloadavg())
    return dict(info=info, config=config, engines=engines, flops_per_image=flops,
                floor={k: flop_floor(k, **flops) for k in ks}, rows=rows, goals=goals(rows, args.device),
                complete=complete)


def _ints(text: str):
    return [int(v) for v in text.split(",")]


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--model", help="cuda: nf_resnet26 (or nf_resnet50); cpu: nf_resnet26_small")
    p.add_argument("--image-size", type=int)
    p.add_argument("--width", type=float, help="channel width multiplier")
    p.add_argument("--num-classes", type=int)
    p.add_argument("--batch-sizes", help="comma separated (cuda 128, cpu 32)")
    p.add_argument("--ks", help="PGD steps, comma separated; 0 = ST (default 0,1,3,5,10)")
    p.add_argument("--ablation-ks", help="K of the ablations (default 0 and the largest --ks)")
    p.add_argument("--repeats", type=int, help="timed steps per config (cuda 10, cpu 3)")
    p.add_argument("--warmup", type=int, help="untimed steps first (cuda 3, cpu 1)")
    p.add_argument("--rounds", type=int, default=1,
                   help="run the whole sweep this many times and pool each config's steps: drift in machine "
                        "load then falls on every config alike (default 1)")
    p.add_argument("--engines", default="ours,ours-full,ours-sequential,official,naive-attack,ablations",
                   help="comma separated: ours, ours-full, ours-sequential, official, naive-attack (not a "
                        "baseline), ablations (all that "
                        "apply) or any of "
                        + ", ".join(ABLATIONS))
    p.add_argument("--compile", action="store_true",
                   help="compile the attack step (PGD.compile_step: 'reduce-overhead' on cuda)")
    p.add_argument("--precision", default="auto", choices=PRECISION_CHOICES,
                   help="ours' precision, as train.py --precision (default auto: bf16 autocast on CUDA and on a "
                        "CPU with native bf16, else fp32); the 'fp32' ablation is ours at fp32")
    p.add_argument("--quick", action="store_true", help="tiny model, batch and K: a smoke test")
    p.add_argument("--isolate", action=argparse.BooleanOptionalAction, default=None,
                   help="one process per config (default: on CPU, not with --quick); gives per-config peak RSS")
    p.add_argument("--default-malloc", action="store_true",
                   help="CPU: leave glibc's mmap threshold as is (default: every engine runs with "
                        "fastnofrost.training.host.keep_large_buffers, as train.py does)")
    p.add_argument("--one", help=argparse.SUPPRESS)  # internal: ENGINE:K:BATCH in this process, row to stdout
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda but no CUDA device is visible")
    prepare(torch.device(args.device))  # cudnn.benchmark on CUDA, as train.py and evaluate
    for key, value in DEFAULTS["quick" if args.quick else args.device].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.batch_sizes, args.ks = _ints(args.batch_sizes), _ints(args.ks)
    args.ablation_ks = _ints(args.ablation_ks) if args.ablation_ks else sorted({0, max(args.ks)})
    if min(args.ks + args.ablation_ks) < 0 or args.repeats < 1 or args.warmup < 0 or args.rounds < 1:
        p.error("K >= 0, --repeats >= 1, --rounds >= 1 and --warmup >= 0")
    isolate = args.isolate if args.isolate is not None else (args.device == "cpu" and not args.quick)
    if isolate and args.device == "cuda":
        p.error("--isolate is for CPU (CUDA memory is measured in-process)")
    args.in_process = not isolate
    args.engines = args.engines.split(",")
    args.loadavg_start = os.getloadavg()
    return args


def run_one(args) -> dict:
    """--one ENGINE:K:BATCH: measure that config alone and print its row for the parent."""
    engine, k, batch = args.one.split(":")
    setup = engine_setups([engine], args.device, args.compile, args.precision)[engine]
    row = measure(args, engine, setup, [int(k)], int(batch))[0]
    print(ROW_TAG + json.dumps(row), flush=True)
    return row


def main(argv=None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    args.allocator = set_allocator(args.device, args.default_malloc)  # the same for every engine, as train.py
    if args.one:
        return run_one(args)
    setups = engine_setups(args.engines, args.device, args.compile, args.precision)
    model, _, x, y = build(args, ours_setup(args.device, False, "fp32"), 2)
    flops = count_flops(model, x, y)
    del model
    print(f"# bench_step: {args.model} {args.image_size}x{args.image_size} width {args.width}, {args.device}, "
          f"load average {args.loadavg_start[0]:.2f}")
    device = describe_device(args.device)
    if args.device == "cpu":
        print(f"# CPU: {device['name']}, {device['cores']} cores, torch capability {device['capability']}, "
              f"bf16: {device['bf16']}")
    precision, why = resolve_precision(dataclasses.replace(RECIPE, precision=args.precision), torch.device(args.device))
    print(f"# ours trains in {precision} ({why}); the official step in fp32")
    print(f"# GFLOP per image: forward {flops['fwd'] / 1e9:.3f}, input-grad {flops['igrad'] / 1e9:.3f}, "
          f"weight-grad {flops['wgrad'] / 1e9:.3f}; floor of step/ST: "
          + ", ".join(f"K={k} {flop_floor(k, **flops):.2f}" for k in args.ks))
    print(f"# engines: {', '.join(setups)}; {'in this process' if args.in_process else 'one process per config'}",
          flush=True)

    name = f"bench_step_{args.model}{'_compile' if args.compile else ''}{'_quick' if args.quick else ''}.json"
    rows = []

    def checkpoint(new_rows):  # partial JSON after every measurement: a killed run keeps what it has
        for row in new_rows:
            merge_row(rows, row)
        save_result(name, args.device, results_record(args, setups, flops, rows, complete=False), quiet=True)

    run_all(args, argv, setups, checkpoint)
    result = results_record(args, setups, flops, rows, complete=True)
    print()
    print_table(rows)
    print("overhead = step time / ST step time of the same engine; floor = FLOP-model floor of it; "
          "vs off = official step time / time (naive-attack: not a baseline)")
    print_goals(result)
    print(f"load average at the end: {result['info']['loadavg_end'][0]:.2f} ({os.cpu_count()} cores)")
    path = save_result(name, args.device, result)
    plot(rows, f"bench_step: {args.model} {args.image_size}px, {result['info']['name']} ({args.device})",
         path.with_suffix(".png"))
    return result


if __name__ == "__main__":
    main()

"""Fidelity benchmark: the seed paper's Table 1 and Figure 2 at small scale.

Trains six methods with the real training engine (``fastnofrost/train.py``, one subprocess each,
the same schedule for all) on Fashion-MNIST (Debian's ``dataset-fashion-mnist``; scikit-learn's
digits when it is missing, said so in the output) and evaluates each on the test split:

    ST (BN)       resnet26_small         st        standard training: the clean ceiling
    SAT (BN)      resnet26_small         sat       PGD adversarial training
    SAT (IN)      resnet26_in_small      sat       ... with InstanceNorm
    TRADES (BN)   resnet26_small         trades    beta 6
    MBNAT         resnet26_dualbn_small  mbnat     dual BN, evaluated at BN mix gamma
    NoFrost (NF)  nf_resnet26_small      nofrost   normalizer-free, lambda 0.5

Metrics (L-inf, the training eps, fp32, seeded): clean accuracy and PGD-20 on ``--eval-examples``
test images, APGD-CE (100 iterations) on the same images, AutoAttack 'standard' (pyautoattack)
on the first ``--aa-examples`` of them. MBNAT is evaluated at every gamma of MBNAT_GAMMAS (clean
and PGD-20: the curve of the figure) and fully at ``--mbnat-gamma`` (its table row).

Outputs: a Table 1 style table (printed and written as Markdown), JSON, and a Figure 2 style
PNG (x: PGD-20 accuracy, y: clean accuracy; one point per method, MBNAT a line over gamma),
under benchmarks/results/<device>/ (or $OUT/); the training runs go to ``--out``.

    python benchmarks/fidelity.py --quick                 # 2-core CPU, under 30 minutes idle
    python benchmarks/fidelity.py --device cuda           # full mode, meant for a GPU
    python benchmarks/fidelity.py --quick --methods sat_bn,nofrost --out /tmp/fid --reuse
"""
import argparse
import dataclasses
import json
import math
import os
import multiprocessing
import platform
import resource
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Optional

import torch

import fastnofrost
from results_io import save_result  # noqa: E402  (benchmarks/ is on sys.path when run as a script)
from fastnofrost.attacks import get_attack
from fastnofrost.data import build_loader
from fastnofrost.data.datasets import load_fashion_mnist
from fastnofrost.models import create_model, load_checkpoint
from fastnofrost.nn import set_bn_mode

REPO = Path(__file__).resolve().parent.parent
TRAIN = REPO / "fastnofrost" / "train.py"
MBNAT_GAMMAS = (0.0, 0.25, 0.5, 0.75, 1.0)
ADVERSARIAL_BASELINES = ("sat_bn", "trades_bn", "mbnat")
METRICS = {"clean": "Clean", "pgd20": "PGD-20", "apgd_ce": "APGD-CE", "aa": "AA"}


class Row(NamedTuple):
    """One method of the table: its key, label, normalization, model and training method."""
    key: str
    label: str
    norm: str
    model: str
    method: str


ROWS = (Row("st_bn", "ST", "BN", "resnet26_small", "st"),
        Row("sat_bn", "SAT", "BN", "resnet26_small", "sat"),
        Row("sat_in", "SAT", "IN", "resnet26_in_small", "sat"),
        Row("trades_bn", "TRADES", "BN", "resnet26_small", "trades"),
        Row("mbnat", "MBNAT", "dual BN", "resnet26_dualbn_small", "mbnat"),
        Row("nofrost", "NoFrost", "NF", "nf_resnet26_small", "nofrost"))


@dataclass(frozen=True)
class Schedule:
    """The training schedule shared by every method and the evaluation sizes."""
    width: float          # channel multiplier of the ResNet-26
    image_size: int       # Fashion-MNIST is 28x28, resized (antialiased) to this
    epochs: int
    batch_size: int
    lr: float
    warmup_epochs: float
    eps: float            # 1/255 units, training and evaluation
    steps: int            # PGD steps of the training attack
    train_examples: int   # seeded subset of the training split (0: all)
    eval_examples: int    # clean, PGD-20, APGD-CE
    aa_examples: int      # AutoAttack (0: skip)


QUICK = Schedule(width=0.25, image_size=16, epochs=4, batch_size=64, lr=0.05, warmup_epochs=0.5, eps=8, steps=5,
                 train_examples=8000, eval_examples=500, aa_examples=100)
FULL = Schedule(width=1.0, image_size=32, epochs=30, batch_size=256, lr=0.1, warmup_epochs=2, eps=8, steps=10,
                train_examples=0, eval_examples=10000, aa_examples=1000)


# ---------------------------------------------------------------------- data

def pick_data(requested: str) -> tuple:
    """(data set name, note): Fashion-MNIST when its files are installed, else digits."""
    if requested == "fashion-mnist":
        try:
            load_fashion_mnist(train=False)
        except FileNotFoundError as exc:
            note = f"Fashion-MNIST is missing, using scikit-learn digits instead ({exc})"
            print(f"fidelity: {note}", flush=True)
            return "digits", note
    return requested, ""


def test_set(data: str, n: int, image_size: int, device: str, seed: int):
    """``n`` test images (a seeded pick; the whole split when it is smaller) and labels, on ``device``."""
    loader = build_loader(data, train=False, batch_size=1024, image_size=image_size, subset=n, split_seed=seed,
                          device=device)
    loader.set_epoch(0)
    xs, ys = zip(*loader)
    return torch.cat(xs), torch.cat(ys)


# ---------------------------------------------------------------------- training

def train_command(row: Row, sched: Schedule, data: str, device: str, run_dir: Path, seed: int) -> list:
    """The train.py command line of ``row``: the same schedule flags for every method."""
    flags = dict(data=data, method=row.method, model=row.model, out=run_dir, device=device, seed=seed,
                 width=sched.width, image_size=sched.image_size, epochs=sched.epochs, batch_size=sched.batch_size,
                 lr=sched.lr, warmup_epochs=sched.warmup_epochs, eps=sched.eps, steps=sched.steps,
                 train_examples=sched.train_examples, drop=0, drop_path=0, val_every=0, workers=0,
                 progress="false", tensorboard="false")
    command = [sys.executable, str(TRAIN)]
    for name, value in flags.items():
        command += ["--" + name.replace("_", "-"), str(value)]
    return command


def train(row: Row, sched: Schedule, data: str, device: str, out: Path, seed: int, reuse: bool,
          threads: int) -> dict:
    """Train ``row`` into ``out/<key>`` with ``threads`` CPU threads (or reuse a finished run there);
    train.py's summary plus ``cpu_s``, the CPU seconds of the training process (None when reused)."""
    run_dir = out / row.key
    summary_path = run_dir / "summary.json"
    if reuse and summary_path.is_file() and (run_dir / "final.safetensors").is_file():
        print(f"[{row.key}] reusing {run_dir}", flush=True)
        return {**json.loads(summary_path.read_text()), "cpu_s": None}
    if run_dir.exists():
        raise RuntimeError(f"{run_dir} already exists; pass --reuse to evaluate a finished run, or a new --out")
    log_path = out / f"{row.key}.log"
    print(f"[{row.key}] training {row.method} on {row.model} (log: {log_path})", flush=True)
    out.mkdir(parents=True, exist_ok=True)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with open(log_path, "w") as log:
        done = subprocess.run(train_command(row, sched, data, device, run_dir, seed), cwd=REPO, stdout=log,
                              stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        tail = "".join(log_path.read_text().splitlines(keepends=True)[-15:])
        raise RuntimeError(f"training {row.key} failed (exit {done.returncode}); last lines of {log_path}:\n{tail}")
    summary = json.loads(summary_path.read_text())
    summary["cpu_s"] = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    print(f"[{row.key}] trained in {summary['wall_s']:.0f} s ({summary['cpu_s']:.0f} CPU s)", flush=True)
    return summary


def load_model(row: Row, sched: Schedule, run_dir: Path, device: str) -> torch.nn.Module:
    """The trained weights of ``row`` (``final.safetensors``) in a fresh model, eval mode."""
    model = create_model(row.model, num_classes=10, width=sched.width)
    load_checkpoint(model, run_dir / "final.safetensors")
    return model.to(device).eval()


# ---------------------------------------------------------------------- evaluation

def accuracy(model, x, y, attack=None, batch: int = 500, seed: int = 0) -> float:
    """Accuracy (%) on ``attack(model, x, y)`` (clean when None), in chunks of ``batch``; chunk i
    is attacked with seed ``seed + i``."""
    correct = 0
    for i, (xb, yb) in enumerate(zip(x.split(batch), y.split(batch))):
        if attack is not None:
            xb = get_attack(attack[0], seed=seed + i, **attack[1])(model, xb, yb)
        with torch.no_grad():
            correct += int((model(xb).argmax(1) == yb).sum())
    return 100.0 * correct / len(y)


def evaluate(model, x, y, eps: float, aa_examples: int, seed: int, full: bool = True) -> dict:
    """Clean and PGD-20 accuracy; with ``full`` also APGD-CE and AutoAttack (first aa_examples);
    each with the number of examples and the seconds it took."""
    attacks = {"clean": None, "pgd20": ("pgd", dict(eps=eps, steps=20))}
    if full:
        attacks["apgd_ce"] = ("apgd_ce", dict(eps=eps))
    result = {}
    for name, attack in attacks.items():
        t0 = time.time()
        result[name] = accuracy(model, x, y, attack, seed=seed)
        result[f"{name}_s"] = time.time() - t0
    result["n"] = len(y)
    if full and aa_examples:
        t0 = time.time()
        x_adv = get_attack("autoattack", eps=eps, seed=seed)(model, x[:aa_examples], y[:aa_examples])
        result["aa"] = accuracy(model, x_adv, y[:aa_examples])
        result.update(aa_s=time.time() - t0, n_aa=min(aa_examples, len(y)))
    return result


def evaluate_row(row: Row, model, x, y, sched: Schedule, seed: int, gamma: float) -> dict:
    """Table metrics of ``row``; for MBNAT at BN mix ``gamma``, plus its clean / PGD-20 curve."""
    eps = sched.eps / 255
    if row.method != "mbnat":
        return evaluate(model, x, y, eps, sched.aa_examples, seed)
    curve = []
    for g in MBNAT_GAMMAS:
        set_bn_mode(model, "mix", g)
        curve.append({"gamma": g, **evaluate(model, x, y, eps, 0, seed, full=False)})
        print(f"  gamma {g:.2f}: clean {curve[-1]['clean']:.1f}  PGD-20 {curve[-1]['pgd20']:.1f}", flush=True)
    set_bn_mode(model, "mix", gamma)
    return {**evaluate(model, x, y, eps, sched.aa_examples, seed), "gamma": gamma, "curve": curve}


def std_error(percent: float, n: int) -> float:
    """Binomial standard error (percentage points) of an accuracy measured on ``n`` examples."""
    p = percent / 100
    return 100 * math.sqrt(p * (1 - p) / max(n, 1))


def mbnat_clean_at(curve: list, robust: float) -> Optional[float]:
    """MBNAT's clean accuracy at PGD-20 accuracy ``robust``, linearly interpolated along its gamma
    curve; None when ``robust`` lies outside the curve's range."""
    for a, b in zip(curve, curve[1:]):
        lo, hi = sorted((a["pgd20"], b["pgd20"]))
        if lo <= robust <= hi:
            t = 0.0 if hi == lo else (robust - a["pgd20"]) / (b["pgd20"] - a["pgd20"])
            return a["clean"] + t * (b["clean"] - a["clean"])
    return None


def comparisons(results: dict) -> list:
    """NoFrost minus each adversarial baseline (percentage points), and MBNAT's curve read at
    NoFrost's PGD-20 accuracy."""
    nf = results.get("nofrost")
    if not nf or "clean" not in nf:
        return []
    lines = []
    for key in ADVERSARIAL_BASELINES:
        base = results.get(key)
        if not base or "clean" not in base:
            continue
        deltas = {m: nf[m] - base[m] for m in METRICS if m in nf and m in base}
        lines.append(dict(baseline=key, **deltas))
    if "curve" in results.get("mbnat", {}):
        curve = results["mbnat"]["curve"]
        at = mbnat_clean_at(curve, nf["pgd20"])
        lines.append(dict(baseline="mbnat_curve_at_nofrost_pgd20", mbnat_clean=at,
                          clean=None if at is None else nf["clean"] - at,
                          curve_pgd20=[min(c["pgd20"] for c in curve), max(c["pgd20"] for c in curve)],
                          curve_best_clean=max(c["clean"] for c in curve)))
    return lines


# ---------------------------------------------------------------------- report

def row_label(row: Row, result: dict) -> str:
    """The method's name in the table; MBNAT's names its gamma."""
    return f"{row.label} (gamma {result['gamma']:g})" if "gamma" in result else row.label


def table(rows, results: dict, eps: float, data: str, n: int, n_aa: int) -> str:
    """Markdown table laid out like the paper's Table 1 (accuracies on ``n`` test images, AA on
    ``n_aa``), plus the MBNAT curve."""
    head = (f"| Method | Norm | Clean | PGD-20 | APGD-CE | AA (n={n_aa}) | Train s (CPU s) |\n"
            "| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    lines = [head]
    for row in rows:
        r = results.get(row.key, {})
        if "error" in r:
            lines.append(f"| {row.label} | {row.norm} | failed: {r['error'].splitlines()[0]} | | | | |")
            continue
        cells = [f"{r[m]:.1f}" if m in r else "-" for m in METRICS]
        cpu = f" ({r['train_cpu_s']:.0f})" if r["train_cpu_s"] is not None else ""
        lines.append(f"| {row_label(row, r)} | {row.norm} | " + " | ".join(cells) + f" | {r['train_s']:.0f}{cpu} |")
    aa_error = f" ({std_error(50, n_aa):.1f} for AA)" if n_aa else ""
    lines.append(f"\nAccuracy (%) on {n} {data} test images (AA on the first {n_aa}); L-inf eps {eps:g}/255, "
                 f"the training eps. Standard error at 50%: {std_error(50, n):.1f} points{aa_error}.")
    curve = results.get("mbnat", {}).get("curve")
    if curve:
        lines += ["", "| MBNAT gamma | Clean | PGD-20 |", "| ---: | ---: | ---: |"]
        lines += [f"| {c['gamma']:.2f} | {c['clean']:.1f} | {c['pgd20']:.1f} |" for c in curve]
    return "\n".join(lines)


def comparison_text(lines: list) -> str:
    """One sentence per entry of :func:`comparisons`."""
    text = []
    for c in lines:
        if c["baseline"] == "mbnat_curve_at_nofrost_pgd20":
            lo, hi = c["curve_pgd20"]
            text.append("MBNAT curve at NoFrost's PGD-20: " + (
                f"outside the curve's PGD-20 range [{lo:.1f}, {hi:.1f}] (the curve's best clean "
                f"accuracy: {c['curve_best_clean']:.1f})" if c["clean"] is None
                else f"clean {c['mbnat_clean']:.1f} (NoFrost {c['clean']:+.1f} points)"))
        else:
            row = next(r for r in ROWS if r.key == c["baseline"])
            deltas = ", ".join(f"{METRICS[m]} {v:+.1f}" for m, v in c.items() if m != "baseline")
            text.append(f"NoFrost (NF) minus {row.label} ({row.norm}), points: {deltas}")
    return "\n".join(text)


def figure(rows, results: dict, path: Path, title: str) -> None:
    """Figure 2 style: clean vs PGD-20 accuracy, one labelled point per method, MBNAT a line over gamma."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5))
    for row in rows:
        r = results.get(row.key, {})
        if "clean" not in r:
            continue
        if "curve" in r:
            xs, ys = [c["pgd20"] for c in r["curve"]], [c["clean"] for c in r["curve"]]
            ax.plot(xs, ys, "-o", color="tab:gray", ms=4, label="MBNAT over gamma (0 clean BN .. 1 adv BN)")
            for c in r["curve"]:
                ax.annotate(f"{c['gamma']:g}", (c["pgd20"], c["clean"]), textcoords="offset points", xytext=(4, -10),
                            fontsize=7, color="tab:gray")
            continue
        marker = "*" if row.key == "nofrost" else "o"
        ax.plot(r["pgd20"], r["clean"], marker, ms=14 if marker == "*" else 7)
        ax.annotate(f"{row.label} ({row.norm})", (r["pgd20"], r["clean"]), textcoords="offset points",
                    xytext=(6, 4), fontsize=8)
    ax.set_xlabel("robust accuracy, PGD-20 (%)")
    ax.set_ylabel("clean accuracy (%)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def machine(device: str) -> dict:
    """Device, versions, core count and the load average at the start."""
    info = dict(device=device, torch=torch.__version__, fastnofrost=fastnofrost.__version__,
                python=platform.python_version(), cores=os.cpu_count(), load_start=os.getloadavg())
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
    return info


# ---------------------------------------------------------------------- main

def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="the CPU schedule (under 30 minutes on 2 idle cores)")
    p.add_argument("--methods", default=",".join(r.key for r in ROWS),
                   help="comma-separated subset of " + ", ".join(r.key for r in ROWS))
    p.add_argument("--data", default="fashion-mnist", choices=["fashion-mnist", "digits"])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    p.add_argument("--out", type=Path, default=None,
                   help="folder of the training runs (default benchmarks/results/<device>/fidelity-runs/<mode>-<time>)")
    p.add_argument("--reuse", action="store_true", help="evaluate finished runs found in --out instead of training")
    p.add_argument("--mbnat-gamma", type=float, default=0.5, help="BN mix gamma of MBNAT's table row")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--jobs", type=int, default=None,
                   help="methods trained and evaluated at once (default: 2 with --quick on a CPU of >= 2 cores, "
                        "else 1)")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads per job, training included (default: cores // jobs)")
    for f in dataclasses.fields(Schedule):
        p.add_argument("--" + f.name.replace("_", "-"), type=f.type, default=None,
                       help=f"override the mode's {f.name} (quick {getattr(QUICK, f.name)}, "
                            f"full {getattr(FULL, f.name)})")
    args = p.parse_args(argv)
    keys = args.methods.split(",")
    unknown = sorted(set(keys) - {r.key for r in ROWS})
    if unknown:
        p.error(f"--methods: unknown {', '.join(unknown)}; choose from {', '.join(r.key for r in ROWS)}")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda but no CUDA device is visible")
    cores = os.cpu_count() or 1
    args.jobs = args.jobs or (2 if args.quick and args.device == "cpu" and cores >= 2 else 1)
    args.threads = args.threads or max(1, cores // args.jobs)
    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(Schedule)
                 if getattr(args, f.name) is not None}
    sched = dataclasses.replace(QUICK if args.quick else FULL, **overrides)
    mode = "quick" if args.quick else "full"
    out = (args.out or REPO / "benchmarks" / "results" / args.device / "fidelity-runs" /
           time.strftime(f"{mode}-%Y%m%d-%H%M%S")).resolve()
    return args, [r for r in ROWS if r.key in keys], sched, mode, out


def run_row(row: Row, sched: Schedule, data: str, args, out: Path, x, y) -> dict:
    """Train and evaluate one method (in a worker process of ``args.threads`` threads); a failure
    is recorded, not raised, so the other methods still run."""
    torch.set_num_threads(args.threads)
    try:
        summary = train(row, sched, data, args.device, out, args.seed, args.reuse, args.threads)
        model = load_model(row, sched, out / row.key, args.device)
        t0, c0 = time.time(), time.process_time()
        result = evaluate_row(row, model, x.to(args.device), y.to(args.device), sched, args.seed, args.mbnat_gamma)
    except (RuntimeError, ValueError, OSError) as exc:
        print(f"[{row.key}] FAILED: {exc}", flush=True)
        return {"error": str(exc)}
    result.update(train_s=summary["wall_s"], train_cpu_s=summary["cpu_s"], eval_s=time.time() - t0,
                  eval_cpu_s=time.process_time() - c0, run_dir=str(out / row.key))
    print(f"[{row.key}] clean {result['clean']:.1f}  PGD-20 {result['pgd20']:.1f}  APGD-CE {result['apgd_ce']:.1f}"
          + (f"  AA {result['aa']:.1f}" if "aa" in result else "") + f"  (eval {result['eval_s']:.0f} s)", flush=True)
    return result


def run_all(rows, sched: Schedule, data: str, args, out: Path, x, y) -> dict:
    """Every method, ``args.jobs`` at a time in spawned worker processes of ``args.threads``
    threads each; results in table order."""
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(args.jobs, mp_context=context) as pool:
        futures = {row.key: pool.submit(run_row, row, sched, data, args, out, x, y) for row in rows}
        return {key: future.result() for key, future in futures.items()}


def main(argv=None) -> dict:
    args, rows, sched, mode, out = parse(argv)
    started = time.time()
    info = machine(args.device)
    data, note = pick_data(args.data)
    torch.manual_seed(args.seed)
    x, y = test_set(data, sched.eval_examples, sched.image_size, "cpu", args.seed)
    print(f"fidelity ({mode}) on {data}: {len(rows)} method(s), {args.jobs} at a time x {args.threads} thread(s), "
          f"{sched}; runs in {out}; load average {info['load_start']}", flush=True)
    results = run_all(rows, sched, data, args, out, x, y)
    info.update(load_end=os.getloadavg(), wall_s=time.time() - started)
    compared = comparisons(results)
    title = (f"{data}, ResNet-26 small (width {sched.width:g}, {sched.image_size}px), {sched.epochs} epochs, "
             f"eps {sched.eps:g}/255 ({mode} mode)")
    body = table(rows, results, sched.eps, data, len(y), min(sched.aa_examples, len(y)))
    markdown = f"## Fidelity: {title}\n\n{body}\n\n{comparison_text(compared)}\n"
    print("\n" + markdown)
    print(f"total wall time {info['wall_s']:.0f} s; load average start {info['load_start']} end {info['load_end']}")
    result = dict(info=info, mode=mode, data=data, data_note=note, schedule=dataclasses.asdict(sched),
                  jobs=args.jobs, threads=args.threads, mbnat_gamma=args.mbnat_gamma, seed=args.seed, runs=str(out),
                  results=results, comparisons=compared, methods={r.key: r._asdict() for r in rows})
    json_path = save_result(f"fidelity_{mode}.json", args.device, result)
    json_path.with_suffix(".md").write_text(markdown)
    figure(rows, results, json_path.with_suffix(".png"), title)
    print(f"wrote {json_path.with_suffix('.md')} and {json_path.with_suffix('.png')}")
    return result


if __name__ == "__main__":
    main()

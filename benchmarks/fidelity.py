"""Fidelity benchmark: the seed paper's Table 1 and Figure 2 at small scale, and our engine against
the official training loop.

Trains six methods with the real training engine (``fastnofrost/train.py``, one subprocess each,
the same schedule for all) on Fashion-MNIST (Debian's ``dataset-fashion-mnist``; scikit-learn's
digits when it is missing, said so in the output) and evaluates each on the test split. With
``--engines ours,official`` the methods the official script trains (ST, SAT, NoFrost) are also
trained by the official loop (``official_train.py``: PGDAT.py's loop and step, its own data order
and RNG; the same model, data subset, schedule and hyper-parameters), and evaluated by the same
code. Ours trains at ``--ours-precision`` (default auto, resolved as train.py resolves it: bf16
autocast on CUDA and on a CPU with native bf16, else fp32); the official loop in fp32, as PGDAT.py.
``--seeds N`` trains every (engine, method) with N seeds; the table shows mean +- standard
deviation over seeds, and a verdict line per method says whether ours minus official is within
two standard errors on every metric.

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

    python benchmarks/fidelity.py --quick                 # 2-core CPU
    python benchmarks/fidelity.py --quick --engines ours,official --seeds 3 --methods sat_bn,nofrost
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
import statistics
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Optional

import torch

import fastnofrost
from official_train import LAMBDAS as OFFICIAL_METHODS  # benchmarks/ is on sys.path when run as a script
from results_io import save_result
from fastnofrost.attacks import get_attack
from fastnofrost.data import build_loader
from fastnofrost.data.datasets import load_fashion_mnist
from fastnofrost.models import create_model, load_checkpoint
from fastnofrost.config import PRECISIONS, TrainConfig
from fastnofrost.nn import set_bn_mode
from fastnofrost.training.engine import resolve_precision

REPO = Path(__file__).resolve().parent.parent
ENGINES = {"ours": REPO / "fastnofrost" / "train.py", "official": REPO / "benchmarks" / "official_train.py"}
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


class Job(NamedTuple):
    """One training run: a method of the table, the engine that trains it, its precision, the seed,
    and the diagnostic flags its engine runs with (``--official-variants``, ``--ours-variants``;
    '': the engine as it is)."""
    row: Row
    engine: str
    precision: str
    seed: int
    flags: str = ""

    @property
    def label(self) -> str:
        """The engine as the table and the verdicts name it: 'official --attack-first', ..."""
        return f"{self.engine} {self.flags}" if self.flags else self.engine

    @property
    def name(self) -> str:
        variant = "".join("+" + f.lstrip("-") for f in self.flags.split())
        return f"{self.row.key}-{self.engine}{variant}-{self.precision}-seed{self.seed}"


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


QUICK = Schedule(width=0.25, image_size=16, epochs=3, batch_size=64, lr=0.05, warmup_epochs=0.5, eps=8, steps=5,
                 train_examples=8000, eval_examples=1000, aa_examples=50)
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

def train_command(job: Job, sched: Schedule, data: str, device: str, run_dir: Path) -> list:
    """The command line of ``job``: the same schedule flags for every method and both engines
    (train.py also gets: no dropout / drop-path, no validation, no workers, quiet)."""
    flags = dict(data=data, method=job.row.method, model=job.row.model, out=run_dir, device=device, seed=job.seed,
                 width=sched.width, image_size=sched.image_size, epochs=sched.epochs, batch_size=sched.batch_size,
                 lr=sched.lr, warmup_epochs=sched.warmup_epochs, eps=sched.eps, steps=sched.steps,
                 train_examples=sched.train_examples)
    if job.engine == "ours":
        flags.update(precision=job.precision, drop=0, drop_path=0, val_every=0, workers=0, progress="false",
                     tensorboard="false")
    command = [sys.executable, str(ENGINES[job.engine])]
    for name, value in flags.items():
        command += ["--" + name.replace("_", "-"), str(value)]
    return command + job.flags.split()


def train(job: Job, sched: Schedule, data: str, device: str, out: Path, reuse: bool, threads: int) -> dict:
    """Train ``job`` into ``out/<job name>`` with ``threads`` CPU threads (or reuse a finished run
    there); the engine's summary plus ``cpu_s``, the CPU seconds of the training process (None
    when reused)."""
    run_dir = out / job.name
    summary_path = run_dir / "summary.json"
    if reuse and summary_path.is_file() and (run_dir / "final.safetensors").is_file():
        print(f"[{job.name}] reusing {run_dir}", flush=True)
        return {**json.loads(summary_path.read_text()), "cpu_s": None}
    if run_dir.exists():
        raise RuntimeError(f"{run_dir} already exists; pass --reuse to evaluate a finished run, or a new --out")
    log_path = out / f"{job.name}.log"
    extra = f" with {job.flags}" if job.flags else ""
    print(f"[{job.name}] training {job.row.method} on {job.row.model}{extra} (log: {log_path})", flush=True)
    out.mkdir(parents=True, exist_ok=True)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with open(log_path, "w") as log:
        done = subprocess.run(train_command(job, sched, data, device, run_dir), cwd=REPO, stdout=log,
                              stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        tail = "".join(log_path.read_text().splitlines(keepends=True)[-15:])
        raise RuntimeError(f"training {job.name} failed (exit {done.returncode}); last lines of {log_path}:\n{tail}")
    summary = json.loads(summary_path.read_text())
    summary["cpu_s"] = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    print(f"[{job.name}] trained in {summary['wall_s']:.0f} s ({summary['cpu_s']:.0f} CPU s)", flush=True)
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


def mean_sd(values: list) -> tuple:
    """(mean, sample standard deviation); the deviation is None for a single value."""
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def aggregate(runs: list) -> dict:
    """``{engine: {method key: summary}}`` over the seeds of each (engine, method): per metric its
    mean and ``<metric>_sd``; the examples counts, ``n_seeds``, the mean training seconds; for
    MBNAT its gamma and the curve's mean per gamma. Failed runs are listed, not averaged."""
    groups = {}
    for r in runs:
        groups.setdefault(r["engine"], {}).setdefault(r["key"], []).append(r)
    out = {}
    for engine, by_key in groups.items():
        for key, rs in by_key.items():
            ok = [r for r in rs if "error" not in r]
            entry = {"n_seeds": len(ok), "seeds": [r["seed"] for r in ok]}
            if len(ok) < len(rs):
                entry["error"] = "; ".join(r["error"].splitlines()[0] for r in rs if "error" in r)
            if ok:
                for m in METRICS:
                    if all(m in r for r in ok):
                        entry[m], entry[f"{m}_sd"] = mean_sd([r[m] for r in ok])
                entry["n"], entry["n_aa"] = ok[0]["n"], ok[0].get("n_aa", 0)
                entry["train_s"] = statistics.fmean(r["train_s"] for r in ok)
                cpu = [r["train_cpu_s"] for r in ok]
                entry["train_cpu_s"] = None if None in cpu else statistics.fmean(cpu)
                if "gamma" in ok[0]:
                    entry["gamma"] = ok[0]["gamma"]
                    entry["curve"] = [{"gamma": c[0]["gamma"], **{m: statistics.fmean(x[m] for x in c)
                                                                  for m in ("clean", "pgd20")}}
                                      for c in zip(*(r["curve"] for r in ok))]
            out.setdefault(engine, {})[key] = entry
    return out


def mean_error(entry: dict, metric: str) -> float:
    """Standard error of an engine's mean of ``metric``: the seeds' deviation / sqrt(seeds); with
    one seed (or seeds that agree exactly), the binomial error of that accuracy on its examples."""
    if entry.get(f"{metric}_sd"):
        return entry[f"{metric}_sd"] / math.sqrt(entry["n_seeds"])
    return std_error(entry[metric], entry["n_aa"] if metric == "aa" else entry["n"])


def verdicts(results: dict) -> list:
    """Per method trained by an ours engine (train.py, or one of its variants, ``engine``) and an
    official one (the loop, or one of its diagnostic variants, ``against``): the first minus the
    second per metric, with the standard error of that difference; ``equal`` (within noise) only
    when every |difference| < 2 standard errors, else ``differs_on`` names the metrics."""
    out = []
    for engine in (label for label in results if label.split()[0] == "ours"):
        for against in (label for label in results if label.split()[0] == "official"):
            for key, a in results[engine].items():
                b = results[against].get(key)
                if b is None or "clean" not in a or "clean" not in b:
                    continue
                metrics = {m: {"diff": a[m] - b[m], "se": math.hypot(mean_error(a, m), mean_error(b, m))}
                           for m in METRICS if m in a and m in b}
                differs = [m for m, d in metrics.items() if not abs(d["diff"]) < 2 * d["se"]]
                out.append(dict(key=key, engine=engine, against=against, metrics=metrics, equal=not differs,
                                differs_on=differs))
    return out


def verdict_text(lines: list) -> str:
    text = []
    for v in lines:
        row = next(r for r in ROWS if r.key == v["key"])
        parts = ", ".join(f"{METRICS[m]} {d['diff']:+.1f} +- {d['se']:.1f}" for m, d in v["metrics"].items())
        result = ("equal within noise (every |difference| < 2 standard errors)" if v["equal"] else
                  "differs on " + ", ".join(METRICS[m] for m in v["differs_on"]) + " (|difference| >= 2 standard errors)")
        text.append(f"{row.label} ({row.norm}), {v['engine']} minus {v['against']}, points: {parts}: {result}")
    return "\n".join(text)


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


def cell(entry: dict, metric: str) -> str:
    if metric not in entry:
        return "-"
    sd = entry.get(f"{metric}_sd")
    return f"{entry[metric]:.1f}" + (f" +- {sd:.1f}" if sd is not None else "")


def table(rows, results: dict, eps: float, data: str, n: int, n_aa: int, seeds: int, precisions: dict) -> str:
    """Markdown table laid out like the paper's Table 1 (accuracies on ``n`` test images, AA on
    ``n_aa``; mean +- sd over ``seeds``), one line per (method, engine: its training precision),
    plus the MBNAT curve."""
    aa, on_aa, aa_error = ((f"AA (n={n_aa})", f" (AA on the first {n_aa})", f" ({std_error(50, n_aa):.1f} for AA)")
                           if n_aa else ("AA (not run)", "", ""))
    head = (f"| Method | Norm | Engine | Clean | PGD-20 | APGD-CE | {aa} | Train s (CPU s) |\n"
            "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |")
    lines = [head]
    for row in rows:
        for engine in results:  # ours, then the official loop and its diagnostic variants
            r = results[engine].get(row.key)
            if r is None:
                continue
            base, _, flags = engine.partition(" ")  # 'official --attack-first': the engine, its flags
            name = " ".join(filter(None, (base, precisions[base], flags)))
            if "clean" not in r:
                lines.append(f"| {row.label} | {row.norm} | {name} | failed: {r.get('error', '?')} | | | | |")
                continue
            cells = [cell(r, m) for m in METRICS]
            cpu = f" ({r['train_cpu_s']:.0f})" if r["train_cpu_s"] is not None else ""
            lines.append(f"| {row_label(row, r)} | {row.norm} | {name} | " + " | ".join(cells)
                         + f" | {r['train_s']:.0f}{cpu} |")
    spread = f"mean +- standard deviation over {seeds} seeds; " if seeds > 1 else ""
    lines.append(f"\nAccuracy (%) on {n} {data} test images{on_aa}; {spread}L-inf eps {eps:g}/255, "
                 f"the training eps. Binomial standard error of one model at 50%: {std_error(50, n):.1f} points"
                 f"{aa_error}. Train s: mean wall seconds of one run (its CPU seconds).")
    curve = results.get("ours", {}).get("mbnat", {}).get("curve")
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
    """Figure 2 style: clean vs PGD-20 accuracy (means over seeds, bars one standard deviation),
    one labelled point per method and engine (the official loop's hollow, in its method's colour),
    MBNAT a line over gamma."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5))
    colors = {row.key: f"C{i}" for i, row in enumerate(rows)}
    for engine, row in ((e, row) for e in ENGINES for row in rows):
        r = results.get(engine, {}).get(row.key, {})
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
        style = dict(mfc="none") if engine == "official" else {}
        ax.errorbar(r["pgd20"], r["clean"], xerr=r.get("pgd20_sd"), yerr=r.get("clean_sd"), fmt=marker,
                    color=colors[row.key], ms=14 if marker == "*" else 7, capsize=3, **style)
        ax.annotate(f"{row.label} ({row.norm})" + (", official" if engine == "official" else ""),
                    (r["pgd20"], r["clean"]), textcoords="offset points", xytext=(6, 4), fontsize=8)
    ax.set_xlabel("robust accuracy, PGD-20 (%)")
    ax.set_ylabel("clean accuracy (%)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
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
    p.add_argument("--quick", action="store_true",
                   help="the CPU schedule (benchmarks/README.md: its measured wall times on 2 cores)")
    p.add_argument("--methods", default=",".join(r.key for r in ROWS),
                   help="comma-separated subset of " + ", ".join(r.key for r in ROWS))
    p.add_argument("--data", default="fashion-mnist", choices=["fashion-mnist", "digits"])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    p.add_argument("--out", type=Path, default=None,
                   help="folder of the training runs (default benchmarks/results/<device>/fidelity-runs/<mode>-<time>)")
    p.add_argument("--reuse", action="store_true", help="evaluate finished runs found in --out instead of training")
    p.add_argument("--mbnat-gamma", type=float, default=0.5, help="BN mix gamma of MBNAT's table row")
    p.add_argument("--engines", default="ours",
                   help="comma-separated: ours (fastnofrost/train.py), official (official_train.py: PGDAT.py's loop; "
                        f"methods {', '.join(r.key for r in ROWS if r.method in OFFICIAL_METHODS)})")
    p.add_argument("--official-variants", default="",
                   help="semicolon-separated flag sets of official_train.py's fidelity diagnostics, each trained as "
                        "one more official engine ('' is the loop itself), e.g. ';--attack-first;--no-decay-1d'")
    p.add_argument("--ours-variants", default="",
                   help="semicolon-separated flag sets appended to train.py's command line, each trained as one more "
                        "ours engine ('' is train.py as fidelity.py runs it), e.g. ';--method nofrost --lambda 1'")
    p.add_argument("--ours-precision", default="auto", choices=PRECISIONS,
                   help="ours' training precision (train.py --precision; default auto: resolved here for --device, "
                        "bf16 on CUDA and on a CPU with native bf16). The official loop trains in fp32, as PGDAT.py")
    p.add_argument("--seed", type=int, default=0, help="the first seed")
    p.add_argument("--seeds", type=int, default=1, help="seeds per (engine, method): --seed, --seed + 1, ...")
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
    engines = args.engines.split(",")
    if not engines or set(engines) - set(ENGINES):
        p.error(f"--engines: choose from {', '.join(ENGINES)}, got {args.engines!r}")
    if "official" in engines:
        unsupported = [k for k in keys if next(r for r in ROWS if r.key == k).method not in OFFICIAL_METHODS]
        if unsupported:
            p.error(f"--engines official: the official loop trains {', '.join(sorted(OFFICIAL_METHODS))} only; "
                    f"drop {', '.join(unsupported)} from --methods")
    if args.seeds < 1:
        p.error(f"--seeds must be >= 1, got {args.seeds}")
    args.engines = [e for e in ENGINES if e in engines]
    args.variants = {e: [" ".join(v.split()) for v in getattr(args, f"{e}_variants").split(";")] for e in ENGINES}
    for engine, variants in args.variants.items():
        if variants != [""] and engine not in args.engines:
            p.error(f"--{engine}-variants needs --engines {engine}")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda but no CUDA device is visible")
    ours = resolve_precision(TrainConfig(precision=args.ours_precision), torch.device(args.device))  # as train.py
    args.precisions = {"ours": ours[0], "official": "fp32"}
    args.precision_why = {"ours": ours[1], "official": "PGDAT.py's precision"}
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


def run_job(job: Job, sched: Schedule, data: str, args, out: Path, x, y) -> dict:
    """Train and evaluate one run (in a worker process of ``args.threads`` threads); a failure is
    recorded, not raised, so the other runs still go on."""
    torch.set_num_threads(args.threads)
    head = dict(engine=job.label, key=job.row.key, seed=job.seed, run_dir=str(out / job.name))
    try:
        summary = train(job, sched, data, args.device, out, args.reuse, args.threads)
        model = load_model(job.row, sched, out / job.name, args.device)
        t0, c0 = time.time(), time.process_time()
        result = evaluate_row(job.row, model, x.to(args.device), y.to(args.device), sched, job.seed,
                              args.mbnat_gamma)
    except (RuntimeError, ValueError, OSError) as exc:
        print(f"[{job.name}] FAILED: {exc}", flush=True)
        return {**head, "error": str(exc)}
    result.update(head, train_s=summary["wall_s"], train_cpu_s=summary["cpu_s"], eval_s=time.time() - t0,
                  eval_cpu_s=time.process_time() - c0)
    print(f"[{job.name}] clean {result['clean']:.1f}  PGD-20 {result['pgd20']:.1f}  APGD-CE {result['apgd_ce']:.1f}"
          + (f"  AA {result['aa']:.1f}" if "aa" in result else "") + f"  (eval {result['eval_s']:.0f} s)", flush=True)
    return result


def run_all(jobs, sched: Schedule, data: str, args, out: Path, x, y) -> list:
    """Every run, ``args.jobs`` at a time in spawned worker processes of ``args.threads`` threads
    each; results in job order."""
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(args.jobs, mp_context=context) as pool:
        futures = [pool.submit(run_job, job, sched, data, args, out, x, y) for job in jobs]
        return [future.result() for future in futures]


def main(argv=None) -> dict:
    args, rows, sched, mode, out = parse(argv)
    started = time.time()
    info = machine(args.device)
    data, note = pick_data(args.data)
    torch.manual_seed(args.seed)
    x, y = test_set(data, sched.eval_examples, sched.image_size, "cpu", args.seed)
    seeds = list(range(args.seed, args.seed + args.seeds))
    jobs = [Job(row, engine, args.precisions[engine], seed, flags) for row in rows for engine in args.engines
            for flags in args.variants[engine] for seed in seeds]
    print(f"fidelity ({mode}) on {data}: {len(rows)} method(s) x engines {', '.join(args.engines)} x {len(seeds)} "
          f"seed(s) = {len(jobs)} runs, {args.jobs} at a time x {args.threads} thread(s), {sched}; runs in {out}; "
          f"load average {info['load_start']}", flush=True)
    for engine in args.engines:
        print(f"fidelity: {engine} trains in {args.precisions[engine]} ({args.precision_why[engine]})", flush=True)
    runs = run_all(jobs, sched, data, args, out, x, y)
    results = aggregate(runs)
    info.update(load_end=os.getloadavg(), wall_s=time.time() - started)
    compared = comparisons(results.get("ours", {}))
    judged = verdicts(results)
    title = (f"{data}, ResNet-26 small (width {sched.width:g}, {sched.image_size}px), {sched.epochs} epochs, "
             f"eps {sched.eps:g}/255 ({mode} mode)")
    body = table(rows, results, sched.eps, data, len(y), min(sched.aa_examples, len(y)), len(seeds),
                 args.precisions)
    markdown = f"## Fidelity: {title}\n\n{body}\n\n{comparison_text(compared)}\n"
    if judged:
        markdown += f"\n{verdict_text(judged)}\n"
    markdown += (f"\nWall time {info['wall_s'] / 60:.1f} min for {len(jobs)} runs, {args.jobs} at a time x "
                 f"{args.threads} thread(s); load average {info['load_start'][0]:.2f} at the start, "
                 f"{info['load_end'][0]:.2f} at the end ({os.cpu_count()} cores).\n")
    print("\n" + markdown)
    result = dict(info=info, mode=mode, data=data, data_note=note, schedule=dataclasses.asdict(sched),
                  jobs=args.jobs, threads=args.threads, engines=args.engines, seeds=seeds,
                  precisions={e: args.precisions[e] for e in args.engines},
                  precision_why={e: args.precision_why[e] for e in args.engines},
                  mbnat_gamma=args.mbnat_gamma, runs_dir=str(out), runs=runs, results=results, comparisons=compared,
                  verdicts=judged, methods={r.key: r._asdict() for r in rows})
    json_path = save_result(f"fidelity_{mode}.json", args.device, result)
    json_path.with_suffix(".md").write_text(markdown)
    figure(rows, results, json_path.with_suffix(".png"), title)
    print(f"wrote {json_path.with_suffix('.md')} and {json_path.with_suffix('.png')}")
    return result


if __name__ == "__main__":
    main()

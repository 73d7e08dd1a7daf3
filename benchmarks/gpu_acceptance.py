"""The product's main job on a GPU, end to end, in one command, with a verdict table at the end.

    python benchmarks/gpu_acceptance.py [--budget 330] [--work DIR]   # on the GPU machine (gpu_suite.sh runs it first)
    python benchmarks/gpu_acceptance.py --dry                         # the same checks on CPU, at tiny sizes

In order, each a real command line (``deepspeed --num_gpus 1 fastnofrost/train.py``,
``python -m fastnofrost.evaluate``), after deepspeed is imported (the GPU machine has it only
from the wheels of benchmarks/gpu_wheels.sh):
  1. data: an ImageNet-layout folder of JPEG texture classes (fastnofrost.data.samples);
  2. nofrost: nf_resnet26 at 224, NoFrost, bf16, --compile auto (full on CUDA), a few tens of
     steps with validation, then nofrost-resume: --resume true for a few more;
  3. evaluate: the NoFrost run's final weights: clean, pgd, apgd-ce and aa on a few hundred images;
  4. st and mbnat (resnet26_dualbn) at fp16, a few steps each, each then resumed.
The data backend is ``torch`` here: DALI (about 600 MB) cannot travel to the GPU machine (no
registry); ``dali-gpu`` stays the default where DALI is installed. Each check may take what is
left of ``--budget`` seconds, less 15 s for each later one; one that depends on a failed or
skipped check is skipped with the reason. The verdict table (one line per check: ran / failed /
skipped, seconds, img/s after warm-up, details) is printed last and written to
``$OUT/acceptance.json`` (``--work`` otherwise). Exit status 1 when a check failed.

``--dry`` runs every step on CPU with nf_resnet26_small at width 0.25 and 32 pixels, a few
steps each (about 3 minutes on 2 cores), so that a broken script is found by ``make test`` and
not on the GPU machine.
"""
import argparse
import dataclasses
import importlib.util
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Callable, List, Optional

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = os.path.join(REPO, "fastnofrost", "train.py")
RESERVE_S = 15.0  # kept for each later check


@dataclasses.dataclass
class Sizes:
    device: str
    model: str
    width: float
    image_size: int
    batch_size: int
    steps: int  # NoFrost steps before the resume
    more: int  # steps after it
    short: int  # ST / MBNAT steps before their resume
    val_examples: int
    eval_examples: int
    classes: int
    per_class: tuple
    pixels: tuple
    workers: int


GPU = Sizes("cuda", "nf_resnet26", 1.0, 224, 64, 30, 10, 6, 256, 256, 40, (("train", 64), ("val", 10)),
            (160, 320), 8)
DRY = Sizes("cpu", "nf_resnet26_small", 0.25, 16, 16, 4, 2, 2, 16, 16, 10, (("train", 8), ("val", 2)), (24, 48), 0)


@dataclasses.dataclass
class Check:
    """One line of the verdict: ``run()`` returns a detail string or raises; ``cmd`` (if any)
    is run first and must exit 0 within the time given."""
    name: str
    cmd: Optional[List[str]] = None
    after: Optional[Callable[[], str]] = None
    needs: tuple = ()
    run_dir: Optional[str] = None  # a training run: img/s from its log lines past from_step
    from_step: int = 0
    status: str = "pending"
    seconds: float = 0.0
    img_s: Optional[float] = None
    detail: str = ""


def train_img_s(run_dir: str, after_step: int = 0) -> Optional[float]:
    """Median img/s of the run's log lines past ``after_step``, the first of them left out
    (compile and warm-up)."""
    path = os.path.join(run_dir, "log.jsonl")
    if not os.path.isfile(path):
        return None
    rows = [json.loads(line) for line in open(path) if line.strip()]
    rates = [r["img_s"] for r in rows if r.get("kind") == "train" and "img_s" in r and r["step"] > after_step]
    return statistics.median(rates[1:] if len(rates) > 1 else rates) if rates else None


def _run(cmd: List[str], timeout: float):
    """(exit code, stdout + stderr) of ``cmd``; on timeout its whole process group is killed
    (the deepspeed launcher's ranks with it, so none keeps holding the GPU) and TimeoutExpired
    is raised."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO,
                            start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    return proc.returncode, output


def run_checks(checks: List[Check], budget: float, log=print) -> List[Check]:
    """Run the checks in order under ``budget`` seconds: each may take the time left, less
    ``RESERVE_S`` for each later check; sets status, seconds and detail."""
    start = time.time()
    done = {}
    for i, check in enumerate(checks):
        missing = [n for n in check.needs if done.get(n) != "ran"]
        left = budget - (time.time() - start)
        timeout = left - RESERVE_S * (len(checks) - i - 1)
        if missing:
            check.status, check.detail = "skipped", f"needs {', '.join(missing)} ({done.get(missing[0], '?')})"
        elif timeout < RESERVE_S:
            check.status, check.detail = "skipped", f"budget: {left:.0f} s left of {budget:.0f} s"
        else:
            log(f"== {check.name} (up to {timeout:.0f} s): {' '.join(check.cmd) if check.cmd else ''}")
            t0 = time.time()
            try:
                if check.cmd:
                    returncode, output = _run(check.cmd, timeout)
                    if returncode != 0:
                        lines = output.strip().splitlines() or [""]
                        log("\n".join(lines[-40:]))  # the suite's log keeps the traceback
                        raise RuntimeError(f"exit {returncode}: {lines[-1][-300:]}")
                check.detail = check.after() if check.after else ""
                check.status = "ran"
            except subprocess.TimeoutExpired:
                check.status, check.detail = "failed", f"timed out after {timeout:.0f} s"
            except Exception as exc:  # noqa: BLE001  (a verdict line says what went wrong)
                check.status, check.detail = "failed", str(exc)[-700:]
            check.seconds = time.time() - t0
            if check.run_dir:
                check.img_s = train_img_s(check.run_dir, check.from_step)
        done[check.name] = check.status
        log(f"   {check.status} {check.seconds:.1f} s {check.detail}")
    return checks


def verdict_table(checks: List[Check], notes: List[str]) -> str:
    width = max(len(c.name) for c in checks)
    lines = [f"{'check':<{width}}  {'verdict':<7}  {'seconds':>7}  {'img/s':>8}  details"]
    for c in checks:
        img_s = f"{c.img_s:8.1f}" if c.img_s is not None else f"{'-':>8}"
        lines.append(f"{c.name:<{width}}  {c.status:<7}  {c.seconds:7.1f}  {img_s}  {c.detail}")
    return "\n".join(["", "== verdict", *lines, *[f"note: {n}" for n in notes]])


# ------------------------------------------------------------------ the checks

def _summary(run_dir: str) -> dict:
    with open(os.path.join(run_dir, "summary.json")) as fh:
        return json.load(fh)


def _train_detail(run_dir: str, steps: int) -> str:
    s = _summary(run_dir)
    if s["steps"] != steps or not s["ranks_in_sync"]:
        raise RuntimeError(f"the run ended at step {s['steps']} (expected {steps}), ranks in sync: {s['ranks_in_sync']}")
    config = json.load(open(os.path.join(run_dir, "config.json")))
    val = f", val clean {s['clean']:.1f}% PGD {s['robust']:.1f}%" if s.get("clean") is not None else ""
    return f"{s['steps']} steps, {config['precision_resolved']}, compile {s['compile']}{val}"


def _resume_detail(run_dir: str, before: int, steps: int) -> str:
    rows = [json.loads(line) for line in open(os.path.join(run_dir, "log.jsonl")) if line.strip()]
    logged = sorted({r["step"] for r in rows if r.get("kind") == "train"})
    if logged[-1] != steps or before not in logged:
        raise RuntimeError(f"the resumed log ends at step {logged[-1]}, expected {before} then {steps}")
    return f"resumed at step {before}: " + _train_detail(run_dir, steps)


def _eval_detail(out: str) -> str:
    with open(os.path.join(out, "report.json")) as fh:
        report = json.load(fh)
    rows = report["attacks"]
    missing = {"clean", "pgd", "apgd-ce", "aa"} - set(rows)
    if missing:
        raise RuntimeError(f"report.json lacks {sorted(missing)}")
    return f"n={report['n_examples']}: " + ", ".join(f"{k} {rows[k]['accuracy']:.1f}%" for k in ("clean", "pgd", "apgd-ce", "aa"))


def build_checks(sizes: Sizes, work: str, python: str = sys.executable) -> List[Check]:
    data, runs = os.path.join(work, "data"), os.path.join(work, "runs")
    launcher = [os.path.join(os.path.dirname(python), "deepspeed")]
    if not os.path.exists(launcher[0]):
        launcher = [python, "-m", "deepspeed.launcher.runner"]
    log_every = max(1, sizes.steps // 6)

    def train(name, method, model, precision, steps, *extra, val=True):
        out = os.path.join(runs, name)
        cmd = [*launcher, "--num_gpus", "1", TRAIN, "--data", data, "--data-backend", "torch", "--device", sizes.device,
               "--model", model, "--width", str(sizes.width), "--image-size", str(sizes.image_size),
               "--batch-size", str(sizes.batch_size), "--method", method, "--precision", precision,
               "--compile", "auto", "--workers", str(sizes.workers), "--epochs", "100", "--max-steps", str(steps),
               "--log-every", str(log_every), "--save-every", str(log_every), "--progress", "false",
               "--tensorboard", "false", "--val-examples", str(sizes.val_examples),
               "--val-every", "1" if val else "0", "--out", out, *extra]
        return out, cmd

    def data_check():
        from fastnofrost.data.samples import make_class_folder

        shutil.rmtree(data, ignore_errors=True)
        n = make_class_folder(data, classes=sizes.classes, per_class=sizes.per_class, size_range=sizes.pixels)
        return f"{n} JPEGs, {sizes.classes} classes, {sizes.pixels[0]}-{sizes.pixels[1]} px, in {data}"

    def deepspeed_check():
        from importlib.metadata import version

        import deepspeed  # noqa: F401  (ImportError names the module missing: see gpu_wheels.sh)
        return f"deepspeed {version('deepspeed')}"

    checks = [Check("deepspeed", after=deepspeed_check), Check("data", after=data_check)]
    steps, total = sizes.steps, sizes.steps + sizes.more
    nofrost, cmd = train("nofrost", "nofrost", sizes.model, "bf16", steps)
    checks.append(Check("nofrost", cmd, lambda: _train_detail(nofrost, steps), ("deepspeed", "data"),
                        run_dir=nofrost))
    _, cmd = train("nofrost", "nofrost", sizes.model, "bf16", total, "--resume", "true")
    checks.append(Check("nofrost-resume", cmd, lambda: _resume_detail(nofrost, steps, total), ("nofrost",),
                        run_dir=nofrost, from_step=steps))
    report = os.path.join(work, "eval")
    checks.append(Check("evaluate", [python, "-m", "fastnofrost.evaluate", "--model", sizes.model, "--width",
                                     str(sizes.width), "--checkpoint", os.path.join(nofrost, "final.safetensors"),
                                     "--data", data, "--data-backend", "torch", "--image-size", str(sizes.image_size),
                                     "--n-examples", str(sizes.eval_examples), "--batch-size",
                                     str(min(128, sizes.eval_examples)), "--attacks", "clean,pgd,apgd-ce,aa",
                                     "--precision", "bf16", "--workers", str(sizes.workers), "--device",
                                     sizes.device, "--no-progress", "--out", report],
                        lambda: _eval_detail(report), ("nofrost-resume",)))
    short = sizes.short
    for method, model in (("st", sizes.model), ("mbnat", "resnet26_dualbn" + sizes.model[len("nf_resnet26"):])):
        out, cmd = train(method, method, model, "fp16", short, val=False)
        checks.append(Check(method, cmd, (lambda o=out: _train_detail(o, short)), ("deepspeed", "data"),
                            run_dir=out))
        _, cmd = train(method, method, model, "fp16", short + 2, "--resume", "true", val=False)
        checks.append(Check(f"{method}-resume", cmd, (lambda o=out: _resume_detail(o, short, short + 2)),
                            (method,), run_dir=out, from_step=short))
    return checks


def notes(sizes: Sizes) -> List[str]:
    dali = importlib.util.find_spec("nvidia") is not None and importlib.util.find_spec("nvidia.dali") is not None
    out = ["data backend torch in every run: DALI (about 600 MB) cannot travel to the GPU machine, which has no "
           "registry; --data-backend dali-gpu stays the documented default where DALI is installed"
           + (" (DALI is installed here)" if dali else "")]
    if sizes.device == "cpu":
        out.append("dry mode: CPU, tiny sizes; nothing here is a GPU result")
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dry", action="store_true", help="CPU, tiny sizes: checks the script, not the GPU")
    p.add_argument("--budget", type=float, default=330.0, help="seconds for all checks together")
    p.add_argument("--work", default=None, help="data and runs (default: a temporary folder, removed after)")
    args = p.parse_args(argv)
    sizes = DRY if args.dry else GPU
    if sizes.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            print("gpu_acceptance.py: no CUDA device (use --dry on CPU)", file=sys.stderr)
            return 2
    work = args.work or tempfile.mkdtemp(prefix="fnf-acceptance-")
    os.makedirs(work, exist_ok=True)
    env_out = os.environ.get("OUT") or work
    checks = run_checks(build_checks(sizes, work), args.budget)
    said = notes(sizes)
    table = verdict_table(checks, said)
    print(table, flush=True)
    os.makedirs(env_out, exist_ok=True)
    with open(os.path.join(env_out, "acceptance.json"), "w") as fh:
        json.dump({"sizes": dataclasses.asdict(sizes), "budget_s": args.budget,
                   "checks": [{k: getattr(c, k) for k in ("name", "status", "seconds", "img_s", "detail")}
                              for c in checks], "notes": said}, fh, indent=1)
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if any(c.status == "failed" for c in checks) else 0


if __name__ == "__main__":
    sys.exit(main())

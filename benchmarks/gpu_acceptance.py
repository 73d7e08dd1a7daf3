"""The product's main job on a GPU, end to end, in one command, with a verdict table at the end.

    python benchmarks/gpu_acceptance.py [--budget 330] [--work DIR]   # on the GPU machine (gpu_suite.sh runs it first)
    python benchmarks/gpu_acceptance.py --dry                         # the same checks on CPU, at tiny sizes

In order, each a real command line (``deepspeed --num_gpus 1 fastnofrost/train.py``,
``python -m fastnofrost.evaluate``) or a probe of this script in its own process (``--probe``:
a crash fails its line, not the table), after deepspeed is imported (the GPU machine has it only
from the wheels of benchmarks/gpu_wheels.sh):
  1. data: an ImageNet-layout folder of JPEG texture classes (fastnofrost.data.samples);
  2. nofrost: nf_resnet26 at 224, NoFrost, bf16, --compile auto (full on CUDA), a few tens of
     steps with validation, then nofrost-resume: --resume true for a few more;
  3. cuda-graphs (``--probe cuda-graphs``): ``PGD(eps=8/255, steps=4, precision="bf16",
     compile_step="reduce-overhead")`` at the NoFrost run's model, image size and batch (grouped
     WS inside ``group.step()`` and channels_last, as training runs it), profiled with CUDA
     activity after a warm-up attack: fails when no ``cudaGraphLaunch`` shows, else gives them
     per PGD step;
  4. no-syncs (``--probe no-syncs -- <train.py flags>``): fastnofrost/train.py run in the probe's
     process as ``__main__`` (runpy, as tests/host_reads.py does), 2 warm-up steps, then 3
     steady-state ones under ``torch.cuda.set_sync_debug_mode("error")``: a synchronizing CUDA
     call raises, and the line gives the error with its traceback's tail. The mode is on from a
     step's first fastnofrost call (``WeightGroup.step``, the grouped WS, or ``Method.__call__``:
     attack and losses) to the end of ``DeepSpeedEngine.step``: the run's ``Trainer`` exists only
     inside runpy and cannot be patched, these classes can, and every log boundary, validation
     and save comes after ``engine.step`` (nor do those steps hold any: ``--log-every`` is past
     them). Left out: fetching the next batch and the log interval's sums on the device. The
     window also counts calls of ``torch.cuda.synchronize``, ``torch.cpu.synchronize`` and
     DeepSpeed's ``get_accelerator().synchronize`` (its timers'), each with its call site;
  5. evaluate: the NoFrost run's final weights: clean, pgd, apgd-ce and aa on a few hundred images;
  6. imagenet: the README's ImageNet command (``--model nf_resnet50 --method nofrost``, every other
     flag at its default: 224 px, batch 256, PGD-10, precision, compile and data backend auto,
     validation) on the generated folder, with ``--grad-accum 8`` so that one GPU runs the per-rank
     micro-batch (32) of the README's 8-GPU run, for 2 optimizer steps;
  7. st and mbnat (resnet26_dualbn) at fp16, a few steps each, each then resumed.
The data backend is ``torch`` here: DALI (about 600 MB) cannot travel to the GPU machine (no
registry); ``dali-gpu`` stays the default where DALI is installed. Each check may take what is
left of ``--budget`` seconds, less 15 s for each later one; one that depends on a failed or
skipped check is skipped with the reason; one whose subject cannot be checked here (no CUDA) ran
but is counted as skipped, with the reason. The verdict table (one line per check: ran / failed /
skipped, seconds, img/s after warm-up, details) is printed last and written to
``$OUT/acceptance.json`` (``--work`` otherwise). Exit status 1 when a check failed.

``--dry`` runs every step on CPU with nf_resnet26_small at width 0.25 and 16 pixels, a few
steps each (minutes on 2 cores; the two probes about 40 s of them, 80 s with a cold inductor
cache), so that a broken script is found by ``make test`` and not on the GPU machine. There
cuda-graphs checks that the attack ran compiled (inductor, no CUDA graphs on CPU) and is counted
as skipped ("no CUDA: cudaGraphLaunch not checkable"); no-syncs, without a sync debug mode on
CPU, passes when it counted no synchronize call.
"""
import argparse
import dataclasses
import importlib.util
import json
import os
import runpy
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter
from typing import Callable, List, Optional

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = os.path.join(REPO, "fastnofrost", "train.py")
RESERVE_S = 15.0  # kept for each later check
PGD_STEPS = 4  # cuda-graphs: the profiled attack's steps (and its warm-up attack's)
WARMUP, STEADY = 2, 3  # no-syncs: training steps before the measured ones (compile, CUDA graph records), measured


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
    imagenet: tuple  # flags added to README_IMAGENET (GPU: the run's length and one GPU's share)
    val: tuple  # flags of the validating runs (GPU: none, the defaults' validation attacks)


# The README's ImageNet command (8 GPUs), less its launcher and its --data / --out.
README_IMAGENET = ("--model", "nf_resnet50", "--method", "nofrost")
GPU = Sizes("cuda", "nf_resnet26", 1.0, 224, 64, 30, 10, 6, 256, 256, 40, (("train", 64), ("val", 10)),
            (160, 320), 8, ("--grad-accum", "8", "--max-steps", "2"), ())
DRY = Sizes("cpu", "nf_resnet26_small", 0.25, 16, 16, 4, 2, 2, 16, 16, 10, (("train", 8), ("val", 2)), (24, 48), 0,
            ("--max-steps", "1", "--device", "cpu", "--width", "0.25", "--image-size", "16", "--batch-size", "16",
             "--workers", "0", "--val-examples", "16"),
           # APGD-T's 900 steps in emulated bf16 on a 2-core CPU: minutes per validation; APGD-CE on 4 examples
           ("--val-attacks", "pgd,apgd-ce", "--val-strong-examples", "4"))


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


class Skip(Exception):
    """Raised by a check's ``after``: its subject cannot be checked here (the reason)."""


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
            except Skip as why:
                check.status, check.detail = "skipped", str(why)
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
    if s.get("worst") is not None:  # the validation attacks' worst case and the masking check
        val += f", worst case {s['worst']:.1f}%, {len(s['warnings'])} validation warning(s)"
    return f"{s['steps']} steps, {config['precision_resolved']}, compile {s['compile']}{val}"


def _resume_detail(run_dir: str, before: int, steps: int) -> str:
    rows = [json.loads(line) for line in open(os.path.join(run_dir, "log.jsonl")) if line.strip()]
    logged = sorted({r["step"] for r in rows if r.get("kind") == "train"})
    if logged[-1] != steps or before not in logged:
        raise RuntimeError(f"the resumed log ends at step {logged[-1]}, expected {before} then {steps}")
    return f"resumed at step {before}: " + _train_detail(run_dir, steps)


def _imagenet_detail(run_dir: str, steps: int) -> str:
    config = json.load(open(os.path.join(run_dir, "config.json")))
    shape = {k: config[k] for k in ("model", "method", "image_size", "batch_size", "grad_accum", "world_size")}
    micro = shape["batch_size"] // (shape["world_size"] * shape["grad_accum"])
    return (f"{shape['model']} {shape['method']} at {shape['image_size']} px, batch {shape['batch_size']} "
            f"({micro} per forward x {shape['grad_accum']} accumulated), backend {config['data_backend_resolved']}: "
            + _train_detail(run_dir, steps))


def _eval_detail(out: str) -> str:
    with open(os.path.join(out, "report.json")) as fh:
        report = json.load(fh)
    rows = report["attacks"]
    missing = {"clean", "pgd", "apgd-ce", "aa"} - set(rows)
    if missing:
        raise RuntimeError(f"report.json lacks {sorted(missing)}")
    return f"n={report['n_examples']}: " + ", ".join(f"{k} {rows[k]['accuracy']:.1f}%" for k in ("clean", "pgd", "apgd-ce", "aa"))


def _cuda_graphs_detail(path: str) -> str:
    with open(path) as fh:
        r = json.load(fh)
    if r.get("skipped"):
        raise Skip(r["skipped"])
    attack = f"PGD-{r['steps']} attack"
    if not r["compiled"]:
        raise RuntimeError(f"the {attack} did not run compiled (no 'Torch-Compiled Region' in its profile)")
    if r["device"] != "cuda":
        raise Skip(f"no CUDA: cudaGraphLaunch not checkable; the {attack} ran compiled ({r['compiled']} compiled "
                   "calls, inductor without CUDA graphs)")
    launches = f"{r['kernel_launches']} kernel launches and {r['compiled']} compiled calls beside them"
    if not r["graph_launches"]:
        raise RuntimeError(f"no cudaGraphLaunch in a {attack} with compile_step='reduce-overhead': {launches}")
    return (f"{r['graph_launches']} cudaGraphLaunch in a {attack} ({r['graph_launches'] / r['steps']:g} per PGD step), "
            f"{launches}; bf16, {r['shape']}")


def _no_syncs_detail(path: str) -> str:
    with open(path) as fh:
        r = json.load(fh)
    error, syncs, measured = r["error"], r["syncs"], r["measured"]
    if error:
        raise RuntimeError(f"step {error['step']}: {error['message']} at {error['site']}; traceback tail (innermost "
                           f"first): {' < '.join(error['tail'])}")
    if r["rc"]:
        raise RuntimeError(f"train.py exited {r['rc']} after {r['steps']} steps")
    if syncs:
        total = sum(syncs.values())
        raise RuntimeError(f"{total} synchronize calls in {measured} steady-state steps ({total / measured:g} per "
                           "step): " + ", ".join(f"{n} x {site}" for site, n in Counter(syncs).most_common()))
    if measured != STEADY:
        raise RuntimeError(f"{measured} of {STEADY} steady-state steps measured ({r['steps']} engine steps): the "
                           "window's hooks (WeightGroup.step or Method.__call__, DeepSpeedEngine.step) were not "
                           "reached")
    how = "set_sync_debug_mode('error'): no sync" if r["device"] == "cuda" else \
        "0 synchronize calls (counted: sync debug mode is CUDA-only)"
    return f"{measured} steady-state steps after {r['warmup']}, {how}"


def build_checks(sizes: Sizes, work: str, python: str = sys.executable) -> List[Check]:
    data, runs = os.path.join(work, "data"), os.path.join(work, "runs")
    launcher = [os.path.join(os.path.dirname(python), "deepspeed")]
    if not os.path.exists(launcher[0]):
        launcher = [python, "-m", "deepspeed.launcher.runner"]
    with socket.socket() as sock:  # not the launcher's default 29500, which another run may hold
        sock.bind(("127.0.0.1", 0))
        launcher += ["--master_port", str(sock.getsockname()[1])]
    log_every = max(1, sizes.steps // 6)

    def train(name, method, model, precision, steps, *extra, val=True, log=log_every, save=log_every):
        out = os.path.join(runs, name)
        cmd = [*launcher, "--num_gpus", "1", TRAIN, "--data", data, "--data-backend", "torch", "--device", sizes.device,
               "--model", model, "--width", str(sizes.width), "--image-size", str(sizes.image_size),
               "--batch-size", str(sizes.batch_size), "--method", method, "--precision", precision,
               "--compile", "auto", "--workers", str(sizes.workers), "--epochs", "100", "--max-steps", str(steps),
               "--log-every", str(log), "--save-every", str(save), "--progress", "false",
               "--tensorboard", "false", "--val-examples", str(sizes.val_examples),
               "--val-every", "1" if val else "0", *(sizes.val if val else ()), "--out", out, *extra]
        return out, cmd

    def probe(name, *argv):
        report = os.path.join(work, "probes", f"{name}.json")
        return report, [python, os.path.abspath(__file__), "--probe", name, "--report", report,
                        *(["--dry"] if sizes.device == "cpu" else []), *argv]

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
    graphs, cmd = probe("cuda-graphs")
    checks.append(Check("cuda-graphs", cmd, lambda: _cuda_graphs_detail(graphs)))
    _, cmd = train("no-syncs", "nofrost", sizes.model, "bf16", WARMUP + STEADY, val=False, log=1000, save=0)
    syncs, cmd = probe("no-syncs", "--", *cmd[cmd.index(TRAIN) + 1:])
    checks.append(Check("no-syncs", cmd, lambda: _no_syncs_detail(syncs), ("deepspeed", "data")))
    report = os.path.join(work, "eval")
    checks.append(Check("evaluate", [python, "-m", "fastnofrost.evaluate", "--model", sizes.model, "--width",
                                     str(sizes.width), "--checkpoint", os.path.join(nofrost, "final.safetensors"),
                                     "--data", data, "--data-backend", "torch", "--image-size", str(sizes.image_size),
                                     "--n-examples", str(sizes.eval_examples), "--batch-size",
                                     str(min(128, sizes.eval_examples)), "--attacks", "clean,pgd,apgd-ce,aa",
                                     "--precision", "bf16", "--workers", str(sizes.workers), "--device",
                                     sizes.device, "--no-progress", "--out", report],
                        lambda: _eval_detail(report), ("nofrost-resume",)))
    # the README's ImageNet command, its defaults kept (224 px, batch 256, PGD-10, precision and compile
    # auto, validation), on one GPU with an 8-GPU run's per-rank micro-batch, for a few steps
    imagenet = os.path.join(runs, "imagenet")
    flags = [*README_IMAGENET, *sizes.imagenet]
    steps_imagenet = int(flags[flags.index("--max-steps") + 1])
    checks.append(Check("imagenet", [*launcher, "--num_gpus", "1", TRAIN, "--data", data, *flags, "--progress", "false",
                                     "--out", imagenet],
                        lambda: _imagenet_detail(imagenet, steps_imagenet), ("deepspeed", "data"), run_dir=imagenet))
    short = sizes.short
    for method, model in (("st", sizes.model), ("mbnat", "resnet26_dualbn" + sizes.model[len("nf_resnet26"):])):
        out, cmd = train(method, method, model, "fp16", short, val=False)
        checks.append(Check(method, cmd, (lambda o=out: _train_detail(o, short)), ("deepspeed", "data"),
                            run_dir=out))
        _, cmd = train(method, method, model, "fp16", short + 2, "--resume", "true", val=False)
        checks.append(Check(f"{method}-resume", cmd, (lambda o=out: _resume_detail(o, short, short + 2)),
                            (method,), run_dir=out, from_step=short))
    return checks


# ------------------------------------------------------------------ probes (--probe: a check's own process)

def _short(path: str) -> str:
    """``path`` from its package down (fastnofrost/..., deepspeed/..., torch/...), else its name."""
    cut = max(path.rfind(f"{os.sep}{package}{os.sep}") for package in ("fastnofrost", "deepspeed", "torch"))
    return path[cut + 1:] if cut >= 0 else os.path.basename(path)


def _site(frames) -> str:
    """file:function of the innermost deepspeed or fastnofrost frame of ``frames`` (outermost first)."""
    for frame in reversed(frames):
        path = _short(frame.filename)
        if path.startswith(("deepspeed/", "fastnofrost/")):
            return f"{path}:{frame.name}"
    return "?"


def probe_cuda_graphs(sizes: Sizes, _argv) -> dict:
    """Profile one compiled attack after a warm-up attack (compile, CUDA graph warm-up and record):
    its cudaGraphLaunch events, its other kernel launches and its compiled calls."""
    import contextlib

    import torch
    from torch.profiler import ProfilerActivity, profile

    from fastnofrost.attacks import PGD
    from fastnofrost.config import TrainConfig
    from fastnofrost.models import create_model
    from fastnofrost.nn import group_weights

    cuda = sizes.device == "cuda"
    if not cuda and torch.backends.cpu.get_cpu_capability() == "DEFAULT":
        return {"skipped": "inductor's CPU code does not build at ATEN_CPU_CAPABILITY=default (torch's limit)"}
    layout = torch.channels_last if cuda else torch.contiguous_format
    torch.manual_seed(0)
    recipe = TrainConfig()  # the model as the NoFrost run builds it (its compiled attack step may be in the cache)
    model = create_model(sizes.model, num_classes=sizes.classes, width=sizes.width, drop_rate=recipe.drop,
                         drop_path_rate=recipe.drop_path)
    model = model.to(sizes.device, memory_format=layout)
    group = group_weights(model)
    n, size = sizes.batch_size, sizes.image_size
    x = torch.rand(n, 3, size, size, device=sizes.device).contiguous(memory_format=layout)
    y = torch.randint(0, sizes.classes, (n,), device=sizes.device)
    attack = PGD(eps=8 / 255, steps=PGD_STEPS, precision="bf16", compile_step="reduce-overhead")

    def run():
        with group.step() if group is not None else contextlib.nullcontext():  # as training runs its attack
            attack(model, x, y)
        if cuda:
            torch.cuda.synchronize()

    run()
    with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])) as prof:
        run()
    names = Counter(event.name for event in prof.events())
    return {"device": sizes.device, "steps": PGD_STEPS, "shape": f"{sizes.model} at {size} px, batch {n}",
            "graph_launches": names["cudaGraphLaunch"],
            "kernel_launches": sum(c for k, c in names.items() if k.startswith(("cudaLaunchKernel", "cuLaunchKernel"))),
            "compiled": sum(c for k, c in names.items() if k.startswith("Torch-Compiled Region"))}


def probe_no_syncs(sizes: Sizes, train_argv: List[str]) -> dict:
    """fastnofrost/train.py with ``train_argv`` in this process; its steady-state steps (after
    WARMUP, at most STEADY) each under sync debug mode 'error' on CUDA, with every synchronize
    call counted by call site (see the module doc for the window)."""
    import torch
    from deepspeed.runtime.engine import DeepSpeedEngine

    from fastnofrost.methods import Method
    from fastnofrost.nn import WeightGroup
    from reads import ReadCounter  # benchmarks/ is on sys.path when run as a script

    cuda = sizes.device == "cuda"
    state = {"steps": 0, "measured": 0, "on": False}

    def start():
        if not state["on"] and WARMUP <= state["steps"] < WARMUP + STEADY:
            state["on"], state["measured"] = True, state["measured"] + 1
            if cuda:
                torch.cuda.set_sync_debug_mode("error")

    def stop():
        if state["on"]:
            state["on"] = False
            if cuda:
                torch.cuda.set_sync_debug_mode("default")

    def opening(method):
        def opened(*args, **kwargs):
            start()
            return method(*args, **kwargs)
        return opened

    def closing(step):
        def closed(*args, **kwargs):
            try:
                return step(*args, **kwargs)
            finally:
                stop()
                state["steps"] += 1
        return closed

    def where():  # the synchronize's call site inside the window (the host reads are not this check's)
        return _site(traceback.extract_stack(sys._getframe(2))) if state["on"] else None

    WeightGroup.step, Method.__call__ = opening(WeightGroup.step), opening(Method.__call__)
    DeepSpeedEngine.step = closing(DeepSpeedEngine.step)
    counter = ReadCounter(where)  # every synchronize (DeepSpeed's accelerator, torch.cuda, torch.cpu)
    counter.active = True
    sys.argv, rc, error = [TRAIN, *train_argv], 0, None
    try:
        with counter:
            runpy.run_path(TRAIN, run_name="__main__")
    except SystemExit as done:
        rc = done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
    except Exception as exc:  # noqa: BLE001  (the report says what it was)
        chain = [exc]  # the sync (or first failure), not an error in a `finally` after it
        while chain[-1].__context__ is not None:
            chain.append(chain[-1].__context__)
        exc = next((e for e in reversed(chain) if "synchroniz" in str(e)), chain[-1])
        frames = traceback.extract_tb(exc.__traceback__)
        message = (str(exc).strip().splitlines() or [""])[0]
        rc, error = 1, {"step": state["steps"] + 1, "message": f"{type(exc).__name__}: {message}",
                        "site": _site(frames),
                        "tail": [f"{_short(f.filename)}:{f.lineno} {f.name}" for f in reversed(frames[-4:])]}
        traceback.print_exception(exc)
    finally:
        stop()
    return {"device": sizes.device, "warmup": WARMUP, "steady": STEADY, "steps": state["steps"],
            "measured": state["measured"], "syncs": dict(counter.syncs), "rc": rc, "error": error}


PROBES = {"cuda-graphs": probe_cuda_graphs, "no-syncs": probe_no_syncs}


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
    p.add_argument("--probe", choices=sorted(PROBES), help="run one check's probe here, its JSON to --report "
                   "(no-syncs: train.py's flags after --)")
    p.add_argument("--report", help="the probe's JSON")
    argv = list(sys.argv[1:] if argv is None else argv)
    cut = argv.index("--") if "--" in argv else len(argv)
    args = p.parse_args(argv[:cut])
    sizes = DRY if args.dry else GPU
    if args.probe:
        if not args.report:
            p.error("--probe needs --report")
        report = PROBES[args.probe](sizes, argv[cut + 1:])
        os.makedirs(os.path.dirname(os.path.abspath(args.report)), exist_ok=True)
        with open(args.report, "w") as fh:
            json.dump(report, fh, indent=1)
        return 0
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

"""Images/s of each data backend reading the same folder of real JPEGs (training pipeline);
with --startup, the seconds from launch to the first training step of a multi-rank run.

    python benchmarks/bench_data.py [--images-per-class 64] [--batch-size 32] [--image-size 224]
    python benchmarks/bench_data.py --startup [--files 100000] [--ranks 2] [--folder DIR]

The folder is generated from scikit-learn's sample photos (fastnofrost.data.samples): 4
classes of JPEG/PNG crops up to 400x400 pixels. Backends: torch (PIL + DataLoader workers),
dali-cpu, synthetic, and dali-gpu when CUDA is present; with CUDA every batch ends on the
GPU. Each backend runs one warm-up epoch, then --epochs timed epochs; the median is reported.
Prints a table and writes JSON to benchmarks/results/<device>/bench_data[_nofrost_star].json
($OUT when set).

--startup: an ImageNet-layout folder of ``--files`` tiny JPEGs (100 classes, 90% train / 10%
val; kept in ``--folder`` for the next run when given), then ``deepspeed --num_gpus R
fastnofrost/train.py`` on it (a tiny model, one step, so that the data's start-up dominates),
timed from launch to the first training row in its log.jsonl; then the same run resumed
(``--resume true``, one more step), timed from launch to that step's row. First of all, as the
floor, the same launch on synthetic data (no folder to read; it also builds DeepSpeed's CPU op,
which the later launches then find built). Writes bench_data_startup.json.
"""
import argparse
import os
import platform
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import torch

from fastnofrost.data import build_loader
from fastnofrost.data.samples import make_class_folder, make_image_folder
from fastnofrost.distributed import free_port
from results_io import save_result  # noqa: E402  (benchmarks/ is on sys.path when run as a script)


def time_epochs(loader, epochs, device):
    times, images = [], 0
    for epoch in range(epochs + 1):  # epoch 0 warms up
        loader.set_epoch(epoch)
        start = time.perf_counter()
        count = sum(batch[0].shape[0] for batch in loader)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if epoch:
            times.append(time.perf_counter() - start)
            images = count
    return images, times


def _dali_version():
    try:
        import nvidia.dali
    except ImportError:
        return None
    return nvidia.dali.__version__


def device_name(device):
    if device.type == "cuda":
        return torch.cuda.get_device_name(device).replace(" ", "-")
    return "cpu"


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
START_CLASSES = 100


def startup_folder(folder: str, files: int) -> str:
    """``folder`` holding ``files`` tiny JPEGs in train/ and val/ (made once; a marker file
    names the count, so a folder of another size is made anew)."""
    marker = os.path.join(folder, f"made-{files}")
    if not os.path.exists(marker):
        shutil.rmtree(folder, ignore_errors=True)
        per_class = files // START_CLASSES
        t0 = time.perf_counter()
        made = make_class_folder(folder, classes=START_CLASSES, size_range=(8, 16),
                                 per_class=(("train", per_class - per_class // 10), ("val", per_class // 10)))
        print(f"made {made} JPEGs in {folder} ({time.perf_counter() - t0:.0f} s)", flush=True)
        open(marker, "w").close()
    return folder


def first_row(cmd, log_path: str, step: int, timeout: float = 3600) -> float:
    """Seconds from launching ``cmd`` to the first training row at ``step`` or later in
    ``log_path``; the run is then left to finish (and must exit 0)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen = None
    while seen is None and proc.poll() is None and time.perf_counter() - t0 < timeout:
        if os.path.exists(log_path):
            with open(log_path) as fh:
                rows = [json.loads(line) for line in fh if line.strip().endswith("}")]
            if any(r.get("kind") == "train" and r["step"] >= step for r in rows):
                seen = time.perf_counter() - t0
        time.sleep(0.05)
    output, _ = proc.communicate(timeout=timeout)
    if proc.returncode != 0 or seen is None:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode} (first row seen: {seen}):\n{output[-3000:]}")
    return seen


def startup(args) -> None:
    folder = args.folder or tempfile.mkdtemp(prefix="fnf-startup-")
    try:
        startup_folder(folder, args.files)
        launcher = [os.path.join(os.path.dirname(sys.executable), "deepspeed"), "--num_gpus", str(args.ranks)]
        common = ["--model", "nf_resnet26_small", "--width", "0.25", "--image-size", "16", "--batch-size",
                  str(8 * args.ranks), "--steps", "1", "--precision", "fp32", "--compile", "none", "--workers", "1",
                  "--log-every", "1", "--val-examples", "16", "--progress", "false", "--tensorboard", "false",
                  "--device", "cpu"]
        results = []
        with tempfile.TemporaryDirectory() as runs:
            def launch(kind, run, data, steps, *extra):
                out = os.path.join(runs, run)
                cmd = [*launcher, "--master_port", str(free_port()), os.path.join(REPO, "fastnofrost", "train.py"),
                       *data, *common, "--max-steps", str(steps), "--out", out, *extra]
                seconds = first_row(cmd, os.path.join(out, "log.jsonl"), steps)
                results.append(dict(launch=kind, seconds_to_first_step=seconds))
                print(f"{kind:<10} {seconds:8.1f} s to the first step", flush=True)

            folder_flags = ["--data", folder, "--data-backend", "torch"]
            launch("synthetic", "synthetic", ["--data-backend", "synthetic"], 1)  # also builds DeepSpeed's op
            for i in range(args.repeats):
                launch("first", f"run{i}", folder_flags, 1)
                launch("resume", f"run{i}", folder_flags, 2, "--resume", "true")
    finally:
        if not args.folder:
            shutil.rmtree(folder, ignore_errors=True)
    by = {}
    for r in results:
        by.setdefault(r["launch"], []).append(r["seconds_to_first_step"])
    print(f"time to the first step: {args.ranks} ranks, {args.files} files, CPU ({os.cpu_count()} cores)")
    for kind, times in by.items():
        print(f"{kind:<10} median {statistics.median(times):8.1f} s  ({len(times)} launch(es))")
    record = dict(benchmark="bench_data_startup", device="cpu", cpu_count=os.cpu_count(),
                  platform=platform.platform(), torch=torch.__version__, config=vars(args),
                  results=results, medians={k: statistics.median(v) for k, v in by.items()})
    save_result("bench_data_startup.json", "cpu", record)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images-per-class", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers / DALI threads")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--nofrost-star", action="store_true", help="also cut the texture-debiased view")
    p.add_argument("--startup", action="store_true", help="time launch to first step instead (see above)")
    p.add_argument("--files", type=int, default=100_000, help="--startup: JPEGs in the generated folder")
    p.add_argument("--ranks", type=int, default=2, help="--startup: ranks (deepspeed --num_gpus on CPU)")
    p.add_argument("--repeats", type=int, default=1, help="--startup: launches of each kind")
    p.add_argument("--folder", help="--startup: keep the generated folder here (reused when it exists)")
    args = p.parse_args()
    if args.startup:
        return startup(args)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dali_version = _dali_version()
    backends = ["torch", "synthetic"]
    if dali_version:
        backends += ["dali-cpu"] + (["dali-gpu"] if device.type == "cuda" else [])
    else:
        print("DALI is not installed: dali-cpu and dali-gpu are left out (pip install 'fastnofrost[dali-cuda130]')")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        root = os.path.join(make_image_folder(tmp, per_class=(("train", args.images_per_class),),
                                              size_range=(200, 400)), "train")
        n_files = sum(len(files) for _, _, files in os.walk(root))
        for backend in backends:
            loader = build_loader(root if backend != "synthetic" else None, backend=backend,
                                  batch_size=args.batch_size, image_size=args.image_size, train=True,
                                  device=device, workers=args.workers, nofrost_star=args.nofrost_star,
                                  synthetic_batches=n_files // args.batch_size)
            images, times = time_epochs(loader, args.epochs, device)
            median = statistics.median(times)
            results.append(dict(backend=backend, images=images, epoch_s=times, median_epoch_s=median,
                                images_per_s=images / median))

    print(f"data backends, {n_files} files, batch {args.batch_size}, {args.image_size}px, "
          f"{args.workers} workers, device {device_name(device)}, nofrost_star={args.nofrost_star}")
    print(f"{'backend':<10} {'images/s':>10} {'median epoch s':>15} {'vs torch':>9}")
    base = results[0]["images_per_s"]
    for r in results:
        print(f"{r['backend']:<10} {r['images_per_s']:>10.1f} {r['median_epoch_s']:>15.3f} "
              f"{r['images_per_s'] / base:>8.2f}x")
    record = dict(benchmark="bench_data", device=device_name(device), cpu_count=os.cpu_count(),
                  platform=platform.platform(), torch=torch.__version__, dali=dali_version,
                  config=vars(args) | {"files": n_files}, results=results)
    save_result("bench_data_nofrost_star.json" if args.nofrost_star else "bench_data.json", device_name(device), record)


if __name__ == "__main__":
    main()

"""Images/s of each data backend reading the same folder of real JPEGs (training pipeline).

    python benchmarks/bench_data.py [--images-per-class 64] [--batch-size 32] [--image-size 224]

The folder is generated from scikit-learn's sample photos (fastnofrost.data.samples): 4
classes of JPEG/PNG crops up to 400x400 pixels. Backends: torch (PIL + DataLoader workers),
dali-cpu, synthetic, and dali-gpu when CUDA is present; with CUDA every batch ends on the
GPU. Each backend runs one warm-up epoch, then --epochs timed epochs; the median is reported.
Prints a table and writes JSON to benchmarks/results/<device>/bench_data[_nofrost_star].json
($OUT when set).
"""
import argparse
import os
import platform
import statistics
import tempfile
import time

import torch

from fastnofrost.data import build_loader
from fastnofrost.data.samples import make_image_folder
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


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images-per-class", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers / DALI threads")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--nofrost-star", action="store_true", help="also cut the texture-debiased view")
    args = p.parse_args()

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

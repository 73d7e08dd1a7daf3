"""Forward + backward time of NF-ResNet-26/50: fastnofrost vs timm, side by side in one run.

Both models hold the same weights (timm's init, loaded into ours) and run in train mode on
the same batch: ``loss = cross_entropy(model(x), y); loss.backward()``. Ours takes pixels in
[0, 1] and normalizes them itself; timm gets the normalized batch. Reports the median (and
min) of ``--repeats`` timed steps after ``--warmup`` steps, prints a table and writes JSON.

    python benchmarks/bench_models.py                     # batch 8, 224x224, both models
    python benchmarks/bench_models.py --repeats 3 --models nf_resnet26
"""
import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import fastnofrost
from fastnofrost.models import create_model, load_checkpoint

OUT = Path(__file__).resolve().parent / "results" / "cpu" / "bench_models.json"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def time_steps(model, x, y, warmup: int, repeats: int):
    times = []
    for step in range(warmup + repeats):
        model.zero_grad(set_to_none=True)
        start = time.perf_counter()
        F.cross_entropy(model(x), y).backward()
        if step >= warmup:
            times.append(time.perf_counter() - start)
    return times


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["nf_resnet26", "nf_resnet50"])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    import timm

    torch.manual_seed(0)
    x = torch.rand(args.batch, 3, args.size, args.size)
    y = torch.randint(0, 1000, (args.batch,))
    rows = []
    for name in args.models:
        ref = timm.create_model(name).train()
        ours = create_model(name).train()
        load_checkpoint(ours, ref.state_dict())
        x_ref = ours.normalize(x).detach()
        # interleave (ours, timm, ours, timm) so background load hits both alike
        ours_t, ref_t = [], []
        for repeats in (args.repeats // 2, args.repeats - args.repeats // 2):
            ours_t += time_steps(ours, x, y, args.warmup, repeats)
            ref_t += time_steps(ref, x_ref, y, args.warmup, repeats)
        row = dict(model=name, batch=args.batch, size=args.size, repeats=len(ours_t),
                   ours_median_s=statistics.median(ours_t), ours_min_s=min(ours_t),
                   timm_median_s=statistics.median(ref_t), timm_min_s=min(ref_t), ours_steps_s=ours_t,
                   timm_steps_s=ref_t)
        row["speedup_median"] = row["timm_median_s"] / row["ours_median_s"]
        rows.append(row)
        print(f"{name}: ours {row['ours_median_s'] * 1e3:.0f} ms, timm {row['timm_median_s'] * 1e3:.0f} ms",
              flush=True)

    print(f"\nforward+backward, batch {args.batch}, {args.size}x{args.size}, train mode, fp32, "
          f"{torch.get_num_threads()} threads, {cpu_name()}")
    print(f"{'model':<14}{'ours med (ms)':>15}{'ours min':>10}{'timm med (ms)':>15}{'timm min':>10}{'timm/ours':>11}")
    for r in rows:
        print(f"{r['model']:<14}{r['ours_median_s'] * 1e3:>15.0f}{r['ours_min_s'] * 1e3:>10.0f}"
              f"{r['timm_median_s'] * 1e3:>15.0f}{r['timm_min_s'] * 1e3:>10.0f}{r['speedup_median']:>10.2f}x")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    env = dict(device=cpu_name(), threads=torch.get_num_threads(), torch=torch.__version__, timm=timm.__version__,
               fastnofrost=fastnofrost.__version__, python=platform.python_version())
    args.out.write_text(json.dumps(dict(benchmark="models_fwd_bwd", env=env, results=rows), indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

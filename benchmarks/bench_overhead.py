"""Host-overhead benchmark: what one NoFrost-10 training step costs the host when compute is nil.

Full-depth nf_resnet50 at width 0.25, batch 1, 32x32: the convolutions are then negligible and
what is left is dispatch, the regime a GPU step is in when it is launch-bound. Per engine, after
warm-up steps:

  ops        aten ops dispatched per step (profiler events named aten::*, nested ones included)
  custom     fastnofrost::* op calls per step (fused WS, random start, PGD step)
  compiled   calls of inductor-compiled code per step (profiler events of compiled graphs)
  reads      host reads of tensors per step: Tensor.item / tolist / __bool__ / __int__ /
             __float__ / cpu / numpy (each a device sync on CUDA)
  ms         median wall milliseconds per step
  cuda_sync  CUDA only, ours: one more step under torch.cuda.set_sync_debug_mode("error"):
             "none", or the first sync's error (a step that waits on the device)

Engines (bench_step's): ``ours`` (eager; the grouped WS, as train.py's default --ws grouped),
``per-layer-ws`` (ours with one WS op per layer and use, --ws per-layer), ``ours-full`` (train.py --compile full: the attack step
and the training forward/backward compiled) and ``official`` (official.py: PGDAT.py's step with
its five .item() meters). Goals (reported, never asserted): ours-full dispatches <= 1/10 of the
official step's ops, 0 reads.

    python benchmarks/bench_overhead.py [--device cpu|cuda] [--steps 10] [--repeats 5]
"""
import argparse
import collections
import os
import statistics
import sys
import time
import types

import torch

from bench_attack import describe_device  # benchmarks/ is on sys.path when run as a script
from bench_step import BASELINES, DROP, EPS, LAMBDA, SMOOTHING, build, engine_setups, ours_step
from reads import ReadCounter
from results_io import save_result, set_allocator
from fastnofrost.attacks import default_alpha
from fastnofrost.device import prepare

ENGINES = ("ours", "per-layer-ws", "ours-full", "official")
GOAL_OPS = 0.1  # ours-full ops <= this x the official step's


def make_step(engine: str, args):
    setup = engine_setups([engine], args.device, False)[engine]
    model, optimizer, x, y = build(args, setup, 1)
    if setup is None:
        step = BASELINES["official"](model, optimizer, args.steps, EPS, default_alpha(EPS, args.steps), LAMBDA,
                                     SMOOTHING)
    else:
        step = ours_step(model, optimizer, setup, args.steps, args.device)
    return step, x, y


def profile_step(step, x, y) -> dict:
    """Ops dispatched by one step, by kind (CPU-side profiler events)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        step(x, y)
    kinds = collections.Counter()
    for event in prof.events():
        name = event.name
        if name.startswith("aten::"):
            kinds["ops"] += 1
        elif name.startswith("fastnofrost::"):
            kinds["custom"] += 1
        elif "Compiled" in name or "cpp_fused" in name or "triton_" in name or name.startswith("Torch-Compiled"):
            kinds["compiled"] += 1
    return {k: kinds.get(k, 0) for k in ("ops", "custom", "compiled")}


def measure(engine: str, args, counter: ReadCounter) -> dict:
    step, x, y = make_step(engine, args)
    sync = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)
    for _ in range(args.warmup):
        step(x, y)
    sync()
    row = dict(engine=engine, **profile_step(step, x, y))
    counter.calls.clear()
    counter.active = True
    step(x, y)
    counter.active = False
    row["reads"] = counter.count
    if args.device == "cuda" and engine != "official":  # the official step's .item() meters do sync
        row["cuda_sync"] = sync_free(step, x, y)
    times = []
    for _ in range(args.repeats):
        sync()
        t0 = time.perf_counter()
        step(x, y)
        sync()
        times.append((time.perf_counter() - t0) * 1e3)
    row.update(ms=statistics.median(times), all_ms=times)
    print(f"  {engine:<14} {row['ms']:9.1f} ms/step  {row['ops']:6d} aten ops  {row['custom']:4d} custom  "
          f"{row['compiled']:4d} compiled  {row['reads']:3d} reads", file=sys.stderr, flush=True)
    return row


def sync_free(step, x, y) -> str:
    """'none' if a steady-state step runs under set_sync_debug_mode('error'), else its error."""
    torch.cuda.set_sync_debug_mode("error")
    try:
        step(x, y)
        return "none"
    except RuntimeError as exc:
        return str(exc).splitlines()[0]
    finally:
        torch.cuda.set_sync_debug_mode(0)
        torch.cuda.synchronize()


def goals(rows) -> list:
    by = {r["engine"]: r for r in rows}
    if "ours-full" not in by or "official" not in by:
        return []
    ratio = by["ours-full"]["ops"] / max(by["official"]["ops"], 1)
    return [dict(goal="ours-full ops / official ops", value=ratio, threshold=f"<= {GOAL_OPS}", met=ratio <= GOAL_OPS),
            dict(goal="ours-full host reads per step", value=by["ours-full"]["reads"], threshold="== 0",
                 met=by["ours-full"]["reads"] == 0)] + (
        [dict(goal="ours-full CUDA syncs per step", value=by["ours-full"]["cuda_sync"], threshold="none",
              met=by["ours-full"]["cuda_sync"] == "none")] if "cuda_sync" in by["ours-full"] else [])


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--steps", type=int, default=10, help="PGD steps K of the NoFrost step")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (compiles the compiled engine)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--engines", default=",".join(ENGINES), help=f"comma separated, of {', '.join(ENGINES)}")
    p.add_argument("--default-malloc", action="store_true", help="CPU: leave glibc's mmap threshold as is")
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda but no CUDA device is visible")
    prepare(torch.device(args.device))  # cudnn.benchmark on CUDA, as train.py and evaluate
    engines = args.engines.split(",")
    unknown = set(engines) - set(ENGINES)
    if unknown or args.steps < 1 or args.repeats < 1 or args.warmup < 1:
        p.error(f"engines of {', '.join(ENGINES)}; --steps, --repeats, --warmup >= 1 (got {', '.join(unknown)})")
    # what bench_step's build() reads, plus this run's step settings
    run = types.SimpleNamespace(model="nf_resnet50", num_classes=10, width=0.25, image_size=32, device=args.device,
                                steps=args.steps, warmup=args.warmup, repeats=args.repeats)
    allocator = set_allocator(args.device, args.default_malloc)
    load = os.getloadavg()
    print(f"# bench_overhead: nf_resnet50 width 0.25, batch 1, 32x32, NoFrost-{args.steps} (dropout {DROP}), "
          f"{args.device}, load average {load[0]:.2f}", flush=True)
    with ReadCounter() as counter:
        rows = [measure(engine, run, counter) for engine in engines]
    result = dict(info=dict(describe_device(args.device), allocator=allocator, loadavg_start=load,
                            loadavg_end=os.getloadavg()),
                  config=dict(model="nf_resnet50", width=0.25, batch=1, image_size=32, steps=args.steps,
                              warmup=args.warmup, repeats=args.repeats),
                  rows=rows, goals=goals(rows))
    official = next((r for r in rows if r["engine"] == "official"), None)
    print(f"\n{'engine':<14} {'ms/step':>9} {'aten ops':>9} {'custom':>7} {'compiled':>9} {'reads':>6} {'ops vs off':>11}")
    for r in rows:
        vs = f"{r['ops'] / official['ops']:.3f}x" if official else "-"
        print(f"{r['engine']:<14} {r['ms']:>9.1f} {r['ops']:>9d} {r['custom']:>7d} {r['compiled']:>9d} "
              f"{r['reads']:>6d} {vs:>11}")
    for g in result["goals"]:
        value = f"{g['value']:.3g}" if isinstance(g["value"], (int, float)) else g["value"]
        print(f"goal: {g['goal']} = {value} ({g['threshold']}): {'met' if g['met'] else 'NOT met'}")
    save_result("bench_overhead.json", args.device, result)
    return result


if __name__ == "__main__":
    main()

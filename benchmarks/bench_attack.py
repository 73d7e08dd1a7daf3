"""Attack benchmark: one NoFrost-style PGD attack (L-inf eps 8/255, K=10 steps, step
min(1.25 eps, eps + 4/255) / K, random start) on nf_resnet26 small-input, 32x32x3, batch 128.

Side by side in one run:
  ours          fastnofrost.attacks.pgd: frozen attack mode (WS once per layer per attack, no
                weight gradients, dropout off), fused random start and step; fp32, and bf16 /
                fp16 autocast (and torch.compile of the step) where asked
  official      the official code's attack (official.py): advertorch's PGDAttack inside
                ctx_noparamgrad_and_eval (eval mode, parameters frozen: input gradients only),
                timm's WS (F.batch_norm) recomputed in every forward, loss.backward() on the
                perturbation, sign step, clamps; eager fp32, NCHW. The baseline of "vs official".
  naive-attack  NOT the official code: the same loop with the parameters left requiring grad (a
                common mistake in user code: every step also computes the weight gradients)

Medians of wall time per attack; candidates are timed in interleaved rounds after a 1-step
warm-up of each, so drift in machine load falls on every candidate alike. On CPU every candidate
runs with large buffers kept in glibc's heap, as training does (--default-malloc: glibc's default
for all). Also reports how far ours (fp32) lands from the official loop run with the same
(fused) WS op and start. Prints a table and writes JSON to
benchmarks/results/<device>/bench_attack.json (or $OUT/).

    python benchmarks/bench_attack.py [--device cpu|cuda] [--batch 128] [--steps 10] [--repeats 3]
                                      [--precisions fp32,bf16] [--compile MODE]
                                      [--default-malloc]
"""
import argparse
import os
import platform
import statistics
import sys
import time

import torch

import fastnofrost
from official import official_attack, official_model  # benchmarks/ is on sys.path
from results_io import save_result, set_allocator
from fastnofrost.attacks import default_alpha, pgd
from fastnofrost.device import cpu_bf16
from fastnofrost.ops import pgd_random_start

EPS = 8 / 255
OFFICIAL = "official fp32 eager"
NAIVE = "naive-attack fp32 eager (not a baseline)"


def build_models(device):
    try:
        from fastnofrost.models import create_model
    except ImportError as exc:
        sys.exit(f"bench_attack: fastnofrost.models is not importable ({exc}); nf_resnet26_small is needed")
    torch.manual_seed(0)
    model = create_model("nf_resnet26_small", num_classes=10).to(device).eval()
    with torch.no_grad():  # timm's init zeroes each block's last gain: give the branches signal
        for name, p in model.named_parameters():
            if name.endswith("gain"):
                p.uniform_(0.5, 1.5)
    return model, official_model(model)


def describe_device(device):
    info = dict(device=device, torch=torch.__version__, fastnofrost=fastnofrost.__version__,
                python=platform.python_version(), threads=torch.get_num_threads(), machine=platform.machine())
    if device == "cuda":
        info.update(name=torch.cuda.get_device_name())
    else:
        info.update(name=cpu_model(), cores=os.cpu_count(), capability=torch.backends.cpu.get_cpu_capability(),
                    bf16=cpu_bf16() or "none native (emulated)",
                    note="shared CPU: another process may have been running")
    return info


def cpu_model() -> str:
    """The CPU's model name as /proc/cpuinfo gives it (platform.processor() elsewhere)."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--precisions", default=None,
                   help="ours' precisions, comma separated (default: fp32 on CPU, fp32,bf16,fp16 on CUDA)")
    p.add_argument("--compile", default=None, metavar="MODE",
                   help="also time ours (fp32 and bf16 if listed) with compile_step=MODE "
                        "('default', 'reduce-overhead')")
    p.add_argument("--default-malloc", action="store_true",
                   help="CPU: leave glibc's mmap threshold as is (default: keep_large_buffers for every "
                        "candidate, as train.py and bench_step do)")
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("bench_attack: --device cuda but no CUDA device is visible")
    device = args.device
    allocator = set_allocator(device, args.default_malloc)  # the same for every candidate
    load_start = os.getloadavg()[0]
    torch.backends.cudnn.benchmark = True  # as PGDAT.py; for every candidate alike
    precisions = (args.precisions or ("fp32,bf16,fp16" if device == "cuda" else "fp32")).split(",")
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    model, official = build_models(device)
    torch.manual_seed(1)
    x = torch.rand(args.batch, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (args.batch,), device=device)
    alpha = default_alpha(EPS, args.steps)
    start = pgd_random_start(x, EPS, generator=torch.Generator().manual_seed(0))

    def ours(precision, compile_step=False):
        def run(steps):
            return pgd(model, x, y, EPS, steps, alpha, precision=precision, compile_step=compile_step,
                       generator=torch.Generator().manual_seed(0))
        return run

    candidates = {f"ours {prec}": ours(prec) for prec in precisions}
    if args.compile:
        for prec in [p for p in precisions if p in ("fp32", "bf16")]:
            candidates[f"ours {prec} compile={args.compile}"] = ours(prec, args.compile)
    candidates[OFFICIAL] = lambda steps: official_attack(official, x, y, EPS, steps, alpha, start)
    candidates[NAIVE] = lambda steps: official_attack(official, x, y, EPS, steps, alpha, start, noparamgrad=False)

    for name, fn in candidates.items():  # warm-up: one step each (compiles, allocator)
        fn(1)
    sync()
    times = {name: [] for name in candidates}
    for r in range(args.repeats):
        for name, fn in candidates.items():
            sync()
            t0 = time.perf_counter()
            fn(args.steps)
            sync()
            times[name].append((time.perf_counter() - t0) * 1e3)
            print(f"  round {r + 1}/{args.repeats} {name}: {times[name][-1]:.1f} ms", flush=True)
        official.zero_grad(set_to_none=True)  # the naive attack accumulates weight gradients

    # ours fp32 against the official loop with the same (fused) WS op and start, first 8 samples; in
    # fp32 a few sign steps on near-zero gradients may differ (tests/test_attacks.py checks
    # equality in float64)
    n = min(8, args.batch)
    same_start = pgd_random_start(x[:n], EPS, generator=torch.Generator().manual_seed(0))
    assert torch.equal(same_start, start[:n]), "the fused random start is not per-element deterministic"
    eager = official_attack(model, x[:n], y[:n], EPS, args.steps, alpha, same_start)
    check = (pgd(model, x[:n], y[:n], EPS, args.steps, alpha, generator=torch.Generator().manual_seed(0))
             - eager).abs().max().item()
    medians = {name: statistics.median(t) for name, t in times.items()}
    ref_ms = medians[OFFICIAL]
    info = dict(describe_device(device), allocator=allocator, load_average_start=load_start,
                load_average_end=os.getloadavg()[0])
    result = dict(info=info,
                  config=dict(model="nf_resnet26_small", batch=args.batch, input=[3, 32, 32], eps=EPS,
                              steps=args.steps, alpha=alpha, repeats=args.repeats),
                  baseline=OFFICIAL, ms=medians, all_ms=times,
                  speedup_vs_official={k: ref_ms / v for k, v in medians.items()},
                  max_abs_diff_vs_official_same_ws=check)

    print(f"\n# bench_attack on {result['info']}")
    print(f"# nf_resnet26_small, batch {args.batch}, 3x32x32, PGD K={args.steps}, eps 8/255, alpha {alpha:.5f}")
    print(f"{'method':<42} {'median ms':>10} {'vs official':>12}")
    for name, ms in medians.items():
        print(f"{name:<42} {ms:>10.1f} {ref_ms / ms:>11.2f}x")
    print("('vs official' = the official attack's time / method time: how many times faster; "
          "naive-attack is not a baseline)")
    print(f"ours fp32 vs the official loop with the same WS op, first {n} samples: max |x_adv diff| = {check:.3g}")

    save_result("bench_attack.json", device, result)
    return result


if __name__ == "__main__":
    main()

"""Fused-kernel benchmark: weight standardization (WS) forward+backward over every conv weight
of ResNet-50, and the PGD step at 64x3x224x224 and 256x3x224x224.

Side by side in one run: grouped (the 53 weights in one WS op each way), fused (the per-layer
op, C++ on CPU, Triton on CUDA), eager torch, timm-style F.batch_norm WS, and torch.compile
of the eager code. "grouped" runs through autograd as a model does (the gradients of the 53
weights arrive apart, and the grouped backward reads each where it lies); "grouped op" times
the two kernels alone, without autograd. The goals (printed with the table) judge
"grouped": on CPU at least 85% of the copy bandwidth and faster than per-layer; on CUDA at most
1 ms and 10x timm-style. Medians over repeats after warm-up
(CUDA: triton.testing.do_bench). Achieved bandwidth is compared with a measured copy
bandwidth of the same device (bytes read + bytes written). Prints a table and writes JSON
to benchmarks/results/<device>/bench_kernels.json (or $OUT/ when OUT is set).

On CPU every method runs with large buffers kept in glibc's heap (keep_large_buffers, as
train.py and bench_step do); --default-malloc leaves glibc's mmap threshold as is, where
every fresh output of eager / compiled code is page-faulted in anew (an 8-10x penalty on
the eager PGD step at 64x3x224x224 on a 2-core machine) while the in-place fused step is not.

    python benchmarks/bench_kernels.py [--device cpu|cuda] [--repeats N] [--no-compile] [--default-malloc]
"""
import argparse
import os
import platform
import statistics
import sys
import time

import torch

import fastnofrost
from official import timm_ws  # noqa: E402  (benchmarks/ is on sys.path when run as a script)
from results_io import save_result, set_allocator  # noqa: E402
from fastnofrost.ops import reference

GAMMA = 1.7139588594436646


def resnet50_conv_shapes():
    """(C_out, C_in, k, k) of the 53 convolutions of a (NF-)ResNet-50."""
    shapes = [(64, 3, 7, 7)]
    in_ch = 64
    for mid, out, depth in ((64, 256, 3), (128, 512, 4), (256, 1024, 6), (512, 2048, 3)):
        for b in range(depth):
            if b == 0:
                shapes.append((out, in_ch, 1, 1))  # downsample shortcut
            shapes += [(mid, in_ch, 1, 1), (mid, mid, 3, 3), (out, mid, 1, 1)]
            in_ch = out
    assert len(shapes) == 53
    return shapes


def ws_fused(w, gain, scale):
    return fastnofrost.ops.scaled_weight_standardization(w, gain, scale, 1e-5)


def ws_grouped(weights, gains, scales):
    return fastnofrost.ops.grouped_scaled_weight_standardization(weights, gains, scales, 1e-5)


def ws_eager(w, gain, scale):
    return reference.scaled_weight_standardization(w, gain, scale, 1e-5)


def ws_timm_style(w, gain, scale):
    return timm_ws(w, gain, scale, 1e-5)


def pgd_eager(x_adv, g, x, alpha, eps):
    return reference.pgd_step(x_adv, g, x, alpha, eps, 0.0, 1.0)


def pgd_fused(x_adv, g, x, alpha, eps):
    torch.ops.fastnofrost.pgd_step_(x_adv, g, x, alpha, eps, 0.0, 1.0)
    return x_adv


class Timer:
    """Medians of wall time. On CPU, candidates are warmed up together and then timed in
    interleaved rounds, so allocator warm-up (first-touch page faults) and any drift in
    machine load fall on every candidate alike. On CUDA, triton.testing.do_bench."""

    def __init__(self, device, warmup, repeats):
        self.device, self.warmup, self.repeats = device, warmup, repeats

    def medians_ms(self, fns):
        if self.device == "cuda":
            import triton.testing

            return {k: float(triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median"))
                    for k, fn in fns.items()}
        for _ in range(self.warmup):
            for fn in fns.values():
                fn()
        times = {k: [] for k in fns}
        for _ in range(self.repeats):
            for k, fn in fns.items():
                t0 = time.perf_counter()
                fn()
                times[k].append((time.perf_counter() - t0) * 1e3)
        return {k: statistics.median(v) for k, v in times.items()}

    def median_ms(self, fn):
        return self.medians_ms({"_": fn})["_"]


def copy_bandwidth_gbs(timer, device):
    n = 64 * 1024 * 1024  # 256 MB of float32
    src = torch.rand(n, device=device)
    dst = torch.empty_like(src)
    ms = timer.median_ms(lambda: dst.copy_(src))
    return 2 * n * 4 / (ms * 1e-3) / 1e9


def bench_ws(timer, device, compile_eager):
    shapes = resnet50_conv_shapes()
    weights = [(torch.randn(s, device=device) * 0.05, torch.rand(s[0], 1, 1, 1, device=device) + 0.5,
                GAMMA * (s[1] * s[2] * s[3]) ** -0.5) for s in shapes]
    grads = [torch.randn(s, device=device) for s in shapes]
    n_params = sum(w.numel() for w, _, _ in weights)
    methods = {"fused": ws_fused, "eager": ws_eager, "timm-style": ws_timm_style}
    if compile_eager:
        methods["torch.compile"] = torch.compile(ws_eager, dynamic=True)

    def run(fn):
        def go():
            for (w, gain, scale), g in zip(weights, grads):
                wr, gr = w.requires_grad_(), gain.requires_grad_()
                out = fn(wr, gr, scale)
                torch.autograd.grad(out, (wr, gr), g)
        return go

    ws_, gains, scales = ([w.requires_grad_() for w, _, _ in weights], [g.requires_grad_() for _, g, _ in weights],
                          [s for _, _, s in weights])

    def grouped():  # one forward, one backward for all 53 weights, through autograd as a model uses it
        torch.autograd.grad(ws_grouped(ws_, gains, scales), ws_ + gains, grads)

    det_w, det_g, eps = [w.detach() for w in ws_], [g.detach() for g in gains], [1e-5] * len(ws_)

    def grouped_op():  # the two kernels alone, without autograd
        _, mean, rstd = torch.ops.fastnofrost.ws_grouped_forward(det_w, det_g, scales, eps)
        torch.ops.fastnofrost.ws_grouped_backward(grads, det_w, det_g, mean, rstd, scales)

    for i, ((w, gain, scale), out) in enumerate(zip(weights, ws_grouped(ws_, gains, scales))):  # spot check
        ref = ws_eager(w, gain, scale)
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-4)
        if i < 3:
            torch.testing.assert_close(ws_fused(w, gain, scale), ref, atol=1e-5, rtol=1e-4)
    rows = timer.medians_ms({"grouped": grouped, "grouped op": grouped_op,
                             **{name: run(fn) for name, fn in methods.items()}})
    # fwd: read w, write w_hat; bwd: read grad and w, write grad_w (gain/stats are negligible)
    bytes_moved = 5 * n_params * 4
    return dict(n_weights=len(shapes), n_params=n_params, bytes=bytes_moved, ms=rows)


def ws_goals(device, ws, copy_gbs):
    """The grouped op's goals: CPU >= 85% of copy bandwidth and faster than per-layer; CUDA
    <= 1 ms for the 53 weights and >= 10x timm-style."""
    ms = ws["ms"]
    if device == "cuda":
        goals = [("grouped ms <= 1.0", ms["grouped"], ms["grouped"] <= 1.0),
                 ("timm-style / grouped >= 10", ms["timm-style"] / ms["grouped"], ms["timm-style"] / ms["grouped"] >= 10)]
    else:
        share = ws["bytes"] / (ms["grouped"] * 1e-3) / 1e9 / copy_gbs
        goals = [("grouped share of copy bandwidth >= 0.85", share, share >= 0.85),
                 ("per-layer / grouped > 1", ms["fused"] / ms["grouped"], ms["fused"] > ms["grouped"])]
    return [dict(goal=g, value=float(v), met=bool(m)) for g, v, m in goals]


def bench_pgd(timer, device, batch, compile_eager):
    shape = (batch, 3, 224, 224)
    x = torch.rand(shape, device=device)
    g = torch.randn(shape, device=device)
    x_adv = (x + 0.01).clamp(0, 1)
    alpha, eps = 2 / 255, 8 / 255
    torch.testing.assert_close(pgd_fused(x_adv.clone(), g, x, alpha, eps), pgd_eager(x_adv, g, x, alpha, eps))
    methods = {"fused": pgd_fused, "eager": pgd_eager}
    if compile_eager:
        methods["torch.compile"] = torch.compile(pgd_eager)
    rows = timer.medians_ms({name: (lambda fn=fn: fn(x_adv, g, x, alpha, eps)) for name, fn in methods.items()})
    start = lambda: torch.ops.fastnofrost.pgd_random_start(x, eps, 0.0, 1.0, 1)  # noqa: E731
    return dict(shape=list(shape), bytes=4 * x.numel() * 4, ms=rows,
                random_start=dict(bytes=2 * x.numel() * 4, ms=timer.median_ms(start)))


def describe_device(device):
    info = dict(device=device, torch=torch.__version__, python=platform.python_version(),
                threads=torch.get_num_threads(), machine=platform.machine())
    if device == "cuda":
        import triton

        info.update(name=torch.cuda.get_device_name(), triton=triton.__version__)
    else:
        info.update(name=platform.processor() or "cpu", cores=os.cpu_count())
    return info


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--batches", default="64,256", help="PGD-step batch sizes at 3x224x224")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile column")
    p.add_argument("--default-malloc", action="store_true",
                   help="CPU: leave glibc's mmap threshold as is (default: keep_large_buffers for every method)")
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("bench_kernels: --device cuda but no CUDA device is visible")
    timer = Timer(args.device, args.warmup, args.repeats)
    compile_eager = not args.no_compile
    result = dict(info=describe_device(args.device))
    if args.device == "cpu":
        result["info"]["allocator"] = set_allocator(args.device, args.default_malloc)
    print(f"# bench_kernels on {result['info']}", flush=True)
    bw = copy_bandwidth_gbs(timer, args.device)
    result["copy_gbs"] = bw
    print(f"measured copy bandwidth (read+write): {bw:.1f} GB/s", flush=True)

    result["ws"] = bench_ws(timer, args.device, compile_eager)
    result["pgd"] = [bench_pgd(timer, args.device, int(b), compile_eager) for b in args.batches.split(",")]

    def row(label, ms, nbytes, fused_ms=None):
        gbs = nbytes / (ms * 1e-3) / 1e9
        ratio = f"{ms / fused_ms:>9.2f}x" if fused_ms else ""
        print(f"{label:<30} {ms:>10.3f} {gbs:>8.1f} {100 * gbs / bw:>7.1f}% {ratio}")

    print(f"\n{'kernel / method':<30} {'median ms':>10} {'GB/s':>8} {'of copy':>8} {'vs fused':>10}")
    ws = result["ws"]
    print(f"WS fwd+bwd, {ws['n_weights']} ResNet-50 weights ({ws['n_params'] / 1e6:.1f}M params, "
          f"{ws['bytes'] / 1e6:.0f} MB; copy-bandwidth floor {ws['bytes'] / bw / 1e6:.2f} ms)")
    for name, ms in ws["ms"].items():
        row(f"  {name}", ms, ws["bytes"], ws["ms"]["fused"])
    result["goals"] = ws_goals(args.device, ws, bw)
    for r in result["pgd"]:
        print(f"PGD step {'x'.join(map(str, r['shape']))} ({r['bytes'] / 1e6:.0f} MB; "
              f"copy-bandwidth floor {r['bytes'] / bw / 1e6:.2f} ms)")
        for name, ms in r["ms"].items():
            row(f"  {name}", ms, r["bytes"], r["ms"]["fused"])
        row("  fused random start", r["random_start"]["ms"], r["random_start"]["bytes"])
    print("('vs fused' = method time / fused time: how many times faster the fused kernel is)")
    print("\ngoals (grouped WS fwd+bwd over the 53 weights):")
    for goal in result["goals"]:
        print(f"  {'met    ' if goal['met'] else 'NOT MET'} {goal['goal']}: {goal['value']:.3f}")

    save_result("bench_kernels.json", args.device, result)
    return result


if __name__ == "__main__":
    main()

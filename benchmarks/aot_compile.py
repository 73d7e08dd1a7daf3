"""Every Triton kernel, in every variant its launcher uses, compiled ahead of time for real GPUs
(sm_80 and sm_90 by default) with the installed Triton and its ptxas: no GPU needed.

The variants are not listed by hand: the launchers themselves run (``kernels/triton``: per-layer
and grouped WS forward and backward, PGD step and random start) on CPU tensors of ResNet-50's
weight shapes (nf_resnet50's WS convolutions, whose row lengths set the WS block sizes) and of a
PGD batch, in every dtype they accept, with and without gains, and each kernel launch is recorded
instead of run: its pointer dtypes, scalar types and constexprs are one variant. Each variant is
then compiled with ``triton.compile(ASTSource(...), target=GPUTarget("cuda", sm, 32))``, and
``cuobjdump --dump-resource-usage`` (shipped with Triton) reads the cubin's registers per thread,
local memory (spills) and static shared memory; Triton's own shared memory is in its metadata.

    python benchmarks/aot_compile.py                  # sm 80 and 90; the table; exit 1 on a failure
    python benchmarks/aot_compile.py --sm 90 --json aot.json

The compiles do not know what Triton's JIT specializes at a launch (integer arguments divisible
by 16, or equal to 1), so registers can differ a little from the JIT's; the code is the same.

A variant fails on a compile error, on any local memory (a spill: ptxas found too few
registers), or on shared memory above the architecture's limit per block. tests/test_aot.py
runs this in ``make test``. Run without ``TRITON_INTERPRET`` (the script clears it).
"""
import os

os.environ.pop("TRITON_INTERPRET", None)  # before triton is imported: compile, do not interpret

import argparse  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from concurrent.futures import ProcessPoolExecutor  # noqa: E402

import torch  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402
from triton.runtime.jit import JITFunction  # noqa: E402

# Shared memory per block (bytes) each architecture allows with opt-in: CUDA C Programming
# Guide, compute capabilities table (8.0: 163 KB, 9.0: 227 KB).
SHARED_LIMIT = {80: 163 * 1024, 86: 99 * 1024, 89: 99 * 1024, 90: 227 * 1024}
DTYPES = (torch.float64, torch.float32, torch.bfloat16, torch.float16)
POINTER = {torch.float64: "*fp64", torch.float32: "*fp32", torch.bfloat16: "*bf16", torch.float16: "*fp16",
           torch.int64: "*i64", torch.int32: "*i32"}
PGD_SHAPE = (8, 3, 224, 224)  # one PGD batch slice: the kernels' BLOCK does not depend on the size


# ---------------------------------------------------------------------- the variants, by recording

def scalar_type(value) -> str:
    """The type Triton's launcher gives a Python scalar argument."""
    if isinstance(value, bool):
        return "i1"
    if isinstance(value, int):
        return "i32" if -2**31 <= value < 2**31 else "i64"
    return "fp32"


TL_DTYPES = {str(d): d for d in (tl.float64, tl.float32, tl.bfloat16, tl.float16)}  # 'fp32': tl.float32, ...


def constexpr_value(value):
    """A constexpr as JSON can hold it (dtypes by name: TL_DTYPES)."""
    return str(value) if isinstance(value, tl.dtype) else value


def record_launches() -> list:
    """[(kernel module, kernel name, signature, constexprs)], one per distinct launch of every
    launcher over ResNet-50's WS weights and a PGD batch in every dtype."""
    from fastnofrost.models import create_model
    from fastnofrost.nn import ScaledStdConv2d, StdConv2d
    from fastnofrost.triton_kernels import pgd, ws, ws_grouped

    seen, variants = set(), []

    def fake_getitem(kernel, grid):
        def launch(*args, **constexprs):
            names = [n for n in kernel.arg_names if n not in constexprs]
            signature = {n: POINTER[a.dtype] if isinstance(a, torch.Tensor) else scalar_type(a)
                         for n, a in zip(names, args)}
            signature.update({n: "constexpr" for n in constexprs})
            key = (kernel.fn.__module__, kernel.fn.__name__, tuple(signature.items()),
                   tuple((k, str(v)) for k, v in constexprs.items()))
            if key not in seen:
                seen.add(key)
                variants.append((kernel.fn.__module__, kernel.fn.__name__, signature,
                                 {k: constexpr_value(v) for k, v in constexprs.items()}))
        return launch

    model = create_model("nf_resnet50", num_classes=1000)
    shapes = [tuple(m.weight.shape) for m in model.modules() if isinstance(m, (ScaledStdConv2d, StdConv2d))]
    original = JITFunction.__getitem__
    JITFunction.__getitem__ = fake_getitem
    try:
        for dtype in DTYPES:
            weights = [torch.zeros(s, dtype=dtype) for s in shapes]
            gains = [torch.ones(s[0], 1, 1, 1, dtype=dtype) for s in shapes]
            stats = torch.zeros(max(s[0] for s in shapes), dtype=ws._acc(dtype)[1])
            for w, g in zip(weights, gains):
                for gain in (g, None):
                    ws.ws_forward(w, gain, 1.0, 1e-5)
                    ws.ws_backward(w, w, gain, stats[:w.shape[0]], stats[:w.shape[0]], 1.0)
            empty = [w.new_empty(0) for w in weights]
            rows = sum(s[0] for s in shapes)
            mean = torch.zeros(rows, dtype=ws._acc(dtype)[1])
            for gain_list in (gains, empty):
                ws_grouped.forward(weights, gain_list, [1.0] * len(shapes), [1e-5] * len(shapes))
                grad_dtypes = (dtype,) + ((torch.bfloat16, torch.float16) if dtype == torch.float32 else ())
                for gdt in grad_dtypes:  # autocast hands fp32 weights bf16 / fp16 gradients
                    ws_grouped.backward([w.to(gdt) for w in weights], weights, gain_list, mean, mean,
                                        [1.0] * len(shapes))
            ws_grouped._tables.clear()
            x = torch.zeros(PGD_SHAPE, dtype=dtype)
            pgd.pgd_step_into(x, x, x, 0.01, 0.03, 0.0, 1.0, x)
            pgd.pgd_random_start(x, 0.03, 0.0, 1.0, 2**40)  # a seed past 32 bits, as drawn
    finally:
        JITFunction.__getitem__ = original
    return variants


# ---------------------------------------------------------------------- compiling

def cuobjdump() -> str:
    path = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    if not os.path.exists(path):
        raise SystemExit(f"aot_compile: {path} is missing: this Triton ships no CUDA tools")
    return path


def resources(cubin: bytes) -> dict:
    """Registers per thread, local (spill) bytes per thread and static shared bytes of a cubin."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as fh:
        fh.write(cubin)
        fh.flush()
        out = subprocess.run([cuobjdump(), "--dump-resource-usage", fh.name], capture_output=True, text=True,
                             check=True).stdout
    found = dict(re.findall(r"\b(REG|LOCAL|SHARED):(\d+)", out.split("Function", 1)[1]))
    return {"registers": int(found["REG"]), "local": int(found["LOCAL"]), "static_shared": int(found["SHARED"])}


def compile_one(job) -> dict:
    """Compile one variant for one sm; the row of the table (``error`` set when it failed)."""
    module, name, signature, constexprs, sm = job
    kernel = getattr(__import__(module, fromlist=[name]), name)
    values = {k: TL_DTYPES.get(v, v) if isinstance(v, str) else v for k, v in constexprs.items()}
    row = dict(kernel=f"{module.rsplit('.', 1)[-1]}.{name}", sm=sm, variant=variant_text(signature, constexprs),
               signature=signature, constexprs=constexprs)
    t0 = time.perf_counter()
    try:
        compiled = triton.compile(ASTSource(fn=kernel, signature=signature, constexprs=values),
                                  target=GPUTarget("cuda", sm, 32))
        row.update(resources(compiled.asm["cubin"]), shared=compiled.metadata.shared,
                   warps=compiled.metadata.num_warps)
    except Exception as exc:  # noqa: BLE001 - any compile failure is this variant's result
        row["error"] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1] if str(exc).strip() else ''}"
    row["seconds"] = time.perf_counter() - t0
    return row


def variant_text(signature: dict, constexprs: dict) -> str:
    pointers = sorted({t[1:] for t in signature.values() if t.startswith("*") and t not in ("*i64", "*i32")})
    flags = ", ".join(f"{k}={str(v).replace('triton.language.', '')}" for k, v in constexprs.items())
    return f"{'/'.join(pointers)}; {flags}"


def problems(row: dict) -> list:
    if "error" in row:
        return [row["error"]]
    out = []
    if row["local"]:
        out.append(f"{row['local']} bytes of local memory per thread (register spills)")
    limit = SHARED_LIMIT.get(row["sm"])
    if limit is not None and row["shared"] + row["static_shared"] > limit:
        out.append(f"{row['shared'] + row['static_shared']} bytes of shared memory (sm_{row['sm']} allows {limit})")
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sm", default="80,90", help="compute capabilities, comma separated (default 80,90)")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="compiles at once (default: cores)")
    p.add_argument("--json", help="write the rows here")
    args = p.parse_args(argv)
    sms = [int(s) for s in args.sm.split(",")]
    started = time.time()
    variants = record_launches()
    jobs = [(*v, sm) for v in variants for sm in sms]
    print(f"aot_compile: {len(variants)} variants x sm {', '.join(map(str, sms))} = {len(jobs)} compiles, "
          f"triton {triton.__version__}, {args.jobs} at a time", flush=True)
    with ProcessPoolExecutor(args.jobs) as pool:
        rows = []
        for i, row in enumerate(pool.map(compile_one, jobs), 1):
            rows.append(row)
            if i % 50 == 0 or i == len(jobs):
                print(f"  compiled {i}/{len(jobs)} ({time.time() - started:.0f} s)", flush=True)
    failed = [(r, problems(r)) for r in rows if problems(r)]
    head = f"{'kernel':<26} {'variant':<46} {'sm':>3} {'regs':>5} {'spill B':>7} {'shared B':>9}"
    print("\n" + head + "\n" + "-" * len(head))
    for r in rows:
        if "error" in r:
            print(f"{r['kernel']:<26} {r['variant']:<46} {r['sm']:>3} FAILED: {r['error']}")
        else:
            print(f"{r['kernel']:<26} {r['variant']:<46} {r['sm']:>3} {r['registers']:>5} {r['local']:>7} "
                  f"{r['shared'] + r['static_shared']:>9}")
    for r, why in failed:
        print(f"FAILED {r['kernel']} [{r['variant']}] sm_{r['sm']}: {'; '.join(why)}")
    ok = len(rows) - len(failed)
    print(f"\naot_compile: {ok}/{len(rows)} compiled without spills within shared memory; {len(failed)} failed; "
          f"{time.time() - started:.0f} s")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(dict(triton=triton.__version__, torch=torch.__version__, sms=sms, rows=rows), fh, indent=1)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

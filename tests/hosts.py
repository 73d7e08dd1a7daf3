"""Run the test suite as other x86-64 hosts would round: `make test-hosts`.

Machines of this project differ from session to session (AMD EPYC, Intel Xeon with AVX-512), and
float rounding differs with them: ATen picks vectorized kernels by CPU capability and oneDNN by
ISA. Both can be forced down, so one machine can run the suite under every combination of

    ATEN_CPU_CAPABILITY  default, avx2, avx512 (where the CPU has it)
    ONEDNN_MAX_CPU_ISA   AVX2, SSE41
    OMP_NUM_THREADS      1, 2

and a test that depends on one host's rounding shows up here before it reaches CI on another
host. Each combination gets an inductor cache of its own: torch's FX graph cache keys compiled
CPU code without the vector ISA it was generated for, so a graph compiled at avx512 and served
at avx2 (or the reverse) computes garbage or dies of SIGBUS, a failure of the cache, not of a
test. Each combination is one pytest process; the table of passed / failed / skipped counts is
printed as they finish and at the end (and written as JSON with --json). Not part of `make test`:
the whole matrix takes well over an hour on a 2-core machine.

    python tests/hosts.py                         # the whole matrix
    python tests/hosts.py --aten default --threads 1 -- tests/test_attacks.py
    python tests/hosts.py --jobs 2                # two combinations at a time (1-thread ones)
"""
import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ONEDNN = ("AVX2", "SSE41")
THREADS = (1, 2)


def aten_levels() -> tuple:
    """ATen's dispatch levels this CPU can run: default, avx2, and avx512 where it has AVX-512."""
    with open("/proc/cpuinfo") as f:
        flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    levels = ["default"] + (["avx2"] if "avx2" in flags else [])
    if {"avx512f", "avx512bw", "avx512vl", "avx512dq"} <= set(flags):
        levels.append("avx512")
    return tuple(levels)


def counts(junit: str) -> dict:
    """passed / failed / skipped and the failing test ids from a pytest JUnit XML report."""
    failed, skipped, total = [], 0, 0
    for case in ET.parse(junit).getroot().iter("testcase"):
        total += 1
        if case.find("failure") is not None or case.find("error") is not None:
            failed.append(f"{case.get('classname')}::{case.get('name')}")
        elif case.find("skipped") is not None:
            skipped += 1
    return {"passed": total - len(failed) - skipped, "failed": len(failed), "skipped": skipped,
            "failures": failed}


def run_one(python: str, combo: tuple, pytest_args: list) -> dict:
    aten, onednn, threads = combo
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, ATEN_CPU_CAPABILITY=aten, ONEDNN_MAX_CPU_ISA=onednn, OMP_NUM_THREADS=str(threads),
                   TORCHINDUCTOR_CACHE_DIR=os.path.join(tmp, "inductor"))
        junit = os.path.join(tmp, "junit.xml")
        start = time.time()
        proc = subprocess.run([python, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={junit}",
                               *pytest_args], cwd=REPO, env=env, capture_output=True, text=True)
        row = {"aten": aten, "onednn": onednn, "threads": threads, "rc": proc.returncode,
               "minutes": round((time.time() - start) / 60, 1)}
        if os.path.exists(junit):
            row.update(counts(junit))
        else:  # pytest died before writing its report (collection error, crash)
            row.update(passed=0, failed=1, skipped=0, failures=["(no report) " + proc.stderr[-500:]])
    return row


def print_row(row: dict) -> None:
    print(f"| {row['aten']} | {row['onednn']} | {row['threads']} | {row['passed']} | {row['failed']} | "
          f"{row['skipped']} | {row['minutes']} |", flush=True)
    for name in row["failures"]:
        print(f"|   FAILED {name} | | | | | | |", flush=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--aten", default=",".join(aten_levels()), help="ATEN_CPU_CAPABILITY levels (comma list)")
    parser.add_argument("--onednn", default=",".join(ONEDNN), help="ONEDNN_MAX_CPU_ISA caps (comma list)")
    parser.add_argument("--threads", default=",".join(map(str, THREADS)), help="OMP_NUM_THREADS values")
    parser.add_argument("--jobs", type=int, default=1,
                        help="combinations run at once (only 1-thread ones share the machine; default 1)")
    parser.add_argument("--json", help="also write the table as JSON to this file")
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("pytest_args", nargs="*", default=["tests"], help="after --: what pytest runs")
    args = parser.parse_args(argv)
    unknown = set(args.aten.split(",")) - set(aten_levels())
    if unknown:
        parser.error(f"--aten {','.join(sorted(unknown))}: this CPU runs only {','.join(aten_levels())}")
    combos = list(itertools.product(args.aten.split(","), args.onednn.split(","),
                                    [int(t) for t in args.threads.split(",")]))
    print(f"{cpu_model()}: {len(combos)} combinations of `pytest {' '.join(args.pytest_args)}`, {args.jobs} at a time")
    print("| ATEN_CPU_CAPABILITY | ONEDNN_MAX_CPU_ISA | OMP_NUM_THREADS | passed | failed | skipped | minutes |")
    print("| --- | --- | --- | --- | --- | --- | --- |", flush=True)
    rows = []
    single = [c for c in combos if c[2] == 1]
    rest = [c for c in combos if c[2] != 1]
    with ThreadPoolExecutor(max(args.jobs, 1)) as pool:  # 1-thread runs side by side, the others alone
        for row in pool.map(lambda c: run_one(args.python, c, args.pytest_args), single):
            print_row(row)
            rows.append(row)
    for combo in rest:
        row = run_one(args.python, combo, args.pytest_args)
        print_row(row)
        rows.append(row)
    bad = [r for r in rows if r["failed"] or r["rc"] not in (0, 5)]
    print(f"\n{len(rows) - len(bad)} of {len(rows)} combinations passed" + (
        "" if not bad else ": failing in " + "; ".join(f"{r['aten']}/{r['onednn']}/{r['threads']}" for r in bad)))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"cpu": cpu_model(), "rows": rows}, f, indent=1)
    return 1 if bad else 0


def cpu_model() -> str:
    with open("/proc/cpuinfo") as f:
        return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "unknown")


if __name__ == "__main__":
    sys.exit(main())

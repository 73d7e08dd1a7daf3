"""Smoke test of benchmarks/bench_overhead.py: the run finishes, and its counts of host reads are
the engines' own (the official step's five .item() meters; ours only the random start's seed,
drawn from torch's CPU generator). No timing assertions."""
import json
import os
import subprocess
import sys

from helpers import BENCHMARKS as BENCH


def test_counts_ops_and_host_reads_per_step(tmp_path):
    env = dict(os.environ, OUT=str(tmp_path), OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, os.path.join(BENCH, "bench_overhead.py"), "--device", "cpu",
                           "--engines", "ours,official", "--steps", "1", "--warmup", "1", "--repeats", "1"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    rows = {r["engine"]: r for r in json.loads((tmp_path / "bench_overhead.json").read_text())["rows"]}
    assert set(rows) == {"ours", "official"}
    assert rows["official"]["reads"] == 5 and rows["ours"]["reads"] == 1
    assert rows["official"]["custom"] == 0 and rows["ours"]["custom"] > 0  # ours runs the fused ops
    assert all(r["ops"] > 0 and r["ms"] > 0 for r in rows.values())
    assert "ops vs off" in done.stdout

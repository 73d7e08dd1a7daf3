"""Smoke test of benchmarks/bench_step.py: the quick CPU run finishes and its JSON holds every
engine at every K; the FLOP-model floor matches a hand computation. No timing assertions (speed
goals are reported by the benchmark, never asserted)."""
import json
import os
import subprocess
import sys

import pytest
import torch

from fastnofrost.training.engine import auto_precision
from helpers import BENCHMARKS as BENCH

sys.path.insert(0, BENCH)

from bench_step import add_ratios, flop_floor, goals, merge_row  # noqa: E402  (benchmarks/ is not a package)


@pytest.mark.parametrize("k, expected", [(0, 1.0), (1, (1 * 5 + 2 * 9) / 9), (10, (10 * 5 + 2 * 9) / 9)])
def test_flop_floor_by_hand(k, expected):
    # fwd 2, input-grad 3, weight-grad 4: ST = 9; a K-step NoFrost step = K * 5 + 2 * 9
    assert flop_floor(k, fwd=2.0, igrad=3.0, wgrad=4.0) == pytest.approx(expected)


def test_rounds_pool_the_steps_of_one_config():
    rows = []
    merge_row(rows, dict(engine="ours", k=1, batch=4, ms=3.0, all_ms=[3.0, 1.0, 5.0], img_s=4 / 3e-3, peak_mib=10.0))
    merge_row(rows, dict(engine="ours", k=0, batch=4, ms=1.0, all_ms=[1.0], img_s=4e3, peak_mib=None))
    merge_row(rows, dict(engine="ours", k=1, batch=4, ms=8.0, all_ms=[9.0, 8.0, 7.0], img_s=4 / 8e-3, peak_mib=12.0))
    assert [(r["k"], r["all_ms"]) for r in rows] == [(1, [3.0, 1.0, 5.0, 9.0, 8.0, 7.0]), (0, [1.0])]
    assert rows[0]["ms"] == 6.0 and rows[0]["img_s"] == pytest.approx(4 / 6e-3) and rows[0]["peak_mib"] == 12.0


def test_step_memory_leaves_out_the_process_before_the_first_step():
    """CPU step memory = peak RSS - RSS before the first step; the sequential-views goal compares
    it with the official step's at the largest K."""
    def row(engine, k, ms, peak, start):
        return dict(engine=engine, k=k, batch=4, ms=ms, all_ms=[ms], img_s=4e3 / ms, peak_mib=peak, rss_start_mib=start)

    rows = [row("ours-sequential", 0, 1.0, 450.0, 400.0), row("ours-sequential", 2, 2.0, 520.0, 400.0),
            row("official", 0, 1.0, 500.0, 400.0), row("official", 2, 3.0, 700.0, 400.0)]  # baseline last
    add_ratios(rows, dict(fwd=1.0, igrad=1.0, wgrad=1.0))
    assert [r["step_mib"] for r in rows] == [50.0, 120.0, 100.0, 300.0]
    assert rows[1]["memory_vs_official"] == pytest.approx(0.4) and rows[1]["speedup"] == pytest.approx(1.5)
    memory = next(g for g in goals(rows, "cpu") if g["metric"] == "memory_vs_official")
    assert (memory["engine"], memory["k"], memory["value"], memory["met"]) == ("ours-sequential", 2, pytest.approx(0.4), True)
    assert [g["met"] for g in goals(rows, "cpu") if g["metric"] == "speedup"] == [None, None]  # ours not measured


def test_quick_run_writes_every_engine_and_k(tmp_path):
    env = dict(os.environ, OUT=str(tmp_path), OMP_NUM_THREADS="1")  # one thread: no spin-waits on a busy machine
    # ours-full needs inductor's CPU code, which does not build at ATEN_CPU_CAPABILITY=default
    inductor = torch.backends.cpu.get_cpu_capability() != "DEFAULT"
    engines = [] if inductor else ["--engines", "ours,ours-sequential,official,naive-attack,ablations"]
    done = subprocess.run([sys.executable, os.path.join(BENCH, "bench_step.py"), "--quick", "--device", "cpu",
                           *engines], env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    result = json.loads((tmp_path / "bench_step_nf_resnet26_small_quick.json").read_text())
    assert result["complete"] and (tmp_path / "bench_step_nf_resnet26_small_quick.png").stat().st_size > 0
    ks, ablation_ks = result["config"]["ks"], result["config"]["ablation_ks"]
    full_ks = ("ours", "ours-full", "official") if inductor else ("ours", "official")
    expected = {(name, k) for name in full_ks for k in ks} | {
        (name, k) for name in ("ours-sequential", "naive-attack", "per-layer-ws", "no-ws-cache", "weight-grads",
                               "two-forwards", "unfused-pgd", "unfused-ws") for k in ablation_ks}
    if auto_precision(torch.device("cpu"))[0] != "fp32":  # a CPU with native bf16: ours at fp32 is an ablation too
        expected |= {("fp32", k) for k in ablation_ks}
    assert {(r["engine"], r["k"]) for r in result["rows"]} == expected
    assert set(result["engines"]) == {name for name, _ in expected}
    flops = result["flops_per_image"]
    assert flops["fwd"] > 0 and flops["igrad"] > 0 and flops["wgrad"] > 0
    for r in result["rows"]:
        assert r["ms"] > 0 and r["img_s"] > 0
        assert r["floor"] == pytest.approx(flop_floor(r["k"], **flops))
        assert r["overhead"] is not None and r["speedup"] is not None
    assert [(g["engine"], g["metric"]) for g in result["goals"]] == [
        ("ours", "speedup"), ("ours-full", "speedup"), ("ours-sequential", "memory_vs_official")]
    assert result["engines"]["ours-sequential"]["views"] == "sequential"
    assert not inductor or result["engines"]["ours-full"]["compile_model"]
    assert "goals on cpu" in done.stdout

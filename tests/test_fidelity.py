"""Smoke test of benchmarks/fidelity.py: a tiny run (two methods on digits through the real
training engine) writes its table, JSON and figure; MBNAT's curve is read at NoFrost's
robustness by hand-checked interpolation. No accuracy or timing assertions."""
import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(REPO, "benchmarks")
sys.path.insert(0, BENCH)

from fidelity import MBNAT_GAMMAS, comparisons, mbnat_clean_at  # noqa: E402  (benchmarks/ is not a package)

CURVE = [{"gamma": 0.0, "clean": 90.0, "pgd20": 10.0}, {"gamma": 0.5, "clean": 80.0, "pgd20": 40.0},
         {"gamma": 1.0, "clean": 70.0, "pgd20": 60.0}]


@pytest.mark.parametrize("robust, expected", [(10.0, 90.0), (25.0, 85.0), (50.0, 75.0), (60.0, 70.0),
                                              (5.0, None), (61.0, None)])
def test_mbnat_clean_at_interpolates_along_the_curve(robust, expected):
    assert mbnat_clean_at(CURVE, robust) == (None if expected is None else pytest.approx(expected))


def test_comparisons_are_nofrost_minus_baseline():
    results = {"nofrost": {"clean": 85.0, "pgd20": 50.0, "aa": 40.0},
               "sat_bn": {"clean": 80.0, "pgd20": 52.0, "aa": 41.0},
               "mbnat": {"clean": 80.0, "pgd20": 40.0, "curve": CURVE}}
    by_baseline = {c["baseline"]: c for c in comparisons(results)}
    assert by_baseline["sat_bn"] == {"baseline": "sat_bn", "clean": 5.0, "pgd20": -2.0, "aa": -1.0}
    assert by_baseline["mbnat"] == {"baseline": "mbnat", "clean": 5.0, "pgd20": 10.0}
    assert by_baseline["mbnat_curve_at_nofrost_pgd20"]["clean"] == pytest.approx(10.0)
    assert comparisons({"sat_bn": results["sat_bn"]}) == []


def test_tiny_run_writes_table_json_and_figure(tmp_path):
    env = dict(os.environ, OUT=str(tmp_path / "results"))
    command = [sys.executable, os.path.join(BENCH, "fidelity.py"), "--quick", "--data", "digits", "--device", "cpu",
               "--methods", "mbnat,nofrost", "--jobs", "2", "--threads", "1", "--out", str(tmp_path / "runs"),
               "--epochs", "1", "--train-examples", "64", "--image-size", "8", "--steps", "1",
               "--eval-examples", "16", "--aa-examples", "0"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    result = json.loads((tmp_path / "results" / "fidelity_quick.json").read_text())
    assert result["data"] == "digits" and result["schedule"]["epochs"] == 1
    assert set(result["results"]) == {"mbnat", "nofrost"}
    for r in result["results"].values():
        assert "error" not in r and r["n"] == 16 and "aa" not in r
        assert all(0 <= r[m] <= 100 for m in ("clean", "pgd20", "apgd_ce")) and r["train_s"] > 0
    assert [c["gamma"] for c in result["results"]["mbnat"]["curve"]] == list(MBNAT_GAMMAS)
    assert {c["baseline"] for c in result["comparisons"]} == {"mbnat", "mbnat_curve_at_nofrost_pgd20"}
    markdown = (tmp_path / "results" / "fidelity_quick.md").read_text()
    assert "| NoFrost | NF |" in markdown and "| MBNAT (gamma 0.5) | dual BN |" in markdown
    assert (tmp_path / "results" / "fidelity_quick.png").stat().st_size > 0

"""Every Triton kernel compiled for real GPUs (sm_80, sm_90) on this CPU-only machine, in every
variant its launcher uses (benchmarks/aot_compile.py): no compile error, no register spill,
shared memory within each architecture's limit. The Triton interpreter, which runs the kernels
in the other tests, accepts code that the real compiler may reject or spill on."""
import json
import os
import subprocess
import sys

import pytest
import torch

from helpers import BENCHMARKS

WS_BLOCKS = {64, 128, 256, 512, 1024, 2048, 4096}  # nf_resnet50's WS row lengths 64 .. 4608 (147: the stem)
DTYPES = {"fp64", "fp32", "bf16", "fp16"}


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the kernels are compiled and run by the GPU tests")
    out = tmp_path_factory.mktemp("aot") / "aot.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, os.path.join(BENCHMARKS, "aot_compile.py"), "--json", str(out)],
                          capture_output=True, text=True, env=env, timeout=1200)
    return done, json.loads(out.read_text()) if out.exists() else None


def test_every_variant_compiles_for_sm80_and_sm90_without_spills(compiled):
    done, result = compiled
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-3000:]
    rows = result["rows"]
    assert result["sms"] == [80, 90] and rows
    for row in rows:
        assert "error" not in row and row["local"] == 0, row
        assert 0 < row["registers"] <= 255, row
    assert done.stdout.strip().splitlines()[-1].startswith(f"aot_compile: {len(rows)}/{len(rows)} compiled")


def test_the_variants_are_those_the_launchers_use(compiled):
    """Recorded from the launchers over nf_resnet50's weights: every kernel in both sms, every
    dtype, the WS block sizes of ResNet-50's row lengths, with and without gains, and the
    backward's autocast case (fp32 weights, bf16 / fp16 gradients)."""
    rows = compiled[1]["rows"]
    kernels = {r["kernel"] for r in rows}
    assert kernels == {"ws._ws_fwd_kernel", "ws._ws_bwd_kernel", "ws_grouped._fwd_kernel", "ws_grouped._bwd_kernel",
                       "pgd._pgd_step_kernel", "pgd._random_start_kernel"}
    for kernel in kernels:
        assert {r["sm"] for r in rows if r["kernel"] == kernel} == {80, 90}
    per_layer = [r for r in rows if r["kernel"].startswith("ws._")]
    assert {r["constexprs"]["BLOCK"] for r in per_layer} == WS_BLOCKS
    assert {r["constexprs"]["HAS_GAIN"] for r in per_layer} == {True, False}
    assert {r["signature"]["W"][1:] for r in per_layer} == DTYPES
    grouped = [r for r in rows if r["kernel"] == "ws_grouped._bwd_kernel"]
    assert {r["constexprs"]["BLOCK"] for r in grouped} == WS_BLOCKS
    assert {(r["constexprs"]["DT"], r["constexprs"]["GDT"]) for r in grouped} >= {("fp32", "bf16"), ("fp32", "fp16")}
    assert {r["signature"]["X"][1:] for r in rows if r["kernel"].startswith("pgd.")} == DTYPES

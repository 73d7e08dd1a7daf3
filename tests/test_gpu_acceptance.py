"""benchmarks/gpu_acceptance.py on CPU: its verdict logic, its data generator, the whole script
in --dry mode (the GPU run's steps at tiny sizes), and that its no-syncs probe finds and names
synchronize calls, so a broken script is found here and not on the GPU machine."""
import json
import os
import re
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import BENCHMARKS
from fastnofrost.data import build_loader
from fastnofrost.data.samples import make_class_folder
from fastnofrost.training.engine import auto_precision

sys.path.insert(0, BENCHMARKS)
import gpu_acceptance  # noqa: E402  (benchmarks/ is not a package)
from gpu_acceptance import Check, Skip, run_checks, verdict_table  # noqa: E402
pytestmark = pytest.mark.usefixtures("deepspeed_op")  # built once, before the first run


def test_verdicts_ran_failed_skipped_and_the_budget():
    py = sys.executable

    def not_here():
        raise Skip("no CUDA: not checkable")

    checks = [
        Check("ok", [py, "-c", "print('fine')"], after=lambda: "detail of ok"),
        Check("broken", [py, "-c", "import sys; print('some output'); sys.exit('the reason it broke')"]),
        Check("after-broken", [py, "-c", "pass"], needs=("broken",)),
        Check("bad-result", [py, "-c", "pass"], after=lambda: 1 / 0, needs=("ok",)),
        Check("not-here", [py, "-c", "pass"], after=not_here),
    ]
    logged = []
    run_checks(checks, budget=200, log=logged.append)
    by = {c.name: c for c in checks}
    assert (by["ok"].status, by["ok"].detail) == ("ran", "detail of ok")
    assert by["broken"].status == "failed" and by["broken"].detail == "exit 1: the reason it broke"
    assert any("some output" in line for line in logged)  # the failing command's output, for the log
    assert (by["after-broken"].status, by["after-broken"].detail) == ("skipped", "needs broken (failed)")
    assert by["bad-result"].status == "failed" and "division by zero" in by["bad-result"].detail
    assert (by["not-here"].status, by["not-here"].detail) == ("skipped", "no CUDA: not checkable")
    table = verdict_table(checks, ["a note"])
    lines = table.splitlines()
    assert lines[-1] == "note: a note" and lines[1] == "== verdict"
    assert [line.split()[:2] for line in lines[3:8]] == [[c.name, c.status] for c in checks]


def test_a_check_gets_the_time_left_less_a_reserve_for_each_later_one():
    py = sys.executable
    checks = [Check("quick", [py, "-c", "pass"]), Check("slow", [py, "-c", "import time; time.sleep(60)"]),
              Check("last", [py, "-c", "pass"])]
    run_checks(checks, budget=47, log=lambda _: None)  # quick: up to 47 - 2 x 15 = 17 s; slow: about 47 - 15
    assert checks[0].status == "ran"
    assert checks[1].status == "failed" and checks[1].detail.startswith("timed out after")
    assert 27 <= checks[1].seconds <= 37
    assert checks[2].status in ("ran", "skipped")  # about 15 s left: at the reserve's edge
    skipped = [Check("a", [py, "-c", "pass"]), Check("b", [py, "-c", "pass"])]
    run_checks(skipped, budget=20, log=lambda _: None)  # a: 20 - 15 = 5 s, under the reserve: skipped; b runs
    assert skipped[0].status == "skipped" and skipped[0].detail.startswith("budget")
    assert skipped[1].status == "ran"


def test_class_folder_is_a_learnable_imagenet_layout(tmp_path):
    n = make_class_folder(str(tmp_path / "d"), classes=3, per_class=(("train", 4), ("val", 2)), size_range=(20, 40),
                          workers=2)
    assert n == 18
    assert sorted(os.listdir(tmp_path / "d")) == ["train", "val"]
    assert sorted(os.listdir(tmp_path / "d" / "train")) == ["class_000", "class_001", "class_002"]
    sizes, means = set(), {}
    for k in range(3):
        files = sorted((tmp_path / "d" / "train" / f"class_{k:03d}").iterdir())
        assert len(files) == 4 and all(f.suffix == ".JPEG" for f in files)
        images = [Image.open(f) for f in files]
        assert all(im.format == "JPEG" and im.mode == "RGB" and 20 <= min(im.size) <= max(im.size) <= 40
                   for im in images)
        sizes |= {im.size for im in images}
        means[k] = np.mean([np.asarray(im, dtype=float).mean((0, 1)) for im in images], 0)
    assert len(sizes) > 3  # random sizes
    assert min(np.abs(means[a] - means[b]).max() for a in range(3) for b in range(a)) > 5  # classes differ in colour
    loader = build_loader(str(tmp_path / "d"), batch_size=2, train=True, image_size=16, workers=0)
    assert loader.num_classes == 3 and len(loader) == 6
    with pytest.raises(ValueError, match=">= 2 classes"):
        make_class_folder(str(tmp_path / "e"), classes=1)


def test_dry_mode_runs_every_check_on_cpu(tmp_path):
    """The real script, --dry: data, NoFrost (bf16) + resume, the cuda-graphs probe (a compiled
    attack; no CUDA graphs to see on CPU: skipped), the no-syncs probe (train.py's steady-state
    steps: no synchronize call), evaluate (clean, pgd, apgd-ce, aa), the README's ImageNet command
    (nf_resnet50, defaults, here at tiny sizes), ST and MBNAT (fp16) + resume, each through the real command lines; the verdict table last and acceptance.json."""
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, os.path.join(BENCHMARKS, "gpu_acceptance.py"), "--dry", "--budget", "1200",
                           "--work", str(tmp_path / "work")], capture_output=True, text=True, timeout=1500,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "OUT": str(out)})
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-3000:]
    result = json.loads((out / "acceptance.json").read_text())
    names = ["deepspeed", "data", "nofrost", "nofrost-resume", "cuda-graphs", "no-syncs", "evaluate", "imagenet", "st", "st-resume",
             "mbnat", "mbnat-resume"]
    assert [c["name"] for c in result["checks"]] == names
    by = {c["name"]: c for c in result["checks"]}
    assert all(c["status"] == "ran" for c in result["checks"] if c["name"] != "cuda-graphs"), result["checks"]
    graphs = by["cuda-graphs"]
    assert graphs["status"] == "skipped", graphs
    if torch.backends.cpu.get_cpu_capability() != "DEFAULT":  # else: inductor cannot build, said so
        assert graphs["detail"].startswith("no CUDA: cudaGraphLaunch not checkable; the PGD-4 attack ran compiled (4 ")
    assert by["no-syncs"]["detail"] == "3 steady-state steps after 2, 0 synchronize calls (counted: sync debug mode " \
                                       "is CUDA-only)"
    assert "bf16" in by["nofrost"]["detail"] and "val clean" in by["nofrost"]["detail"]
    assert by["nofrost-resume"]["detail"].startswith("resumed at step 4: 6 steps")
    index = sorted(os.listdir(tmp_path / "work" / "runs" / "nofrost" / "data-index"))  # the folder's scans, kept
    assert [name.split("-")[:2] for name in index] == [["train", "all"], ["val", "all"]], index
    assert all(by[m]["img_s"] > 0 and "fp16" in by[m]["detail"] for m in ("st", "mbnat"))
    assert all(f"{k} " in by["evaluate"]["detail"] for k in ("clean", "pgd", "apgd-ce", "aa"))
    auto = auto_precision(torch.device("cpu"))[0]  # bf16 on a CPU with native bf16
    assert by["imagenet"]["detail"].startswith("nf_resnet50 nofrost at 16 px, batch 16 (16 per forward x 1 "
                                               f"accumulated), backend torch: 1 steps, {auto}, compile "), by["imagenet"]
    tail = proc.stdout.strip().splitlines()
    verdict = tail.index("== verdict")
    assert [line.split()[0] for line in tail[verdict + 2:verdict + 2 + len(names)]] == names
    assert any("dry mode" in n for n in result["notes"]) and any("dali-gpu" in n for n in result["notes"])
    assert gpu_acceptance.DRY.device == "cpu" and gpu_acceptance.GPU.device == "cuda"


def test_no_syncs_probe_names_each_synchronize_and_its_site(tmp_path):
    """The dry no-syncs check with DeepSpeed's throughput timer turned back on (a
    --deepspeed-config file): its synchronize calls in the steady-state steps fail the check,
    counted per step with their DeepSpeed call site."""
    checks = {c.name: c for c in gpu_acceptance.build_checks(gpu_acceptance.DRY, str(tmp_path))}
    checks["data"].after()
    timers = tmp_path / "timers.json"
    timers.write_text(json.dumps({"timers": {"throughput": {"enabled": True}},  # and bf16, as --precision says
                                  "torch_autocast": {"enabled": True, "dtype": "bfloat16"}}))
    check = checks["no-syncs"]
    check.cmd, check.needs = check.cmd + ["--deepspeed-config", str(timers)], ()
    run_checks([check], budget=300, log=lambda _: None)
    assert check.status == "failed"
    assert re.match(r"\d+ synchronize calls in 3 steady-state steps \(\d+ per step\): \d+ x "
                    r"get_accelerator\(\)\.synchronize in deepspeed/utils/timer\.py:\w+", check.detail), check.detail


def test_no_syncs_probe_reports_the_first_error_of_a_chain(tmp_path):
    """On CUDA a sync raises inside train.py, and a later error (train.py's `finally`) may follow:
    the report keeps the first, with its traceback's tail (here a stand-in for train.py)."""
    fake = tmp_path / "train.py"
    fake.write_text("def sync():\n    raise RuntimeError('called a synchronizing CUDA operation\\nmore')\n"
                    "try:\n    sync()\nfinally:\n    raise ValueError('a later failure')\n")
    report = tmp_path / "report.json"
    code = (f"import sys; sys.path.insert(0, {BENCHMARKS!r}); import gpu_acceptance as g; g.TRAIN = {str(fake)!r}; "
            f"sys.exit(g.main(['--dry', '--probe', 'no-syncs', '--report', {str(report)!r}, '--']))")
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, timeout=120)
    with pytest.raises(RuntimeError) as failed:
        gpu_acceptance._no_syncs_detail(str(report))
    assert str(failed.value) == ("step 1: RuntimeError: called a synchronizing CUDA operation at ?; traceback tail "
                                 "(innermost first): train.py:2 sync < train.py:4 <module>")


def test_a_timed_out_check_leaves_no_process_behind(tmp_path):
    """A launcher that times out is killed with its children (the ranks would hold the GPU)."""
    import psutil

    pid_file = tmp_path / "child.pid"
    child = f"import subprocess, sys, time; p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)']); " \
            f"open({str(pid_file)!r}, 'w').write(str(p.pid)); time.sleep(120)"
    checks = [Check("launcher", [sys.executable, "-c", child])]
    run_checks(checks, budget=20, log=lambda _: None)
    assert checks[0].status == "failed" and checks[0].detail.startswith("timed out")
    pid = int(pid_file.read_text())
    def alive():
        try:
            return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    deadline = time.time() + 10
    while alive():
        assert time.time() < deadline, "the launcher's child survived"
        time.sleep(0.1)

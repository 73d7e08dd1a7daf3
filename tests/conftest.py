"""Test configuration shared by every test module.

Without CUDA, the Triton kernels run on CPU tensors through Triton's interpreter, which must
be switched on before triton is first imported: hence here, before anything else.

Inductor's cache is private to the session (unless TORCHINDUCTOR_CACHE_DIR is set): torch's FX
graph cache keys compiled CPU code without the vector ISA it was generated for, so code that a
run at another ATEN_CPU_CAPABILITY (or on another host sharing the directory) left in
/tmp/torchinductor_<user> is served here and computes NaNs and wrong gradients, or dies of
SIGBUS. Subprocesses of the tests inherit the same directory.

Torch extension builds (DeepSpeed builds its CPU communication op when a run starts) also go to a
folder of the session's own (unless TORCH_EXTENSIONS_DIR is set): the shared
~/.cache/torch_extensions may hold a build of another torch, or a lock left by a killed build, on
which torch waits forever. The modules that start DeepSpeed use the ``deepspeed_op`` fixture,
which builds the op once, before their first run (so no run's timeout pays for it).
"""
import os
import shutil
import subprocess
import sys
import tempfile

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
_PRIVATE = [os.environ.setdefault(name, tempfile.mkdtemp(prefix=f"fastnofrost-tests-{kind}-"))
            for name, kind in (("TORCHINDUCTOR_CACHE_DIR", "inductor"), ("TORCH_EXTENSIONS_DIR", "extensions"))
            if name not in os.environ]

import pytest  # noqa: E402


def pytest_unconfigure(config):
    for folder in _PRIVATE:
        shutil.rmtree(folder, ignore_errors=True)


BUILD_DEEPSPEED_OP = """
from deepspeed.accelerator import get_accelerator
builder = get_accelerator().create_op_builder("ShareMemCommBuilder")
if builder is not None:
    builder.load()
"""


@pytest.fixture(scope="session")
def deepspeed_op():
    """DeepSpeed's CPU communication op, built once in the session's extensions folder."""
    if torch.cuda.is_available():
        return
    pytest.importorskip("deepspeed")
    done = subprocess.run([sys.executable, "-c", BUILD_DEEPSPEED_OP], capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (run benchmarks/gpu_suite.sh on a GPU machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _fresh_seed(request):
    """Fresh random inputs each run, reproducible from the printed seed on failure."""
    seed = int.from_bytes(os.urandom(4), "little") % (2**31)
    torch.manual_seed(seed)
    request.node.user_properties.append(("seed", seed))
    yield


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models on 2 shared cores: one thread avoids OpenMP contention (up to 100x faster here)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

"""Test configuration shared by every test module.

Without CUDA, the Triton kernels run on CPU tensors through Triton's interpreter, which must
be switched on before triton is first imported: hence here, before anything else.

Inductor's cache is private to the session (unless TORCHINDUCTOR_CACHE_DIR is set): torch's FX
graph cache keys compiled CPU code without the vector ISA it was generated for, so code that a
run at another ATEN_CPU_CAPABILITY (or on another host sharing the directory) left in
/tmp/torchinductor_<user> is served here and computes NaNs and wrong gradients, or dies of
SIGBUS. Subprocesses of the tests inherit the same directory.

Torch extension builds (DeepSpeed builds its CPU communication op when a run starts) go to a
folder of the test environment's own, inside its Python prefix (unless TORCH_EXTENSIONS_DIR is
set): the shared ~/.cache/torch_extensions may hold a build of another torch, or a lock left by a
killed build, on which torch waits forever. Kept across sessions, so the op is built once per
environment; a stale lock there stops a run after a bounded wait, naming it
(fastnofrost/distributed.py).
"""
import os
import shutil
import sys
import tempfile

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
_INDUCTOR_CACHE = None
if "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
    _INDUCTOR_CACHE = os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="fastnofrost-tests-inductor-")
os.environ.setdefault("TORCH_EXTENSIONS_DIR", os.path.join(sys.prefix, "torch-extensions"))

import pytest  # noqa: E402


def pytest_unconfigure(config):
    if _INDUCTOR_CACHE is not None:
        shutil.rmtree(_INDUCTOR_CACHE, ignore_errors=True)


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

"""Test configuration shared by every test module.

Without CUDA, the Triton kernels run on CPU tensors through Triton's interpreter, which must
be switched on before triton is first imported: hence here, before anything else.
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402


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

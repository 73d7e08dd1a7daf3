"""Shared test helpers: tolerances per dtype, output poisoning, an op counter, train.py in-process, a
small model trained on digits."""
import contextlib
import os
import runpy
import sys

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

BENCHMARKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")

# Liger-Kernel style: tolerance per dtype of the *output*, against float64 math.
TOL = {
    torch.float64: dict(atol=1e-10, rtol=1e-10),
    torch.float32: dict(atol=1e-5, rtol=1e-4),
    torch.float16: dict(atol=2e-3, rtol=2e-3),
    torch.bfloat16: dict(atol=1.6e-2, rtol=1.6e-2),
}


def assert_close(actual, expected, dtype=None, msg=""):
    dtype = dtype or actual.dtype
    assert not actual.isnan().any(), f"{msg}: NaN in output (unwritten element or bad math)"
    torch.testing.assert_close(actual.double(), expected.double(), **TOL[dtype], msg=msg or None)


@contextlib.contextmanager
def poisoned_outputs():
    """Make every fresh allocation (torch.empty & co, C++ at::empty included) NaN-filled,
    so an output element a kernel forgets to write fails the comparison."""
    prev_det = torch.are_deterministic_algorithms_enabled()
    prev_fill = torch.utils.deterministic.fill_uninitialized_memory
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = True
    try:
        assert torch.empty(8).isnan().all(), "poisoning is not active"
        yield
    finally:
        torch.use_deterministic_algorithms(prev_det)
        torch.utils.deterministic.fill_uninitialized_memory = prev_fill


# inductor's C++ code does not build when ATen runs its non-vectorized kernels
# (ATEN_CPU_CAPABILITY=default: "'at::vec' has not been declared"): torch's limit, not ours.
needs_inductor_cpu = pytest.mark.skipif(
    torch.backends.cpu.get_cpu_capability() == "DEFAULT",
    reason="inductor's CPU code does not build at ATEN_CPU_CAPABILITY=default (torch's limit)")


class CountOps(TorchDispatchMode):
    """Counts dispatched ops by name, and convolution backwards that compute a weight gradient."""

    def __init__(self):
        super().__init__()
        self.counts = {}
        self.weight_grad_convs = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func.overloadpacket)
        self.counts[name] = self.counts.get(name, 0) + 1
        if func is torch.ops.aten.convolution_backward.default and args[10][1]:
            self.weight_grad_convs += 1
        return func(*args, **(kwargs or {}))


def run_train_here(argv) -> int:
    """fastnofrost/train.py with ``argv`` in this process, as ``__main__`` (as ``deepspeed
    fastnofrost/train.py`` runs it: nothing imports train.py); its exit status."""
    train = os.path.join(os.path.dirname(BENCHMARKS), "fastnofrost", "train.py")
    sys.argv = [train, *argv]
    try:
        runpy.run_path(train, run_name="__main__")
        return 0
    except SystemExit as done:
        return done.code if isinstance(done.code, int) else (0 if done.code is None else 1)


def train_on_digits(make, epochs, lr):
    """``make()`` trained with Adam on the digits training split (16 x 16), from a fixed seed, in
    eval mode."""
    import torch.nn.functional as F

    from fastnofrost.data import build_loader

    loader = build_loader("digits", train=True, batch_size=64, image_size=16, seed=0)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = make()
        opt = torch.optim.Adam(model.parameters(), lr)
        for epoch in range(epochs):
            loader.set_epoch(epoch)
            for x, y in loader:
                loss = F.cross_entropy(model(x), y)
                opt.zero_grad()
                loss.backward()
                opt.step()
    model.zero_grad(set_to_none=True)
    return model.eval()

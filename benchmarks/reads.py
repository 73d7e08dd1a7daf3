"""Counting host reads of tensors and device synchronizations (each a stall of the host on
CUDA): bench_overhead.py per step, and tests/host_reads.py inside the trainer's steps.

    with ReadCounter(where) as counter:   # where() -> a call-site name, or None to ignore the read
        counter.active = True
        ...
    counter.calls                          # Counter {"item in pgd.py:pgd_random_start": n, ...}
    counter.syncs                          # Counter {"get_accelerator().synchronize in timer.py:start": n, ...}

Synchronizations are counted where they are asked for, so also on CPU, where they are no-ops:
``torch.cuda.synchronize``, ``torch.cpu.synchronize`` and DeepSpeed's accelerator's
``synchronize`` (its timers call it), when DeepSpeed is installed.
"""
import collections
import importlib.util

import torch

READS = ("item", "tolist", "__bool__", "__int__", "__float__", "cpu", "numpy")


def sync_functions():
    """[(owner, attribute, label)] of every device synchronize the counter patches."""
    found = [(torch.cuda, "synchronize", "torch.cuda.synchronize"), (torch.cpu, "synchronize", "torch.cpu.synchronize")]
    if importlib.util.find_spec("deepspeed") is not None:
        from deepspeed.accelerator import get_accelerator

        found.append((type(get_accelerator()), "synchronize", "get_accelerator().synchronize"))
    return found


class ReadCounter:
    """Counts calls of the Tensor methods of READS while ``active`` (patched on enter, restored
    on exit). ``where``, called from inside the patched method (so ``sys._getframe(2)`` is the
    caller of the read), names the call site, or returns None for a read that does not count."""

    def __init__(self, where=None):
        self.where, self.active = where, False
        self.calls, self.syncs, self.originals = collections.Counter(), collections.Counter(), {}
        self.patched = []

    @property
    def count(self) -> int:
        return sum(self.calls.values())

    def __enter__(self):
        for name in READS:
            original = self.originals[name] = getattr(torch.Tensor, name)
            setattr(torch.Tensor, name, self._counting(name, original, self.calls))
        for owner, attribute, label in sync_functions():
            original = getattr(owner, attribute)
            self.patched.append((owner, attribute, original))
            setattr(owner, attribute, self._counting(label, original, self.syncs))
        return self

    def __exit__(self, *exc):
        for name, original in self.originals.items():
            setattr(torch.Tensor, name, original)
        for owner, attribute, original in self.patched:
            setattr(owner, attribute, original)

    def _counting(self, name, original, calls):
        counter = self

        def read(*args, **kwargs):
            if counter.active:
                site = counter.where() if counter.where is not None else "?"
                if site is not None:
                    calls[f"{name} in {site}"] += 1
            return original(*args, **kwargs)
        return read

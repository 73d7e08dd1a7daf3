"""Counting host reads of tensors (each a device sync on CUDA): bench_overhead.py per step, and
tests/host_reads.py inside the trainer's steps.

    with ReadCounter(where) as counter:   # where() -> a call-site name, or None to ignore the read
        counter.active = True
        ...
    counter.calls                          # Counter {"item in pgd.py:pgd_random_start": n, ...}
"""
import collections

import torch

READS = ("item", "tolist", "__bool__", "__int__", "__float__", "cpu", "numpy")


class ReadCounter:
    """Counts calls of the Tensor methods of READS while ``active`` (patched on enter, restored
    on exit). ``where``, called from inside the patched method (so ``sys._getframe(2)`` is the
    caller of the read), names the call site, or returns None for a read that does not count."""

    def __init__(self, where=None):
        self.where, self.active = where, False
        self.calls, self.originals = collections.Counter(), {}

    @property
    def count(self) -> int:
        return sum(self.calls.values())

    def __enter__(self):
        for name in READS:
            original = self.originals[name] = getattr(torch.Tensor, name)
            setattr(torch.Tensor, name, self._counting(name, original))
        return self

    def __exit__(self, *exc):
        for name, original in self.originals.items():
            setattr(torch.Tensor, name, original)

    def _counting(self, name, original):
        counter = self

        def read(tensor, *args, **kwargs):
            if counter.active:
                site = counter.where() if counter.where is not None else "?"
                if site is not None:
                    counter.calls[f"{name} in {site}"] += 1
            return original(tensor, *args, **kwargs)
        return read

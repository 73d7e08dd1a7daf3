"""Preemption: SIGTERM or SIGUSR1 (what a cluster sends before a time limit, e.g. SLURM's
``--signal``) stops a run cleanly, and ``--resume true`` continues it exactly.

The handler only records the signal; nothing is interrupted. The trainer asks
:meth:`Preemption.requested` at every optimizer-step boundary and after each epoch. Every rank
gives the same answer (each rank's signal, summed over ranks on the host through gloo, never on
the device: no device sync), so all ranks finish the same step, write one checkpoint together and
exit with :data:`EXIT_CODE`. A second signal during that checkpoint's write is recorded and
changes nothing; SIGKILL during it leaves the previous checkpoint as ``latest`` (the write is
atomic: checkpoint.py).

The handlers are installed before the data loaders start their workers, so a worker forked from
a rank (Linux's default start method) that gets the signal too (``pkill -f`` reaches them)
inherits the handler, records the signal and keeps serving batches.
"""
import signal
from typing import Optional

import torch
import torch.distributed as dist

EXIT_CODE = 75  # EX_TEMPFAIL of sysexits.h: not an error, try again (with --resume true)
SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class Preempted(Exception):
    """The run stopped on a signal after writing a checkpoint; ``--resume true`` continues it."""

    def __init__(self, signal_name: str, step: int):
        super().__init__(f"stopped by {signal_name} after step {step}: checkpoint step{step} written; "
                         f"continue with --resume true (exit code {EXIT_CODE})")
        self.signal_name, self.step = signal_name, step


class Preemption:
    """Records SIGTERM / SIGUSR1 and answers, the same on every rank, whether to stop."""

    def __init__(self):
        self.received: Optional[signal.Signals] = None
        self._previous = {s: signal.signal(s, self._record) for s in SIGNALS}
        self._ranks = dist.get_world_size() if dist.is_initialized() else 1
        self._group = None
        if self._ranks > 1 and dist.get_backend() != "gloo":  # NCCL: the flags travel on the host
            self._group = dist.new_group(backend="gloo")

    def _record(self, signum, _frame) -> None:
        if self.received is None:
            self.received = signal.Signals(signum)

    def requested(self) -> Optional[str]:
        """The name of the signal some rank received (the highest-numbered one if several), or
        None. A collective with more than one rank: every rank calls it at the same points."""
        if self._ranks == 1:
            return None if self.received is None else self.received.name
        flag = torch.tensor([0 if self.received is None else int(self.received)], dtype=torch.int64)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self._group)  # a CPU tensor: host work only
        number = int(flag[0])
        return signal.Signals(number).name if number else None

    def close(self) -> None:
        """Put the handlers that were there before back."""
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)

"""Non-finite values in a training run: the loss watch, kept on the device, and the weights check.

The step never reads the loss on the host: :meth:`LossWatch.add` records on the device whether
the loss was finite and, for the first step whose loss was not, that step's number, epoch, loss
and loss parts. :meth:`LossWatch.check` reads it once (one sync, every rank agreeing) and raises
with the message that names the step; the trainer calls it at every log boundary, at the end of
each epoch and before every save. So a run stops within ``--log-every`` steps of a non-finite
loss and never writes a checkpoint after one; :func:`check_weights` also reads the weights
before each save.

fp16 is the exception: a non-finite fp16 loss skips its batch (the loss scaler's overflow),
and that decision needs the value on the host, so an fp16 run reads it at every step (one sync
per step; at most ``MAX_SKIPPED_FP16`` batches in a row are skipped, then the run stops). A
skipped batch still counts as a micro-batch: its backward is a zero gradient (train.py's
``zero_loss``), so DeepSpeed's accumulation boundary and the run's count never drift apart.
"""
from typing import Callable, Dict, Optional

import torch

from .. import distributed

MAX_SKIPPED_FP16 = 20  # consecutive non-finite fp16 losses before giving up


class TrainingError(RuntimeError):
    """The run cannot go on (a non-finite loss or weights); the message says where and why."""


class LossWatch:
    def __init__(self, device: torch.device, skip_non_finite: bool = False, say: Callable[[str], None] = print):
        self.skip_non_finite, self.say, self.skipped = skip_non_finite, say, 0
        self.seen = torch.zeros((), dtype=torch.bool, device=device)
        self.first = torch.zeros(2, dtype=torch.int64, device=device)  # step, epoch of the first bad loss
        self.values: Optional[torch.Tensor] = None  # its loss, then each part
        self.names: tuple = ()

    def add(self, loss: torch.Tensor, parts: Dict[str, torch.Tensor], step: int, epoch: int) -> bool:
        """Record one micro-batch's loss (``step``: the optimizer step it belongs to). No sync,
        returns True; with ``skip_non_finite`` (fp16) the loss is read now and False means: skip
        this batch."""
        if self.skip_non_finite:
            return self._keep_fp16(loss, parts, step, epoch)
        values = torch.stack([loss.detach().double(), *(v.detach().double() for v in parts.values())])
        if self.values is None:
            self.names, self.values = tuple(parts), torch.zeros_like(values)
        bad = ~torch.isfinite(values[0])
        first = bad & ~self.seen
        self.first[0].masked_fill_(first, step)
        self.first[1].masked_fill_(first, epoch)
        torch.where(first, values, self.values, out=self.values)
        self.seen |= bad
        return True

    def check(self) -> None:
        """Raise :class:`TrainingError` if any rank recorded a non-finite loss (one sync)."""
        seen = self.seen.to(torch.float64)
        if distributed.world_size() > 1:
            torch.distributed.all_reduce(seen, op=torch.distributed.ReduceOp.MAX)
        if not seen.item():
            return
        if not self.seen.item():
            raise TrainingError(message("non-finite loss on another rank"))
        step, epoch = self.first.tolist()
        raise TrainingError(message(where(step, epoch, self.values.tolist(), self.names)))

    def _keep_fp16(self, loss, parts, step: int, epoch: int) -> bool:
        finite = torch.isfinite(loss.detach()).to(torch.float64)
        if distributed.world_size() > 1:
            torch.distributed.all_reduce(finite, op=torch.distributed.ReduceOp.MIN)
        if finite.item():
            self.skipped = 0
            return True
        at = where(step, epoch, [loss.item(), *(v.item() for v in parts.values())], tuple(parts))
        if self.skipped >= MAX_SKIPPED_FP16:
            raise TrainingError(message(at))
        self.skipped += 1
        self.say(f"warning: {at}; batch skipped (fp16)")
        return False


def check_weights(module: torch.nn.Module, step: int) -> None:
    """Raise :class:`TrainingError` if a parameter holds NaN or inf (one sync; before a save)."""
    params = [p.detach() for p in module.parameters()]
    if params and not bool(torch.stack([p.isfinite().all() for p in params]).all()):
        raise TrainingError(message(f"non-finite weights after step {step}"))


def where(step: int, epoch: int, values, names) -> str:
    parts = ", ".join(f"{k}={v:.4g}" for k, v in zip(names, values[1:]))
    return f"non-finite loss at step {step} (epoch {epoch + 1}): loss {values[0]:.4g} ({parts})"


def message(what: str) -> str:
    return (f"{what} on some rank; stopping without writing a checkpoint. "
            "Lower --lr, check the data, or try --precision fp32")

"""Periodic validation, as the official script does it: clean accuracy on the whole validation
set, PGD accuracy (the training radius, ``val_steps`` steps) on its first ``val_examples``.
Counts stay on the device until the end (one read); the attack is the training run's
(``compile_step``), so a compiled run reuses its attack step. A grouped model standardizes its
weights once per batch (fastnofrost/nn/grouped.py).

Fixed shapes: every batch, the last partial one included, goes through the model at the size of
the first batch (the loader's batch size; padded with copies of its last sample, which are not counted), so validation adds
no shape to the compiled code: a run compiles a fixed number of graphs (docs/design.md).
"""
import contextlib
import math

import torch

from ..attacks import pgd
from ..attacks.base import Precision
from ..nn import weight_group
from .. import distributed


def pad(x: torch.Tensor, y: torch.Tensor, size: int):
    """``(x, y)`` grown to ``size`` samples by repeating the last one (``size >= len(y)``)."""
    missing = size - len(y)
    if missing <= 0:
        return x, y
    return (torch.cat([x, x[-1:].expand(missing, *x.shape[1:])]),
            torch.cat([y, y[-1:].expand(missing)]))


def validate(module, loader, *, eps, steps, examples, precision, device, alpha=None, evaluation=None,
             compile_step=False) -> dict:
    """{'clean': %, 'robust': %, 'n_clean': n, 'n_robust': n} over every rank. ``alpha``: the
    PGD step (None: PGD's default for ``steps``); ``evaluation``: the method's evaluation
    context for the module (``Method.evaluation``: MBNAT's BN mix)."""
    was_training = module.training
    module.eval()
    limit = math.ceil(examples / distributed.world_size()) if examples else math.inf
    clean = torch.zeros((), dtype=torch.int64, device=device)
    robust = torch.zeros_like(clean)
    n_clean = n_robust = 0
    loader.set_epoch(0)
    prec = Precision(precision)
    group = weight_group(module)
    size = 0  # the first batch's size, which every batch is padded to
    try:
        with evaluation(module) if evaluation is not None else contextlib.nullcontext():
            for x, y in loader:
                n = len(y)
                size = size or n
                x, y = pad(x, y, size)
                with torch.no_grad(), group.step(cast=prec.dtype) if group is not None else contextlib.nullcontext():
                    clean += (prec.logits(module, x).argmax(1) == y)[:n].sum()
                    n_clean += n
                    take = int(min(n, limit - n_robust))
                    if take > 0:  # the whole (padded) batch is attacked: one shape; the first `take` count
                        with torch.enable_grad():
                            x_adv = pgd(module, x, y, eps, steps, alpha, precision=precision, compile_step=compile_step)
                        robust += (prec.logits(module, x_adv).argmax(1) == y)[:take].sum()
                        n_robust += take
    finally:
        module.train(was_training)
    clean, n_clean, robust, n_robust = distributed.all_sum([clean, n_clean, robust, n_robust], device)
    return {"clean": 100 * clean / max(n_clean, 1), "robust": 100 * robust / max(n_robust, 1),
            "n_clean": int(n_clean), "n_robust": int(n_robust)}

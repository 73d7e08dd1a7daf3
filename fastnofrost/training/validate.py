"""Periodic validation: clean accuracy on the whole validation set and PGD accuracy (the training
radius, ``val_steps`` steps) on its first ``val_examples``, as the official script does it; then
(:func:`strong_validation`) the validation attacks on a fixed subset spread over the set, through
the evaluation's engine (``fastnofrost.evaluate.evaluate``): each attack's accuracy, their
per-example worst case (which picks ``best_robust``), the gradient-masking warning (the
evaluation report's rule) and pyautoattack's sanity checks on one batch.
Counts stay on the device until the end (one read); the attack is the training run's
(``compile_step``), so a compiled run reuses its attack step. A grouped model standardizes its
weights once per batch (fastnofrost/nn/grouped.py).

Fixed shapes: every batch, the last partial one included, goes through the model at the size of
the first batch (the loader's batch size; padded with copies of its last sample, which are not counted), so validation adds
no shape to the compiled code: a run compiles a fixed number of graphs (docs/design.md).
"""
import contextlib
import math
from typing import List, Sequence

import torch
import torch.nn.functional as F

from ..attacks import pgd
from ..config import STRONG_MIN, STRONG_SHARE
from ..attacks.base import Precision, attack_mode
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


# ------------------------------------------------------------------ the validation attacks



def target_classes(attack) -> int:
    """How many other classes an attack runs against in turn (APGD-T: 9); 0 for the others."""
    return attack.n_target_classes if attack.targeted is True and hasattr(attack, "n_target_classes") else 0


def attack_units(attack) -> int:
    """Forward-equivalents an attack spends per example at most: 2 per gradient step (a
    forward and an input-only backward), per target and restart (APGD-T: 9 targets)."""
    return 2 * attack.steps * max(1, target_classes(attack)) * getattr(attack, "restarts", 1)


def training_units(steps: int) -> int:
    """Forward-equivalents of one NoFrost training example: a ``steps``-step attack (2 per
    step), then the clean and adversarial views' forward (1 each) and backward (2 each: input
    and weight gradients)."""
    return 2 * steps + 6


def default_strong_examples(n_train: int, steps: int, attacks: Sequence) -> int:
    """The subset whose validation attacks cost STRONG_SHARE of an epoch of ``n_train``
    examples (at least STRONG_MIN)."""
    per_example = sum(attack_units(a) for a in attacks)
    return max(STRONG_MIN, int(STRONG_SHARE * n_train * training_units(steps) / per_example))


class _Messages:
    """A logger for pyautoattack's checks: keeps what they warn."""

    def __init__(self):
        self.messages: List[str] = []

    def warning(self, message: str) -> None:
        self.messages.append(message)

    info = warning


def sanity_checks(module, x: torch.Tensor, y: torch.Tensor) -> List[str]:
    """pyautoattack's own sanity checks on one batch, their warnings: randomness (the same
    input twice gives other outputs), probabilities instead of logits, examples whose input
    gradient of the cross-entropy is exactly zero."""
    try:
        from pyautoattack import checks
    except ImportError:
        return ["pyautoattack is not installed, so its sanity checks (randomness, logits, zero gradients) did not "
                "run: pip install pyautoattack"]
    found = _Messages()
    with attack_mode(module):
        checks.check_randomized(module, x, y, bs=len(y), logger=found)
        checks.check_range_output(module, x, logger=found)
        x = x.detach().clone().requires_grad_(True)
        grad, = torch.autograd.grad(F.cross_entropy(module(x), y, reduction="sum"), x)
        checks.check_zero_gradients(grad, logger=found)
    return [f"pyautoattack's check: {m}" for m in found.messages]


def strong_validation(module, loader, names: Sequence[str], *, eps: float, steps: int, n_examples: int, seed: int,
                      precision: str, batch_size: int, compile_level: str, device, evaluation=None) -> dict:
    """The validation attacks ``names`` (PGD-``steps`` first) on the first ``n_examples`` of
    ``loader`` (this rank's share of a spread subset), as ``fastnofrost.evaluate.evaluate`` runs
    them with the same seed and examples: {'report': its report, 'warnings': the masking
    warning and the sanity checks' findings}."""
    from ..evaluate import evaluate

    was_training = module.training
    try:
        with evaluation(module) if evaluation is not None else contextlib.nullcontext():
            report = evaluate(module, loader, ["clean", *names], eps=eps, seed=seed, precision=precision,
                              batch_size=batch_size, n_examples=n_examples, compile_level=compile_level,
                              device=device, progress=False, steps=steps)
            x, y = _first_batch(loader)
            checks = sanity_checks(module, x.to(device), y.to(device))
    finally:
        module.train(was_training)
    return {"report": report, "warnings": report["warnings"] + checks}


def _first_batch(loader):
    batch = next(iter(loader))
    return batch[0], batch[-1]


def best_scores(result: dict) -> dict:
    """What a validation record is ranked by for each best_* file: clean accuracy, and for
    best_robust the validation attacks' worst case (PGD's accuracy when only PGD ran); also
    ``robust_pgd``, PGD's accuracy: the choice PGD alone would make, which the log records."""
    return {"clean": result["clean"], "robust": result.get("worst", result["robust"]), "robust_pgd": result["robust"]}


def strong_record(report: dict) -> dict:
    """The validation record's entries of a strong validation report: ``strong_n``, each
    attack's robust accuracy (``strong_<name>``), ``worst`` (per example, over all of them) and
    ``masking_gap`` (PGD's accuracy minus the worst case)."""
    rows, worst = report["attacks"], report["worst_case"]["all"]["accuracy"]
    return {"strong_n": report["n_examples"], **{f"strong_{n}": r["accuracy"] for n, r in rows.items()},
            "worst": worst, "masking_gap": rows["pgd"]["accuracy"] - worst,
            "strong_seconds": sum(r["seconds"] for r in rows.values())}

"""APGD-CE, APGD-DLR and APGD-T (Croce & Hein, ICML 2020), L-inf, on the frozen attack machinery.

Per run: random start, step size 2 * eps per sample, first step a plain sign step, then

    z      = P(x_k + eta * sign(grad f(x_k)))
    x_k+1  = P(x_k + 0.75 * (z - x_k) + 0.25 * (x_k - x_k-1))          P: eps-ball and [0, 1]

At checkpoints (window 0.22 * N iterations, shrinking by 0.03 * N down to 0.06 * N) a
sample halves its step size and restarts from its best point when the objective rose in at
most rho = 0.75 of the window's steps, or when its step size was not halved at the previous
checkpoint and its best objective did not improve since then. Restarts re-run from new random
starts on the samples not yet misclassified. APGD-T runs targeted DLR against the 2nd..(k+1)-th
most likely classes of the clean input (k = 9 as in AutoAttack). Success is misclassification,
for APGD-T too. Inputs misclassified already are returned unchanged; for the others the output
is a misclassified iterate if one was found, else the point of highest objective.
"""
from dataclasses import dataclass
from typing import Optional

import torch

from ..ops import pgd_random_start
from .base import (Attack, Precision, attack_mode, check_count, check_inputs, check_labels, check_positive,
                   check_settings, input_gradient, new_generator, per_sample)
from .losses import Objective, check_loss

MOMENTUM = 0.75


def _run(model, x, y, target, loss, eps, steps, rho, prec, generator):
    """One APGD run from a random start; returns (x_out, misclassified)."""
    objective = Objective(loss, y, target)
    lo, hi = (x - eps).clamp_(0, 1), (x + eps).clamp_(0, 1)
    x_cur = pgd_random_start(x, eps, generator=generator)
    value, logits, grad = input_gradient(model, x_cur, objective, prec)
    x_cur = x_cur.detach()
    fooled = logits.argmax(1) != y
    x_fooled, x_best, grad_best, best = x_cur, x_cur, grad, value
    x_prev, prev_value = x_cur, value
    step = torch.full_like(value, 2 * eps)
    window, window_min, shrink = max(int(0.22 * steps), 1), max(int(0.06 * steps), 1), max(int(0.03 * steps), 1)
    since_check, rises = 0, torch.zeros_like(value)
    reduced_last, best_last = torch.ones_like(fooled), best

    for i in range(steps):
        with torch.no_grad():
            z = torch.clamp(x_cur + per_sample(step, x) * grad.sign(), lo, hi)
            if i > 0:
                z = torch.clamp(x_cur + MOMENTUM * (z - x_cur) + (1 - MOMENTUM) * (x_cur - x_prev), lo, hi)
        x_prev = x_cur
        value, logits, grad = input_gradient(model, z, objective, prec)
        x_cur = z.detach()
        now = logits.argmax(1) != y
        x_fooled = torch.where(per_sample(now, x), x_cur, x_fooled)
        fooled |= now
        better = value > best
        x_best = torch.where(per_sample(better, x), x_cur, x_best)
        grad_best = torch.where(per_sample(better, x), grad, grad_best)
        best = torch.where(better, value, best)
        rises += value > prev_value
        prev_value = value
        since_check += 1
        if since_check == window:
            # rho test as in the authors' code (<=); the paper writes <
            reduce = (rises <= rho * window) | (~reduced_last & (best <= best_last))
            step = torch.where(reduce, step / 2, step)
            x_cur = torch.where(per_sample(reduce, x), x_best, x_cur)
            grad = torch.where(per_sample(reduce, x), grad_best, grad)
            reduced_last, best_last = reduce, best
            since_check, rises = 0, torch.zeros_like(value)
            window = max(window - shrink, window_min)
    return torch.where(per_sample(fooled, x), x_fooled, x_best), fooled


@dataclass(frozen=True)
class APGD(Attack):
    """APGD with ``loss`` 'ce' or 'dlr' (APGD-CE / APGD-DLR), or targeted DLR over
    ``n_target_classes`` targets (APGD-T, ``targeted=True``); ``steps`` iterations per run and
    ``restarts`` runs per target (see the module doc)."""
    name = "apgd_ce"
    menu = "apgd-ce"
    column = 2
    title = "APGD-CE"
    budget = ("apgd_steps", "steps")
    eps: float = 8 / 255
    steps: int = 100
    loss: str = "ce"
    targeted: bool = False
    n_target_classes: int = 9
    restarts: int = 1
    rho: float = 0.75
    precision: str = "fp32"
    loss_scale: Optional[float] = None
    seed: Optional[int] = None
    norm: str = "Linf"

    def __post_init__(self):
        check_settings(self.eps, self.norm, self.precision, self.loss_scale, self.seed)
        check_count(self.steps, "steps")
        check_count(self.restarts, "restarts")
        check_count(self.n_target_classes, "n_target_classes")
        check_positive(self.rho, "rho")
        check_loss(self.loss)

    def run(self, model, x: torch.Tensor, y: torch.Tensor, *, generator=None, return_success: bool = False):
        """``x_adv`` (and whether each sample is misclassified); ``generator`` instead of the
        one ``seed`` makes."""
        generator = generator if generator is not None else new_generator(self.seed)
        check_inputs(x, y)
        prec = Precision(self.precision, self.loss_scale)
        x = x.detach()
        x_adv = x.clone()
        with attack_mode(model):
            with torch.no_grad():
                clean = prec.logits(model, x)
            check_labels(y, clean.shape[1])
            fooled = clean.argmax(1) != y  # already misclassified: returned as they are
            if self.targeted:
                if self.n_target_classes > clean.shape[1] - 1:
                    raise ValueError(f"n_target_classes must be <= {clean.shape[1] - 1} (classes other than the "
                                     f"label), got {self.n_target_classes}")
                ranked = clean.argsort(1, descending=True)
                targets = [ranked[:, k] for k in range(1, self.n_target_classes + 1)]
            else:
                targets = [None]
            for target in targets:
                for _ in range(self.restarts):
                    idx = (~fooled).nonzero().squeeze(1)
                    if idx.numel() == 0:
                        break
                    out, ok = _run(model, x[idx], y[idx], None if target is None else target[idx], self.loss,
                                   self.eps, self.steps, self.rho, prec, generator)
                    x_adv[idx] = out
                    fooled[idx] = ok
        return (x_adv, fooled) if return_success else x_adv


@dataclass(frozen=True)
class APGDDLR(APGD):
    """APGD on the DLR loss."""
    name = "apgd_dlr"
    menu = "apgd-dlr"
    column = 3
    title = "APGD-DLR"
    loss: str = "dlr"


@dataclass(frozen=True)
class APGDT(APGD):
    """APGD on targeted DLR against the 9 most likely other classes (AutoAttack's APGD-T)."""
    name = "apgd_t"
    menu = "apgd-t"
    column = 4
    title = "APGD-T"
    loss: str = "dlr"
    targeted: bool = True


def apgd(model, x: torch.Tensor, y: torch.Tensor, *settings, generator=None, return_success: bool = False,
         **named):
    """:class:`APGD` with ``settings`` (its fields, positionally from ``eps, steps`` or by name)
    run once."""
    return APGD(*settings, **named).run(model, x, y, generator=generator, return_success=return_success)

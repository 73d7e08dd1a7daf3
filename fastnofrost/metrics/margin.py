"""Decision margin: the smallest L2 perturbation found that changes the model's prediction.

    margin(x) = min { ||x' - x||_2 : x' found by the search below, argmax f(x') != argmax f(x) }

The search bisects the radius of an untargeted L2 PGD (CE away from the predicted class,
:func:`~fastnofrost.metrics.l2_pgd.l2_pgd`, ``steps`` steps of size 2.5 r / steps, Madry et
al.'s rule): a probe at radius ``max_radius`` first; where it changes the prediction, each of
``search_steps`` probes at the middle of [lo, hi] moves hi down (prediction changed) or lo up.
The margin is the smallest norm of all prediction-changing points the probes returned, so it
is an upper bound of the true distance to the decision boundary, never below it (exact up to
max_radius / 2^search_steps for a linear two-class model, whose PGD path is the normal to its
boundary). Inputs whose prediction no probe changes get ``inf`` (margin above max_radius, or
missed by the attack); report them apart, do not average them.
"""
import math

import torch

from ..attacks.base import attack_mode, check_count, check_positive, predict
from .l2_pgd import l2_norms, l2_pgd

MAX_RADIUS, STEPS, SEARCH_STEPS = 10.0, 20, 10
STEP_FACTOR = 2.5


def _probe(model, x, pred, radius, steps, precision):
    """(prediction changed, ||x_adv - x||) of an L2 PGD of per-sample ``radius``."""
    x_adv = l2_pgd(model, x, pred, radius, steps, STEP_FACTOR * radius / steps, precision=precision)
    return predict(model, x_adv, precision).argmax(1) != pred, l2_norms(x_adv - x).float()


def decision_margin(model, x: torch.Tensor, *, max_radius: float = MAX_RADIUS, steps: int = STEPS,
                    search_steps: int = SEARCH_STEPS, precision: str = "fp32") -> torch.Tensor:
    """Decision margin of each input of ``x`` (see module doc); a (N,) float32 tensor, inf where
    no prediction-changing point was found within ``max_radius``."""
    check_positive(max_radius, "max_radius")
    check_count(steps, "steps")
    check_count(search_steps, "search_steps", minimum=0)
    with attack_mode(model):  # one frozen context: each weight standardized once for the whole search
        pred = predict(model, x, precision).argmax(1)
        margin = torch.full((x.shape[0],), math.inf, device=x.device)
        changed, norms = _probe(model, x, pred, torch.full_like(margin, max_radius), steps, precision)
        margin = torch.where(changed, norms, margin)
        idx = changed.nonzero().squeeze(1)
        lo, hi = torch.zeros(idx.numel(), device=x.device), torch.full((idx.numel(),), max_radius, device=x.device)
        for _ in range(search_steps if idx.numel() else 0):
            mid = (lo + hi) / 2
            changed, norms = _probe(model, x[idx], pred[idx], mid, steps, precision)
            hi, lo = torch.where(changed, mid, hi), torch.where(changed, lo, mid)
            margin[idx] = torch.where(changed, torch.minimum(norms, margin[idx]), margin[idx])
    return margin

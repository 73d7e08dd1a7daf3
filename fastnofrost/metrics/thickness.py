"""Boundary thickness (Yang et al., NeurIPS 2020, "Boundary thickness and robustness in learning
models"), per example.

For an input x predicted as class i, draw a random class j != i and let x_r be the targeted L2
PGD of x towards j (:func:`~fastnofrost.metrics.l2_pgd.l2_pgd`). On ``n_points`` evenly spaced
points x(t) = x + t (x_r - x), t = 0, 1/(n-1), ..., 1 (both ends included), take the gap
g(t) = p_i(x(t)) - p_j(x(t)) of the softmax probabilities; then

    thickness = ||x_r - x||_2 * #{t : alpha < g(t) < beta} / n_points

the length of the part of the segment where the model is between "sure of i" and "as sure of j
as of i". Defaults follow the authors' code (measure_thickness.py): alpha 0, beta 0.75,
128 points, 20 PGD steps of size 0.2 within an L2 ball of radius 1.0. (Their CIFAR-10 numbers,
eps 1.0 and step 0.2 times a "normalization factor" 5 in inputs standardized by a std of about
0.2, are the same radii in [0, 1] pixels.) Their code draws j != the label; here j != the
prediction, so that g(0) > 0 as the definition assumes.
"""
from typing import Optional

import torch

from ..attacks.base import attack_mode, check_count, check_positive, predict
from ..attacks.losses import random_targets
from .l2_pgd import l2_norms, l2_pgd

ALPHA, BETA = 0.0, 0.75
EPS, STEP, STEPS, POINTS = 1.0, 0.2, 20, 128


def boundary_thickness(model, x: torch.Tensor, *, eps: float = EPS, step: float = STEP, steps: int = STEPS,
                       alpha: float = ALPHA, beta: float = BETA, n_points: int = POINTS,
                       generator: Optional[torch.Generator] = None, precision: str = "fp32") -> torch.Tensor:
    """Boundary thickness of each input of ``x`` (see module doc); a (N,) float32 tensor."""
    check_positive(eps, "eps")
    check_positive(step, "step")
    check_count(n_points, "n_points", minimum=2)
    if not -1.0 <= alpha < beta <= 1.0:
        raise ValueError(f"alpha and beta must satisfy -1 <= alpha < beta <= 1 (bounds of a probability gap), "
                         f"got alpha={alpha}, beta={beta}")
    with attack_mode(model):  # one frozen context: each weight standardized once for the whole metric
        logits = predict(model, x, precision)
        i = logits.argmax(1)
        j = random_targets(i, logits.shape[1], generator)
        x_r = l2_pgd(model, x, i, eps, steps, step, target=j, precision=precision)
        direction = x_r - x
        inside = torch.zeros(x.shape[0], device=x.device)
        for t in torch.linspace(0.0, 1.0, n_points).tolist():
            probs = predict(model, x + t * direction, precision).softmax(1)
            gap = probs.gather(1, i[:, None]).squeeze(1) - probs.gather(1, j[:, None]).squeeze(1)
            inside += ((gap > alpha) & (gap < beta)).float()
    return l2_norms(direction).float() * inside / n_points

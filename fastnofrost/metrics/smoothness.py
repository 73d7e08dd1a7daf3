"""Model smoothness: how far the prediction moves under the PGD attack, per example.

    smoothness(x) = KL(p(x) || p(x*)) = sum_k p_k(x) (log p_k(x) - log p_k(x*))

p: softmax of the logits; x*: the L-inf PGD of (x, y) (:func:`fastnofrost.attacks.pgd`, CE,
random start; by default the evaluation's PGD-20 at eps 8/255). Lower is smoother. The mean
over examples is the reported number.
"""
from typing import Optional

import torch

from ..attacks import attack_mode, pgd
from ..attacks.losses import kl_divergence
from ..attacks.base import predict


def smoothness(model, x: torch.Tensor, y: torch.Tensor, *, eps: float = 8 / 255, steps: int = 20,
               generator: Optional[torch.Generator] = None, precision: str = "fp32") -> torch.Tensor:
    """KL(p(x) || p(x*)) of each input, x* the L-inf PGD (see module doc); a (N,) float32 tensor."""
    with attack_mode(model):  # one frozen context: each weight standardized once for the whole metric
        x_star = pgd(model, x, y, eps, steps, generator=generator, precision=precision)
        return kl_divergence(predict(model, x, precision), predict(model, x_star, precision))

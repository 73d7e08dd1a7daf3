"""RayS (Chen & Gu, KDD 2020): hard-label L-inf attack by ray search, no gradients, no scores.

Each sample keeps a sign direction d in {-1, +1}^D (start: all +1) and r, the L-inf radius at
which the ray ``clip(x + r * d, 0, 1)`` first turns adversarial (inf until one is found).
Hierarchically (1 block, then 2, 4, ... blocks of the flattened input), flip one block of d:
if the flipped ray is adversarial at the current r, binary-search its boundary on [0, r] and
keep the flip when it is closer. In [0, 1] pixel space every radius >= 1 gives the same
corner point, so the first boundary search starts from r = 1 (one query; the original's
linear search over radii 1..10 visits that same point). The binary search stops at width
1e-3 / sqrt(D) (the original's 1e-3 in L2 along the unit direction, as an L-inf radius).
A sample stops when r <= eps (success) or its ``queries`` are spent (every prediction counts,
the one on the clean input included).

Returned: ``clip(x + min(r, eps) * d, 0, 1)``: adversarial where r <= eps, else the best ray cut
at the eps-ball; inputs misclassified already are returned as they are.
"""
import math
from dataclasses import dataclass

import torch

from .base import (BLACK_BOX, Attack, Precision, attack_mode, check_count, check_inputs, check_labels,
                   check_settings, per_sample)


@dataclass(frozen=True)
class RayS(Attack):
    """RayS with a budget of ``queries`` predictions per sample (see the module doc;
    deterministic: no seed)."""
    name = "rays"
    menu = "rays"
    column = 8
    kind = BLACK_BOX
    title = "RayS"
    budget = ("rays_queries", "queries")
    eps: float = 8 / 255
    queries: int = 10000
    precision: str = "fp32"
    norm: str = "Linf"

    def __post_init__(self):
        check_settings(self.eps, self.norm, self.precision)
        check_count(self.queries, "queries")

    def run(self, model, x: torch.Tensor, y: torch.Tensor, *, return_success: bool = False):
        """``x_adv`` (and whether each sample's boundary lies within eps)."""
        eps, queries = self.eps, self.queries
        check_inputs(x, y)
        prec = Precision(self.precision)
        x = x.detach()
        n, dim = x.shape[0], x[0].numel()
        tol = 1e-3 / math.sqrt(dim)
        used = torch.zeros(n, dtype=torch.long, device=x.device)

        def along(idx, d, r):
            return (x[idx] + per_sample(r, d) * d).clamp(0, 1)

        def adversarial(idx, d, r):
            """One query per sample of ``idx``: is the ray point at radius r misclassified?"""
            used[idx] += 1
            return prec.logits(model, along(idx, d, r)).argmax(1) != y[idx]

        def search(idx, flipped):
            """Boundary of the flipped rays of samples ``idx``; keep the flips that come closer."""
            current = radius[idx]
            lo = torch.zeros_like(current)
            hi = torch.where(current.isinf(), torch.ones_like(current), current)
            ok = adversarial(idx, flipped, hi)
            while True:
                sub = (ok & (hi - lo > tol) & (used[idx] < queries)).nonzero().squeeze(1)
                if sub.numel() == 0:
                    break
                mid = (lo[sub] + hi[sub]) / 2
                adv = adversarial(idx[sub], flipped[sub], mid)
                hi[sub] = torch.where(adv, mid, hi[sub])
                lo[sub] = torch.where(adv, lo[sub], mid)
            closer = ok & (hi < current)
            radius[idx[closer]] = hi[closer]
            direction[idx[closer]] = flipped[closer]

        with attack_mode(model), torch.no_grad():
            logits = prec.logits(model, x)
            check_labels(y, logits.shape[1])
            used += 1
            radius = torch.where(logits.argmax(1) != y, 0.0, math.inf)
            direction = torch.ones_like(x)
            level, block = 0, 0
            while True:
                idx = ((radius > eps) & (used < queries)).nonzero().squeeze(1)
                if idx.numel() == 0:
                    break
                size = math.ceil(dim / 2 ** level)
                start, end = block * size, min(dim, (block + 1) * size)
                flipped = direction[idx].clone()
                flipped.view(idx.numel(), -1)[:, start:end] *= -1
                search(idx, flipped)
                block += 1
                if block == 2 ** level or end == dim:
                    level, block = level + 1, 0
            x_adv = along(slice(None), direction, radius.clamp(max=eps))
        return (x_adv, radius <= eps) if return_success else x_adv


def rays(model, x: torch.Tensor, y: torch.Tensor, *settings, return_success: bool = False, **named):
    """:class:`RayS` with ``settings`` (its fields, positionally from ``eps, queries`` or by
    name) run once."""
    return RayS(*settings, **named).run(model, x, y, return_success=return_success)

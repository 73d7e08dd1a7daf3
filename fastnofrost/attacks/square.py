"""Square Attack, L-inf (Andriushchenko et al., ECCV 2020): score-based, no gradients.

Start from vertical stripes ``clip(x + eps * s, 0, 1)`` with one random sign s per (channel,
column). Each query proposes, per sample still classified correctly, a square window at a
random position whose every channel is set to ``x +- eps`` (random sign per channel, redrawn
until the window differs from the current best), and keeps it when the margin loss
``z_y - max_{j != y} z_j`` decreases. The window side is ``round(sqrt(p * n_features / c))``
(at least 1, at most h - 1) with p halving on the paper's schedule from ``p_init`` (0.8),
rescaled to the query budget. As in the authors' code (and pyautoattack's), the window's
corner is drawn from [0, h - side) x [0, w - side), so a window never starts at the last
possible row/column (the paper's algorithm allows it; on 8x8 digits that variant is ~7 points
stronger, measured). A sample stops once misclassified (margin < 0) or out of
queries; the starting point counts as the first query.
"""
from dataclasses import dataclass
from typing import Optional

import torch

from .base import (BLACK_BOX, Attack, Precision, attack_mode, check_count, check_inputs, check_labels,
                   check_positive, check_settings, new_generator, per_sample)

# (fraction of a 10000-query budget after which, divisor of p_init) from the paper's code
P_SCHEDULE = ((10, 1), (50, 2), (200, 4), (500, 8), (1000, 16), (2000, 32), (4000, 64), (6000, 128),
              (8000, 256), (10000, 512))


def p_at(p_init: float, query: int, budget: int) -> float:
    """Fraction of pixels in the window at ``query`` (schedule rescaled to ``budget``)."""
    it = int(query / budget * 10000)
    for end, divisor in P_SCHEDULE:
        if it <= end:
            return p_init / divisor
    return p_init


def _signs(shape, generator, like):
    return (torch.randint(0, 2, shape, generator=generator) * 2 - 1).to(like)


def _margin(logits, y):
    """z_y - max_{j != y} z_j: negative once misclassified."""
    return logits.gather(1, y[:, None]).squeeze(1) - logits.scatter(1, y[:, None], float("-inf")).amax(1)


@dataclass(frozen=True)
class Square(Attack):
    """Square Attack L-inf with a budget of ``queries`` forward passes per sample (see the
    module doc); ``p_init`` in (0, 1]."""
    name = "square"
    menu = "square"
    column = 9
    kind = BLACK_BOX
    title = "Square"
    budget = ("square_queries", "queries")
    eps: float = 8 / 255
    queries: int = 5000
    p_init: float = 0.8
    precision: str = "fp32"
    seed: Optional[int] = None
    norm: str = "Linf"

    def __post_init__(self):
        check_settings(self.eps, self.norm, self.precision, seed=self.seed)
        check_count(self.queries, "queries")
        if check_positive(self.p_init, "p_init") > 1:
            raise ValueError(f"p_init must be in (0, 1], got {self.p_init}")

    def run(self, model, x: torch.Tensor, y: torch.Tensor, *, generator=None, return_success: bool = False):
        """``x_adv`` (and whether each sample is misclassified); ``generator`` instead of the
        one ``seed`` makes."""
        eps, queries = self.eps, self.queries
        generator = generator if generator is not None else new_generator(self.seed)
        check_inputs(x, y)
        if x.dim() != 4 or min(x.shape[2:]) < 2:
            raise ValueError(f"square needs images (N, C, H, W) with H, W >= 2, got {tuple(x.shape)}")
        prec = Precision(self.precision)
        n, c, h, w = x.shape
        x = x.detach()

        with attack_mode(model), torch.no_grad():
            x_best = (x + eps * _signs((n, c, 1, w), generator, x)).clamp_(0, 1)
            logits = prec.logits(model, x_best)
            check_labels(y, logits.shape[1])
            margin = _margin(logits, y)
            rows, cols = torch.arange(h, device=x.device), torch.arange(w, device=x.device)
            for query in range(1, queries):
                idx = (margin >= 0).nonzero().squeeze(1)
                if idx.numel() == 0 or eps == 0:  # (eps = 0: no window could differ from the start)
                    break
                m, xs, best = idx.numel(), x[idx], x_best[idx]
                side = min(max(round((p_at(self.p_init, query - 1, queries) * h * w) ** 0.5), 1), h - 1, w - 1)
                top = torch.randint(0, h - side, (m,), generator=generator).to(x.device)
                left = torch.randint(0, w - side, (m,), generator=generator).to(x.device)
                in_rows = (rows >= top[:, None]) & (rows < top[:, None] + side)
                in_cols = (cols >= left[:, None]) & (cols < left[:, None] + side)
                window = in_rows[:, None, :, None] & in_cols[:, None, None, :]
                candidate = best.clone()
                redraw = torch.ones(m, dtype=torch.bool, device=x.device)
                while bool(redraw.any()):
                    patch = (xs + eps * _signs((m, c, 1, 1), generator, x)).clamp_(0, 1)
                    proposal = torch.where(window, patch, best)
                    candidate = torch.where(per_sample(redraw, x), proposal, candidate)
                    redraw = ((candidate - best).abs() < 1e-7).flatten(1).all(1)
                new_margin = _margin(prec.logits(model, candidate), y[idx])
                better = new_margin < margin[idx]
                x_best[idx] = torch.where(per_sample(better, x), candidate, best)
                margin[idx] = torch.minimum(new_margin, margin[idx])
        return (x_best, margin < 0) if return_success else x_best


def square(model, x: torch.Tensor, y: torch.Tensor, *settings, generator=None, return_success: bool = False,
           **named):
    """:class:`Square` with ``settings`` (its fields, positionally from ``eps, queries`` or by
    name) run once."""
    return Square(*settings, **named).run(model, x, y, generator=generator, return_success=return_success)

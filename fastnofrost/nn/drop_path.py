"""Stochastic depth (drop-path): drop a whole residual branch per sample while training."""
import torch
import torch.nn as nn


class DropPath(nn.Module):
    """Zero the input of each sample with probability ``p`` and scale kept samples by
    ``1 / (1 - p)``; the identity in eval mode (as timm's ``DropPath``)."""

    def __init__(self, p: float):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"DropPath: p must be in [0, 1), got {p}")
        self.p = float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep).div_(keep)
        return x * mask

    def extra_repr(self) -> str:
        return f"p={self.p}"

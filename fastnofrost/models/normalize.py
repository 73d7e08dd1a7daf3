"""Input normalization as the model's first layer: models take pixels in [0, 1].

Attacks, perturbation budgets and metrics all work in pixel space; the model maps pixels to
``(x - mean) / std`` itself. ``mean`` and ``std`` are buffers (saved with the model, moved
with it); checkpoints without them keep the defaults (see ``load_checkpoint``).
"""
from typing import Optional, Sequence

import torch
import torch.nn as nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class InputNormalize(nn.Module):
    """``(x - mean) / std`` per channel. Defaults: ImageNet's statistics for 3 channels,
    0.5 / 0.5 (pixels to [-1, 1]) for any other channel count."""

    def __init__(self, in_chans: int = 3, mean: Optional[Sequence[float]] = None,
                 std: Optional[Sequence[float]] = None):
        super().__init__()
        if mean is None:
            mean = IMAGENET_MEAN if in_chans == 3 else (0.5,) * in_chans
        if std is None:
            std = IMAGENET_STD if in_chans == 3 else (0.5,) * in_chans
        mean = torch.as_tensor(mean, dtype=torch.float32).flatten()
        std = torch.as_tensor(std, dtype=torch.float32).flatten()
        for arg, value in (("mean", mean), ("std", std)):
            if value.numel() != in_chans:
                raise ValueError(f"InputNormalize: {arg} needs one value per input channel ({in_chans}), "
                                 f"got {value.tolist()}")
        if not bool((std > 0).all()):
            raise ValueError(f"InputNormalize: std must be > 0, got {std.tolist()}")
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return (x - self.mean.view(shape)) / self.std.view(shape)

    def extra_repr(self) -> str:
        return f"mean={[round(v, 4) for v in self.mean.tolist()]}, std={[round(v, 4) for v in self.std.tolist()]}"

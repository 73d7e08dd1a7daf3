"""NoFrost* (Wang et al. 2022): (L(x) + L(x_hat) + L(x*)) / 3 with x_hat the augmented view (the
loader's texture-debiased view; with DeepAugment weights given, the first half of each batch's
views also goes through DeepAugment) and x* the PGD of x."""
from dataclasses import dataclass
from typing import Optional

import torch

from .base import Method, View


@dataclass
class NoFrostStar(Method):
    name = "nofrost_star"
    needs_views = True
    deepaugment: Optional[object] = None  # a fastnofrost.data.deepaugment.DeepAugment, or None

    def augmented(self, x_aug):
        if self.deepaugment is None:
            return x_aug
        half = len(x_aug) // 2
        with torch.no_grad():
            return torch.cat([self.deepaugment(x_aug[:half]).clamp(0, 1), x_aug[half:]])

    def loss(self, forward, module, x, y, x_aug, backward):
        x_adv = self.attack(module, x, y)
        views = [View("clean", x, 1 / 3), View("aug", self.augmented(x_aug), 1 / 3), View("adv", x_adv, 1 / 3)]
        return self.weighted_views(forward, module, y, views, backward)

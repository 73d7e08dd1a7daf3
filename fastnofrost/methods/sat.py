"""SAT: PGD adversarial training (Madry et al. 2018), CE on the adversarial batch only."""
from dataclasses import dataclass

from .base import Method, View


@dataclass
class SAT(Method):
    name = "sat"

    def loss(self, forward, module, x, y, x_aug, backward):
        x_adv = self.attack(module, x, y, early_stop=self.early_stop())
        return self.weighted_views(forward, module, y, [View("adv", x_adv, 1.0)], backward)

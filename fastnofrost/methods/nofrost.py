"""NoFrost (Wang et al. 2022): (1 - lambda) L(f(x), y) + lambda L(f(x*), y), x* PGD of x;
clean and adversarial halves in one forward/backward on a normalizer-free model."""
from dataclasses import dataclass

from .base import Method, View


@dataclass
class NoFrost(Method):
    name = "nofrost"
    lam: float = 0.5

    def loss(self, forward, module, x, y, x_aug, backward):
        x_adv = self.attack(module, x, y)
        return self.weighted_views(forward, module, y, [View("clean", x, 1 - self.lam), View("adv", x_adv, self.lam)],
                                   backward)

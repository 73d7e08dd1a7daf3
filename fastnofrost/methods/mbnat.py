"""MBNAT (mixture-BN adversarial training, Xie & Yuille 2020): a dual-BN model; the attack and
the adversarial batch use the adversarial BN branch, the clean batch the clean branch;
(1 - lambda) L(x) + lambda L(x*). Evaluated at ``set_bn_mode(model, 'mix', gamma)``."""
import contextlib
from dataclasses import dataclass

from ..nn import set_bn_mode
from .base import Method, View


@dataclass
class MBNAT(Method):
    name = "mbnat"
    needs_dual_bn = True
    lam: float = 0.5
    gamma: float = 0.5  # the BN mix of evaluation: 0 the clean branch, 1 the adversarial one

    @contextlib.contextmanager
    def evaluation(self, module):
        set_bn_mode(module, "mix", self.gamma)
        try:
            yield
        finally:
            set_bn_mode(module, "clean")

    def loss(self, forward, module, x, y, x_aug, backward):
        set_bn_mode(module, "adv")
        x_adv = self.attack(module, x, y)
        views = [View("adv", x_adv, self.lam), View("clean", x, 1 - self.lam, lambda: set_bn_mode(module, "clean"))]
        return self.weighted_views(forward, module, y, views, backward)

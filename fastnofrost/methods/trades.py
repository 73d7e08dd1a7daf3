"""TRADES (Zhang et al. 2019): CE(f(x), y) + beta * KL(f(x) || f(x*)), x* maximizing the KL from a
Gaussian start (std 0.001); beta 6 as in the paper."""
from dataclasses import dataclass

from ..attacks.losses import kl_divergence
from .base import Method, StepOutput, correct, detached

TRADES_START_STD = 0.001


@dataclass
class TRADES(Method):
    name = "trades"
    separable = False  # the KL term couples the clean and adversarial logits
    beta: float = 6.0

    def loss(self, forward, module, x, y, x_aug, backward):
        x_adv = self.attack(module, x, y, loss="kl", random_start=TRADES_START_STD, early_stop=self.early_stop())
        clean, adv = self.views(forward, module, x, x_adv)
        natural = self.ce(clean, y)
        robust = kl_divergence(clean, adv).mean()
        loss = natural + self.beta * robust
        return StepOutput(loss, detached(clean=natural, kl=robust), {"clean": correct(clean, y), "adv": correct(adv, y)})

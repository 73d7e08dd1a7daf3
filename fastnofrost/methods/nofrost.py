"""NoFrost (Wang et al. 2022): (1 - lambda) L(f(x), y) + lambda L(f(x*), y), x* PGD of x;
clean and adversarial halves in one forward/backward on a normalizer-free model."""
from .base import Method, StepOutput, correct, detached


class NoFrost(Method):
    name = "nofrost"
    lam = 0.5

    def loss(self, forward, module, x, y, x_aug):
        x_adv = self.attack(module, x, y)
        clean, adv = self.views(forward, module, x, x_adv)
        l_clean, l_adv = self.ce(clean, y), self.ce(adv, y)
        loss = (1 - self.lam) * l_clean + self.lam * l_adv
        return StepOutput(loss, detached(clean=l_clean, adv=l_adv), {"clean": correct(clean, y), "adv": correct(adv, y)})

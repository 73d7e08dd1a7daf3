"""SAT: PGD adversarial training (Madry et al. 2018), CE on the adversarial batch only."""
from .base import Method, View


class SAT(Method):
    name = "sat"
    tau = None  # FAT sets its early stop

    def loss(self, forward, module, x, y, x_aug, backward):
        x_adv = self.attack(module, x, y, early_stop=self.tau)
        return self.weighted_views(forward, module, y, [View("adv", x_adv, 1.0)], backward)

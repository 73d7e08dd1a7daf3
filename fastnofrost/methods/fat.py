"""FAT: friendly adversarial training (Zhang et al. 2020): SAT on early-stopped PGD, each sample
stopping ``tau`` steps after it is first misclassified (tau 0 in the paper's code)."""
from .base import Method, StepOutput, correct, detached


class FAT(Method):
    name = "fat"
    tau = 0

    def loss(self, forward, module, x, y, x_aug):
        x_adv = self.attack(module, x, y, early_stop=self.tau)
        logits = forward(x_adv)
        loss = self.ce(logits, y)
        return StepOutput(loss, detached(adv=loss), {"adv": correct(logits, y)})

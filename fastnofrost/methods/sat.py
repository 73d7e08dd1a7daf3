"""SAT: PGD adversarial training (Madry et al. 2018), CE on the adversarial batch only."""
from .base import Method, StepOutput, correct, detached


class SAT(Method):
    name = "sat"
    tau = None  # FAT sets its early stop

    def loss(self, forward, module, x, y, x_aug):
        x_adv = self.attack(module, x, y, early_stop=self.tau)
        logits = forward(x_adv)
        loss = self.ce(logits, y)
        return StepOutput(loss, detached(adv=loss), {"adv": correct(logits, y)})

"""ST: standard training, CE on the clean batch (the clean-accuracy ceiling, no attack)."""
from .base import Method, StepOutput, correct, detached


class ST(Method):
    name = "st"

    def loss(self, forward, module, x, y, x_aug):
        logits = forward(x)
        loss = self.ce(logits, y)
        return StepOutput(loss, detached(clean=loss), {"clean": correct(logits, y)})

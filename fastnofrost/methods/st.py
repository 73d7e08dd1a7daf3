"""ST: standard training, CE on the clean batch (the clean-accuracy ceiling, no attack)."""
from dataclasses import dataclass

from .base import Method, View


@dataclass
class ST(Method):
    name = "st"

    def loss(self, forward, module, x, y, x_aug, backward):
        return self.weighted_views(forward, module, y, [View("clean", x, 1.0)], backward)

"""NoFrost* (Wang et al. 2022): (L(x) + L(x_hat) + L(x*)) / 3 with x_hat the augmented view (the
loader's texture-debiased view; with DeepAugment weights given, the first half of each batch's
views also goes through DeepAugment) and x* the PGD of x."""
import torch

from .base import Method, StepOutput, correct, detached


class NoFrostStar(Method):
    name = "nofrost_star"
    needs_views = True
    deepaugment = None  # a fastnofrost.data.deepaugment.DeepAugment, or None

    def augmented(self, x_aug):
        if self.deepaugment is None:
            return x_aug
        half = len(x_aug) // 2
        with torch.no_grad():
            return torch.cat([self.deepaugment(x_aug[:half]).clamp(0, 1), x_aug[half:]])

    def loss(self, forward, module, x, y, x_aug):
        x_adv = self.attack(module, x, y)
        clean, aug, adv = self.views(forward, module, x, self.augmented(x_aug), x_adv)
        l_clean, l_aug, l_adv = self.ce(clean, y), self.ce(aug, y), self.ce(adv, y)
        loss = (l_clean + l_aug + l_adv) / 3
        return StepOutput(loss, detached(clean=l_clean, aug=l_aug, adv=l_adv),
                          {"clean": correct(clean, y), "aug": correct(aug, y), "adv": correct(adv, y)})

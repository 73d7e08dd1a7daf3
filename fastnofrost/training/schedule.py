"""Learning-rate schedule per optimizer step: linear warm-up, then cosine to zero."""
import math


def cosine_with_warmup(total_steps: int, warmup_steps: int, steps_per_epoch: int = 1):
    """Multiplier of the peak lr at step s (a ``LambdaLR`` lambda stepped every optimizer step).
    ``steps_per_epoch`` > 1: the cosine moves once per epoch, as ``CosineAnnealingLR(T_max=epochs)``
    stepped per epoch (the official script's); the warm-up stays per step."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        done = (step - warmup_steps) // steps_per_epoch * steps_per_epoch
        progress = done / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
    return factor

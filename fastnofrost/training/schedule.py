"""Learning-rate schedule per optimizer step: linear warm-up, then cosine to zero."""
import math


def cosine_with_warmup(total_steps: int, warmup_steps: int):
    """Multiplier of the peak lr at step s (a ``LambdaLR`` lambda)."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
    return factor

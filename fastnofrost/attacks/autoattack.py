"""AutoAttack 'standard' (Croce & Hein 2020): APGD-CE, APGD-T, FAB-T, Square, each on the points
still robust.

This runs the reference implementation, the ``pyautoattack`` package (``AutoAttack(version=
'standard')``: APGD-CE 100 iterations 1 restart, APGD-T 9 targets x 100 iterations, FAB-T 9
targets, Square 5000 queries), unchanged, on our model, so its numbers are comparable with
published ones. The whole evaluation runs inside our attack mode: eval mode, frozen parameters
and weight standardization computed once per layer for the entire AutoAttack run; the package's
``torch.autograd.grad`` / ``.backward`` calls then reach the input only.
"""
from dataclasses import dataclass

import torch

from .base import ENSEMBLE, Attack, attack_mode, check_count, check_inputs, check_labels, check_settings

STANDARD_TARGETS = 9  # target classes of APGD-T and FAB-T in AutoAttack 'standard'


@dataclass(frozen=True)
class AutoAttack(Attack):
    """pyautoattack's AutoAttack 'standard' (L-inf) on the model in attack mode; ``batch_size``:
    its inner batch."""
    name = "autoattack"
    menu = "aa"
    column = 10
    kind = ENSEMBLE
    title = "AA"
    eps: float = 8 / 255
    seed: int = 0
    batch_size: int = 500
    norm: str = "Linf"

    def __post_init__(self):
        check_settings(self.eps, self.norm)
        check_count(self.seed, "seed", minimum=0)
        check_count(self.batch_size, "batch_size")

    def run(self, model, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        check_inputs(x, y)
        try:
            from pyautoattack import AutoAttack as ReferenceAutoAttack
        except ImportError as exc:
            raise ImportError("autoattack needs the pyautoattack package (pip install pyautoattack)") from exc
        with attack_mode(model):
            with torch.no_grad():
                classes = model(x[:1]).shape[1]
            check_standard_classes(classes, "this model")
            check_labels(y, classes)
            runner = ReferenceAutoAttack(model, eps=self.eps, norm="Linf", version="standard", seed=self.seed,
                                         device=x.device)
            x_adv, _ = runner.run_standard_evaluation(x.detach(), y, batch_size=self.batch_size)
        return x_adv


def autoattack(model, x: torch.Tensor, y: torch.Tensor, *settings, **named) -> torch.Tensor:
    """:class:`AutoAttack` with ``settings`` (its fields, positionally from ``eps`` or by name) run once."""
    return AutoAttack(*settings, **named).run(model, x, y)


def check_standard_classes(classes: int, what: str) -> None:
    """AutoAttack 'standard' targets STANDARD_TARGETS other classes: a ValueError for fewer."""
    if classes < STANDARD_TARGETS + 1:
        raise ValueError(f"autoattack: the 'standard' version targets {STANDARD_TARGETS} other classes (APGD-T, "
                         f"FAB-T), so it needs at least {STANDARD_TARGETS + 1} classes; {what} has {classes}")

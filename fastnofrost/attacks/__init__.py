"""Adversarial attacks, L-inf in [0, 1] pixel space, one interface: ``attack(model, x, y) -> x_adv``.

    attack = get_attack("apgd_ce", eps=8/255)       # or fastnofrost.attacks.APGD(eps=8/255)
    x_adv = attack(model, x, y)

Every attack runs in the frozen attack mode (:func:`attack_mode`): eval mode, parameters
frozen, weight standardization computed once per layer per attack, gradients w.r.t. the
input only. Training calls the fused loop :func:`pgd` directly.

| name            | attack                                                                 |
| --------------- | ---------------------------------------------------------------------- |
| ``pgd``         | PGD, random start, CE (steps 10, alpha min(1.25 eps, eps + 4/255) / K) |
| ``pgd_targeted``| PGD towards a random other class                                       |
| ``cw``          | PGD on the CW margin loss, confidence 50                               |
| ``mia``         | momentum iterative (MI-FGSM), decay 1.0, no random start                |
| ``bim``         | PGD without random start                                               |
| ``apgd_ce``     | APGD on CE (100 iterations, 1 restart)                                  |
| ``apgd_dlr``    | APGD on DLR                                                            |
| ``apgd_t``      | APGD on targeted DLR, 9 target classes                                 |
| ``square``      | Square Attack, p_init 0.8, margin loss, 5000 queries                    |
| ``rays``        | RayS, hard-label, 10000 queries                                        |
| ``autoattack``  | AutoAttack 'standard' (pyautoattack's, run in our attack mode)          |
"""
from functools import partial

from .apgd import APGD, apgd
from .autoattack import AutoAttack, autoattack
from .base import PRECISIONS, Precision, attack_mode, default_alpha
from .losses import LOSSES, Objective, attack_loss
from .pgd import PGD, pgd
from .rays import RayS, rays
from .square import Square, square

ATTACKS = {
    "pgd": PGD,
    "pgd_targeted": partial(PGD, targeted=True),
    "cw": partial(PGD, loss="cw"),
    "mia": partial(PGD, decay=1.0, random_start=False),
    "bim": partial(PGD, random_start=False),
    "apgd_ce": partial(APGD, loss="ce"),
    "apgd_dlr": partial(APGD, loss="dlr"),
    "apgd_t": partial(APGD, loss="dlr", targeted=True),
    "square": Square,
    "rays": RayS,
    "autoattack": AutoAttack,
}


def get_attack(name: str, **kwargs):
    """The attack ``name`` (see :data:`ATTACKS`) with settings ``kwargs`` overriding its defaults."""
    if name not in ATTACKS:
        raise ValueError(f"unknown attack {name!r}; available: {', '.join(ATTACKS)}")
    return ATTACKS[name](**kwargs)


__all__ = ["ATTACKS", "get_attack", "attack_mode", "Precision", "PRECISIONS", "default_alpha", "LOSSES",
           "Objective", "attack_loss", "pgd", "PGD", "apgd", "APGD", "square", "Square", "rays", "RayS",
           "autoattack", "AutoAttack"]

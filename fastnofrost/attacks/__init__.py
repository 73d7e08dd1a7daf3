"""Adversarial attacks, L-inf in [0, 1] pixel space, one interface: ``attack(model, x, y) -> x_adv``.

    attack = get_attack("apgd_ce", eps=8/255)       # or fastnofrost.attacks.APGD(eps=8/255)
    x_adv = attack(model, x, y)
    x_adv = pgd(model, x, y, 8/255, 10)             # the functional form of PGD(8/255, 10)

Each attack is one frozen dataclass (:class:`~fastnofrost.attacks.base.Attack`): its fields
with their defaults and checks, its registry name, evaluation-menu name, kind and report
title. Every attack runs in the frozen attack mode (:func:`attack_mode`): eval mode, parameters
frozen, weight standardization computed once per layer per attack, gradients w.r.t. the
input only. Training runs the fused loop through :class:`PGD` (``dataclasses.replace`` of the
run's spec for TRADES' and FAT's variants).

| name            | class          | attack                                                   |
| --------------- | -------------- | -------------------------------------------------------- |
| ``pgd``         | ``PGD``        | PGD, random start, CE                                    |
| ``pgd_targeted``| ``TargetedPGD``| PGD towards a random other class                         |
| ``cw``          | ``CW``         | PGD on the CW margin loss                                |
| ``mia``         | ``MIA``        | momentum iterative (MI-FGSM), no random start            |
| ``bim``         | ``BIM``        | PGD without random start                                 |
| ``apgd_ce``     | ``APGD``       | APGD on CE                                               |
| ``apgd_dlr``    | ``APGDDLR``    | APGD on DLR                                              |
| ``apgd_t``      | ``APGDT``      | APGD on targeted DLR                                     |
| ``square``      | ``Square``     | Square Attack, margin loss                               |
| ``rays``        | ``RayS``       | RayS, hard-label                                         |
| ``autoattack``  | ``AutoAttack`` | AutoAttack 'standard' (pyautoattack's, in our attack mode)|
"""
from .apgd import APGD, APGDDLR, APGDT, apgd
from .autoattack import AutoAttack, autoattack
from .base import (BLACK_BOX, ENSEMBLE, PRECISIONS, REGISTRY, WHITE_BOX, Attack, Precision, attack_mode,
                   default_alpha)
from .losses import LOSSES, Objective, attack_loss
from .pgd import BIM, CW, MIA, PGD, TargetedPGD, pgd
from .rays import RayS, rays
from .square import Square, square

# every declared attack: the menu's in their columns (the paper's tables' order), then the others
ATTACKS = dict(sorted(REGISTRY.items(), key=lambda item: (item[1].column is None, item[1].column or 0)))


def get_attack(name: str, **kwargs) -> Attack:
    """The attack ``name`` (see :data:`ATTACKS`) with settings ``kwargs`` overriding its defaults."""
    if name not in ATTACKS:
        raise ValueError(f"unknown attack {name!r}; available: {', '.join(ATTACKS)}")
    return ATTACKS[name](**kwargs)


__all__ = ["ATTACKS", "get_attack", "Attack", "attack_mode", "Precision", "PRECISIONS", "default_alpha", "LOSSES",
           "Objective", "attack_loss", "WHITE_BOX", "BLACK_BOX", "ENSEMBLE", "pgd", "PGD", "TargetedPGD", "CW", "MIA",
           "BIM", "apgd", "APGD", "APGDDLR", "APGDT", "square", "Square", "rays", "RayS", "autoattack", "AutoAttack"]

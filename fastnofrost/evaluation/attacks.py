"""The evaluation's attack menu, derived from the attack declarations (:mod:`fastnofrost.attacks`):
each attack with a ``menu`` name is on it, in the registry's order (the paper's columns), with
its kind and column title, its budget set by the setting its ``budget`` names.

| name           | class          | kind      | budget setting                  |
| -------------- | -------------- | --------- | ------------------------------- |
| ``clean``      | none           | clean     |                                 |
| ``pgd``        | ``PGD``        | white-box | ``steps`` (20: PGD-20)          |
| ``apgd-ce``    | ``APGD``       | white-box | ``apgd_steps``, 1 restart       |
| ``apgd-dlr``   | ``APGDDLR``    | white-box | ``apgd_steps``                  |
| ``apgd-t``     | ``APGDT``      | white-box | ``apgd_steps``, 9 targets       |
| ``mia``        | ``MIA``        | white-box | ``steps``                       |
| ``cw``         | ``CW``         | white-box | ``steps``                       |
| ``pgd-targeted``| ``TargetedPGD``| white-box | ``steps``                      |
| ``rays``       | ``RayS``       | black-box | ``rays_queries``                |
| ``square``     | ``Square``     | black-box | ``square_queries``              |
| ``aa``         | ``AutoAttack`` | ensemble  | pyautoattack's                  |

Every attack is L-inf with radius ``eps`` in [0, 1] pixel space; step sizes are the attacks'
own defaults (PGD family: min(1.25 eps, eps + 4/255) / steps).
"""
import dataclasses
from dataclasses import dataclass
from typing import Dict, List, Union

import torch

from ..attacks import APGD, ATTACKS, BLACK_BOX, ENSEMBLE, WHITE_BOX, Attack, RayS, Square

CLEAN = "clean"
MENU = {CLEAN: None, **{a.menu: a for a in ATTACKS.values() if a.menu is not None}}  # name: attack class

def _budgets() -> Dict[str, tuple]:
    """``{setting: (the attacks' field it sets, the menu names that use it)}`` from the
    declarations' ``budget = (setting, field)``, in menu order."""
    out = {}
    for name, attack in MENU.items():
        if attack is not None and attack.budget is not None:
            setting, field = attack.budget
            out.setdefault(setting, (field, []))[1].append(name)
    return {setting: (field, tuple(users)) for setting, (field, users) in out.items()}


BUDGETS = _budgets()  # iterates as the budget settings' names
DEFAULT_ATTACKS = ("clean", "pgd", "apgd-ce", "apgd-dlr", "mia", "cw", "rays", "square", "aa")
BALL_TOLERANCE = 1e-6
__all__ = ["MENU", "BUDGETS", "DEFAULT_ATTACKS", "AttackSettings", "build_attacks", "check_names", "kind", "label",
           "check_in_ball", "WHITE_BOX", "BLACK_BOX", "ENSEMBLE"]


@dataclass(frozen=True)
class AttackSettings:
    """What the menu's attacks share (radius, seed, precision, AutoAttack's inner batch, the PGD
    family's compiled step), and one field per budget setting (:data:`BUDGETS`, named by the
    attacks' ``budget``). Defaults: the paper's evaluation (PGD-20 at 8/255) and, for the other
    budgets, the attacks' own."""
    eps: float = 8 / 255
    steps: int = 20
    apgd_steps: int = APGD.steps
    rays_queries: int = RayS.queries
    square_queries: int = Square.queries
    seed: int = 0
    precision: str = "fp32"
    batch_size: int = 128
    compile_step: Union[bool, str] = False

    def kwargs(self, name: str) -> dict:
        """Settings of menu entry ``name``'s attack: each shared setting that is one of its
        fields, and its budget."""
        attack = MENU[name]
        own = {f.name for f in dataclasses.fields(attack)}
        kw = {k: v for k, v in self.as_dict().items() if k in own and k not in BUDGETS}
        if attack.budget is not None:
            setting, field = attack.budget
            kw[field] = getattr(self, setting)
        return kw

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


if set(BUDGETS) - {f.name for f in dataclasses.fields(AttackSettings)}:  # a new attack's budget setting
    raise TypeError(f"AttackSettings has no field for the budget setting(s) "
                    f"{', '.join(sorted(set(BUDGETS) - {f.name for f in dataclasses.fields(AttackSettings)}))}")


def check_names(names) -> List[str]:
    """The requested menu names, in table order, with one clear error for unknown ones."""
    names = [n.strip() for n in names if n.strip()]
    unknown = [n for n in names if n not in MENU]
    if unknown:
        raise ValueError(f"unknown attack(s) {', '.join(unknown)}; choose from {', '.join(MENU)}")
    if not names:
        raise ValueError(f"no attack given; choose from {', '.join(MENU)}")
    return [n for n in MENU if n in names]


def build_attacks(names, settings: AttackSettings) -> Dict[str, Attack]:
    """``{name: attack(model, x, y) -> x_adv}`` for the non-clean entries of ``names``."""
    return {n: MENU[n](**settings.kwargs(n)) for n in check_names(names) if n != CLEAN}


def kind(name: str) -> str:
    """'clean', 'white-box', 'black-box' or 'ensemble'."""
    return CLEAN if name == CLEAN else MENU[name].kind


def label(name: str, settings: AttackSettings) -> str:
    """Column title: PGD-20, APGD-CE, ..., AA."""
    return "Clean" if name == CLEAN else MENU[name](**settings.kwargs(name)).column_title()


def check_in_ball(name: str, x_adv: torch.Tensor, x: torch.Tensor, eps: float) -> float:
    """Largest |x_adv - x|; raises when an attack left the eps-ball or [0, 1] (the report
    would otherwise count examples outside the threat model)."""
    if x_adv.shape != x.shape:
        raise RuntimeError(f"attack {name} returned shape {tuple(x_adv.shape)} for inputs {tuple(x.shape)}")
    worst, lo, hi = torch.stack([(x_adv - x).abs().max(), x_adv.min(), x_adv.max()]).double().tolist()
    if not worst <= eps + BALL_TOLERANCE or lo < 0 or hi > 1:
        raise RuntimeError(f"attack {name} left the threat model: max |x_adv - x| = {worst:.6g} for eps "
                           f"{eps:.6g}, values in [{lo:.4g}, {hi:.4g}]")
    return worst

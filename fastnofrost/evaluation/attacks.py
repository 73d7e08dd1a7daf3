"""The evaluation's attack menu: command-line names mapped onto :mod:`fastnofrost.attacks`.

| name           | attack (``get_attack``)        | kind      | budget                          |
| -------------- | ------------------------------ | --------- | ------------------------------- |
| ``clean``      | none                           | clean     |                                 |
| ``pgd``        | ``pgd``, CE, random start      | white-box | ``steps`` (20: PGD-20)          |
| ``apgd-ce``    | ``apgd_ce``                    | white-box | ``apgd_steps`` (100), 1 restart |
| ``apgd-dlr``   | ``apgd_dlr``                   | white-box | ``apgd_steps``                  |
| ``mia``        | ``mia`` (MI-FGSM, decay 1)     | white-box | ``steps``                       |
| ``cw``         | ``cw`` (CW margin, conf. 50)   | white-box | ``steps``                       |
| ``pgd-targeted``| ``pgd_targeted`` (random class)| white-box | ``steps``                       |
| ``rays``       | ``rays``                       | black-box | ``rays_queries`` (10000)        |
| ``square``     | ``square``                     | black-box | ``square_queries`` (5000)       |
| ``aa``         | ``autoattack`` ('standard')    | ensemble  | pyautoattack's                  |

Every attack is L-inf with radius ``eps`` in [0, 1] pixel space; step sizes are the attacks'
own defaults (PGD family: min(1.25 eps, eps + 4/255) / steps).
"""
from dataclasses import dataclass, fields
from typing import Dict, List, Union

import torch

from ..attacks import APGD, RayS, Square, get_attack

CLEAN, WHITE_BOX, BLACK_BOX, ENSEMBLE = "clean", "white-box", "black-box", "ensemble"
# name: (fastnofrost.attacks name, kind), in the column order of the paper's tables
MENU = {
    "clean": (None, CLEAN),
    "pgd": ("pgd", WHITE_BOX),
    "apgd-ce": ("apgd_ce", WHITE_BOX),
    "apgd-dlr": ("apgd_dlr", WHITE_BOX),
    "mia": ("mia", WHITE_BOX),
    "cw": ("cw", WHITE_BOX),
    "pgd-targeted": ("pgd_targeted", WHITE_BOX),
    "rays": ("rays", BLACK_BOX),
    "square": ("square", BLACK_BOX),
    "aa": ("autoattack", ENSEMBLE),
}
DEFAULT_ATTACKS = ("clean", "pgd", "apgd-ce", "apgd-dlr", "mia", "cw", "rays", "square", "aa")
BALL_TOLERANCE = 1e-6


@dataclass(frozen=True)
class AttackSettings:
    """Budgets of the attack menu; the defaults are the paper's evaluation (PGD-20 at 8/255)
    and, for APGD, RayS and Square, the attack classes' own defaults."""
    eps: float = 8 / 255
    steps: int = 20
    apgd_steps: int = APGD.steps
    rays_queries: int = RayS.queries
    square_queries: int = Square.queries
    seed: int = 0
    precision: str = "fp32"
    batch_size: int = 128  # AutoAttack's inner batch
    compile_step: Union[bool, str] = False  # PGD family (pgd, mia, cw, pgd-targeted): torch.compile the step

    def kwargs(self, name: str) -> dict:
        """Keyword arguments of ``get_attack`` for menu entry ``name``."""
        family = dict(steps=self.steps, seed=self.seed, precision=self.precision, compile_step=self.compile_step)
        apgd = dict(steps=self.apgd_steps, seed=self.seed, precision=self.precision)
        kw = {
            "pgd": family, "cw": family, "pgd-targeted": family,
            "mia": dict(steps=self.steps, precision=self.precision,  # deterministic: no random start
                        compile_step=self.compile_step),
            "apgd-ce": apgd, "apgd-dlr": apgd,
            "rays": dict(queries=self.rays_queries, precision=self.precision),
            "square": dict(queries=self.square_queries, seed=self.seed, precision=self.precision),
            "aa": dict(seed=self.seed, batch_size=self.batch_size),
        }[name]
        return dict(eps=self.eps, **kw)

    def as_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def check_names(names) -> List[str]:
    """The requested menu names, in table order, with one clear error for unknown ones."""
    names = [n.strip() for n in names if n.strip()]
    unknown = [n for n in names if n not in MENU]
    if unknown:
        raise ValueError(f"unknown attack(s) {', '.join(unknown)}; choose from {', '.join(MENU)}")
    if not names:
        raise ValueError(f"no attack given; choose from {', '.join(MENU)}")
    return [n for n in MENU if n in names]


def build_attacks(names, settings: AttackSettings) -> Dict[str, object]:
    """``{name: attack(model, x, y) -> x_adv}`` for the non-clean entries of ``names``."""
    return {n: get_attack(MENU[n][0], **settings.kwargs(n)) for n in check_names(names) if n != "clean"}


def label(name: str, settings: AttackSettings) -> str:
    """Column title: PGD-20, APGD-CE, ..., AA."""
    titles = {"clean": "Clean", "pgd": f"PGD-{settings.steps}", "apgd-ce": "APGD-CE", "apgd-dlr": "APGD-DLR",
              "mia": "MIA", "cw": "CW", "pgd-targeted": "PGD-T", "rays": "RayS", "square": "Square", "aa": "AA"}
    return titles[name]


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

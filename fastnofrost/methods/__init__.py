"""Training objectives, one file each, all on the one attack loop (:mod:`fastnofrost.attacks.pgd`).

    method = build_method("nofrost", PGD(eps=8/255, steps=10), smoothing=0.1, lam=0.5)
    out = method(engine, engine.module, x, y)      # StepOutput(loss, parts, correct)

| name          | loss                                                          | settings       |
| ------------- | ------------------------------------------------------------- | -------------- |
| ``st``        | CE(x)                                                         |                |
| ``sat``       | CE(x*)                                                        |                |
| ``trades``    | CE(x) + beta KL(f(x) || f(x*)), x* maximizes the KL            | beta (6)       |
| ``fat``       | CE(x*), x* early-stopped PGD                                  | tau (0)        |
| ``trades_fat``| TRADES with FAT's early-stopped attack                        | beta, tau      |
| ``nofrost``   | (1 - lambda) CE(x) + lambda CE(x*)                            | lam (0.5)      |
| ``nofrost_star`` | (CE(x) + CE(x_hat) + CE(x*)) / 3, x_hat the augmented view | deepaugment    |
| ``mbnat``     | (1 - lambda) CE(x | clean BN) + lambda CE(x* | adv BN)        | lam, gamma     |
"""
import dataclasses

from ..attacks import PGD
from .base import EarlyStop, Method, StepOutput, View, couples_samples
from .fat import FAT
from .mbnat import MBNAT
from .nofrost import NoFrost
from .nofrost_star import NoFrostStar
from .sat import SAT
from .st import ST
from .trades import TRADES
from .trades_fat import TRADESFAT

METHODS = {m.name: m for m in (ST, SAT, TRADES, FAT, TRADESFAT, NoFrost, NoFrostStar, MBNAT)}


def build_method(name: str, attack: PGD = PGD(), smoothing: float = 0.0, **settings) -> Method:
    """Method ``name`` (see :data:`METHODS`) with training attack ``attack``; ``settings`` that
    are not its fields are ignored, so one config can carry every method's knobs."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}")
    own = {f.name for f in dataclasses.fields(METHODS[name])} - {"attack_settings", "smoothing"}
    return METHODS[name](attack, smoothing, **{k: v for k, v in settings.items() if k in own})


__all__ = ["METHODS", "build_method", "Method", "EarlyStop", "StepOutput", "View", "couples_samples"]

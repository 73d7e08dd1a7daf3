"""The evaluation's model-property metrics (:mod:`fastnofrost.metrics`) with their settings.

| name         | metric                                   | default settings                                   |
| ------------ | ---------------------------------------- | -------------------------------------------------- |
| ``thickness``| boundary thickness (Yang et al. 2020)    | L2 eps 1.0, step 0.2, 20 steps, (0, 0.75), 128 pts |
| ``margin``   | decision margin (L2, radius bisection)   | max radius 10.0, 20 steps per probe, 10 bisections |
| ``smoothness``| KL(p(x) || p(x*)), x* L-inf PGD         | the evaluation's eps and steps (PGD-20 at 8/255)   |
"""
from functools import partial
from typing import Dict, Optional

from ..attacks.base import new_generator
from ..metrics import boundary_thickness, decision_margin, smoothness
from ..metrics import margin as margin_module
from ..metrics import thickness as thickness_module
from .attacks import AttackSettings

METRICS = ("thickness", "margin", "smoothness")


def default_settings(settings: AttackSettings) -> Dict[str, dict]:
    return {
        "thickness": dict(eps=thickness_module.EPS, step=thickness_module.STEP, steps=thickness_module.STEPS,
                          alpha=thickness_module.ALPHA, beta=thickness_module.BETA, n_points=thickness_module.POINTS),
        "margin": dict(max_radius=margin_module.MAX_RADIUS, steps=margin_module.STEPS,
                       search_steps=margin_module.SEARCH_STEPS),
        "smoothness": dict(eps=settings.eps, steps=settings.steps),
    }


def check_metric_names(names) -> list:
    names = [n.strip() for n in names if n.strip()]
    names = list(METRICS) if names == ["all"] else names
    unknown = [n for n in names if n not in METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {', '.join(unknown)}; choose from {', '.join(METRICS)} or all")
    return [n for n in METRICS if n in names]


def build_metrics(names, settings: AttackSettings, overrides: Optional[Dict[str, dict]] = None):
    """``{name: (metric(model, x, y) -> (B,) tensor, its settings)}``; ``overrides`` replaces
    settings per metric, e.g. ``{"margin": {"max_radius": 2.0}}``."""
    chosen, defaults, overrides = {}, default_settings(settings), overrides or {}
    for name, kw in overrides.items():
        unknown = sorted(set(kw) - set(defaults.get(name, {})))
        if name not in METRICS or unknown:
            raise ValueError(f"metric settings: {name!r} " + (f"has no setting(s) {', '.join(unknown)}; accepted: "
                             f"{', '.join(defaults[name])}" if name in METRICS else "is not a metric"))
    for name in check_metric_names(names):
        kw = {**defaults[name], **overrides.get(name, {})}
        precision = settings.precision
        if name == "thickness":
            fn = partial(_thickness, kw=kw, seed=settings.seed, precision=precision)
        elif name == "margin":
            fn = partial(_margin, kw=kw, precision=precision)
        else:
            fn = partial(_smoothness, kw=kw, seed=settings.seed, precision=precision)
        chosen[name] = (fn, kw)
    return chosen


def _thickness(model, x, y, *, kw, seed, precision):
    return boundary_thickness(model, x, generator=new_generator(seed), precision=precision, **kw)


def _margin(model, x, y, *, kw, precision):
    return decision_margin(model, x, precision=precision, **kw)


def _smoothness(model, x, y, *, kw, seed, precision):
    return smoothness(model, x, y, generator=new_generator(seed), precision=precision, **kw)

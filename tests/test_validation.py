"""Training's validation attacks (fastnofrost/training/validate.py): the masking check on a model
built to mask gradients, pyautoattack's sanity checks, the worst case that ranks best_robust, and
the default subset's cost. (That validation equals ``python -m fastnofrost.evaluate`` on the same
attacks, seed and examples is tested end to end in tests/test_train.py.)"""
import pytest
import torch.nn as nn

from helpers import train_on_digits
from fastnofrost.evaluation.attacks import AttackSettings, build_attacks
from fastnofrost.evaluation.data import validation_loader
from fastnofrost.training.validate import (STRONG_MIN, STRONG_SHARE, attack_units, best_scores,
                                           default_strong_examples, strong_validation, training_units)

NAMES = ["pgd", "apgd-ce", "apgd-t"]
EPS = 32 / 255  # a radius at which the linear model below is not robust (the masking shows as a gap)


class ScaledLinear(nn.Module):
    """A linear classifier whose logits are multiplied by ``scale``: at 1e6 the cross-entropy
    saturates, its input gradient is exactly zero on the examples it classifies correctly and PGD
    cannot move, while the DLR loss (APGD-T) is scale-invariant: gradient masking by construction."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3 * 16 * 16, 10)
        self.scale = 1.0

    def forward(self, x):
        return self.fc(x.flatten(1)) * self.scale


@pytest.fixture(scope="module")
def linear():
    pytest.importorskip("sklearn")
    return train_on_digits(ScaledLinear, epochs=10, lr=1e-2)


def check(model, n=64):
    loader, n, _ = validation_loader("digits", backend="torch", image_size=16, batch_size=64, n_examples=n, rank=0,
                                     world=1, device="cpu", workers=0)
    out = strong_validation(model, loader, NAMES, eps=EPS, steps=10, n_examples=n, seed=0, precision="fp32",
                            batch_size=64, compile_level="none", device="cpu")
    return {k: r["accuracy"] for k, r in out["report"]["attacks"].items()}, out["report"]["worst_case"]["all"], \
        out["warnings"]


def test_masked_gradients_fail_pgd_not_apgd_t_and_the_warning_names_the_gap(linear, capsys):
    pytest.importorskip("pyautoattack")
    honest, honest_worst, honest_warnings = check(linear)
    linear.scale = 1e6
    try:
        masked, worst, warnings = check(linear)
    finally:
        linear.scale = 1.0
    print("honest:", honest, honest_worst["accuracy"], honest_warnings)
    print("masked:", masked, worst["accuracy"], warnings)
    assert honest["clean"] > 90 and honest["pgd"] < 20 and honest_warnings == []  # no masking, no sanity finding
    assert masked["clean"] == honest["clean"] and masked["pgd"] > 90  # PGD cannot move: zero gradients
    assert masked["apgd-t"] < 10 and honest["apgd-t"] < 10  # DLR does not see the scale
    gap = masked["pgd"] - worst["accuracy"]
    masking = [w for w in warnings if "gradient masking" in w]
    assert len(masking) == 1 and f"{gap:.2f} points above it" in masking[0] and "APGD-T" in masking[0]
    assert any("zero gradient" in w for w in warnings)  # pyautoattack's check_zero_gradients


def test_best_robust_follows_the_worst_case_not_pgd():
    """Two validations where PGD and the worst case disagree: best_robust ranks by the worst
    case, and the PGD ranking is kept beside it (what PGD alone would have chosen)."""
    first = {"clean": 80.0, "robust": 40.0, "worst": 30.0}
    second = {"clean": 79.0, "robust": 45.0, "worst": 20.0}  # PGD up, worst case down: masking setting in
    best = {"clean": -1.0, "robust": -1.0, "robust_pgd": -1.0}
    chosen = []
    for result in (first, second):
        scores = best_scores(result)
        improved = {k: v > best[k] for k, v in scores.items()}
        best.update({k: v for k, v in scores.items() if improved[k]})
        chosen.append(improved)
    assert chosen[1] == {"clean": False, "robust": False, "robust_pgd": True}
    assert best == {"clean": 80.0, "robust": 30.0, "robust_pgd": 45.0}
    assert best_scores({"clean": 80.0, "robust": 40.0}) == {"clean": 80.0, "robust": 40.0, "robust_pgd": 40.0}


def test_default_subset_costs_its_share_of_an_imagenet_epoch():
    """The default number of examples of the validation attacks: STRONG_SHARE of an epoch's
    training FLOPs (forward-equivalents: 2 per attack step, 3 per trained view), at least
    STRONG_MIN; the ImageNet recipe's figure is the one docs/training.md states."""
    attacks = build_attacks(NAMES, AttackSettings(eps=8 / 255, steps=10)).values()
    assert [attack_units(a) for a in attacks] == [20, 200, 1800]  # PGD-10; APGD-CE 100; APGD-T 9 targets x 100
    assert training_units(10) == 26
    n = default_strong_examples(1_281_167, 10, attacks)
    assert n == 494
    share = n * 2020 / (1_281_167 * 26)
    assert share <= STRONG_SHARE and share == pytest.approx(0.030, abs=0.001)
    assert default_strong_examples(1437, 10, attacks) == STRONG_MIN  # the digits demo: the floor

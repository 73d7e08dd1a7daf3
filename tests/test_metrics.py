"""Model-property metrics against closed forms (linear two-class classifiers) and float64 math.

For logits z = W x + b with two classes, the predicted class i and the other class j, the
logit gap s = z_i - z_j is affine in x, the softmax gap is p_i - p_j = tanh(s / 2), and every
CE gradient points along +-(w_i - w_j): L2 PGD moves on the normal of the decision boundary.
"""
import copy
import math

import pytest
import torch
import torch.nn as nn

from fastnofrost.attacks import pgd
from fastnofrost.metrics import boundary_thickness, decision_margin, l2_pgd, smoothness

SHAPE = (3, 10, 10)
BAND = math.log(7.0)  # p_i - p_j in (0, 0.75)  <=>  s in (0, 2 artanh 0.75) = (0, ln 7)


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


class TwoClassLinear(nn.Module):
    def __init__(self, w, b):
        super().__init__()
        self.fc = nn.Linear(w.shape[1], 2)
        with torch.no_grad():
            self.fc.weight.copy_(w)
            self.fc.bias.copy_(b)

    def forward(self, x):
        return self.fc(x.flatten(1))


def linear_problem(n=48, norm=10.0, gap_range=(0.1, 6.0), seed=0):
    """A linear model with ||w_0 - w_1|| = norm and inputs at logit gaps |s| spread over
    gap_range, both classes predicted; returns (model, x, |s| in float64, norm)."""
    g = torch.Generator().manual_seed(seed)
    dim = math.prod(SHAPE)
    w = torch.randn(2, dim, generator=g, dtype=torch.float64)
    w *= norm / (w[0] - w[1]).norm()
    normal = (w[0] - w[1]) / norm
    b = torch.tensor([-(w[0] - w[1]).sum().item() * 0.5, 0.0], dtype=torch.float64)
    x = 0.35 + 0.3 * torch.rand(n, dim, generator=g, dtype=torch.float64)
    s = x @ (w[0] - w[1]) + b[0] - b[1]
    lo, hi = gap_range
    target = (lo + (hi - lo) * torch.rand(n, generator=g, dtype=torch.float64)) * (torch.arange(n) % 2 * 2 - 1)
    x = x + ((target - s) / norm)[:, None] * normal  # move along the normal to the wanted gap
    model = TwoClassLinear(w.float(), b.float()).eval()
    s = x @ (w[0] - w[1]) + b[0] - b[1]
    return model, x.float().view(n, *SHAPE), s.abs(), normal


def stays_in_box(x, normal, radius):
    """The L2 ball along +-normal stays inside [0, 1] (so no clipping bends the PGD path)."""
    reach = radius * normal.abs().max().item()
    return x.min().item() - reach >= 0 and x.max().item() + reach <= 1


def thickness_closed_form(s0, norm, eps):
    """Length of {d in [0, eps] : 0 < s0 - d * norm < ln 7} (the segment x -> x + eps u)."""
    start = ((s0 - BAND) / norm).clamp(min=0.0)
    end = (s0 / norm).clamp(max=eps)
    return (end - start).clamp(min=0.0)


@pytest.mark.parametrize("n_points", [128, 1024])
def test_thickness_of_linear_classifier_matches_closed_form(n_points):
    eps, norm = 0.5, 10.0
    model, x, s0, normal = linear_problem(norm=norm)
    assert stays_in_box(x, normal, eps)
    got = boundary_thickness(model, x, eps=eps, step=0.2 * eps, steps=20, n_points=n_points)
    expected = thickness_closed_form(s0, norm, eps)
    assert got.shape == (x.shape[0],)
    assert (expected > 0).any() and (expected < eps - 1e-3).any()  # the band starts and ends inside segments
    # n points on the segment count a length within 2 grid cells of the exact one
    torch.testing.assert_close(got.double(), expected, atol=2 * eps / n_points + 1e-4, rtol=0)


def test_thickness_defaults_are_the_papers():
    model, x, s0, normal = linear_problem(n=8, norm=4.0, gap_range=(0.5, 3.0))
    assert stays_in_box(x, normal, 1.0)
    got = boundary_thickness(model, x)  # eps 1.0, step 0.2, 20 steps, (0, 0.75), 128 points
    torch.testing.assert_close(got.double(), thickness_closed_form(s0, 4.0, 1.0), atol=2 / 128 + 1e-4, rtol=0)


def test_margin_of_linear_classifier_is_the_distance_to_its_boundary():
    max_radius, norm, search_steps = 0.4, 10.0, 10
    model, x, s0, normal = linear_problem(norm=norm, gap_range=(0.1, 6.0))
    assert stays_in_box(x, normal, max_radius)
    exact = s0 / norm  # |w.x + b| / ||w|| with w = w_i - w_j
    got = decision_margin(model, x, max_radius=max_radius, steps=20, search_steps=search_steps).double()
    found = got.isfinite()
    assert found.any() and (~found).any()
    assert (got[found] >= exact[found] - 1e-5).all(), "a margin below the exact distance"
    assert (got[found] <= exact[found] + max_radius / 2 ** search_steps + 1e-5).all()
    assert (exact[~found] > max_radius - 1e-5).all() and (exact[found] < max_radius + 1e-5).all()


def test_smoothness_matches_float64_kl():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, 5))
    x, y = torch.rand(16, 3, 8, 8), torch.randint(0, 5, (16,))
    eps, steps = 0.05, 5
    got = smoothness(model, x, y, eps=eps, steps=steps, generator=torch.Generator().manual_seed(1))
    x_star = pgd(model, x, y, eps, steps, generator=torch.Generator().manual_seed(1))
    ref = copy.deepcopy(model).double()
    with torch.no_grad():
        p, q = ref(x.double()).softmax(1), ref(x_star.double()).softmax(1)
    expected = (p * (p.log() - q.log())).sum(1)
    assert got.shape == (16,) and (expected > 0).all()
    torch.testing.assert_close(got.double(), expected, atol=1e-6, rtol=1e-4)


def test_l2_pgd_stays_in_ball_and_box_with_per_sample_radii():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(48, 4))
    x, y = torch.rand(8, 3, 4, 4), torch.randint(0, 4, (8,))
    radius = torch.linspace(0.0, 2.0, 8)
    model.train()
    x_adv = l2_pgd(model, x, y, radius, 10, 0.5)
    assert model.training and all(p.requires_grad and p.grad is None for p in model.parameters())
    norms = (x_adv - x).flatten(1).norm(dim=1)
    assert (norms <= radius + 1e-5).all() and norms[0] == 0 and (norms[1:] > 0).all()
    assert x_adv.min() >= 0 and x_adv.max() <= 1


def test_bad_metric_arguments():
    model, x, _, _ = linear_problem(n=2)
    with pytest.raises(ValueError, match="alpha and beta"):
        boundary_thickness(model, x, alpha=0.8, beta=0.75)
    with pytest.raises(ValueError, match="n_points"):
        boundary_thickness(model, x, n_points=1)
    with pytest.raises(ValueError, match="eps"):
        boundary_thickness(model, x, eps=0.0)
    with pytest.raises(ValueError, match="max_radius"):
        decision_margin(model, x, max_radius=-1.0)
    with pytest.raises(ValueError, match="search_steps"):
        decision_margin(model, x, search_steps=-1)
    with pytest.raises(ValueError, match="eps"):
        l2_pgd(model, x, torch.zeros(2, dtype=torch.int64), float("inf"), 2, 0.1)

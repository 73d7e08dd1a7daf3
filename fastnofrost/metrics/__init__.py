"""Model-property metrics (NoFrost's Table 5), per example, in [0, 1] pixel space:

* :func:`boundary_thickness`: Yang et al. 2020, length of the segment towards a targeted L2 PGD
  point where the probability gap p_i - p_j lies in (alpha, beta) = (0, 0.75);
* :func:`decision_margin`: smallest L2 perturbation found that changes the prediction
  (bisection over the radius of an L2 PGD);
* :func:`smoothness`: KL(p(x) || p(x*)) with x* the L-inf PGD.

Each works on any classifier taking [0, 1] pixels and returns a (N,) tensor; the evaluation
reports means over examples. :func:`l2_pgd` is the L2 attack the first two use.
"""
from ..attacks.losses import kl_divergence
from .l2_pgd import l2_pgd
from .margin import decision_margin
from .smoothness import smoothness
from .thickness import boundary_thickness

__all__ = ["boundary_thickness", "decision_margin", "smoothness", "kl_divergence", "l2_pgd"]

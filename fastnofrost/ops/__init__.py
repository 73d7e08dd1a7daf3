"""Fused ops: the one dispatch point for every fused kernel.

Each op is a ``torch.library`` op of the ``fastnofrost`` namespace. Its schema and CPU kernel
come from the compiled extension ``fastnofrost._C`` (kernels/cpu), its CUDA kernel from Triton
(kernels/triton), and its fake kernel and autograd are registered here, once. A pure-torch
reference lives beside each op (:mod:`fastnofrost.ops.reference`) and is selected explicitly
with ``backend="reference"``; there is no silent fallback.
"""
try:
    from fastnofrost import _C  # noqa: F401  (registers schemas and CPU kernels)
except ImportError as exc:  # pragma: no cover - exercised by an install without a build
    raise ImportError(
        "fastnofrost: the compiled extension fastnofrost._C is missing or does not load "
        f"({exc}). Build it with `pip install --no-build-isolation -e .` (or `make install`) "
        "against the installed torch; see README.md."
    ) from exc

from .backend import BACKENDS, check_backend  # noqa: E402
from .ws import scaled_weight_standardization  # noqa: E402
from .ws_grouped import grouped_scaled_weight_standardization  # noqa: E402
from .pgd import pgd_random_start, pgd_step, pgd_step_  # noqa: E402

__all__ = [
    "BACKENDS",
    "check_backend",
    "scaled_weight_standardization",
    "grouped_scaled_weight_standardization",
    "pgd_step",
    "pgd_step_",
    "pgd_random_start",
]

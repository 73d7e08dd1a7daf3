"""fastnofrost: a compiled, performance-first NoFrost training engine.

Importing the package loads the compiled CPU kernels (``fastnofrost._C``) and registers the
fused ops (``torch.ops.fastnofrost.*``); see :mod:`fastnofrost.ops`.
"""
from . import ops  # noqa: F401  (loads the extension, registers kernels)

__version__ = "0.1.0"

"""Triton kernels and their launchers (installed as ``fastnofrost.triton_kernels``).

The launchers take torch tensors and are registered as the CUDA kernels of the
``fastnofrost`` ops in ``fastnofrost.ops``. On CPU tensors they run under
``TRITON_INTERPRET=1`` (set before triton is imported), which is how CI tests them.
"""

"""Backend selection and the input checks shared by the CUDA (Triton) registrations."""
import torch

BACKENDS = ("fused", "reference")

FLOAT_DTYPES = (torch.float64, torch.float32, torch.bfloat16, torch.float16)


def check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"fastnofrost: backend must be one of {BACKENDS}, got {backend!r}")
    return backend


def triton_module(name: str):
    """Import a Triton launcher module, with a clear error when Triton is unavailable."""
    try:
        import importlib

        return importlib.import_module(f"fastnofrost.triton_kernels.{name}")
    except ImportError as exc:
        raise RuntimeError(
            f"fastnofrost: CUDA tensors need the Triton kernels, but they failed to import ({exc}). "
            "Install triton (the version torch pins) or pass backend='reference'."
        ) from exc

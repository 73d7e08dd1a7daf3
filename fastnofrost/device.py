"""The device's process-wide settings, set in one place for training, evaluation and the benchmarks.

On CUDA, cuDNN benchmarks its convolution algorithms for each new shape once and keeps the
fastest (``torch.backends.cudnn.benchmark``), as the official script does: a run's shapes are
fixed (validation pads its last batch), so each is timed once. Nothing to set on CPU.

Whether this CPU computes bf16 natively (``cpu_bf16``) decides ``--precision auto`` on CPU
(``training/engine.py``): AVX512-BF16 (AMD Zen 4 and later, Intel Cooper Lake and later) or AMX
(Intel Sapphire Rapids and later), as torch's CPU probe sees them, AND oneDNN allowed to use
bf16 (``ONEDNN_MAX_CPU_ISA`` below AVX-512 forbids it). Without both, oneDNN either emulates
bf16 (AVX-512 without BF16: converts around fp32 math) or torch falls back to its own slow bf16
kernels (AVX2): slower than fp32, so auto stays fp32 there.
"""
from typing import Optional

import torch


def prepare(device: torch.device) -> torch.device:
    """Apply the settings for ``device`` (idempotent); returns it."""
    if torch.device(device).type == "cuda":
        torch.backends.cudnn.benchmark = True
    return device


def _bf16_instructions() -> list:
    """The bf16 instructions torch's CPU probe finds on this CPU."""
    return [name for name, has in (("AMX", torch.cpu._is_amx_tile_supported()),
                                   ("AVX512-BF16", torch.cpu._is_avx512_bf16_supported())) if has]


def cpu_bf16() -> Optional[str]:
    """The bf16 instructions this CPU computes with (e.g. 'AMX + AVX512-BF16'), or None when it
    has none or oneDNN may not use them."""
    found = _bf16_instructions()
    if not found or not (torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()):
        return None
    return " + ".join(found)


def cpu_bf16_missing() -> str:
    """Why ``cpu_bf16()`` is None here, in words (for the run's first line)."""
    if not _bf16_instructions():
        return (f"this CPU has no AVX512-BF16 or AMX (torch's CPU capability: "
                f"{torch.backends.cpu.get_cpu_capability()}): bf16 would be emulated")
    return "oneDNN may not use bf16 here (ONEDNN_MAX_CPU_ISA, or torch built without oneDNN)"

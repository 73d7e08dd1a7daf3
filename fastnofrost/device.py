"""The device's process-wide settings, set in one place for training, evaluation and the benchmarks.

On CUDA, cuDNN benchmarks its convolution algorithms for each new shape once and keeps the
fastest (``torch.backends.cudnn.benchmark``), as the official script does: a run's shapes are
fixed (validation pads its last batch), so each is timed once. Nothing to set on CPU.
"""
import torch


def prepare(device: torch.device) -> torch.device:
    """Apply the settings for ``device`` (idempotent); returns it."""
    if torch.device(device).type == "cuda":
        torch.backends.cudnn.benchmark = True
    return device

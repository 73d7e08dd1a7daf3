"""Attacker objectives: per-sample values of the logits that an attack maximizes.

    ce             CE(z, y)                                     untargeted
    ce, targeted   -CE(z, t)
    cw             min(max_{j != y} z_j - z_y, confidence)      Carlini-Wagner margin, untargeted
    cw, targeted   min(z_t - max_{j != t} z_j, confidence)
    dlr            -(z_y - max_{j != y} z_j) / (z_(1) - z_(3) + 1e-12)          Croce & Hein 2020
    dlr, targeted  -(z_y - z_t) / (z_(1) - (z_(3) + z_(4)) / 2 + 1e-12)
    kl             KL(softmax(r) || softmax(z))                 TRADES, r: logits of the clean input

z_(k) is the k-th largest logit. The CW confidence (50 in NoFrost's CW row) caps the margin the
attack pursues; the DLR losses are invariant to shifts and scalings of the logits.
"""
from typing import Optional, Union

import torch
import torch.nn.functional as F

from .base import check_labels

LOSSES = ("ce", "cw", "dlr", "kl")
DLR_EPS = 1e-12


def _max_other(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """max_{j != label} z_j per row."""
    return logits.scatter(1, labels[:, None], float("-inf")).amax(1)


def _picked(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return logits.gather(1, labels[:, None]).squeeze(1)


def kl_divergence(reference: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Per-sample KL(softmax(reference) || softmax(logits)), in float32 at least."""
    dtype = torch.promote_types(logits.dtype, torch.float32)
    log_p = F.log_softmax(reference.to(dtype), dim=1)
    return (log_p.exp() * (log_p - F.log_softmax(logits.to(dtype), dim=1))).sum(1)


def attack_loss(name: str, logits: torch.Tensor, y: torch.Tensor, target: Optional[torch.Tensor] = None,
                confidence: float = 50.0, reference: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Per-sample objective ``name`` (see module doc); targeted when ``target`` is given;
    ``reference`` is the clean logits the 'kl' objective moves away from."""
    if name == "kl":
        if target is not None or reference is None:
            raise ValueError("loss 'kl' is untargeted and needs the clean logits (reference=...)")
        return kl_divergence(reference, logits)
    if name == "ce":
        if target is None:
            return F.cross_entropy(logits, y, reduction="none")
        return -F.cross_entropy(logits, target, reduction="none")
    if name == "cw":
        if target is None:
            return (_max_other(logits, y) - _picked(logits, y)).clamp(max=confidence)
        return (_picked(logits, target) - _max_other(logits, target)).clamp(max=confidence)
    if name == "dlr":
        top = logits.topk(3 if target is None else 4, dim=1).values
        if target is None:
            return -(_picked(logits, y) - _max_other(logits, y)) / (top[:, 0] - top[:, 2] + DLR_EPS)
        scale = top[:, 0] - 0.5 * (top[:, 2] + top[:, 3]) + DLR_EPS
        return -(_picked(logits, y) - _picked(logits, target)) / scale
    raise ValueError(f"loss must be one of {LOSSES}, got {name!r}")


def check_loss(name: str) -> str:
    if name not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {name!r}")
    return name


def random_targets(y: torch.Tensor, num_classes: int, generator=None) -> torch.Tensor:
    """A uniformly drawn class other than y, per sample."""
    if num_classes < 2:
        raise ValueError(f"a targeted attack needs a model with >= 2 outputs, got {num_classes}")
    shift = torch.randint(1, num_classes, y.shape, generator=generator).to(y.device)
    return (y + shift) % num_classes


class Objective:
    """``attack_loss`` bound to the labels. ``target`` is None (untargeted), 'random' (one
    other class per sample, drawn at the first call) or a tensor of target classes;
    ``reference``: the clean logits of the 'kl' objective. The labels are checked against the
    model's number of outputs at the first call, before any loss (``validate=False``: not, so
    no host sync; for batches valid by construction)."""

    def __init__(self, loss: str, y: torch.Tensor, target: Union[None, str, torch.Tensor] = None,
                 confidence: float = 50.0, generator=None, reference: Optional[torch.Tensor] = None,
                 validate: bool = True):
        if isinstance(target, str) and target != "random":
            raise ValueError(f"target must be None, 'random' or a tensor of classes, got {target!r}")
        if isinstance(target, torch.Tensor) and (target.shape != y.shape or target.dtype != torch.int64):
            raise ValueError(f"target must be an int64 tensor shaped like y {tuple(y.shape)}, got "
                             f"{target.dtype} {tuple(target.shape)}")
        self.loss, self.y, self.target = check_loss(loss), y, target
        self.confidence, self.generator, self.reference = confidence, generator, reference
        self.num_classes, self.validate = None, validate

    @property
    def targeted(self) -> bool:
        return self.target is not None

    def _bind(self, num_classes: int) -> None:
        if self.validate:
            check_labels(self.y, num_classes, "y")
        if isinstance(self.target, str):  # "random"
            self.target = random_targets(self.y, num_classes, self.generator)
        elif self.target is not None:
            check_labels(self.target, num_classes, "target")
            if bool((self.target < 0).any()):
                raise ValueError("target labels must be >= 0")
        needed = {"dlr": 3 if self.target is None else 4}.get(self.loss, 2)
        if num_classes < needed:
            raise ValueError(f"loss {self.loss!r} needs a model with >= {needed} outputs, got {num_classes}")
        self.num_classes = num_classes

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        if self.num_classes is None:
            self._bind(logits.shape[1])
        return attack_loss(self.loss, logits, self.y, self.target, self.confidence, self.reference)

    def success(self, logits: torch.Tensor) -> torch.Tensor:
        """Per sample: the prediction is the target (targeted) or not the label (untargeted)."""
        pred = logits.argmax(1)
        return pred == self.target if self.targeted else pred != self.y

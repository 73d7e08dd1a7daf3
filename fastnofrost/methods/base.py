"""What every training objective shares: the attack settings, the one attack loop, the
forward of several views (one pass for normalizer-free models), the label-smoothed loss.

A method is called once per training step::

    out = method(forward, module, x, y, x_aug)   # -> StepOutput
    engine.backward(out.loss)

or, with ``--views sequential``, ``method(forward, module, x, y, x_aug, backward=fn)``: each
view's term ``fn(term, last)`` is backpropagated before the next view's forward, so at most one
view's activations are alive (about half the memory at the same math); ``out.backpropagated``
is then True and ``out.loss`` the detached sum. Only a loss that is a sum over views allows this
(``Method.separable``); TRADES' KL couples the clean and adversarial logits.

``forward`` runs the model for training (the DeepSpeed engine: train mode, its autocast);
``module`` is the bare model the attack runs on (:func:`fastnofrost.attacks.pgd`: eval mode,
frozen weights, input gradients only, under the attack ``precision``).

Views and batch statistics (docs/design.md, "No BatchNorm across views"): a model without
BatchNorm treats every sample on its own, so the clean, augmented and adversarial views of a
batch go through ONE forward and ONE backward (``torch.cat``); a model with BatchNorm gets one
forward per view, so BN never normalizes clean and adversarial samples together.
"""
import contextlib
import dataclasses
from dataclasses import dataclass, field
from typing import Callable, ClassVar, Dict, NamedTuple, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..attacks import PGD
from ..nn.dual_bn import DualBatchNorm2d


class StepOutput(NamedTuple):
    """``loss``: the scalar to backpropagate; ``parts``: its named terms (detached, for the
    log); ``correct``: per view ('clean', 'adv', ...), how many training samples the model got
    right (detached counts); ``backpropagated``: the method already ran the backward (sequential
    views), so ``loss`` is detached and only logged."""
    loss: torch.Tensor
    parts: Dict[str, torch.Tensor]
    correct: Dict[str, torch.Tensor]
    backpropagated: bool = False


class View(NamedTuple):
    """One view of a batch in a loss ``sum_v weight_v CE(f(x_v), y)``; ``before`` runs just
    before its forward (MBNAT: pick the view's BN branch)."""
    name: str
    x: torch.Tensor
    weight: float
    before: Optional[Callable[[], None]] = None


def dual_bn_problem(method: str, got: str) -> str:
    """The one sentence for a dual-BN method (``needs_dual_bn``) given another model: said by
    :meth:`Method.check_model` of a built model and by the run's config check of a model name."""
    return f"--method {method} needs a dual-BN model (a *_dualbn model, for example resnet50_dualbn), got {got}"


def couples_samples(model: nn.Module) -> bool:
    """True when a layer normalizes over the batch (BatchNorm, SyncBatchNorm, dual BN)."""
    return any(isinstance(m, (nn.modules.batchnorm._BatchNorm, DualBatchNorm2d)) for m in model.modules())


@dataclass
class Method:
    """Base of the objectives: a dataclass whose fields are the method's settings (the attack,
    label smoothing, one-pass views, then each subclass's own: lambda, beta, tau, ...).
    Subclasses set ``name`` and implement :meth:`loss`.

    ``attack_settings``: the training attack, a :class:`~fastnofrost.attacks.PGD` (radius and
    step in [0, 1] pixels; TRADES and FAT run ``dataclasses.replace`` variants of it).
    ``one_pass`` (a switch; benchmarks/bench_step.py's ``two-forwards`` ablation turns it off):
    the views of a model without BatchNorm go through one forward of their concatenation."""
    name: ClassVar[str] = "?"
    needs_views: ClassVar[bool] = False     # NoFrost*: the loader must yield (x, x_aug, y)
    needs_dual_bn: ClassVar[bool] = False   # MBNAT
    separable: ClassVar[bool] = True        # the loss is a sum over views (weighted_views): --views sequential applies
    attack_settings: PGD = field(default_factory=PGD)
    smoothing: float = 0.0
    one_pass: bool = True

    def early_stop(self) -> Optional[int]:
        """The attack's early stop (FAT's tau); None: the full PGD."""
        return None

    def evaluation(self, module: nn.Module):
        """A context in which ``module`` is evaluated as this method means it (validation);
        nothing to set by default (MBNAT mixes its BN branches)."""
        return contextlib.nullcontext()

    def check_model(self, model: nn.Module) -> None:
        if self.needs_dual_bn and not any(isinstance(m, DualBatchNorm2d) for m in model.modules()):
            raise ValueError(dual_bn_problem(self.name, f"{type(model).__name__} without DualBatchNorm2d layers"))

    def attack(self, module: nn.Module, x: torch.Tensor, y: torch.Tensor, **changes) -> torch.Tensor:
        """x* by the one PGD loop: this run's attack, with ``changes`` to its fields (TRADES' KL
        loss and Gaussian start, FAT's early stop); no host read of the batch (the loaders make
        pixels and labels valid by construction)."""
        return self.attack_variant(changes).run(module, x, y, validate=False)

    def attack_variant(self, changes: dict) -> PGD:
        """``dataclasses.replace(self.attack_settings, **changes)``, built and checked once, not
        at every step: kept until the settings object or the changes differ."""
        if not changes:
            return self.attack_settings
        kept = self.__dict__.get("_variant")
        if kept is None or kept[0] is not self.attack_settings or kept[1] != changes:
            kept = (self.attack_settings, changes, dataclasses.replace(self.attack_settings, **changes))
            self.__dict__["_variant"] = kept
        return kept[2]

    def ce(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """In float32 at least (bf16/fp16 logits of autocast), float64 for a float64 model."""
        return F.cross_entropy(logits.to(torch.promote_types(logits.dtype, torch.float32)), y,
                               label_smoothing=self.smoothing)

    def weighted_views(self, forward, module: nn.Module, y: torch.Tensor, views: Sequence[View],
                       backward=None) -> StepOutput:
        """``sum_v weight_v CE(f(x_v), y)`` with each view's CE in ``parts`` and its correct count.

        ``backward=None``: the views' logits from :meth:`views` (one forward of the concatenation
        when nothing couples samples), one loss to backpropagate. Else a forward and
        ``backward(term, last)`` per view, in order, so one view's activations are alive at a
        time; the gradient is the same sum."""
        def each_view():  # lazily: with ``backward`` a view's forward follows the previous backward
            if backward is None and not any(v.before for v in views):
                yield from self.views(forward, module, *(v.x for v in views))
                return
            for v in views:
                if v.before is not None:
                    v.before()
                yield forward(v.x)

        parts, correct_counts, terms = {}, {}, []
        for i, (view, out) in enumerate(zip(views, each_view())):
            ce = self.ce(out, y)
            term = view.weight * ce
            if backward is not None:
                backward(term, i == len(views) - 1)
                term = term.detach()
            parts[view.name], correct_counts[view.name] = ce.detach(), correct(out, y)
            terms.append(term)
        return StepOutput(sum(terms), parts, correct_counts, backpropagated=backward is not None)

    def views(self, forward, module: nn.Module, *xs: torch.Tensor):
        """Logits of each view: one forward of the concatenation when the model has no
        BatchNorm (and ``one_pass``), else one forward per view."""
        if len(xs) > 1 and self.one_pass and not couples_samples(module):
            return forward(torch.cat(xs)).split([len(x) for x in xs])
        return tuple(forward(x) for x in xs)

    def __call__(self, forward, module, x, y, x_aug=None, backward=None) -> StepOutput:
        if self.needs_views and x_aug is None:
            raise ValueError(f"method {self.name!r} needs the augmented view x_aug of each batch")
        if backward is not None and not self.separable:
            raise ValueError(f"method {self.name!r} has a loss that couples its views: it cannot backpropagate "
                             "them one at a time (views='sequential')")
        return self.loss(forward, module, x, y, x_aug, backward)

    def loss(self, forward, module, x, y, x_aug, backward) -> StepOutput:
        raise NotImplementedError


@dataclass
class EarlyStop:
    """FAT's early-stopped attack as a mixin (``class FAT(EarlyStop, SAT)``): a sample stops
    ``tau`` steps after it is first misclassified (tau 0 in the paper's code)."""
    tau: int = 0

    def early_stop(self) -> int:
        return self.tau


def correct(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (logits.detach().argmax(1) == y).sum()


def detached(**parts) -> Dict[str, torch.Tensor]:
    return {k: v.detach() for k, v in parts.items()}

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
from dataclasses import dataclass, field
from typing import Callable, ClassVar, Dict, NamedTuple, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..attacks import pgd
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


@dataclass
class AttackSettings:
    """The training attack: L-inf PGD in [0, 1] pixels (radius and step in pixel units here)."""
    eps: float = 8 / 255
    steps: int = 10
    alpha: Optional[float] = None       # None: min(1.25 eps, eps + 4/255) / steps
    precision: str = "fp32"             # the attack's autocast: fp32 / bf16 / fp16
    compile_step: object = False


def couples_samples(model: nn.Module) -> bool:
    """True when a layer normalizes over the batch (BatchNorm, SyncBatchNorm, dual BN)."""
    return any(isinstance(m, (nn.modules.batchnorm._BatchNorm, DualBatchNorm2d)) for m in model.modules())


@dataclass
class Method:
    """Base of the objectives: a dataclass whose fields are the method's settings (the attack,
    label smoothing, then each subclass's own: lambda, beta, tau, ...). Subclasses set ``name``
    and implement :meth:`loss`."""
    name: ClassVar[str] = "?"
    needs_views: ClassVar[bool] = False     # NoFrost*: the loader must yield (x, x_aug, y)
    needs_dual_bn: ClassVar[bool] = False   # MBNAT
    separable: ClassVar[bool] = True        # the loss is a sum over views (weighted_views): --views sequential applies
    attack_settings: AttackSettings = field(default_factory=AttackSettings)
    smoothing: float = 0.0

    def early_stop(self) -> Optional[int]:
        """The attack's early stop (FAT's tau); None: the full PGD."""
        return None

    def evaluation(self, module: nn.Module):
        """A context in which ``module`` is evaluated as this method means it (validation);
        nothing to set by default (MBNAT mixes its BN branches)."""
        return contextlib.nullcontext()

    def check_model(self, model: nn.Module) -> None:
        if self.needs_dual_bn and not any(isinstance(m, DualBatchNorm2d) for m in model.modules()):
            raise ValueError(f"method {self.name!r} needs a dual-BN model (a *_dualbn model)")

    def attack(self, module: nn.Module, x: torch.Tensor, y: torch.Tensor, **kw) -> torch.Tensor:
        """x* by the one PGD loop with this run's settings (``kw`` adds TRADES / FAT options);
        no host read of the batch (the loaders make pixels and labels valid by construction)."""
        a = self.attack_settings
        return pgd(module, x, y, a.eps, a.steps, a.alpha, precision=a.precision, compile_step=a.compile_step,
                   validate=False, **kw)

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

    @staticmethod
    def views(forward, module: nn.Module, *xs: torch.Tensor):
        """Logits of each view: one forward of the concatenation when the model has no
        BatchNorm, else one forward per view."""
        if len(xs) > 1 and not couples_samples(module):
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


def correct(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (logits.detach().argmax(1) == y).sum()


def detached(**parts) -> Dict[str, torch.Tensor]:
    return {k: v.detach() for k, v in parts.items()}

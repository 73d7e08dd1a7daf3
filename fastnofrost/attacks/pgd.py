"""The fused L-inf PGD loop: what training calls every step and what evaluation runs.

One loop covers PGD (uniform random start), BIM (no random start), MIA / MI-FGSM (momentum
over L1-normalized gradients, Dong et al. 2018), targeted PGD (random other class or given
targets), CW-loss PGD, and the training attacks: TRADES' KL maximization (Zhang et al. 2019,
Gaussian start of std 0.001) and FAT's early-stopped PGD (Zhang et al. 2020: a sample stops
``tau`` steps after it is first misclassified). Per step: one forward (under autocast if asked), one
``torch.autograd.grad`` w.r.t. the fp32 perturbation only, and one fused in-place step
``clip(clip(x_adv + alpha * sign(g), x - eps, x + eps), 0, 1)``. The whole attack runs in
:func:`~fastnofrost.attacks.base.attack_mode` (eval mode, frozen parameters, standardized
weights computed once), so no weight gradient is ever computed and nothing of a step's graph
outlives it: memory is flat in the number of steps.
"""
from dataclasses import dataclass
from typing import Optional, Union

import torch

from ..ops import check_backend, pgd_random_start, pgd_step_
from .base import (Attack, Precision, attack_mode, check_compile_step, check_count, check_inputs, check_positive,
                   check_settings, default_alpha, input_gradient, new_generator, per_sample)
from .losses import Objective, check_loss
from .step import step_forward


@dataclass(frozen=True)
class PGD(Attack):
    """L-inf PGD in [0, 1] pixel space: ``PGD(eps=8/255, steps=20)(model, x, y) -> x_adv``.

    Fields:
        eps, steps, alpha: radius, number of steps, step size (None:
            ``min(1.25 * eps, eps + 4/255) / steps``, the reference recipe).
        random_start: True: start at ``clip(x + U(-eps, eps), 0, 1)`` (fused op); False: at x
            (BIM); a float s: at ``clip(x + s * N(0, 1))`` to the eps-ball and [0, 1] (TRADES: 0.001).
        loss: 'ce', 'cw' (CW margin capped at ``confidence``), 'dlr', or 'kl' (TRADES: KL from
            the model's prediction on x, computed once in attack mode); see :mod:`.losses`.
        targeted: attack a random other class per sample (raise the target's score).
        decay: momentum decay for MIA (``g <- decay * g + grad / |grad|_1``, step on sign(g)).
        early_stop: FAT's tau: a sample takes ``tau`` more steps after the first step at which it
            is misclassified (judged on the logits of that step's forward), then stays put; the
            loop ends when no sample moves.
        precision: 'fp32', 'bf16' or 'fp16' (autocast; fp16 with ``loss_scale``, default 1024).
        compile_step: torch.compile the model forward of a step (True, or a mode such as
            'reduce-overhead' for CUDA graphs); the weights are still standardized once per
            attack (see :mod:`fastnofrost.attacks.step`).
        seed: seed of the random start and targets (None: torch's default generator).

    Switches (ablations; the defaults are the engine: benchmarks/bench_step.py measures each):
        cache_weights: standardize each weight once per attack (False: at every step).
        weight_grads: also differentiate every parameter and standardized weight at every step,
            dropping those gradients, as an attack with unfrozen parameters would.
        backend: the random start's and step's op backend, 'fused' or 'reference' (eager torch).
    """
    name = "pgd"
    menu = "pgd"
    column = 1
    title = "PGD-{steps}"
    budget = ("steps", "steps")
    eps: float = 8 / 255
    steps: int = 10
    alpha: Optional[float] = None
    random_start: Union[bool, float] = True
    loss: str = "ce"
    targeted: bool = False
    decay: Optional[float] = None
    confidence: float = 50.0
    early_stop: Optional[int] = None
    precision: str = "fp32"
    loss_scale: Optional[float] = None
    compile_step: Union[bool, str] = False
    seed: Optional[int] = None
    norm: str = "Linf"
    cache_weights: bool = True
    weight_grads: bool = False
    backend: str = "fused"

    def __post_init__(self):
        check_settings(self.eps, self.norm, self.precision, self.loss_scale, self.seed)
        check_count(self.steps, "steps")
        if self.alpha is not None:
            check_positive(self.alpha, "alpha")
        if self.decay is not None:
            check_positive(self.decay, "decay")
        if self.early_stop is not None:
            check_count(self.early_stop, "early_stop (FAT's tau)", minimum=0)
        check_start(self.random_start)
        check_loss(self.loss)
        check_compile_step(self.compile_step)
        for switch in ("targeted", "cache_weights", "weight_grads"):
            if not isinstance(getattr(self, switch), bool):
                raise ValueError(f"{switch} must be True or False, got {getattr(self, switch)!r}")
        check_backend(self.backend)

    def run(self, model, x: torch.Tensor, y: torch.Tensor, *, target: Union[None, str, torch.Tensor] = None,
            generator=None, return_success: bool = False, validate: bool = True):
        """``x_adv`` (and per-sample success of it if asked: one extra forward).

        ``target``: None (``targeted`` decides), 'random' or a tensor of target classes;
        ``generator``: a torch.Generator (CPU) instead of the one ``seed`` makes; ``validate``:
        read x and y on the host once (one sync) to check the pixel range and the labels; the
        training methods pass False, as their loaders make batches valid by construction
        (types, shapes and devices are checked either way)."""
        eps, steps = self.eps, self.steps
        alpha = default_alpha(eps, steps) if self.alpha is None else self.alpha
        generator = generator if generator is not None else new_generator(self.seed)
        check_inputs(x, y, values=validate)
        prec = Precision(self.precision, self.loss_scale)
        target = "random" if target is None and self.targeted else target
        objective = Objective(self.loss, y, target, self.confidence, generator, validate=validate)

        with attack_mode(model, cache_weights=self.cache_weights, weight_grads=self.weight_grads) as weights:
            forward = step_forward(model, self.compile_step, prec, x.device.type, self.cache_weights)
            x = x.detach()
            if self.loss == "kl":
                with torch.no_grad():
                    objective.reference = prec.logits(forward, x, keep=True)
            x_adv = _start(x, eps, self.random_start, generator, self.backend)
            momentum = torch.zeros_like(x) if self.decay is not None else None
            budget = torch.full_like(y, self.early_stop) if self.early_stop is not None else None
            for _ in range(steps):
                _, logits, grad = input_gradient(forward, x_adv, objective, prec, also=weights)
                with torch.no_grad():
                    if momentum is not None:
                        l1 = grad.abs().flatten(1).sum(1).clamp_min(1e-12)
                        grad = momentum.mul_(self.decay).add_(grad / per_sample(l1, grad))
                    if budget is not None:
                        moving = _early_stop(budget, logits.argmax(1) != y)
                        if not bool(moving.any()):
                            break
                        grad.mul_(per_sample(moving, grad))  # sign(0) = 0: a stopped sample stays
                    pgd_step_(x_adv, grad, x, alpha, eps, backend=self.backend)
            x_adv = x_adv.detach()
            if not return_success:
                return x_adv
            with torch.no_grad():
                return x_adv, objective.success(prec.logits(forward, x_adv))


@dataclass(frozen=True)
class TargetedPGD(PGD):
    """PGD towards a random other class per sample."""
    name = "pgd_targeted"
    menu = "pgd-targeted"
    column = 7
    title = "PGD-T"
    targeted: bool = True


@dataclass(frozen=True)
class CW(PGD):
    """PGD on the CW margin loss (confidence 50)."""
    name = "cw"
    menu = "cw"
    column = 6
    title = "CW"
    loss: str = "cw"


@dataclass(frozen=True)
class MIA(PGD):
    """Momentum iterative attack (MI-FGSM, Dong et al. 2018): decay 1.0, no random start."""
    name = "mia"
    menu = "mia"
    column = 5
    title = "MIA"
    random_start: Union[bool, float] = False
    decay: Optional[float] = 1.0


@dataclass(frozen=True)
class BIM(PGD):
    """PGD without random start (basic iterative method)."""
    name = "bim"
    menu = column = None
    title = "BIM-{steps}"
    random_start: Union[bool, float] = False


def pgd(model, x: torch.Tensor, y: torch.Tensor, *settings, target: Union[None, str, torch.Tensor] = None,
        generator=None, return_success: bool = False, validate: bool = True, **named):
    """:class:`PGD` with ``settings`` (its fields, positionally from ``eps, steps, alpha`` or by
    name) run once: ``pgd(model, x, y, 8/255, 10, loss="cw")``; the options are :meth:`PGD.run`'s."""
    return PGD(*settings, **named).run(model, x, y, target=target, generator=generator,
                                       return_success=return_success, validate=validate)


def check_start(random_start) -> None:
    if not isinstance(random_start, bool) and not (isinstance(random_start, float) and random_start > 0):
        raise ValueError(f"random_start must be True, False or a Gaussian std > 0 (float), got {random_start!r}")


def _start(x, eps, random_start, generator, backend):
    if random_start is True:
        return pgd_random_start(x, eps, generator=generator, backend=backend)
    if random_start is False:
        return x.clone()
    device = generator.device if generator is not None else x.device
    noise = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=device).to(x.device)
    # a step of size 0 is the projection onto the eps-ball and [0, 1], by the fused op
    return pgd_step_(x + random_start * noise, noise, x, 0.0, eps, backend=backend)


def _early_stop(budget: torch.Tensor, wrong: torch.Tensor) -> torch.Tensor:
    """FAT's per-sample stopping rule, one step: a misclassified sample spends one unit of its
    budget; one whose budget is spent (-1 after the tau extra steps) stops. Returns who moves."""
    budget.sub_((wrong & (budget >= 0)).long())
    return budget >= 0

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
from dataclasses import asdict, dataclass
from typing import Optional, Union

import torch

from ..ops import pgd_random_start, pgd_step_
from .base import (Precision, attack_mode, check_compile_step, check_count, check_eps, check_inputs,
                     check_positive, check_settings, compiled, default_alpha, input_gradient, new_generator,
                     per_sample)
from .losses import Objective, check_loss


def pgd(model, x: torch.Tensor, y: torch.Tensor, eps: float = 8 / 255, steps: int = 10,
        alpha: Optional[float] = None, *, random_start: Union[bool, float] = True, loss: str = "ce",
        target: Union[None, str, torch.Tensor] = None, decay: Optional[float] = None, confidence: float = 50.0,
        early_stop: Optional[int] = None, precision: str = "fp32", loss_scale: Optional[float] = None,
        compile_step=False, generator=None, return_success: bool = False, validate: bool = True):
    """L-inf PGD in [0, 1] pixel space; returns ``x_adv`` (and per-sample success if asked).

    Args:
        eps, steps, alpha: radius, number of steps, step size (default
            ``min(1.25 * eps, eps + 4/255) / steps``, the reference recipe).
        random_start: True: start at ``clip(x + U(-eps, eps), 0, 1)`` (fused op); False: at x
            (BIM); a float s: at ``clip(x + s * N(0, 1))`` to the eps-ball and [0, 1] (TRADES: 0.001).
        loss: 'ce', 'cw' (CW margin capped at ``confidence``), 'dlr', or 'kl' (TRADES: KL from
            the model's prediction on x, computed once in attack mode); see :mod:`.losses`.
        target: None (untargeted), 'random' (a random other class per sample) or a tensor of
            target classes; targeted attacks step to raise the target's score.
        decay: momentum decay for MIA (``g <- decay * g + grad / |grad|_1``, step on sign(g)).
        early_stop: FAT's tau: a sample takes ``tau`` more steps after the first step at which it
            is misclassified (judged on the logits of that step's forward), then stays put; the
            loop ends when no sample moves.
        precision: 'fp32', 'bf16' or 'fp16' (autocast; fp16 with ``loss_scale``, default 1024).
        compile_step: torch.compile the model forward of a step (True, or a mode such as
            'reduce-overhead' for CUDA graphs); the weights are still standardized once per
            attack (see :func:`~fastnofrost.attacks.base.compiled`).
        generator: torch.Generator (CPU) for the random start and random targets.
        return_success: also return success of the final x_adv (one extra forward).
        validate: read x and y on the host once (one sync) to check the pixel range and the
            labels; the training methods pass False, as their loaders make batches valid by
            construction (types, shapes and devices are checked either way).
    """
    eps, steps = check_eps(eps), check_count(steps, "steps")
    alpha = default_alpha(eps, steps) if alpha is None else check_positive(alpha, "alpha")
    if decay is not None:
        check_positive(decay, "decay")
    if early_stop is not None:
        check_count(early_stop, "early_stop (FAT's tau)", minimum=0)
    check_start(random_start)
    check_compile_step(compile_step)
    check_inputs(x, y, values=validate)
    prec = Precision(precision, loss_scale)
    objective = Objective(loss, y, target, confidence, generator, validate=validate)

    with attack_mode(model):
        forward = compiled(model, compile_step, prec, x.device.type)
        x = x.detach()
        if loss == "kl":
            with torch.no_grad():
                objective.reference = prec.logits(forward, x)
        x_adv = _start(x, eps, random_start, generator)
        momentum = torch.zeros_like(x) if decay is not None else None
        budget = torch.full_like(y, early_stop) if early_stop is not None else None
        for _ in range(steps):
            _, logits, grad = input_gradient(forward, x_adv, objective, prec)
            with torch.no_grad():
                if momentum is not None:
                    l1 = grad.abs().flatten(1).sum(1).clamp_min(1e-12)
                    grad = momentum.mul_(decay).add_(grad / per_sample(l1, grad))
                if budget is not None:
                    moving = _early_stop(budget, logits.argmax(1) != y)
                    if not bool(moving.any()):
                        break
                    grad.mul_(per_sample(moving, grad))  # sign(0) = 0: a stopped sample stays
                pgd_step_(x_adv, grad, x, alpha, eps)
        x_adv = x_adv.detach()
        if not return_success:
            return x_adv
        with torch.no_grad():
            return x_adv, objective.success(prec.logits(forward, x_adv))


def check_start(random_start) -> None:
    if not isinstance(random_start, bool) and not (isinstance(random_start, float) and random_start > 0):
        raise ValueError(f"random_start must be True, False or a Gaussian std > 0 (float), got {random_start!r}")


def _start(x, eps, random_start, generator):
    if random_start is True:
        return pgd_random_start(x, eps, generator=generator)
    if random_start is False:
        return x.clone()
    device = generator.device if generator is not None else x.device
    noise = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=device).to(x.device)
    # a step of size 0 is the projection onto the eps-ball and [0, 1], by the fused op
    return pgd_step_(x + random_start * noise, noise, x, 0.0, eps)


def _early_stop(budget: torch.Tensor, wrong: torch.Tensor) -> torch.Tensor:
    """FAT's per-sample stopping rule, one step: a misclassified sample spends one unit of its
    budget; one whose budget is spent (-1 after the tau extra steps) stops. Returns who moves."""
    budget.sub_((wrong & (budget >= 0)).long())
    return budget >= 0


@dataclass
class PGD:
    """``attack(model, x, y) -> x_adv``: :func:`pgd` with fixed settings (see there).

    ``targeted=True`` attacks a random other class per sample; ``seed`` makes the random start
    and targets reproducible (one generator per call, so every call is the same attack).
    """
    eps: float = 8 / 255
    steps: int = 10
    alpha: Optional[float] = None
    random_start: bool = True
    loss: str = "ce"
    targeted: bool = False
    decay: Optional[float] = None
    confidence: float = 50.0
    precision: str = "fp32"
    loss_scale: Optional[float] = None
    compile_step: Union[bool, str] = False
    seed: Optional[int] = None
    norm: str = "Linf"

    def __post_init__(self):
        check_settings(self.eps, self.norm, self.precision, self.loss_scale, self.seed)
        check_count(self.steps, "steps")
        if self.alpha is not None:
            check_positive(self.alpha, "alpha")
        if self.decay is not None:
            check_positive(self.decay, "decay")
        check_loss(self.loss)
        check_compile_step(self.compile_step)

    def __call__(self, model, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        kw = asdict(self)
        targeted, seed = kw.pop("targeted"), kw.pop("seed")
        kw.pop("norm")
        return pgd(model, x, y, target="random" if targeted else None, generator=new_generator(seed), **kw)

"""The official NoFrost training step, re-expressed: the baseline every benchmark compares against.

amazon-science/normalizer-free-robust-training, ``PGDAT.py`` (training) with advertorch's
``PGDAttack`` and ``ctx_noparamgrad_and_eval``, and timm's NF-ResNet layers. What this file does,
line by line against that code:

| official code | here |
| --- | --- |
| ``model = create_model('nf_resnet50', drop_rate=0.25, drop_path_rate=0.1)`` (timm) | the same architecture from ``fastnofrost.models`` (tested equal to timm), every WS conv swapped for :class:`TimmScaledStdConv2d`: timm's ``ScaledStdConv2d.forward``, WS by ``F.batch_norm`` recomputed in every forward, autograd through it |
| ``model.train(); requires_grad_(model, True)`` once per epoch | ``model.train()`` at the start of each step (costs nothing) |
| ``logits = model(images)``; ``loss_clean = LabelSmoothingCrossEntropy(0.1)(logits, labels)`` | clean forward first, ``F.cross_entropy(..., label_smoothing=0.1)`` (the same value: ``(1 - s) nll + s mean(-log p)``); its graph stays alive through the attack |
| ``with ctx_noparamgrad_and_eval(model):`` | :func:`noparamgrad_and_eval`: ``training = False`` on every module and ``requires_grad = False`` on every parameter, both restored on exit. So the attack's ``loss.backward()`` computes input gradients only: no weight-gradient convolution |
| ``images * std + mean`` / ``(images_adv - mean) / std`` around the attack; ``NormalizedModel`` | not reproduced: the model's first layer normalizes [0, 1] pixels (two elementwise passes over the batch per step, well under 0.1% of a step) |
| ``PGDAttack(eps=8/255, nb_iter=K, eps_iter=alpha)``: ``loss_fn = CrossEntropyLoss(reduction="sum")``, ``rand_init=True``, ``clip_min=0, clip_max=1`` | :func:`official_pgd` with the same defaults |
| ``rand_init_delta``: ``delta.uniform_(-1, 1); delta = eps * delta``; then ``delta = clamp(x + delta, 0, 1) - x`` | the same ops; the draw from torch's generator (or the one given) |
| ``perturb_iterative``: ``loss_fn(predict(x + delta), y).backward()``; ``delta += eps_iter * delta.grad.sign()``; ``delta = clamp(delta, -eps, eps)``; ``delta = clamp(x + delta, 0, 1) - x``; ``delta.grad.zero_()`` | the same ops in the same order (the ball, then the box), on ``delta`` as the leaf |
| ``x_adv = clamp(x + delta, 0, 1)`` | the same |
| ``logits_adv = model(images_adv)`` (train mode); ``loss = (1 - Lambda) loss_clean + Lambda loss_adv`` | a separate adversarial forward, the same mix (lambda 0.5) |
| ``optimizer.zero_grad(); loss.backward(); optimizer.step()``, ``SGD(model.parameters(), lr, momentum=0.9, weight_decay=5e-5, nesterov=True)`` | :func:`official_optimizer`: torch SGD over every parameter (weight decay on biases and gains too), fp32 |
| ``.item()`` of accuracy and losses every step (``AverageMeter``) | the same five ``.item()`` calls (host syncs on CUDA) |
| ``torch.backends.cudnn.benchmark = True`` | set by the benchmarks on CUDA for every engine |
| DDP / DataParallel wrapper, fp32, NCHW | not wrapped: one device (DataParallel on one GPU calls the module; DDP adds the gradient all-reduce, which ours on one device does not pay either); fp32, NCHW as the official code |

The named variant :func:`naive_attack_step` is the common mistake of user code: the attack in
eval mode with the parameters left requiring grad, so every PGD step also runs the
weight-gradient convolutions. It is labelled as such and never the baseline of a goal.
"""
import contextlib
import copy

import torch
import torch.nn as nn
import torch.nn.functional as F

from fastnofrost.nn import ScaledStdConv2d, StdConv2d


def timm_ws(weight, gain, scale: float, eps: float):
    """timm's weight standardization: one ``F.batch_norm`` over the (1, C_out, fan_in) view,
    gain * scale as its affine weight (``gain`` None: StdConv2d, no affine)."""
    affine = None if gain is None else (gain * scale).view(-1)
    return F.batch_norm(weight.reshape(1, weight.shape[0], -1), None, None, weight=affine, training=True,
                        momentum=0.0, eps=eps).reshape_as(weight)


class TimmScaledStdConv2d(nn.Conv2d):
    """timm's ScaledStdConv2d / StdConv2d forward on the parameters of one of ours (shared, not
    copied): the weight standardized by :func:`timm_ws` in every forward, then the convolution."""

    def __init__(self, layer):
        super().__init__(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride, layer.padding,
                         layer.dilation, layer.groups, bias=layer.bias is not None, device=layer.weight.device,
                         dtype=layer.weight.dtype)
        self.weight, self.bias = layer.weight, layer.bias
        self.register_parameter("gain", layer.gain)
        self.scale, self.eps = layer.scale, layer.eps

    def forward(self, x):
        weight = timm_ws(self.weight, self.gain, self.scale, self.eps)
        return F.conv2d(x, weight, self.bias, self.stride, self.padding, self.dilation, self.groups)


def official_model(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every WS conv computed as timm computes it."""
    model = copy.deepcopy(model)
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, (ScaledStdConv2d, StdConv2d)):
                setattr(parent, name, TimmScaledStdConv2d(child))
    return model


def official_optimizer(model: nn.Module, lr: float, momentum: float, wd: float, params=None) -> torch.optim.Optimizer:
    """PGDAT.py's optimizer: torch SGD, Nesterov, weight decay on every parameter (``params``:
    parameter groups instead, each with its own decay: a fidelity diagnostic)."""
    return torch.optim.SGD(model.parameters() if params is None else params, lr=lr, momentum=momentum, weight_decay=wd,
                           nesterov=True)


@contextlib.contextmanager
def noparamgrad_and_eval(model: nn.Module, noparamgrad: bool = True):
    """advertorch's ``ctx_noparamgrad_and_eval``: every module out of training mode and every
    parameter's ``requires_grad`` off; both restored on exit. ``noparamgrad=False``: eval mode
    only (the naive attack)."""
    training = {m: m.training for m in model.modules()}
    grads = {p: p.requires_grad for p in model.parameters()}
    for m in training:
        m.training = False
    for p in grads:
        p.requires_grad = p.requires_grad and not noparamgrad
    try:
        yield model
    finally:
        for m, mode in training.items():
            m.training = mode
        for p, flag in grads.items():
            p.requires_grad = flag


def official_pgd(model, x, y, eps: float, steps: int, alpha: float, start=None, generator=None):
    """advertorch's ``PGDAttack(...).perturb(x, y)`` (L-inf, CE with reduction "sum", clip to
    [0, 1]); ``start``: a given first iterate instead of the uniform random init."""
    x, y = x.detach().clone(), y.detach().clone()
    if start is None:
        delta = torch.empty_like(x).uniform_(-1, 1, generator=generator) * eps
    else:
        delta = start.detach() - x
    delta = (torch.clamp(x + delta, 0.0, 1.0) - x).requires_grad_()
    for _ in range(steps):
        loss = F.cross_entropy(model(x + delta), y, reduction="sum")
        loss.backward()
        with torch.no_grad():
            delta += alpha * delta.grad.sign()
            delta.copy_(torch.clamp(delta, -eps, eps))
            delta.copy_(torch.clamp(x + delta, 0.0, 1.0) - x)
        delta.grad.zero_()
    return torch.clamp(x + delta, 0.0, 1.0).detach()


def official_attack(model, x, y, eps: float, steps: int, alpha: float, start=None, noparamgrad: bool = True):
    """PGDAT.py's attack call: ``PGDAttack.perturb`` inside ``ctx_noparamgrad_and_eval``
    (``noparamgrad=False``: the naive attack, parameters left requiring grad)."""
    with noparamgrad_and_eval(model, noparamgrad):
        return official_pgd(model, x, y, eps, steps, alpha, start=start)


def _step(model, optimizer, steps: int, eps: float, alpha: float, lam: float, smoothing: float, noparamgrad: bool,
          attack_first: bool = False):
    def step(x, y):
        attacks = steps and lam
        if attacks and attack_first:  # ours' order: the attack sees running statistics without this clean batch
            x_adv = official_attack(model, x, y, eps, steps, alpha, noparamgrad=noparamgrad)
        model.train()
        logits = model(x)
        loss_clean = F.cross_entropy(logits, y, label_smoothing=smoothing)
        loss, loss_adv, logits_adv = loss_clean, None, None
        if attacks:
            if not attack_first:
                x_adv = official_attack(model, x, y, eps, steps, alpha, noparamgrad=noparamgrad)
            logits_adv = model(x_adv)
            loss_adv = F.cross_entropy(logits_adv, y, label_smoothing=smoothing)
            loss = (1 - lam) * loss_clean + lam * loss_adv
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        stats = [(logits.argmax(1) == y).float().mean().item(), loss.item()]  # PGDAT.py's per-step meters
        if loss_adv is not None:
            stats += [(logits_adv.argmax(1) == y).float().mean().item(), loss_clean.item(), loss_adv.item()]
        return stats
    return step


def official_step(model, optimizer, steps: int, eps: float, alpha: float, lam: float = 0.5, smoothing: float = 0.1,
                  attack_first: bool = False):
    """One PGDAT.py training step ``step(x, y)`` on pixels in [0, 1]; ``steps`` 0 (or ``lam`` 0)
    is its normal training. Returns the per-step meters as PGDAT.py reads them.

    ``attack_first`` (NOT the official code: a fidelity diagnostic, ``official_train.py
    --attack-first``): the attack runs before the clean train-mode forward, as ours runs it, so
    with BatchNorm its eval-mode forwards use running statistics that do not yet hold the current
    clean batch. Without BatchNorm the two orders compute the same step."""
    return _step(model, optimizer, steps, eps, alpha, lam, smoothing, noparamgrad=True, attack_first=attack_first)


def naive_attack_step(model, optimizer, steps: int, eps: float, alpha: float, lam: float = 0.5,
                      smoothing: float = 0.1):
    """NOT the official code: :func:`official_step` with the attack in eval mode but the
    parameters left requiring grad (a common mistake), so each PGD step's backward also computes
    every weight gradient (accumulated into ``.grad`` and zeroed by the optimizer step)."""
    return _step(model, optimizer, steps, eps, alpha, lam, smoothing, noparamgrad=False)

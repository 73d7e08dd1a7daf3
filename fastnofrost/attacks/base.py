"""What every attack shares: argument checks, the frozen attack mode, mixed precision, and the
one gradient computation (w.r.t. the input only).

Attack mode ("attack inside a frozen world", docs/design.md): while an attack runs the model is in
eval mode (dropout and drop-path off), every parameter has ``requires_grad=False`` and
weight-standardized layers compute their standardized weight once (``frozen_weights()``).
With frozen parameters and detached standardized weights, autograd builds no weight-gradient
node: ``torch.autograd.grad(loss, x_adv)`` runs the input-gradient half of the backward only.
Everything is restored on exit, also when the attack raises.
"""
import contextlib
import dataclasses
import math
from typing import ClassVar, Dict, Optional, Tuple

import torch
import torch.nn as nn

from ..nn.frozen import cached_weights, frozen_weights

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
FP16_LOSS_SCALE = 1024.0
WHITE_BOX, BLACK_BOX, ENSEMBLE = "white-box", "black-box", "ensemble"
REGISTRY: Dict[str, type] = {}  # attack name: its class, in declaration order (filled by Attack subclasses)


class Attack:
    """Base of the attack declarations. Each attack is ONE frozen dataclass: its fields are its
    settings (defaults and checks in ``__post_init__``), and its class attributes say the rest:

    - ``name``: its key in :data:`fastnofrost.attacks.ATTACKS` (``get_attack``); declaring the
      class registers it (:data:`REGISTRY`);
    - ``menu``, ``column``: its name on the evaluation's menu and command line, and its place
      there (the paper's column order); None: not on the menu;
    - ``kind``: white-box, black-box or ensemble (the report's grouping);
    - ``title``: the report's column title, formatted with the fields (``'PGD-{steps}'``);
    - ``budget``: (evaluation setting, own field) that the evaluation's budget flag sets, e.g.
      ``('apgd_steps', 'steps')``; None: a fixed budget.

    The registry, the menu, the evaluation's flags and titles are derived from these, so an
    attack is added in one file (a new module is also imported once by the package).
    ``attack(model, x, y)`` runs :meth:`run` with the attack's own seed (one generator per call:
    every call is the same attack).
    """
    name: ClassVar[str]
    menu: ClassVar[Optional[str]] = None
    column: ClassVar[Optional[int]] = None
    kind: ClassVar[str] = WHITE_BOX
    title: ClassVar[str] = ""
    budget: ClassVar[Optional[Tuple[str, str]]] = None

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "name" not in vars(cls):
            raise TypeError(f"attack class {cls.__name__} must declare its own name")
        if cls.name in REGISTRY:
            raise TypeError(f"two attacks are named {cls.name!r}: {REGISTRY[cls.name].__name__} and {cls.__name__}")
        if "menu" not in vars(cls) or "column" not in vars(cls):  # a variant must not inherit its parent's place
            raise TypeError(f"attack class {cls.__name__} must declare its own menu and column (None: not on the menu)")
        if (cls.menu is None) != (cls.column is None):
            raise TypeError(f"attack {cls.name!r}: menu and column go together (both or neither)")
        taken = [a for a in REGISTRY.values() if cls.menu is not None and (a.menu, a.column) != (None, None)
                 and (a.menu == cls.menu or a.column == cls.column)]
        if taken:
            raise TypeError(f"attack {cls.name!r}: menu name {cls.menu!r} or column {cls.column} is {taken[0].name!r}'s")
        REGISTRY[cls.name] = cls

    def run(self, model, x: torch.Tensor, y: torch.Tensor, **options) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, model, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.run(model, x, y)

    def column_title(self) -> str:
        return self.title.format(**{f.name: getattr(self, f.name) for f in dataclasses.fields(self)})


def check_eps(eps) -> float:
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0.0 <= eps <= 1.0:
        raise ValueError(f"eps must be a number in [0, 1] (L-inf radius in [0, 1] pixel space), got {eps!r}")
    return float(eps)


def check_count(value, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def check_positive(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value < math.inf:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def check_norm(norm: str) -> str:
    if norm != "Linf":
        raise ValueError(f"norm must be 'Linf' (the only threat model of these attacks), got {norm!r}")
    return norm


def default_alpha(eps: float, steps: int) -> float:
    """The reference recipe's PGD step: min(1.25 * eps, eps + 4/255) / steps."""
    return min(1.25 * eps, eps + 4 / 255) / steps


def check_inputs(x: torch.Tensor, y: torch.Tensor, values: bool = True) -> None:
    """x: float32/float64 (N, ...) pixels in [0, 1]; y: int64 (N,) labels >= 0 on x's device.
    ``values=False`` checks types, shapes and devices only: no read of the data (no host sync)."""
    if not isinstance(x, torch.Tensor) or x.dtype not in (torch.float32, torch.float64) or x.dim() < 2:
        raise TypeError("x must be a float32 (or float64) tensor of shape (N, ...) holding pixels in [0, 1], got "
                        f"{getattr(x, 'dtype', type(x).__name__)} {tuple(getattr(x, 'shape', ()))}; the model may "
                        "still run in bf16/fp16 with precision='bf16'/'fp16'")
    if not isinstance(y, torch.Tensor) or y.dtype != torch.int64 or y.shape != x.shape[:1]:
        raise ValueError(f"y must be an int64 tensor of shape ({x.shape[0]},) (one label per input), got "
                         f"{getattr(y, 'dtype', type(y).__name__)} {tuple(getattr(y, 'shape', ()))}")
    if y.device != x.device:
        raise ValueError(f"x and y must be on one device, got {x.device} and {y.device}")
    if x.numel() == 0:
        raise ValueError("x is empty: nothing to attack")
    if not values:
        return
    lo, hi, y_min = torch.stack([x.min().double(), x.max().double(), y.min().double()]).tolist()
    if not (0.0 <= lo and hi <= 1.0):
        raise ValueError(f"inputs must be pixels in [0, 1] (normalization is the model's first layer), "
                         f"got values in [{lo:.4g}, {hi:.4g}]")
    if y_min < 0:
        raise ValueError(f"labels must be >= 0, got {int(y_min)}")


def check_labels(labels: torch.Tensor, num_classes: int, name: str = "y") -> None:
    """Labels against the model's number of outputs (known at the first forward)."""
    top = int(labels.max())
    if top >= num_classes:
        raise ValueError(f"{name} holds label {top}, out of range for a model with {num_classes} outputs")


@contextlib.contextmanager
def attack_mode(model: nn.Module, cache_weights: bool = True, weight_grads: bool = False):
    """Eval mode, frozen parameters and (``cache_weights``) standardized weights computed once;
    all restored on exit. Yields None, or with ``weight_grads`` (an ablation: parameters keep
    ``requires_grad`` and the cached weights are leaves requiring grad) a function listing the
    tensors a step then differentiates besides the input (:func:`input_gradient`'s ``also``)."""
    modes = [(m, m.training) for m in model.modules()]
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        model.eval()
        if not weight_grads:
            for p, _ in flags:
                p.requires_grad_(False)
        with frozen_weights(leaves=weight_grads) if cache_weights else contextlib.nullcontext():
            yield (lambda: [p for p, trainable in flags if trainable] + cached_weights()) if weight_grads else None
    finally:
        for m, training in modes:
            m.training = training
        for p, requires_grad in flags:
            p.requires_grad_(requires_grad)


class Precision:
    """Model precision during an attack: 'fp32' (no autocast), 'bf16' or 'fp16' autocast.

    The perturbation always stays in the input's float32; only the model runs in the autocast
    dtype. For fp16 the loss is multiplied by ``loss_scale`` (default 1024) before the
    gradient, so small input gradients do not underflow; every consumer of the gradient here
    is scale invariant (sign steps, L1-normalized momentum), so nothing needs unscaling.
    """

    def __init__(self, name: str = "fp32", loss_scale: Optional[float] = None):
        if name not in PRECISIONS:
            raise ValueError(f"precision must be one of {tuple(PRECISIONS)}, got {name!r}")
        if loss_scale is not None:
            check_positive(loss_scale, "loss_scale")
        self.name = name
        self.dtype = PRECISIONS[name]
        self.loss_scale = float(loss_scale) if loss_scale is not None else (
            FP16_LOSS_SCALE if name == "fp16" else 1.0)

    def autocast(self, device_type: str):
        return torch.autocast(device_type, dtype=self.dtype, enabled=self.dtype is not None)

    def logits(self, forward, x: torch.Tensor, keep: bool = False) -> torch.Tensor:
        """Logits of ``forward(x)`` run under this precision, in float32 at least (a float64
        model keeps float64 logits). ``keep``: they outlive the next call of ``forward``, so
        they are a copy, never a compiled step's output (which its next CUDA-graph replay
        overwrites: :mod:`.step`)."""
        with self.autocast(x.device.type):
            out = forward(x)
        return out.to(torch.promote_types(out.dtype, torch.float32), copy=keep)


def predict(model: nn.Module, x: torch.Tensor, precision: str = "fp32") -> torch.Tensor:
    """float32 logits of ``model`` on ``x`` in eval mode, without gradients (what evaluation
    and the metrics score)."""
    with attack_mode(model), torch.no_grad():
        return Precision(precision).logits(model, x)


def input_gradient(forward, x_adv: torch.Tensor, objective, precision: Precision, also=None):
    """Per-sample objective, logits and d(sum objective)/d(x_adv) (times the loss scale).

    ``x_adv`` is the only leaf that requires grad, so this is the whole backward: no
    parameter gradient, no graph kept after the call. ``also`` (the ``weight_grads`` ablation of
    :func:`attack_mode`): a function giving more tensors to differentiate, whose gradients are
    computed and dropped.
    """
    x_adv.requires_grad_(True)
    logits = precision.logits(forward, x_adv)
    values = objective(logits)
    if not values.requires_grad:  # no differentiable path from the input (a step, a round): zero gradient
        return values.detach(), logits.detach(), torch.zeros_like(x_adv)
    extra = also() if also is not None else []
    grad, *_ = torch.autograd.grad(values.sum() * precision.loss_scale, [x_adv, *extra], allow_unused=bool(extra))
    if precision.name == "fp16":  # an overflow gives inf (whose sign is fine) or nan: no step there
        grad = torch.nan_to_num(grad, nan=0.0)
    return values.detach(), logits.detach(), grad


def check_compile_step(compile_step):
    modes = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
    if not (isinstance(compile_step, bool) or compile_step in modes):
        raise ValueError(f"compile_step must be True, False or a torch.compile mode {modes}, got {compile_step!r}")
    return compile_step


COMPILE_LEVELS = ("none", "attack", "full")


def attack_compile_step(level: str, device_type: str):
    """The attack's ``compile_step`` at a run's compile level (``--compile`` of training and
    evaluation, 'auto' already resolved): 'none' is eager; 'attack' and 'full' compile the step,
    with CUDA graphs ('reduce-overhead') on CUDA, where a step is hundreds of small launches, and
    inductor's default mode on CPU. ('full' also compiles the training forward and backward: see
    fastnofrost/train.py.)"""
    if level not in COMPILE_LEVELS:
        raise ValueError(f"compile level must be one of {', '.join(COMPILE_LEVELS)}, got {level!r}")
    if level == "none":
        return False
    return "reduce-overhead" if device_type == "cuda" else True


def new_generator(seed: Optional[int]):
    """A CPU generator seeded with ``seed``, or None (torch's default generator) for seed=None."""
    if seed is None:
        return None
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an integer or None, got {seed!r}")
    return torch.Generator().manual_seed(seed)


def check_settings(eps, norm: str = "Linf", precision: str = "fp32", loss_scale=None, seed=None) -> None:
    """The checks every attack's settings share (radius, norm, precision, seed)."""
    check_norm(norm)
    check_eps(eps)
    Precision(precision, loss_scale)
    new_generator(seed)


def per_sample(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A (N,) tensor viewed as (N, 1, 1, ...) to broadcast against ``like``."""
    return mask.view((-1,) + (1,) * (like.dim() - 1))

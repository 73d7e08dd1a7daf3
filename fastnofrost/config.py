"""The training run's configuration: one dataclass, validated before any work starts.

Defaults are the NoFrost paper's recipe (timm NF-ResNet-50, PGD eps 8/255 x 10 steps,
lambda 0.5, SGD nesterov momentum 0.9, lr 0.1 x batch/256, wd 5e-5, cosine, label smoothing
0.1, dropout 0.25, drop-path 0.1, 90 epochs; how it differs from PGDAT.py: docs/training.md,
Recipe, and ``--recipe official-script``). With no ``--data`` the run is the embedded
demo (:data:`DEMO`): NoFrost on a small NF-ResNet on scikit-learn's digits, a few minutes on
a 2-core CPU. Precedence: defaults < demo preset < ``--config`` YAML < command-line flags.

Units: ``eps`` and ``alpha`` are in 1/255 pixel steps, as in the official scripts.
"""
import argparse
import dataclasses
import math
import os
from dataclasses import dataclass, field, fields
from typing import List, Optional

from .attacks.base import COMPILE_LEVELS, PRECISIONS as ATTACK_PRECISIONS, default_alpha
from .data import BACKENDS as DATA_BACKENDS, DATASETS
from .methods import METHODS
from .methods.base import dual_bn_problem

PRECISIONS = ("auto",) + tuple(ATTACK_PRECISIONS)
BACKENDS = ("auto",) + DATA_BACKENDS
OPTIMIZERS = ("sgd", "adamw")
VIEWS = ("concat", "sequential")
WS = ("grouped", "per-layer")
# fields that were replaced: a config or command line that still names one gets this sentence
RETIRED = {"compile_attack": "--compile-attack was replaced by --compile none|attack|full (auto by default: full "
                             "on CUDA); the attack's compile mode follows the device (CUDA graphs on CUDA)"}


# --recipe presets: the fields each sets, under the flags and the config file. official-script:
# PGDAT.py's argparse defaults (7 attack steps, 5 validation steps), its validation attack at the
# training attack's step size, its CosineAnnealingLR stepped per epoch and its SGD over
# model.parameters() (weight decay on every parameter)
RECIPES = {"paper": {}, "official-script": dict(steps=7, val_steps=5, val_alpha="train", lr_schedule="epoch",
                                                decay_all=True)}
LR_SCHEDULES = ("step", "epoch")
VAL_ALPHAS = ("auto", "train")
# --val-strong-examples' default: the validation attacks cost STRONG_SHARE of an epoch's training
# FLOPs, on at least STRONG_MIN examples (fastnofrost/training/validate.py counts them)
STRONG_SHARE = 0.03
STRONG_MIN = 32


def _parse_bool(text: str) -> bool:
    value = str(text).strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _parse_resume(text: str) -> str:
    """--resume: 'true', 'false' (any spelling _parse_bool takes) or 'auto'."""
    if str(text).strip().lower() == "auto":
        return "auto"
    try:
        return str(_parse_bool(text)).lower()
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected true, false or auto, got {text!r}") from None


# a flag given alone means this value (--resume alone: true)
SWITCHES = {_parse_bool: (True, "true|false"), _parse_resume: ("true", "true|false|auto")}


_SECTION = ["recipe"]  # the section the next fields belong to (train.py --help groups them so)


def _section(name: str) -> None:
    _SECTION[0] = name


def _f(default, help, flag=None, **kw):
    return field(default=default, metadata=dict(help=help, flag=flag, section=_SECTION[0], **kw))


@dataclass
class TrainConfig:
    recipe: str = _f("paper", "paper (the defaults listed here: the NoFrost paper's recipe) or official-script "
                              "(PGDAT.py's own defaults: " + ", ".join(f"{k}={v}" for k, v in
                                                                       RECIPES["official-script"].items())
                     + "); other flags override the preset")
    _section("model")
    model: str = _f("nf_resnet50", "model name (fastnofrost.models.list_models())")
    width: float = _f(1.0, "channel width multiplier")
    image_size: int = _f(224, "training and validation image size")
    drop: float = _f(0.25, "dropout before the classifier")
    drop_path: float = _f(0.1, "stochastic depth rate")
    _section("method")
    method: str = _f("nofrost", "training objective: " + ", ".join(METHODS))
    eps: float = _f(8.0, "PGD radius in 1/255 units")
    steps: int = _f(10, "PGD steps of the training attack")
    alpha: Optional[float] = _f(None, "PGD step in 1/255 units (default min(1.25 eps, eps + 4) / steps)")
    lam: float = _f(0.5, "NoFrost / MBNAT weight of the adversarial loss", flag="--lambda")
    beta: float = _f(6.0, "TRADES weight of the KL term")
    tau: int = _f(0, "FAT / TRADES-FAT early-stop steps after misclassification")
    mbnat_gamma: float = _f(0.5, "MBNAT: BN mixing gamma used for validation (0 clean branch, 1 adv branch)")
    deepaugment_edsr: Optional[str] = _f(None, "NoFrost*: EDSR weights for DeepAugment")
    deepaugment_cae: Optional[str] = _f(None, "NoFrost*: CAE weights for DeepAugment")
    _section("optimization")
    epochs: int = _f(90, "training epochs")
    batch_size: int = _f(256, "global batch size (all ranks, per optimizer step)")
    lr: Optional[float] = _f(None, "peak learning rate (default 0.1 x batch_size / 256)")
    momentum: float = _f(0.9, "SGD momentum")
    nesterov: bool = _f(True, "SGD Nesterov momentum")
    wd: float = _f(5e-5, "weight decay")
    warmup_epochs: float = _f(0.0, "linear warm-up epochs before the cosine schedule")
    lr_schedule: str = _f("step", "step (the cosine moves every optimizer step) or epoch (once per epoch, as the "
                                  "official script's CosineAnnealingLR)")
    decay_all: bool = _f(False, "weight decay on every parameter, biases and 1-d parameters included (the "
                                "official script); default: on weights of 2 or more dims only (timm's recipe)")
    smoothing: float = _f(0.1, "label smoothing")
    optimizer: str = _f("sgd", "sgd (torch, fused on CUDA) or adamw (DeepSpeed FusedAdam on CUDA)")
    grad_accum: int = _f(1, "gradient accumulation steps")
    precision: str = _f("auto", "auto (bf16 autocast on CUDA and on a CPU with native bf16, else fp32), fp32, bf16, or fp16 (dynamic loss scaling)")
    zero_stage: int = _f(0, "DeepSpeed ZeRO stage 0, 1 or 2")
    deepspeed_config: Optional[str] = _f(None, "a DeepSpeed JSON config to use instead of the generated one")
    compile: str = _f("auto", "auto (full on CUDA, none on CPU), none, attack (the PGD step; CUDA graphs on CUDA), "
                              "or full (the PGD step and the training forward/backward)")
    views: str = _f("concat", "concat (one forward/backward of all views of a batch) or sequential (each view's "
                              "backward before the next view's forward: about half the activation memory, same math)")
    ws: str = _f("grouped", "grouped (every weight standardization of an NF model in one op, once per micro-batch) "
                            "or per-layer (one op per layer and use: the reference path)")
    _section("data")
    data: Optional[str] = _f(None, "ImageNet-layout folder, or digits / fashion-mnist (none: the digits demo)")
    data_backend: str = _f("auto", "auto (dali-gpu for a folder on CUDA when DALI imports, else torch), dali-gpu, dali-cpu, torch, synthetic")
    train_examples: int = _f(0, "train on this many examples of the training split, seeded pick (0: all)")
    val_split_examples: int = _f(0, "validate on this many examples of the validation split (0: all)")
    workers: int = _f(8, "data loader workers / DALI threads per rank")
    channels_last: Optional[bool] = _f(None, "channels_last memory format (default: on CUDA)")
    val_every: int = _f(1, "validate every N epochs (0: never)")
    val_examples: int = _f(1000, "examples of the PGD validation (0: the whole validation set)")
    val_steps: int = _f(10, "PGD steps of the validation attack")
    val_attacks: str = _f("pgd,apgd-ce,apgd-t", "validation attacks (white-box names of the evaluation's menu, pgd "
                                                "first): PGD on --val-examples, and all of them on "
                                                "--val-strong-examples for the masking check and the worst case "
                                                "that picks best_robust (pgd alone: PGD only)")
    val_strong_examples: Optional[int] = _f(None, "examples of the validation attacks' worst case, spread over the "
                                                  f"validation set (default: as many as cost {100 * STRONG_SHARE:g} "
                                                  f"percent of an epoch's training, at least {STRONG_MIN})")
    val_alpha: str = _f("auto", "step of the validation attack: auto (min(1.25 eps, eps + 4) / val-steps) or train "
                                "(the training attack's step, as PGDAT.py)")
    _section("run")
    out: Optional[str] = _f(None, "output folder (default runs/<method>-<model>)")
    resume: str = _f("false", "true (continue from the latest checkpoint in --out), auto (continue when --out holds "
                              "one, else start the run) or false (start the run; --out must not hold one)",
                     parse=_parse_resume)
    keep_last: int = _f(2, "checkpoints kept (plus best clean and best robust weights)")
    save_every: int = _f(0, "also checkpoint every N steps (0: at the end of each epoch only)")
    seed: int = _f(0, "seed of the run (data order, augmentations, attacks, initialization)")
    max_steps: int = _f(0, "stop after this many optimizer steps (0: train all epochs)")
    log_every: int = _f(10, "steps between log lines / JSONL records")
    progress: bool = _f(True, "progress bar on rank 0")
    tensorboard: bool = _f(True, "TensorBoard scalars under <out>/tb")
    device: str = _f("auto", "auto (CUDA when available), cuda or cpu")

    # ------------------------------------------------------------------ derived values
    @property
    def eps_pixels(self) -> float:
        return self.eps / 255

    @property
    def alpha_pixels(self) -> Optional[float]:
        return None if self.alpha is None else self.alpha / 255

    @property
    def val_alpha_pixels(self) -> Optional[float]:
        """The validation attack's step: None (PGD's default for val_steps) or the training attack's."""
        if self.val_alpha != "train":
            return None
        return self.alpha_pixels if self.alpha is not None else default_alpha(self.eps_pixels, self.steps)

    @property
    def peak_lr(self) -> float:
        return self.lr if self.lr is not None else 0.1 * self.batch_size / 256

    @property
    def run_dir(self) -> str:
        return self.out or os.path.join("runs", f"{self.method}-{self.model}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# The embedded default run: with no --data, NoFrost on scikit-learn digits (real 8x8 images,
# upsampled) with a small-input NF-ResNet-26, a few minutes on a 2-core CPU. It validates every
# other epoch: on 1,437 training images the validation attacks' 32-example floor costs more than
# an epoch (docs/training.md, Validation).
DEMO = dict(data="digits", model="nf_resnet26_small", width=0.25, image_size=16, epochs=8, batch_size=64,
            lr=0.05, warmup_epochs=1.0, drop=0.0, drop_path=0.0, wd=5e-4, val_examples=0, val_every=2, workers=0)


RESUME = ("false", "true", "auto")
# Fields a resume may change. They change neither the data order, the schedule, the model nor
# what a validation measures (best_clean / best_robust compare validations): where outputs go,
# logging, checkpointing, when to stop and to validate, and how the same math is computed.
# Every other field must equal the saved run's, as must the world size, and the precision and
# data backend as the run resolved them ('auto' resolving the same way is no change).
RESUME_SAFE = ("out", "resume", "keep_last", "save_every", "max_steps", "log_every", "progress", "tensorboard",
               "val_every", "workers", "device", "compile", "views", "ws", "channels_last")
RESOLVED = {"precision": "precision_resolved", "data_backend": "data_backend_resolved"}


def run_record(c: "TrainConfig", precision: str, data_backend: str, world_size: int) -> dict:
    """What a run's config.json holds: its fields, the resolved precision and data backend, and
    the world size."""
    return {**c.to_dict(), RESOLVED["precision"]: precision, RESOLVED["data_backend"]: data_backend,
            "world_size": world_size}


def resume_changes(saved: dict, now: dict) -> List[str]:
    """'--flag saved -> now' for each entry of the run record ``now`` that differs from the saved
    record and that a resume may not change; an entry the saved record lacks (a run of an older
    version) counts at its default."""
    by_name = {f.name: f for f in fields(TrainConfig)}
    changes = []
    for key, value in now.items():
        if key in RESUME_SAFE or key in RESOLVED:
            continue
        old = saved.get(key, by_name[key].default if key in by_name else None)
        if old != value:
            changes.append(f"{_record_name(key, by_name)} {old} -> {value}")
    return changes


def _record_name(key: str, by_name: dict) -> str:
    if key in by_name:
        return _flag(by_name[key])
    resolved = {entry: name for name, entry in RESOLVED.items()}
    return f"{_flag(by_name[resolved[key]])} (as resolved)" if key in resolved else key.replace("_", " ")


class ConfigError(ValueError):
    """A bad configuration field; the message says which and why."""


def _problems(c: TrainConfig, world_size: int) -> List[str]:
    from .models import list_models

    bad = []

    def need(ok, msg):
        if not ok:
            bad.append(msg)

    need(c.model in list_models(), f"--model {c.model!r} is unknown; choose one of {', '.join(list_models())}")
    need(c.method in METHODS, f"--method {c.method!r} is unknown; choose one of {', '.join(METHODS)}")
    need(0 < c.width <= 8, f"--width must be in (0, 8], got {c.width}")
    need(c.image_size >= 8, f"--image-size must be >= 8, got {c.image_size}")
    need(0 <= c.drop < 1, f"--drop must be in [0, 1), got {c.drop}")
    need(0 <= c.drop_path < 1, f"--drop-path must be in [0, 1), got {c.drop_path}")
    need(0 < c.eps <= 255, f"--eps must be in (0, 255] (1/255 units), got {c.eps}")
    need(1 <= c.steps <= 1000, f"--steps must be an integer in [1, 1000], got {c.steps}")
    need(c.alpha is None or 0 < c.alpha <= 255, f"--alpha must be in (0, 255] (1/255 units), got {c.alpha}")
    need(0 <= c.lam <= 1, f"--lambda must be in [0, 1], got {c.lam}")
    need(0 <= c.beta < math.inf, f"--beta must be a finite number >= 0, got {c.beta}")
    need(0 <= c.tau <= c.steps, f"--tau must be in [0, steps={c.steps}], got {c.tau}")
    need(0 <= c.mbnat_gamma <= 1, f"--mbnat-gamma must be in [0, 1], got {c.mbnat_gamma}")
    need(c.epochs >= 1, f"--epochs must be >= 1, got {c.epochs}")
    need(c.grad_accum >= 1, f"--grad-accum must be >= 1, got {c.grad_accum}")
    need(c.batch_size >= 1 and c.batch_size % (world_size * c.grad_accum) == 0,
         f"--batch-size {c.batch_size} must be a positive multiple of world size x grad accumulation "
         f"({world_size} x {c.grad_accum})")
    need(c.lr is None or 0 < c.lr < math.inf, f"--lr must be a finite number > 0, got {c.lr}")
    need(0 <= c.momentum < 1, f"--momentum must be in [0, 1), got {c.momentum}")
    need(0 <= c.wd < 1, f"--wd must be in [0, 1), got {c.wd}")
    need(0 <= c.warmup_epochs < c.epochs, f"--warmup-epochs must be in [0, epochs), got {c.warmup_epochs}")
    need(0 <= c.smoothing < 1, f"--smoothing must be in [0, 1), got {c.smoothing}")
    need(c.optimizer in OPTIMIZERS, f"--optimizer must be one of {', '.join(OPTIMIZERS)}, got {c.optimizer!r}")
    need(c.recipe in RECIPES, f"--recipe must be one of {', '.join(RECIPES)}, got {c.recipe!r}")
    need(c.lr_schedule in LR_SCHEDULES, f"--lr-schedule must be one of {', '.join(LR_SCHEDULES)}, got {c.lr_schedule!r}")
    need(c.precision in PRECISIONS, f"--precision must be one of {', '.join(PRECISIONS)}, got {c.precision!r}")
    need(c.zero_stage in (0, 1, 2), f"--zero-stage must be 0, 1 or 2, got {c.zero_stage}")
    need(c.deepspeed_config is None or os.path.isfile(c.deepspeed_config),
         f"--deepspeed-config {c.deepspeed_config} does not exist")
    need(c.compile in ("auto",) + COMPILE_LEVELS,
         f"--compile must be one of auto, {', '.join(COMPILE_LEVELS)}, got {c.compile!r}")
    need(c.views in VIEWS, f"--views must be one of {', '.join(VIEWS)}, got {c.views!r}")
    need(c.ws in WS, f"--ws must be one of {', '.join(WS)}, got {c.ws!r}")
    if c.views == "sequential" and c.method in METHODS:
        need(METHODS[c.method].separable,
             f"--views sequential needs a loss that is a sum over views; {c.method}'s KL term couples the clean and "
             "adversarial logits: use --views concat")
        need(c.precision != "fp16", "--views sequential cannot skip an fp16 batch whose loss overflows once its first "
                                    "view is backpropagated: use --precision bf16 or --views concat")
    need(c.data_backend in BACKENDS, f"--data-backend must be one of {', '.join(BACKENDS)}, got {c.data_backend!r}")
    need(c.data is None or c.data in DATASETS or os.path.isdir(c.data) or c.data_backend == "synthetic",
         f"--data {c.data} is neither a folder nor one of {', '.join(DATASETS)}")
    need(c.data not in DATASETS or c.data_backend in ("auto", "torch"),
         f"--data {c.data} is an in-memory data set: use --data-backend torch")
    need(c.workers >= 0, f"--workers must be >= 0, got {c.workers}")
    need(c.train_examples >= 0 and c.val_split_examples >= 0, "--train-examples and --val-split-examples must be >= 0")
    val_attacks = _val_attack_problem(c.val_attacks)
    need(not val_attacks, val_attacks)
    need(c.val_strong_examples is None or c.val_strong_examples >= 1,
         f"--val-strong-examples must be >= 1, got {c.val_strong_examples}")
    need(c.val_alpha in VAL_ALPHAS, f"--val-alpha must be one of {', '.join(VAL_ALPHAS)}, got {c.val_alpha!r}")
    need(c.val_every >= 0 and c.val_examples >= 0 and c.val_steps >= 1,
         "--val-every and --val-examples must be >= 0 and --val-steps >= 1")
    need(c.resume in RESUME, f"--resume must be one of {', '.join(RESUME)}, got {c.resume!r}")
    need(c.keep_last >= 1, f"--keep-last must be >= 1, got {c.keep_last}")
    need(c.save_every >= 0 and c.max_steps >= 0 and c.log_every >= 1,
         "--save-every and --max-steps must be >= 0 and --log-every >= 1")
    need(c.device in ("auto", "cuda", "cpu"), f"--device must be auto, cuda or cpu, got {c.device!r}")
    for path_field in ("deepaugment_edsr", "deepaugment_cae"):
        path = getattr(c, path_field)
        need(path is None or os.path.isfile(path), f"--{path_field.replace('_', '-')} {path} does not exist")
    need(c.method == "nofrost_star" or (c.deepaugment_edsr is None and c.deepaugment_cae is None),
         "--deepaugment-edsr / --deepaugment-cae only apply to --method nofrost_star")
    if METHODS.get(c.method) is not None and METHODS[c.method].needs_dual_bn and c.model in list_models():
        need("_dualbn" in c.model, dual_bn_problem(c.method, c.model))
    return bad


def _val_attack_problem(text: str) -> str:
    """The sentence for a bad --val-attacks ('' when it is good)."""
    from .attacks import ATTACKS, WHITE_BOX

    names = [n.strip() for n in text.split(",")]
    white = [a.menu for a in ATTACKS.values() if a.menu is not None and a.kind == WHITE_BOX]  # the evaluation's
    if names[0] != "pgd" or len(set(names)) != len(names) or not set(names) <= set(white):
        return (f"--val-attacks must be pgd, then any of {', '.join(n for n in white if n != 'pgd')} "
                f"(comma-separated, each once), got {text!r}")
    return ""


def validate(c: TrainConfig, world_size: int = 1) -> TrainConfig:
    """Raise :class:`ConfigError` listing every bad field, one sentence each."""
    bad = _problems(c, world_size)
    if bad:
        raise ConfigError("bad configuration:\n  " + "\n  ".join(bad))
    return c


# ---------------------------------------------------------------------- command line / YAML

def _flag(f) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def _type_of(f):
    if "parse" in f.metadata:
        return f.metadata["parse"]
    kind = f.type.__name__ if isinstance(f.type, type) else str(f.type)
    if "bool" in kind:
        return _parse_bool
    if "float" in kind:
        return float
    if "int" in kind:
        return int
    return str


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--config", help="YAML file of fields (flag names with - or _)")
    groups = {}
    for f in fields(TrainConfig):
        section = f.metadata["section"]
        group = groups.get(section) or groups.setdefault(section, p.add_argument_group(section))
        kind = _type_of(f)
        const, metavar = SWITCHES.get(kind, (None, f.name.upper()))
        switch = dict(nargs="?", const=const) if kind in SWITCHES else {}  # a switch: --flag alone means const
        group.add_argument(_flag(f), dest=f.name, type=kind, default=argparse.SUPPRESS,
                           metavar=metavar, help=f"{f.metadata['help']} (default {f.default!r})", **switch)
    # DeepSpeed's launcher passes --local_rank / --local-rank; it is read from the environment.
    p.add_argument("--local_rank", "--local-rank", dest="_local_rank", type=int, help=argparse.SUPPRESS)
    for name in RETIRED:
        p.add_argument("--" + name.replace("_", "-"), dest="_retired_" + name, help=argparse.SUPPRESS)
    return p


def _from_yaml(path: str) -> dict:
    import yaml

    if not os.path.isfile(path):
        raise ConfigError(f"--config {path} does not exist")
    with open(path) as fh:
        try:
            data = yaml.safe_load(fh) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"--config {path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"--config {path} must hold a mapping of field: value")
    by_name = {f.name: f for f in fields(TrainConfig)}
    out = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        name = "lam" if name == "lambda" else name
        if name in RETIRED:
            raise ConfigError(f"--config {path}: {RETIRED[name]}")
        if name not in by_name:
            raise ConfigError(f"--config {path}: unknown field {key!r}")
        try:
            out[name] = None if value is None else _type_of(by_name[name])(value)
        except (TypeError, ValueError, argparse.ArgumentTypeError):
            raise ConfigError(f"--config {path}: field {key!r} has a bad value {value!r}") from None
    return out


def demo_notice(preset: dict) -> str:
    """The sentence a demo run starts with: the fields the preset set (those not given)."""
    fields_set = ", ".join(f"{_flag(f)[2:]}={preset[f.name]}" for f in fields(TrainConfig) if f.name in preset)
    return (f"no --data: this is the embedded demo on scikit-learn's digits (minutes on a CPU); its preset set "
            f"{fields_set or 'nothing (every field was given)'}; for a real run pass --data (an ImageNet-layout "
            "folder, or fashion-mnist) and see docs/training.md")


def load_config(argv=None, world_size: int = 1, notices: Optional[list] = None) -> TrainConfig:
    """Parse flags (and ``--config``), apply the demo preset when there is no data, validate.
    ``notices``: a list that gets the sentences the run should print first (the demo's)."""
    args = vars(parser().parse_args(argv))
    args.pop("_local_rank", None)
    for name in RETIRED:
        if args.pop("_retired_" + name, None) is not None:
            raise ConfigError("bad configuration:\n  " + RETIRED[name])
    yaml_path = args.pop("config", None)
    given = {**(_from_yaml(yaml_path) if yaml_path else {}), **args}
    demo = given.get("data") is None and given.get("data_backend") != "synthetic"
    values = dict(DEMO) if demo else {}
    values.update(RECIPES.get(given.get("recipe", "paper"), {}))  # an unknown recipe: validate() says so
    values.update(given)
    if demo and notices is not None:
        notices.append(demo_notice({k: v for k, v in DEMO.items() if k not in given}))
    try:
        config = TrainConfig(**values)
    except TypeError as exc:
        raise ConfigError(f"bad configuration: {exc}") from None
    return validate(config, world_size)

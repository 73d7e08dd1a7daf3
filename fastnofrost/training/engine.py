"""What a run's flags resolve to before DeepSpeed starts: the device defaults ('auto' precision,
data backend, channels_last and compile level), the DeepSpeed config, the parameter groups and
the optimizer. Used by ``fastnofrost/train.py`` and by the step benchmark, which builds the same
optimizer for the official baseline.
"""
import json
import logging
from typing import NamedTuple

import torch

from ..config import DATASETS, ConfigError, TrainConfig
from ..data.dali import import_dali
from ..device import cpu_bf16, cpu_bf16_missing

log = logging.getLogger("fastnofrost.train")

# What keeps DeepSpeed from synchronizing the device inside a step: its wall-clock timers (every
# forward, backward and step) and its throughput timer (every forward and step) off. Counted on
# CPU (its accelerator's synchronize calls, DeepSpeed 0.19.8): with the throughput timer on, 2 per
# step (12 while the attack's K forwards still ran the engine's forward hooks).
NO_SYNC = {"wall_clock_breakdown": False, "timers": {"throughput": {"enabled": False}}}

# --compile auto on CPU. Measured with `make train` (docs/training.md, "Compile"): compiling costs more
# than it saves in a CPU-sized run.
CPU_AUTO_COMPILE = "none"


def auto_precision(device: torch.device) -> tuple:
    """(precision, why) of ``--precision auto``: bf16 autocast on CUDA and on a CPU that computes
    bf16 natively (``device.cpu_bf16``), fp32 elsewhere."""
    if device.type == "cuda":
        return "bf16", "auto: bf16 autocast on CUDA"
    native = cpu_bf16()
    if native:
        return "bf16", f"auto: this CPU computes bf16 natively ({native})"
    return "fp32", f"auto: {cpu_bf16_missing()}"


def resolve_precision(cfg: TrainConfig, device: torch.device) -> tuple:
    """(precision, why): ``--precision`` as given, or auto's choice for the device."""
    if cfg.precision != "auto":
        return cfg.precision, "--precision " + cfg.precision
    return auto_precision(device)


def resolve_backend(cfg: TrainConfig, device: torch.device) -> tuple:
    """(data backend, why; '' when there is nothing to say): ``--data-backend`` as given, or
    auto's choice: DALI on the GPU for an image folder on CUDA when DALI imports, else torch."""
    backend = cfg.data_backend
    if backend == "dali-gpu" and device.type != "cuda":
        raise ConfigError("--data-backend dali-gpu needs a CUDA device; use dali-cpu or torch on CPU")
    if backend != "auto" or device.type != "cuda" or cfg.data in DATASETS:
        return ("torch" if backend == "auto" else backend), ""
    try:
        import_dali()
    except ImportError as exc:
        return "torch", f"data backend torch (auto: DALI does not import, so the CPU decodes every image: {exc})"
    return "dali-gpu", ""


class Resolved(NamedTuple):
    """A run's device defaults with 'auto' resolved: precision (and why), data backend (and why,
    or ''), channels_last, compile level."""
    precision: str
    why: str
    backend: str
    backend_why: str
    channels_last: bool
    compile: str


def resolve(cfg: TrainConfig, device: torch.device) -> Resolved:
    """The run's device defaults with 'auto' resolved for the device."""
    precision, why = resolve_precision(cfg, device)
    backend, backend_why = resolve_backend(cfg, device)
    channels_last = cfg.channels_last if cfg.channels_last is not None else device.type == "cuda"
    level = cfg.compile if cfg.compile != "auto" else ("full" if device.type == "cuda" else CPU_AUTO_COMPILE)
    return Resolved(precision, why, backend, backend_why, channels_last, level)


def micro_batch(cfg: TrainConfig, world: int) -> int:
    """Samples per rank per forward: the global batch over ranks and accumulation steps (the
    config checks that it divides)."""
    return cfg.batch_size // (world * cfg.grad_accum)


def deepspeed_config(cfg: TrainConfig, world: int, precision: str) -> dict:
    """The DeepSpeed config the flags describe, or ``--deepspeed-config`` checked against them."""
    micro = micro_batch(cfg, world)
    if cfg.deepspeed_config:
        with open(cfg.deepspeed_config) as fh:
            ds = json.load(fh)
        for section in ("bf16", "fp16"):
            if ds.get(section, {}).get("enabled"):
                raise ConfigError(f"--deepspeed-config: the '{section}' section casts the model itself; fastnofrost "
                                  "keeps fp32 weights and pixels and runs the model under autocast: use "
                                  '"torch_autocast": {"enabled": true, "dtype": "bfloat16"} (or float16) instead')
        ds.setdefault("train_batch_size", cfg.batch_size)
        ds.setdefault("train_micro_batch_size_per_gpu", micro)
        ds.setdefault("gradient_accumulation_steps", cfg.grad_accum)
        if (ds["train_batch_size"], ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"]) != (
                cfg.batch_size, micro, cfg.grad_accum):
            raise ConfigError("--deepspeed-config: train_batch_size / train_micro_batch_size_per_gpu / "
                              "gradient_accumulation_steps disagree with --batch-size and --grad-accum")
        ds.setdefault("zero_allow_untested_optimizer", True)
        for key, value in NO_SYNC.items():
            ds.setdefault(key, value)
        autocast = autocast_section(precision)
        if autocast and not ds.get("torch_autocast", {}).get("enabled"):
            ds["torch_autocast"] = autocast  # the file says nothing of autocast: --precision's
        elif ds.get("torch_autocast", {}).get("enabled"):
            from deepspeed.runtime.config import DtypeEnum  # DeepSpeed's own reading of the field

            dtype = ds["torch_autocast"].get("dtype", "bfloat16")
            if not autocast or DtypeEnum(dtype) != DtypeEnum(autocast["dtype"]):
                raise ConfigError(f"--deepspeed-config: torch_autocast's dtype {dtype} disagrees with --precision "
                                  f"{precision} (resolved)")
            ds["torch_autocast"].setdefault("lower_precision_safe_modules", [])
        for problem in config_problems(ds):
            log.warning(f"--deepspeed-config: {problem}")
        return ds
    ds = {"train_batch_size": cfg.batch_size, "train_micro_batch_size_per_gpu": micro,
          "gradient_accumulation_steps": cfg.grad_accum, "zero_optimization": {"stage": cfg.zero_stage},
          "zero_allow_untested_optimizer": True, "gradient_clipping": 0.0, "steps_per_print": 2**62, **NO_SYNC}
    if precision != "fp32":
        ds["torch_autocast"] = autocast_section(precision)
    return ds


def autocast_section(precision: str) -> dict:
    """DeepSpeed's ``torch_autocast`` for a resolved precision ({} for fp32): every gradient
    communicated in fp32 (no module in ``lower_precision_safe_modules``; docs/design.md)."""
    if precision == "fp32":
        return {}
    return {"enabled": True, "dtype": {"bf16": "bfloat16", "fp16": "float16"}[precision],
            "lower_precision_safe_modules": []}


def config_problems(ds: dict) -> list:
    """What in a DeepSpeed config synchronizes the device inside every step, or communicates
    gradients below fp32 (one sentence each; the generated config has none)."""
    problems = []
    if ds.get("wall_clock_breakdown"):
        problems.append("wall_clock_breakdown synchronizes the device at every forward, backward and step "
                        "(DeepSpeed's timers); set it to false for training speed")
    throughput = ds.get("timers", {}).get("throughput", {})
    if throughput.get("enabled", True) and throughput.get("synchronized", True):
        problems.append('DeepSpeed\'s throughput timer synchronizes the device at every forward and step; set '
                        '"timers": {"throughput": {"enabled": false}}')
    for section in ("flops_profiler", "comms_logger"):
        if ds.get(section, {}).get("enabled"):
            problems.append(f"{section} is enabled: it synchronizes the device while it measures")
    if ds.get("memory_breakdown"):
        problems.append("memory_breakdown reads device memory statistics at every forward and backward")
    if ds.get("torch_autocast", {}).get("lower_precision_safe_modules"):
        problems.append("torch_autocast.lower_precision_safe_modules communicates those modules' gradients in the "
                        "autocast dtype, the others' in fp32 (fastnofrost's default: [], every gradient in fp32)")
    return problems


def param_groups(cfg: TrainConfig, model: torch.nn.Module) -> list:
    """No weight decay on biases and other 1-d parameters (timm's recipe); with ``decay_all``
    (the official script) weight decay on every parameter."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if not cfg.decay_all and (p.ndim <= 1 or name.endswith(".bias")) else decay).append(p)
    return [{"params": decay, "weight_decay": cfg.wd}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(cfg: TrainConfig, groups: list, device: torch.device, ds_config: dict):
    """torch's SGD (nesterov) or AdamW, fused kernels on CUDA; None when the DeepSpeed config has
    an ``optimizer`` section (DeepSpeed then builds its own: FusedAdam, Lamb, OneBitAdam, ...)."""
    if "optimizer" in ds_config:
        return None
    fused = {"fused": True} if device.type == "cuda" else {}
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.peak_lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0,
                               **fused)
    return torch.optim.AdamW(groups, lr=cfg.peak_lr, **fused)

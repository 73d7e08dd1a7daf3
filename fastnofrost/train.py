"""Adversarial training of NF-ResNets (and BN / IN / dual-BN baselines) under DeepSpeed.

    deepspeed [--num_gpus N | --hostfile H] fastnofrost/train.py --data /imagenet --method nofrost
    python fastnofrost/train.py                      # the embedded demo: NoFrost on digits, CPU minutes
    python -m fastnofrost.train --help               # every flag, with its default

One step: the method's attack (the fused PGD loop, frozen weights, input gradients only), the
method's loss on the views (one forward for normalizer-free models; ``--views sequential``: a
forward and a backward per view), ``engine.backward``, ``engine.step``; ``--compile full``
compiles the attack step and the model's training forward and backward (``engine.compile``).
Around it: the recipe's SGD + cosine schedule, DeepSpeed's data parallelism, ZeRO and autocast
(``torch_autocast``: bf16, or fp16 with dynamic loss scaling), atomic checkpoints with exact
resume, validation (clean + PGD), logs, plots and a summary.
"""
import contextlib
import dataclasses
import json
import logging
import os
import sys
import time
from itertools import islice

if __name__ == "__main__" and __package__ in (None, ""):
    # run as a script: import the installed package, not this folder's modules as top-level ones
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(os.path.abspath(__file__))]

import torch

from fastnofrost.attacks import PGD, PRECISIONS
from fastnofrost.attacks.base import attack_compile_step
from fastnofrost.attacks.step import compiled_wrappers
from fastnofrost.config import ConfigError, TrainConfig, load_config, resume_changes, run_record
from fastnofrost.data import build_loader
from fastnofrost.methods import build_method
from fastnofrost.models import create_model
from fastnofrost.nn import group_weights
from fastnofrost import distributed
from fastnofrost.device import prepare
from fastnofrost.training.checkpoint import LATEST, Checkpoints, save_weights
from fastnofrost.training.engine import build_optimizer, deepspeed_config, micro_batch, param_groups, resolve
from fastnofrost.training.finite import LossWatch, TrainingError, check_weights
from fastnofrost.training.host import keep_large_buffers
from fastnofrost.training.logger import RunLog, plot, summary_table
from fastnofrost.training.preemption import EXIT_CODE, Preempted, Preemption
from fastnofrost.training.schedule import cosine_with_warmup
from fastnofrost.training.validate import (attack_units, best_scores, default_strong_examples, strong_record,
                                           strong_validation, target_classes, training_units, validate)

log = logging.getLogger("fastnofrost.train")
def _deepaugment(cfg, device):
    if cfg.deepaugment_edsr is None and cfg.deepaugment_cae is None:
        return None
    from fastnofrost.data.deepaugment import DeepAugment

    return DeepAugment.from_files(cfg.deepaugment_edsr, cfg.deepaugment_cae, device=device, seed=cfg.seed)


@dataclasses.dataclass
class RunState:
    """What a checkpoint carries besides DeepSpeed's own state: where the run is and what its
    validations found."""
    epoch: int = 0               # epochs finished
    batch: int = 0               # micro-batches of the current epoch done
    best_clean: float = -1.0
    best_robust: float = -1.0      # the validation attacks' worst case (PGD's accuracy with --val-attacks pgd)
    best_robust_pgd: float = -1.0  # PGD's: the choice PGD alone would make, logged beside
    val: list = dataclasses.field(default_factory=list)  # one dict per validation
    warnings: list = dataclasses.field(default_factory=list)  # {epoch, warning} of the validations

    @classmethod
    def from_checkpoint(cls, saved: dict) -> "RunState":
        """The state in a checkpoint's client state (not DeepSpeed's own keys); a field an older
        version did not save keeps its default."""
        return cls(**{f.name: saved[f.name] for f in dataclasses.fields(cls) if f.name in saved})


class Trainer:
    """One training run. ``__init__`` builds its parts in an order that matters: the run folder
    is checked before anything is written, the signal handlers come before the loaders fork,
    and the two seeds (one model initialisation for every rank, then per-rank randomness)."""

    def __init__(self, cfg: TrainConfig, device: torch.device, notices=()):
        self.cfg, self.device = cfg, device
        self.rank, self.world = distributed.rank(), distributed.world_size()
        resolved = resolve(cfg, device)
        self.precision, self.compile_level, self.backend = resolved.precision, resolved.compile, resolved.backend
        self.record = run_record(cfg, self.precision, self.backend, self.world)  # config.json
        self.resuming = self._check_run_dir()
        self.log = RunLog(cfg.run_dir, self.rank == 0, cfg.tensorboard, cfg.progress)
        for notice in notices:  # the demo preset's sentence: the run's first line
            self.log.info(notice)
        self.log.info(f"precision {self.precision} ({resolved.why})")
        if resolved.backend_why:
            self.log.info(resolved.backend_why)
        self.preemption = Preemption()  # before the loaders fork their workers
        torch.manual_seed(cfg.seed)  # the same initial weights on every rank
        self.method = self._build_method()
        self.train_loader, self.val_loader = self._build_loaders(resolved.backend, resolved.channels_last)
        self.strong_loader, self.n_strong = self._build_strong_loader(resolved.backend, resolved.channels_last)
        self.steps_per_epoch, self.total_steps = self._schedule()
        model = self._build_model(resolved.channels_last)
        # NF models: every WS layer standardized by one op, once per micro-batch (--ws per-layer: per use)
        self.group = group_weights(model) if cfg.ws == "grouped" else None
        torch.manual_seed(cfg.seed * 1000 + 1 + self.rank)  # dropout, drop-path, attacks: per rank
        self.engine, self.scheduler = self._build_engine(model)
        self.checkpoints = Checkpoints(os.path.join(cfg.run_dir, "checkpoints"), cfg.keep_last)
        self.state = RunState()
        # non-finite losses: read at log boundaries and saves (fp16: every step, to skip the batch)
        self.watch = LossWatch(device, skip_non_finite=self.precision == "fp16", say=self.log.info)
        self.started = time.time()
        self.images = 0

    # ------------------------------------------------------------------ builders
    def _check_run_dir(self) -> bool:
        """Whether this run continues the one in --out (--resume auto: when it holds a
        checkpoint). Refused before anything is written: a new run into a folder that holds one,
        --resume true without a checkpoint, and a resume that changes a field the saved run's
        data order, schedule or model depend on (config.RESUME_SAFE lists the others)."""
        cfg = self.cfg
        checkpoints = os.path.join(cfg.run_dir, "checkpoints")
        held = os.path.isfile(os.path.join(checkpoints, LATEST))
        resume = cfg.resume == "true" or (cfg.resume == "auto" and held)
        if cfg.resume == "false" and os.path.exists(checkpoints):
            raise ConfigError(f"{cfg.run_dir} already holds a run: pass --resume true (or auto) to continue it, "
                              "or a new --out")
        if resume and not held:
            raise ConfigError(f"--resume true: {checkpoints} holds no checkpoint (no {LATEST} file); "
                              "--resume auto starts the run when there is none")
        if resume:
            path = os.path.join(cfg.run_dir, "config.json")
            try:
                with open(path) as fh:
                    saved = json.load(fh)
            except (OSError, ValueError) as exc:
                raise ConfigError(f"--resume: cannot read the saved settings {path} ({exc})") from None
            changed = resume_changes(saved, self.record)
            if changed:
                raise ConfigError(f"--resume: {cfg.run_dir} was started with other values of fields its data order, "
                                  f"schedule or model depend on ({'; '.join(changed)}): resume with the saved values "
                                  f"({path}) or start a new run with another --out")
        distributed.barrier()  # every rank checked before rank 0 creates the folder
        return resume

    def _build_method(self):
        cfg = self.cfg
        attack = PGD(cfg.eps_pixels, cfg.steps, cfg.alpha_pixels, precision=self.precision,
                     compile_step=attack_compile_step(self.compile_level, self.device.type))
        return build_method(cfg.method, attack, cfg.smoothing, lam=cfg.lam, beta=cfg.beta, tau=cfg.tau,
                            gamma=cfg.mbnat_gamma, deepaugment=_deepaugment(cfg, self.device))

    def _build_loaders(self, backend: str, channels_last: bool):
        """(train loader, validation loader or None), each of this rank's micro-batches."""
        cfg = self.cfg
        common = dict(backend=backend, image_size=cfg.image_size, rank=self.rank, world_size=self.world,
                      seed=cfg.seed, channels_last=channels_last, device=self.device, workers=cfg.workers,
                      batch_size=micro_batch(cfg, self.world), index_dir=os.path.join(cfg.run_dir, "data-index"))
        train = build_loader(cfg.data, train=True, subset=cfg.train_examples, nofrost_star=self.method.needs_views,
                             **common)
        val = build_loader(cfg.data, train=False, subset=cfg.val_split_examples, **common) if cfg.val_every else None
        return train, val

    def _build_strong_loader(self, backend: str, channels_last: bool):
        """(loader, examples) of the validation attacks' worst case: a fixed subset spread over
        the validation set, this rank's share; (None, 0) without validation attacks."""
        cfg = self.cfg
        names = cfg.val_attacks.split(",")
        if self.val_loader is None or len(names) == 1:
            return None, 0
        from fastnofrost.evaluation.attacks import AttackSettings, build_attacks
        from fastnofrost.evaluation.data import validation_loader

        attacks = build_attacks(names, AttackSettings(eps=cfg.eps_pixels, steps=cfg.val_steps))
        targets = max(target_classes(a) for a in attacks.values())
        if targets >= self.train_loader.num_classes:  # before the first epoch, not at the first validation
            raise ConfigError(f"--val-attacks {cfg.val_attacks}: APGD-T targets the {targets} most likely other classes, "
                              f"and the data has {self.train_loader.num_classes}: leave apgd-t out")
        batch = micro_batch(cfg, self.world)
        n_train = len(self.train_loader) * batch * self.world
        n = cfg.val_strong_examples or default_strong_examples(n_train, cfg.steps, attacks.values())
        common = dict(image_size=cfg.image_size, batch_size=batch, device=self.device, workers=cfg.workers,
                      channels_last=channels_last)
        if backend == "synthetic":  # its own batches: the first n
            loader = build_loader(None, backend=backend, train=False, rank=self.rank, world_size=self.world,
                                  seed=cfg.seed, **common)
        else:
            loader, n, _ = validation_loader(cfg.data, backend=backend, n_examples=n, rank=self.rank, world=self.world,
                                             subset=cfg.val_split_examples,
                                             index_dir=os.path.join(cfg.run_dir, "data-index"), **common)
        share = n * sum(attack_units(a) for a in attacks.values()) / (n_train * training_units(cfg.steps))
        self.log.info(f"validation attacks {', '.join(names)} on {n} examples spread over the validation set: "
                      f"about {100 * share:.1f}% of an epoch's training FLOPs per validation")
        return loader, n

    def _schedule(self):
        """(optimizer steps per epoch, optimizer steps of the run)."""
        cfg = self.cfg
        per_epoch = len(self.train_loader) // cfg.grad_accum
        if per_epoch < 1:
            raise ConfigError(f"an epoch has {len(self.train_loader)} micro-batches per rank, fewer than "
                              f"--grad-accum {cfg.grad_accum}: no optimizer step")
        total = cfg.epochs * per_epoch
        return per_epoch, min(total, cfg.max_steps) if cfg.max_steps else total

    def _build_model(self, channels_last: bool) -> torch.nn.Module:
        cfg = self.cfg
        model = create_model(cfg.model, num_classes=self.train_loader.num_classes, width=cfg.width,
                             drop_rate=cfg.drop, drop_path_rate=cfg.drop_path)
        self.method.check_model(model)
        return model.to(self.device, memory_format=torch.channels_last if channels_last else torch.contiguous_format)

    def _build_engine(self, model: torch.nn.Module):
        """(DeepSpeed engine, lr scheduler): the optimizer and cosine schedule the flags describe."""
        import deepspeed

        cfg = self.cfg
        ds_config = deepspeed_config(cfg, self.world, self.precision)
        groups = param_groups(cfg, model)
        warmup = int(round(cfg.warmup_epochs * self.steps_per_epoch))
        factor = cosine_with_warmup(cfg.epochs * self.steps_per_epoch, warmup,
                                    self.steps_per_epoch if cfg.lr_schedule == "epoch" else 1)
        engine, _, _, scheduler = deepspeed.initialize(
            model=model, model_parameters=groups, optimizer=build_optimizer(cfg, groups, self.device, ds_config),
            lr_scheduler=lambda optimizer: torch.optim.lr_scheduler.LambdaLR(optimizer, factor), config=ds_config)
        if self.compile_level == "full":
            engine.compile()  # module.compile(): inductor for every forward and its backward, ZeRO hooks eager
        return engine, scheduler

    # ------------------------------------------------------------------ run
    def fit(self) -> dict:
        cfg = self.cfg
        if self.resuming:
            self.state = RunState.from_checkpoint(self.checkpoints.load(self.engine))
            self.log.info(f"resumed from step {self.engine.global_steps} (epoch {self.state.epoch + 1}, "
                          f"batch {self.state.batch})")
        elif self.rank == 0:
            with open(os.path.join(cfg.run_dir, "config.json"), "w") as fh:
                json.dump(self.record, fh, indent=1)
        self.log.info(f"{cfg.method} on {cfg.model} ({self._n_params() / 1e6:.2f}M parameters), {self.world} rank(s) "
                      f"on {self.device.type}, {self.precision}, {self.steps_per_epoch} steps/epoch, "
                      f"batch {cfg.batch_size}, lr {cfg.peak_lr:g}, eps {cfg.eps:g}/255 x {cfg.steps} steps, "
                      f"compile {self.compile_level}, {cfg.views} views, {cfg.ws} WS")
        try:
            while self._more_to_do():
                self._epoch(self.state.epoch)
                if self._more_to_do():
                    self._stop_if_preempted(save=False)  # the epoch's own checkpoint was just written
        except Preempted:
            self.log.close()
            raise
        finally:
            self.preemption.close()
        return self._finish()

    def _more_to_do(self) -> bool:
        return self.state.epoch < self.cfg.epochs and self.engine.global_steps < self.total_steps

    def _stop_if_preempted(self, save: bool) -> None:
        """After a SIGTERM / SIGUSR1 on any rank: every rank writes the checkpoint (unless one
        was just written) and stops (training/preemption.py). A collective: all ranks call it."""
        name = self.preemption.requested()
        if name is not None:
            if save:
                self._save()
            raise Preempted(name, self.engine.global_steps)

    def _epoch(self, epoch: int) -> None:
        cfg, engine = self.cfg, self.engine
        start = self.state.batch
        n_micro = self.steps_per_epoch * cfg.grad_accum
        self.train_loader.set_epoch(epoch, start)
        self.engine.train()
        self.log.start_epoch(epoch, cfg.epochs, self.steps_per_epoch, start // cfg.grad_accum)
        interval = _Interval(self.device)
        for index, batch in enumerate(islice(self.train_loader, n_micro - start), start=start):
            *views, y = batch
            # the loop's count of micro-batches is the one count: DeepSpeed is told each boundary
            boundary = (index + 1) % cfg.grad_accum == 0
            engine.set_gradient_accumulation_boundary(boundary)
            sequential = cfg.views == "sequential"  # a backward per view
            with self._weights(sequential) as group:
                backward = self._view_backward(boundary, group) if sequential else None
                out = self.method(engine, engine.module, views[0], y, views[1] if len(views) > 1 else None, backward)
                kept = self.watch.add(out.loss, out.parts, engine.global_steps + 1, epoch)
                if not out.backpropagated:  # fp16: a non-finite loss's batch adds a zero gradient instead
                    engine.backward(out.loss if kept else zero_loss(engine.module))
            engine.step()
            if kept:
                interval.add(out, len(y))
            self.images += len(y) * self.world
            if not boundary:
                continue
            step = engine.global_steps
            self.state.batch = index + 1
            postfix = None
            if step % cfg.log_every == 0 or self.state.batch == n_micro:
                self.watch.check()
                postfix = self._log_train(interval, step, epoch)
                interval = _Interval(self.device)
            self.log.advance(postfix)
            if step >= self.total_steps:
                break
            if self.state.batch < n_micro:  # an epoch's last step: its validation and save come first
                self._stop_if_preempted(save=True)
            if cfg.save_every and step % cfg.save_every == 0 and self.state.batch < n_micro:
                self._save()
        self.log.end_epoch()
        self.watch.check()
        self.train_loader.report()
        finished_epoch = self.state.batch >= n_micro
        if finished_epoch:
            self.state.epoch, self.state.batch = epoch + 1, 0
        last = self.state.epoch >= cfg.epochs or engine.global_steps >= self.total_steps
        if self.val_loader is not None and (last or (finished_epoch and (epoch + 1) % cfg.val_every == 0)):
            self._validate(epoch)
        self._save()

    def _weights(self, sequential: bool):
        """One micro-batch's standardized weights: one grouped forward for the attack and the
        training forward, one grouped backward (fastnofrost/nn/grouped.py); BN models have none."""
        if self.group is None:
            return contextlib.nullcontext()
        return self.group.step("several" if sequential else "one", cast=PRECISIONS[self.precision])

    def _view_backward(self, boundary: bool, group):
        """``backward(term, last)`` for sequential views: DeepSpeed reduces gradients (ZeRO 0/1 at
        the boundary, ZeRO 2 every backward) only after the last view of the last micro-batch,
        whose pass also runs the grouped WS backward."""
        def backward(term, last):
            if group is not None:
                group.last_pass(last)
            self.engine.set_gradient_accumulation_boundary(boundary and last)
            self.engine.backward(term)
        return backward

    def _log_train(self, interval, step, epoch) -> dict:
        values = interval.reduce()
        values.update(lr=self.scheduler.get_last_lr()[0], **compile_counts(self.compile_level))
        self.log.record("train", step=step, epoch=epoch, **values)
        return {k: v for k, v in values.items() if k in ("loss", "img_s") or k.startswith("acc_")}

    def _validate(self, epoch: int) -> None:
        cfg = self.cfg
        t0 = time.time()
        result = validate(self.engine.module, self.val_loader, eps=cfg.eps_pixels, steps=cfg.val_steps,
                          alpha=cfg.val_alpha_pixels,
                          examples=cfg.val_examples, precision=self.precision, device=self.device,
                          evaluation=self.method.evaluation,
                          compile_step=self.method.attack_settings.compile_step)
        warnings = []
        if self.strong_loader is not None:
            strong = strong_validation(self.engine.module, self.strong_loader, cfg.val_attacks.split(","),
                                       eps=cfg.eps_pixels, steps=cfg.val_steps, n_examples=self.n_strong,
                                       seed=cfg.seed, precision=self.precision, batch_size=micro_batch(cfg, self.world),
                                       compile_level="none" if self.compile_level == "none" else "attack",
                                       device=self.device, evaluation=self.method.evaluation)
            result.update(strong_record(strong["report"]))
            warnings = strong["warnings"]
        scores = best_scores(result)
        improved = {key: value > getattr(self.state, f"best_{key}") for key, value in scores.items()}
        result.update(epoch=epoch, step=self.engine.global_steps, seconds=time.time() - t0, warnings=warnings,
                      **{f"best_{key}": better for key, better in improved.items()})
        self.state.val.append(result)
        self.log.record("val", **result)
        line = (f"epoch {epoch + 1}: validation clean {result['clean']:.2f}% ({result['n_clean']}), "
                f"PGD-{cfg.val_steps} {result['robust']:.2f}% ({result['n_robust']})")
        if "worst" in result:
            line += (f"; worst case of {cfg.val_attacks} {result['worst']:.2f}% ({result['strong_n']}; PGD there "
                     f"{result['strong_pgd']:.2f}%, masking gap {result['masking_gap']:.2f} points)")
        self.log.info(line)
        for warning in warnings:
            self.log.warning(f"epoch {epoch + 1}: {warning}", self.engine.global_steps)
            self.state.warnings.append({"epoch": epoch, "warning": warning})
        for key, better in improved.items():
            if better:
                setattr(self.state, f"best_{key}", scores[key])
                if self.rank == 0 and key != "robust_pgd":
                    save_weights(self.engine.module, os.path.join(cfg.run_dir, f"best_{key}.safetensors"))
        if self.rank == 0:
            plot(cfg.run_dir)

    def _save(self) -> None:
        self.watch.check()
        check_weights(self.engine.module, self.engine.global_steps)
        self.checkpoints.save(self.engine, f"step{self.engine.global_steps}", dataclasses.asdict(self.state))

    def _finish(self) -> dict:
        cfg = self.cfg
        if self.rank == 0:
            save_weights(self.engine.module, os.path.join(cfg.run_dir, "final.safetensors"))
        seconds = time.time() - self.started
        last = self.state.val[-1] if self.state.val else {}
        summary = {"method": cfg.method, "model": cfg.model, "data": cfg.data, "steps": self.engine.global_steps,
                   "epochs": self.state.epoch, "wall_s": seconds, "img_s": self.images / max(seconds, 1e-9),
                   "clean": last.get("clean"), "robust": last.get("robust"),
                   "worst": last.get("worst"), "masking_gap": last.get("masking_gap"),
                   "best_clean": self.state.best_clean, "best_robust": self.state.best_robust,
                   "best_robust_pgd": self.state.best_robust_pgd, "warnings": self.state.warnings,
                   "world_size": self.world, "ranks_in_sync": distributed.in_sync(self.engine.module),
                   "compile": self.compile_level, "views": cfg.views, "ws": cfg.ws, **compile_counts(self.compile_level),
                   "run_dir": cfg.run_dir}
        pct = lambda v: "-" if v is None or v < 0 else f"{v:.2f}%"  # noqa: E731
        self.log.info(summary_table([
            ("method / model", f"{cfg.method} / {cfg.model}"), ("data", str(cfg.data)),
            ("steps (epochs)", f"{summary['steps']} ({summary['epochs']})"),
            ("wall time", f"{seconds:.1f} s"), ("throughput", f"{summary['img_s']:.1f} img/s (this run, all ranks)"),
            ("final clean", pct(summary["clean"])), (f"final PGD-{cfg.val_steps}", pct(summary["robust"])),
            ("final worst case", f"{pct(summary['worst'])} ({cfg.val_attacks})"),
            ("best clean / robust", f"{pct(summary['best_clean'])} / {pct(summary['best_robust'])} (PGD's best "
                                    f"{pct(summary['best_robust_pgd'])})"),
            ("masking check", f"{len(self.state.warnings)} warning(s)" + (
                f", the last: epoch {self.state.warnings[-1]['epoch'] + 1}: {self.state.warnings[-1]['warning']}"
                if self.state.warnings else "")),
            ("ranks in sync", f"{summary['ranks_in_sync']} ({self.world} rank(s))"),
            ("outputs", cfg.run_dir)]))
        if self.rank == 0:
            with open(os.path.join(cfg.run_dir, "summary.json"), "w") as fh:
                json.dump(summary, fh, indent=1)
        self.log.close()
        return summary

    def _n_params(self) -> int:
        return sum(p.numel() for p in self.engine.module.parameters())


def zero_loss(module: torch.nn.Module) -> torch.Tensor:
    """A loss whose gradient is zero for every parameter: the backward of an fp16 batch skipped
    for its non-finite loss. It reaches every parameter, so DeepSpeed's gradient hooks and its
    reduction at the boundary run as for any batch, and the micro-batch counts on: the window's
    step goes on with the other batches' gradients (with --grad-accum 1: a step of zero
    gradient, momentum and weight decay only)."""
    return torch.stack([p.view(-1)[0] for p in module.parameters() if p.requires_grad]).sum() * 0.0


def compile_counts(level: str) -> dict:
    """Graphs dynamo compiled so far in this process, its graph breaks and its compiled
    wrappers (``torch.compile`` calls that ran: dynamo's backend cache); none: {}. After warm-up
    (the first epoch and validation) every count stays put: no recompiles, no new wrapper."""
    if level == "none":
        return {}
    from torch._dynamo.utils import counters

    return {"graphs": counters["stats"]["unique_graphs"], "graph_breaks": sum(counters["graph_break"].values()),
            "compiles": compiled_wrappers()}


class _Interval:
    """Loss parts and correct counts summed on the device between two log lines (no sync per step)."""

    def __init__(self, device):
        self.device, self.sums, self.images, self.t0 = device, {}, 0, time.time()

    def add(self, out, n: int) -> None:
        self.images += n
        items = {"loss": out.loss.detach() * n, **{f"loss_{k}": v * n for k, v in out.parts.items()},
                 **{f"acc_{k}": v for k, v in out.correct.items()}}
        for key, value in items.items():
            self.sums[key] = self.sums.get(key, 0) + value.float()

    def reduce(self) -> dict:
        keys = sorted(self.sums)
        totals = distributed.all_sum([self.sums[k] for k in keys] + [self.images], self.device)
        images = max(totals[-1], 1)
        values = {k: (100.0 if k.startswith("acc_") else 1.0) * v / images for k, v in zip(keys, totals)}
        values["img_s"] = totals[-1] / max(time.time() - self.t0, 1e-9)
        return values


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("DeepSpeed", "deepspeed"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        notices = []
        cfg = load_config(argv, world_size=int(os.environ.get("WORLD_SIZE", "1")), notices=notices)
        device = prepare(distributed.pick_device(cfg.device))
    except (ConfigError, RuntimeError) as exc:
        print(f"fastnofrost/train.py: {exc}", file=sys.stderr)
        return 2
    distributed.init(device.type)
    if device.type == "cpu":
        keep_large_buffers()  # activations reused across the K + 2 passes, not re-faulted each time
    try:
        Trainer(cfg, device, notices).fit()
    except (ConfigError, TrainingError, FileNotFoundError) as exc:
        print(f"fastnofrost/train.py: {exc}", file=sys.stderr)
        return 1
    except Preempted as stop:
        print(f"fastnofrost/train.py: {stop}", file=sys.stderr)
        return EXIT_CODE
    finally:
        distributed.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())

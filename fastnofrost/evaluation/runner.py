"""One pass over this rank's examples per attack or metric, timed, with a progress bar.

Time counts the attack (or metric) and the prediction on its output, not the data loading;
on CUDA the device is synchronized before the clock is read.
"""
import sys
import time
from typing import Callable, Dict

import torch
from tqdm import tqdm

from ..attacks.base import predict
from .attacks import check_in_ball

PerSample = Dict[str, torch.Tensor]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def sweep(desc: str, examples, fn: Callable[[torch.Tensor, torch.Tensor], PerSample], *, total=None,
          progress: bool = True):
    """Run ``fn(x, y) -> {key: (B,) tensor}`` over every batch; returns ({key: (n,) CPU tensor},
    seconds spent inside ``fn``)."""
    parts, seconds, hits, seen = {}, 0.0, 0, 0
    with tqdm(total=total, desc=desc, unit="ex", disable=not progress, file=sys.stderr, dynamic_ncols=True) as bar:
        for x, y in examples:
            _sync(x.device)
            start = time.perf_counter()
            out = fn(x, y)
            _sync(x.device)
            seconds += time.perf_counter() - start
            for key, value in out.items():
                parts.setdefault(key, []).append(value.detach().cpu())
            if progress and "correct" in out:  # running accuracy on the attacked (or clean) inputs
                hits, seen = hits + int(parts["correct"][-1].sum()), seen + parts["correct"][-1].numel()
                bar.set_postfix(acc=f"{100 * hits / max(seen, 1):.2f}%")
            bar.update(x.shape[0])
    return {key: torch.cat(values) for key, values in parts.items()}, seconds


def clean_pass(model, examples, *, precision: str = "fp32", total=None, progress: bool = True):
    """Per-sample correctness on the clean inputs."""
    def correct(x, y):
        return {"correct": predict(model, x, precision).argmax(1) == y}

    return sweep("clean", examples, correct, total=total, progress=progress)


def attack_pass(name: str, attack, model, examples, *, eps: float, precision: str = "fp32", total=None,
                progress: bool = True):
    """Per-sample correctness on ``attack``'s outputs and their L-inf distance to the inputs;
    raises if an output leaves the eps-ball or [0, 1]."""
    def correct(x, y):
        x_adv = attack(model, x, y)
        check_in_ball(name, x_adv, x, eps)
        linf = (x_adv - x).abs().flatten(1).amax(1)
        return {"correct": predict(model, x_adv, precision).argmax(1) == y, "linf": linf}

    return sweep(name, examples, correct, total=total, progress=progress)


def metric_pass(name: str, metric, model, examples, *, total=None, progress: bool = True):
    """Per-sample values of ``metric(model, x, y) -> (B,) tensor``."""
    return sweep(name, examples, lambda x, y: {"value": metric(model, x, y)}, total=total, progress=progress)

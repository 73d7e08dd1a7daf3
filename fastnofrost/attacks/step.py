"""The model forward of an attack step: the model's own ``forward``, eager or compiled once.

An attack runs ``forward(x_adv)`` once per step with frozen weights (:func:`.base.attack_mode`).
That forward is the bare model's ``forward``, not ``model(...)``:

- the hooks of the top module are the training step's: DeepSpeed's engine registers its forward
  timers and profiler there, and an attack's K forwards are not K training forwards;
- a module compiled for training (``engine.compile()`` is ``module.compile()``: inductor's default
  mode on ``Module._call_impl``) keeps that compiled call for training: an attack never runs a
  compiled module inside its own compiled step (no compile nested in another, no module
  compiled under two modes).

Compiled (``compile_step`` True or a torch.compile mode), the step is one function,
:func:`_forward`, compiled once per mode per process (:data:`COMPILED`) and called with the
model as an argument. Every attack of a run (training's, validation's, after a resume) and of
an evaluation reuses it; dynamo's cache on :func:`_forward`'s code object holds one graph per
model state the attacks use (eval mode, autocast dtype, grad mode, input shape), apart from
training's graphs. Before a compiled step the standardized weights are computed eagerly into
persistent buffers (:func:`~fastnofrost.nn.fill_cache`; why, and what it means for CUDA graphs:
the module doc of :mod:`fastnofrost.nn.frozen`). Under 'reduce-overhead' (CUDA graphs) each
output is overwritten by the graph's next replay: whatever an attack keeps across steps is a
copy (``Precision.logits(keep=True)``, :mod:`.base`).
"""
import functools
from typing import Callable, Dict, Optional

import torch
import torch.nn as nn

from ..nn.frozen import fill_cache

COMPILED: Dict[Optional[str], Callable] = {}  # torch.compile mode (None: default) -> the compiled step


def _forward(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model.forward(x)


def bare(model: nn.Module) -> nn.Module:
    """The module under a ``torch.compile(model)`` wrapper (its ``_orig_mod``), else ``model``."""
    return getattr(model, "_orig_mod", model)


def step_forward(model: nn.Module, compile_step, precision, device_type: str, cache_weights: bool = True):
    """``forward(x)`` of one attack's steps: eager, or the one compiled step (``True`` or a
    torch.compile mode such as 'reduce-overhead', CUDA graphs on CUDA).

    Called inside :func:`.base.attack_mode`. For a compiled step the standardized weights are
    computed here, eagerly, under the attack's precision; without ``cache_weights`` the
    compiled step standardizes inside its graph."""
    model = bare(model)
    if compile_step is False:
        return functools.partial(_forward, model)
    if cache_weights:
        with precision.autocast(device_type):
            fill_cache(model)
    mode = None if compile_step is True else compile_step
    step = COMPILED.get(mode)
    if step is None:
        step = COMPILED[mode] = torch.compile(_forward, mode=mode)
    return functools.partial(step, model)


def compiled_wrappers() -> int:
    """How many torch.compile wrappers of this process have run (dynamo's backend cache, less
    its entry for disabled code): flat after warm-up when everything is compiled once."""
    from torch._dynamo.eval_frame import cached_backends

    return sum(backend is not None for backend in cached_backends.values())

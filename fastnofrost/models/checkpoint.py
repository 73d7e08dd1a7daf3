"""Safe checkpoint loading: timm state dicts, official NoFrost checkpoints, ours, safetensors.

Nothing is unpickled beyond tensors and plain containers: ``.pt`` / ``.pth`` files go through
``torch.load(weights_only=True)``, safetensors files through ``safetensors``. Accepted layouts:

* a state dict (timm's ``model.state_dict()``, ``torch.save``-d or safetensors);
* a dict holding it under ``model`` (our training checkpoints), ``state_dict`` or ``module``
  (DeepSpeed), next to other entries (epoch, optimizer, ...) that are ignored;
* keys prefixed by ``module.`` (DDP / DataParallel, as the official NoFrost checkpoints) or
  ``_orig_mod.`` (``torch.compile``): the prefix is removed.

Input-normalization buffers absent from the checkpoint (timm and official checkpoints have
none) keep the model's values.
"""
import os
import pickle
import warnings
from typing import List, Mapping, NamedTuple, Union

import torch
import torch.nn as nn

from .normalize import InputNormalize

_HOLDER_KEYS = ("model", "state_dict", "module")
_PREFIXES = ("module.", "_orig_mod.")
_SHOWN = 10  # keys listed per error line


class LoadResult(NamedTuple):
    missing: List[str]  # model keys the checkpoint lacks (left as they were)
    unexpected: List[str]  # checkpoint keys the model lacks (ignored)
    kept_normalization: List[str]  # input-normalization buffers absent from the checkpoint


def _is_safetensors(path: str) -> bool:
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{"  # 8-byte little-endian header size, then JSON


def _read(path: str) -> Mapping:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"load_checkpoint: no such file: {path}")
    if _is_safetensors(path):
        from safetensors.torch import load_file

        return load_file(path, device="cpu")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise RuntimeError(
            f"load_checkpoint: refusing to load {path}: it holds pickled objects other than tensors and plain "
            "containers, which could run code when unpickled (loaded with weights_only=True). Re-save only the "
            f"state dict (torch.save(model.state_dict(), path)) if you trust its source. Details: "
            f"{str(exc).splitlines()[0]}") from None


def _state_dict(obj, source: str) -> Mapping[str, torch.Tensor]:
    if not isinstance(obj, Mapping):
        raise ValueError(f"load_checkpoint: {source} is not a state dict or a dict holding one "
                         f"(got {type(obj).__name__})")
    for key in _HOLDER_KEYS:
        if isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise ValueError(f"load_checkpoint: {source} is not a state dict: entry {bad[0]!r} holds "
                         f"{type(obj[bad[0]]).__name__}, not a tensor (holders looked for: {', '.join(_HOLDER_KEYS)})")
    changed = True
    while changed and obj:
        changed = False
        for prefix in _PREFIXES:
            if all(k.startswith(prefix) for k in obj):
                obj = {k[len(prefix):]: v for k, v in obj.items()}
                changed = True
    return obj


def _listed(keys: List[str]) -> str:
    more = f", ... ({len(keys) - _SHOWN} more)" if len(keys) > _SHOWN else ""
    return ", ".join(keys[:_SHOWN]) + more


def load_checkpoint(model: nn.Module, checkpoint: Union[str, os.PathLike, Mapping],
                    strict: bool = True) -> LoadResult:
    """Load weights into ``model`` from a file path (or an in-memory state dict / checkpoint dict).

    ``strict``: missing or unexpected keys raise (listing them); otherwise they are warned
    about, the matching keys load, and the lists are returned. Shape mismatches always raise.
    """
    source = "the given dict" if isinstance(checkpoint, Mapping) else os.fspath(checkpoint)
    state = _state_dict(checkpoint if isinstance(checkpoint, Mapping) else _read(source), source)
    own = model.state_dict()
    norm_keys = {f"{name}.{buf}" if name else buf
                 for name, m in model.named_modules() if isinstance(m, InputNormalize)
                 for buf, _ in m.named_buffers(recurse=False)}
    kept = [k for k in own if k in norm_keys and k not in state]
    missing = [k for k in own if k not in state and k not in norm_keys]
    unexpected = [k for k in state if k not in own]
    mismatched = [f"{k} {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                  for k in state if k in own and state[k].shape != own[k].shape]
    if mismatched:
        raise ValueError(f"load_checkpoint: {source} does not fit {type(model).__name__}: {len(mismatched)} "
                         f"shape mismatch(es): {_listed(mismatched)}")
    if missing or unexpected:
        message = (f"load_checkpoint: {source} does not match {type(model).__name__}: "
                   f"{len(missing)} missing key(s) [{_listed(missing)}], "
                   f"{len(unexpected)} unexpected key(s) [{_listed(unexpected)}]")
        if strict:
            raise RuntimeError(message + "; pass strict=False to load the matching keys anyway")
        warnings.warn(message, stacklevel=2)
    model.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
    return LoadResult(missing, unexpected, kept)

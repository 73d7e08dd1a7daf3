"""Model registry: ``create_model(name, ...)`` and ``list_models()``."""
import inspect
from typing import Callable, Dict, List, Optional

import torch.nn as nn

from .checkpoint import load_checkpoint

_BUILDERS: Dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str, builder: Callable[..., nn.Module]) -> None:
    """Make ``builder(num_classes=..., drop_rate=..., drop_path_rate=..., **kw)`` available as ``name``."""
    if name in _BUILDERS:
        raise ValueError(f"register_model: a model named {name!r} is already registered")
    _BUILDERS[name] = builder


def list_models() -> List[str]:
    """Names accepted by :func:`create_model`, sorted."""
    return sorted(_BUILDERS)


def create_model(name: str, num_classes: int = 1000, drop_rate: float = 0.0, drop_path_rate: float = 0.0,
                 pretrained_path: Optional[str] = None, **kwargs) -> nn.Module:
    """Build model ``name`` (see :func:`list_models`); load ``pretrained_path`` if given
    (any format :func:`fastnofrost.models.load_checkpoint` accepts).

    Extra keyword arguments go to the model: ``in_chans``, ``width`` (channel multiplier),
    ``mean`` / ``std`` (input normalization, ImageNet's by default).
    """
    if name not in _BUILDERS:
        raise ValueError(f"create_model: unknown model {name!r}; available: {', '.join(list_models())}")
    builder = _BUILDERS[name]
    kwargs.update(num_classes=num_classes, drop_rate=drop_rate, drop_path_rate=drop_path_rate)
    accepted = inspect.signature(builder).parameters
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise TypeError(f"create_model({name!r}): unexpected argument(s) {', '.join(unknown)}; "
                        f"accepted: {', '.join(accepted)}, pretrained_path")
    model = builder(**kwargs)
    if pretrained_path is not None:
        load_checkpoint(model, pretrained_path)
    return model

"""Where a weight-standardized conv's weight comes from: one object per layer, one decision.

Every :class:`~fastnofrost.nn.std_conv._WSConv2d` holds a :class:`WeightSource` (``layer.source``)
and reads its standardized weight through :meth:`WeightSource.weight`, the one place that
decides between:

- ``"frozen"``: inside :func:`~fastnofrost.nn.frozen_weights` (every attack): standardized once,
  detached, in the attack's autocast dtype, kept in ``frozen`` until a parameter changes (its
  ``key``: each parameter's identity and version, and the dtype); a grouped layer's group fills
  every layer at once. A compiled attack reads ``frozen`` as :func:`~fastnofrost.nn.fill_cache`
  left it (in the persistent ``store``), with no key to trace (module doc of
  :mod:`fastnofrost.nn.frozen`);
- ``"step"``: inside its group's :meth:`~fastnofrost.nn.WeightGroup.step` (a training step): the
  group's view for this layer, made when the step opened, in the step's dtype;
- ``"own"``: otherwise, the layer's own WS op at every forward.

The source's fields are the whole state: a test reads ``layer.source.kind()``, ``frozen``,
``store`` and ``group`` instead of hidden attributes.
"""
from typing import Optional

import torch

from . import frozen as _frozen


class WeightSource:
    """The state behind one layer's standardized weight (see the module doc)."""

    def __init__(self):
        self.group = None                      # the layer's WeightGroup (nn/grouped.py), or None
        self.index = -1                        # its place in the group
        self.frozen: Optional[torch.Tensor] = None  # this frozen context's weight
        self.key: tuple = ()                   # what ``frozen`` was computed from
        self.store: Optional[torch.Tensor] = None   # fill_cache's persistent buffer (ungrouped layers)

    def kind(self) -> str:
        """'frozen', 'step' or 'own': where :meth:`weight` takes the weight from now."""
        if _frozen.is_frozen():
            return "frozen"
        if self.group is not None and self.group.is_open():
            return "step"
        return "own"

    def weight(self, layer) -> torch.Tensor:
        """``layer``'s standardized weight, from where :meth:`kind` says."""
        kind = self.kind()
        if kind == "frozen":
            if torch.compiler.is_compiling() and self.frozen is not None:
                return self.frozen  # filled eagerly by fill_cache: nothing to check or trace
            cast = _frozen.autocast_dtype(layer.weight.device.type)
            key = self.key_of(layer, cast)
            if self.frozen is None or self.key != key:
                if self.group is not None:  # every layer of the group at once
                    self.group.fill_frozen(cast)
                else:
                    with torch.no_grad(), torch.autocast(layer.weight.device.type, enabled=False):
                        w = layer.own_weight()
                        self.remember(layer, w if cast is None else w.to(cast), cast)
            return self.frozen
        if kind == "step":
            return self.group.view(self.index, layer.weight.device.type)
        return layer.own_weight()

    @staticmethod
    def key_of(layer, cast) -> tuple:
        params = [p for p in (layer.weight, getattr(layer, "gain", None)) if p is not None]
        return tuple((id(p), p._version) for p in params) + (cast,)

    def remember(self, layer, w: torch.Tensor, cast) -> torch.Tensor:
        """Keep ``w`` (detached, in the attack dtype ``cast``) as the frozen weight of this
        context (a leaf requiring grad under ``frozen_weights(leaves=True)``)."""
        self.frozen, self.key = _frozen.enter(layer, w), self.key_of(layer, cast)
        return w

    def forget(self) -> None:
        self.frozen, self.key = None, ()

"""Grouped weight standardization: every WS layer of a model standardized by one op, once per step.

A training step reads each standardized weight up to three times: in the attack (frozen), in
the training forward and in its backward. Per layer, that is three WS launches per layer per
step (159 for an NF-ResNet-50). The weights only change at the optimizer step, so a model that
opts in (:func:`group_weights`) standardizes all of them at once::

    group = group_weights(model)           # once; ScaledStdConv2d alone stays a drop-in
    with group.step():                     # ONE grouped forward (no graph yet)
        x_adv = pgd(model, x, y, ...)      # frozen: reads them detached, cast once to its dtype
        loss = ce(model(x_adv), y)         # training forward: reads them attached to their graph
        loss.backward()                    # ONE grouped backward: every weight's and gain's grad

Inside the step a training forward under autocast reads the weights cast once, for all layers
(one cast, not one per layer). Outside a step, a frozen context (every attack and evaluation)
fills all layers' caches from one grouped forward; a plain forward runs the per-layer op.

The attached views are the outputs of one autograd node (:func:`fastnofrost.ops.ws_grouped.attach`),
so the backward receives each layer's gradient where the conv left it; no concatenation.

Several backward passes in one step (``--views sequential``: one per view) would each run the
grouped backward, and the second would find its graph freed. ``step(passes="several")`` reads
the weights through one detached leaf instead; each pass adds its gradient there, and the pass
marked last (:meth:`WeightGroup.last_pass`) runs the one grouped backward with the sum, inside
that pass, so DeepSpeed's gradient hooks see every gradient before its boundary.
"""
import contextlib
import functools
from typing import List, Optional

import torch

from ..ops.ws_grouped import attach, check_group, grouped_forward, split_shaped
from .frozen import autocast_dtype, remember


class WeightGroup:
    """The weight-standardized layers of one model, in module order (see the module doc)."""

    def __init__(self, layers: list):
        self.layers = layers
        self.flat: Optional[torch.Tensor] = None      # this step's standardized weights, one buffer (no graph)
        self._stats = None                            # this step's (mean, rstd), for attach's backward
        self._views: dict = {}                        # dtype -> per-layer views of flat (cast once)
        self._store: Optional[torch.Tensor] = None    # fill_store's persistent buffer (compiled attacks)
        self._leaf = self._pending = None             # passes="several": the detached leaf, its gradient so far
        self._last = False
        self.scales = [layer.scale for layer in layers]  # fixed at construction of each layer
        self.eps = [layer.eps for layer in layers]

    # ------------------------------------------------------------ the grouped op
    def params(self):
        return ([layer.weight for layer in self.layers], [layer.gain for layer in self.layers])

    def check(self) -> None:
        """One clear error for a model whose layers cannot be grouped (mixed dtypes or devices)."""
        weights, gains = self.params()
        check_group(weights, gains, self.scales, self.eps)

    def standardize(self):
        """``(flat, mean, rstd)``: every standardized weight in one flat buffer (weight after
        weight, memory order), without a graph (:meth:`_attach` gives it one)."""
        weights, gains = self.params()
        return grouped_forward(weights, gains, self.scales, self.eps)

    def _attach(self, flat: torch.Tensor, stats, cast) -> List[torch.Tensor]:
        """The per-layer weights of ``flat``, cast once to ``cast``, with their gradient through
        one grouped backward."""
        weights, gains = self.params()
        return attach(flat, *stats, weights, gains, self.scales, cast)

    def _split(self, flat: torch.Tensor) -> List[torch.Tensor]:
        return split_shaped(flat, [layer.weight for layer in self.layers])

    # ------------------------------------------------------------ one step
    @contextlib.contextmanager
    def step(self, passes: str = "one"):
        """Standardize every weight once for what runs inside (an attack, the training forward,
        its backward). ``passes="several"``: the step runs several backward passes (sequential
        views); mark the last one with :meth:`last_pass`."""
        if passes not in ("one", "several"):
            raise ValueError(f"passes must be 'one' or 'several', got {passes!r}")
        if self.flat is not None:
            raise RuntimeError("WeightGroup.step() is already open: steps do not nest")
        flat, *stats = self.standardize()
        self.flat, self._stats = flat, stats
        if passes == "several" and torch.is_grad_enabled() and any(w.requires_grad for w in self.params()[0]):
            self._leaf = flat.detach().requires_grad_()
            self._leaf.register_hook(functools.partial(self._leaf_grad, flat, stats))
            self._pending, self._last = None, False
        try:
            yield self
        finally:
            self.flat, self._stats, self._views, self._leaf, self._pending = None, None, {}, None, None

    def last_pass(self, last: bool) -> None:
        """Before each backward pass of a ``passes="several"`` step: is it the last one? (a
        Python bool: the caller knows which view it backpropagates)"""
        self._last = last

    def _leaf_grad(self, flat, stats, grad):
        total = grad if self._pending is None else self._pending + grad
        if self._last:
            self._pending = None
            with torch.enable_grad():  # a hook runs without grad mode; the node needs it
                views = self._attach(flat, stats, None)
            torch.autograd.backward(views, self._split(total))  # the one grouped backward, inside the last pass
        else:
            self._pending = total
        return torch.zeros((), dtype=grad.dtype, device=grad.device).expand_as(grad)  # leaf keeps no grad

    def weight(self, index: int) -> torch.Tensor:
        """Layer ``index``'s standardized weight for a training forward of this step, in the
        autocast dtype when autocast is on (all layers cast in one op, on first read)."""
        cast = autocast_dtype(self.layers[index].weight.device.type)
        views = self._views.get(cast)
        if views is None:
            if self._leaf is None:
                views = self._attach(self.flat, self._stats, cast)
            else:
                views = self._split(self._leaf if cast is None else self._leaf.to(cast))
            self._views[cast] = views
        return views[index]

    # ------------------------------------------------------------ frozen contexts (attacks)
    def _frozen_flat(self, cast) -> torch.Tensor:
        """This step's weights detached (or one grouped forward outside a step), cast once."""
        with torch.no_grad():
            flat = self.flat if self.flat is not None else self.standardize()[0]
            return flat if cast is None else flat.to(cast)

    def _remember(self, flat: torch.Tensor, cast) -> None:
        for layer, w in zip(self.layers, self._split(flat)):
            remember(layer, w, cast)

    def fill_frozen(self, cast) -> None:
        """Every layer's frozen cache from one grouped forward (or this step's, detached), cast
        once to the attack dtype ``cast`` (None: the weights' own)."""
        self._remember(self._frozen_flat(cast), cast)

    def fill_store(self, cast) -> None:
        """:meth:`fill_frozen` into one persistent buffer, for :func:`fill_cache`."""
        flat, store = self._frozen_flat(cast), self._store
        if store is None or (store.shape, store.dtype, store.device) != (flat.shape, flat.dtype, flat.device):
            store = self._store = flat.clone()
        else:
            store.copy_(flat)
        self._remember(store, cast)


def weight_group(model: torch.nn.Module) -> Optional[WeightGroup]:
    """The group ``model``'s layers belong to (:func:`group_weights`), or None."""
    for module in model.modules():
        entry = module.__dict__.get("_ws_group")
        if entry is not None:
            return entry[0]
    return None


def group_weights(model: torch.nn.Module) -> Optional[WeightGroup]:
    """Opt ``model`` in: its weight-standardized layers (ours, or timm's after
    :func:`convert_timm`; those built with ``backend="reference"`` stay per layer) are
    standardized together from now on. Returns the group (the same
    one on a second call), or None when the model has no such layer."""
    from .std_conv import _WSConv2d

    existing = weight_group(model)
    if existing is not None:
        return existing
    layers = [m for m in model.modules() if isinstance(m, _WSConv2d) and m.backend == "fused"]
    if not layers:
        return None
    group = WeightGroup(layers)
    group.check()
    for index, layer in enumerate(layers):
        layer.__dict__["_ws_group"] = (group, index)
    return group


def ungroup_weights(model: torch.nn.Module) -> None:
    """Back to one WS op per layer (the reference path)."""
    for module in model.modules():
        module.__dict__.pop("_ws_group", None)

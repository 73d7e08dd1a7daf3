"""Grouped weight standardization: every WS layer of a model standardized by one op, once per step.

A training step reads each standardized weight up to three times: in the attack (frozen), in
the training forward and in its backward. Per layer, that is three WS launches per layer per
step (159 for an NF-ResNet-50). The weights only change at the optimizer step, so a model that
opts in (:func:`group_weights`) standardizes all of them at once::

    group = group_weights(model)           # once; ScaledStdConv2d alone stays a drop-in
    with group.step(cast=torch.bfloat16):  # ONE grouped forward, the views cast once to bf16
        x_adv = pgd(model, x, y, ...)      # frozen: reads them detached, cast once to its dtype
        loss = ce(model(x_adv), y)         # training forward (bf16 autocast): reads the views
        loss.backward()                    # ONE grouped backward: every weight's and gain's grad

The step makes every layer's view when it opens, in the dtype its training forward runs in
(``cast``: the autocast dtype, default the one active at the step's start), so a forward only
reads a list (nothing a compiled forward would guard on changes within a step). Outside a step, a
frozen context (every attack and evaluation) fills all layers' caches from one grouped forward;
a plain forward runs the per-layer op. Each layer finds its group through its
:class:`~fastnofrost.nn.source.WeightSource` (``layer.source.group``, ``.index``).

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
from typing import List, Optional, Union

import torch

from ..ops.ws_grouped import attach, check_group, grouped_forward, split_shaped
from .frozen import autocast_dtype


class WeightGroup:
    """The weight-standardized layers of one model, in module order (see the module doc)."""

    def __init__(self, layers: list):
        self.layers = layers
        self.flat: Optional[torch.Tensor] = None      # this step's standardized weights, one buffer (no graph)
        self._stats = None                            # this step's (mean, rstd), for attach's backward
        self.cast = None                              # this step's training dtype (None: the weights' own)
        self.views: List[torch.Tensor] = []           # this step's per-layer weights, in ``cast``
        self.store: Optional[torch.Tensor] = None    # fill_store's persistent buffer (compiled attacks)
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
    def step(self, passes: str = "one", cast: Union[torch.dtype, None, str] = "autocast"):
        """Standardize every weight once for what runs inside (an attack, the training forward,
        its backward). ``cast``: the dtype the training forward runs in (None: the weights'
        own; default: the autocast dtype active now). ``passes="several"``: the step runs
        several backward passes (sequential views); mark the last one with :meth:`last_pass`."""
        if passes not in ("one", "several"):
            raise ValueError(f"passes must be 'one' or 'several', got {passes!r}")
        if self.flat is not None:
            raise RuntimeError("WeightGroup.step() is already open: steps do not nest")
        if cast == "autocast":
            cast = autocast_dtype(self.layers[0].weight.device.type)
        flat, *stats = self.standardize()
        self.flat, self._stats, self.cast = flat, stats, cast
        if passes == "several" and torch.is_grad_enabled() and any(w.requires_grad for w in self.params()[0]):
            self._leaf = flat.detach().requires_grad_()
            self._leaf.register_hook(functools.partial(self._leaf_grad, flat, stats))
            self._pending, self._last = None, False
            self.views = self._split(self._leaf if cast is None else self._leaf.to(cast))
        else:
            self.views = self._attach(flat, stats, cast)  # one cast for every layer
        try:
            yield self
        finally:
            self.flat, self._stats, self.views, self._leaf, self._pending = None, None, [], None, None

    def is_open(self) -> bool:
        return self.flat is not None

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

    def view(self, index: int, device_type: str) -> torch.Tensor:
        """Layer ``index``'s standardized weight for a training forward of this step (made when
        the step opened, in its ``cast``)."""
        if autocast_dtype(device_type) != self.cast:
            raise RuntimeError(f"a forward under autocast {autocast_dtype(device_type)} inside a WeightGroup.step() "
                               f"opened for {self.cast}: open the step with cast=<the forward's dtype>")
        return self.views[index]

    # ------------------------------------------------------------ frozen contexts (attacks)
    def _frozen_flat(self, cast) -> torch.Tensor:
        """This step's weights detached (or one grouped forward outside a step), cast once."""
        with torch.no_grad():
            flat = self.flat if self.flat is not None else self.standardize()[0]
            return flat if cast is None else flat.to(cast)

    def _remember(self, flat: torch.Tensor, cast) -> None:
        for layer, w in zip(self.layers, self._split(flat)):
            layer.source.remember(layer, w, cast)

    def fill_frozen(self, cast) -> None:
        """Every layer's frozen cache from one grouped forward (or this step's, detached), cast
        once to the attack dtype ``cast`` (None: the weights' own)."""
        self._remember(self._frozen_flat(cast), cast)

    def fill_store(self, cast) -> None:
        """:meth:`fill_frozen` into one persistent buffer, for :func:`fill_cache`."""
        flat, store = self._frozen_flat(cast), self.store
        if store is None or (store.shape, store.dtype, store.device) != (flat.shape, flat.dtype, flat.device):
            store = self.store = flat.clone()
        else:
            store.copy_(flat)
        self._remember(store, cast)


def weight_group(model: torch.nn.Module) -> Optional[WeightGroup]:
    """The group ``model``'s layers belong to (:func:`group_weights`), or None."""
    for module in model.modules():
        source = getattr(module, "source", None)
        if source is not None and source.group is not None:
            return source.group
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
        layer.source.group, layer.source.index = group, index
    return group


def ungroup_weights(model: torch.nn.Module) -> None:
    """Back to one WS op per layer (the reference path)."""
    for module in model.modules():
        if getattr(module, "source", None) is not None:
            module.source.group, module.source.index = None, -1

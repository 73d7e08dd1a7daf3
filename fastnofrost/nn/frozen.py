"""Frozen-weights context: standardize each weight once, reuse it until the weight changes.

Inside ``with frozen_weights():`` every weight-standardized conv computes its standardized
weight once (detached: no gradient reaches the parameters) and reuses it for every forward
until the context exits or the weight / gain is modified in place (version counter) or
replaced. Adversarial attacks run K forwards and backwards with fixed parameters; this
turns K weight standardizations per layer into one and removes every weight-gradient path.
The cache also keeps the copy in the autocast dtype, so no per-step weight cast remains.

Under ``torch.compile`` call :func:`fill_cache` eagerly first (the attack loop does so for a
compiled step): the traced forward then only reads the cache, without version checks (the
parameters must not change inside a compiled attack), and takes the standardized weights as
graph inputs. So a compiled attack keeps the WS-once property, one graph serves every later
attack (new weights, same graph) and, under CUDA graphs, no graph owns the cached tensors.
Do not trace an unfilled cache: the graph would guard on parameter versions (a recompile
per weight update) and, under CUDA graphs, the cache would hold graph outputs that a later
replay overwrites. The filled weights live in persistent buffers: CUDA graphs treat module
tensors as static inputs and would re-record a graph whenever a cache landed elsewhere in
memory. This is the one place this rationale is written.

``frozen_weights(leaves=True)`` (the attack's ``weight_grads`` switch, an ablation that mimics
an attack computing weight gradients) marks each cached weight as a leaf requiring grad, so a
step may differentiate it; :func:`cached_weights` lists them.

Each layer's cache lives in its :class:`~fastnofrost.nn.source.WeightSource` (``frozen``,
``store``), which also decides where the layer's weight comes from; this module holds the
context (:data:`CONTEXT`: its depth, the leaves switch, the layers it cached).
"""
import contextlib
import weakref

import torch


class FrozenContext:
    """The process's frozen context: how deep it is nested, whether cached weights are leaves,
    and the layers that cached a weight in it (forgotten on exit)."""

    def __init__(self):
        self.depth = 0
        self.leaves = False
        self.layers: "weakref.WeakSet" = weakref.WeakSet()


CONTEXT = FrozenContext()


def is_frozen() -> bool:
    return CONTEXT.depth > 0


def autocast_dtype(device_type: str):
    if device_type in ("cuda", "cpu") and torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return None


def enter(layer, w: torch.Tensor) -> torch.Tensor:
    """Record that ``layer`` cached ``w`` in this context (a leaf requiring grad with ``leaves``)."""
    if CONTEXT.leaves and not w.requires_grad:
        w.requires_grad_(True)
    CONTEXT.layers.add(layer)
    return w


def cached_weights() -> list:
    """The standardized weights cached in the current frozen context."""
    return [layer.source.frozen for layer in CONTEXT.layers if layer.source.frozen is not None]


def fill_cache(model: torch.nn.Module) -> None:
    """Standardize every weight of ``model`` now, eagerly and under the caller's autocast, so
    that a compiled forward inside this frozen context finds them (see the module doc).

    The standardized weights are written into one persistent tensor per layer (one buffer per
    grouped model), kept across contexts (one weight-sized copy in the attack dtype), so every
    attack hands the compiled graph the same addresses (the module doc says why).
    """
    if not is_frozen():
        raise RuntimeError("fill_cache(model) only works inside `with frozen_weights():`")
    groups = {}
    for module in model.modules():
        if not hasattr(module, "standardized_weight"):
            continue
        source = module.source
        if source.group is not None:  # grouped layers: one persistent buffer for the whole group
            groups[id(source.group)] = source.group
            continue
        w = module.standardized_weight()
        store = source.store
        if store is None or (store.shape, store.dtype, store.device) != (w.shape, w.dtype, w.device):
            source.store = w
        elif store is not w:
            with torch.no_grad():  # a leaf requiring grad under frozen_weights(leaves=True)
                store.copy_(w)
            source.remember(module, store, autocast_dtype(module.weight.device.type))
    for group in groups.values():
        group.fill_store(autocast_dtype(group.layers[0].weight.device.type))


@contextlib.contextmanager
def frozen_weights(leaves: bool = False):
    """Context in which weight-standardized layers compute their weight once (see module doc);
    ``leaves``: the cached weights require grad."""
    CONTEXT.depth += 1
    outer, CONTEXT.leaves = CONTEXT.leaves, leaves
    try:
        yield
    finally:
        CONTEXT.depth -= 1
        CONTEXT.leaves = outer
        if CONTEXT.depth == 0:
            for layer in list(CONTEXT.layers):
                layer.source.forget()
            CONTEXT.layers.clear()

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
"""
import contextlib
import weakref

import torch

_depth = 0
_leaves = False
_cached_layers: "weakref.WeakSet" = weakref.WeakSet()


def is_frozen() -> bool:
    return _depth > 0


def autocast_dtype(device_type: str):
    if device_type in ("cuda", "cpu") and torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return None


def cached_weight(layer, compute):
    """Return ``compute()`` detached, cached on ``layer`` for the current frozen context.

    The key holds every parameter's identity and version plus the autocast dtype, so an
    optimizer step or a ``load_state_dict`` inside the context invalidates the cache.
    """
    if torch.compiler.is_compiling() and getattr(layer, "_frozen_cache", None) is not None:
        return layer._frozen_cache[1]  # filled eagerly by fill_cache; no bookkeeping to trace
    device_type = layer.weight.device.type
    cast = autocast_dtype(device_type)
    hit = layer.__dict__.get("_frozen_cache")
    if hit is not None and hit[0] == _key(layer, cast):
        return hit[1]
    group = layer.__dict__.get("_ws_group")
    if group is not None:  # a grouped model (fastnofrost.nn.grouped): every layer's cache at once
        group[0].fill_frozen(cast)
        return layer.__dict__["_frozen_cache"][1]
    with torch.no_grad(), torch.autocast(device_type, enabled=False):
        w = compute()
        if cast is not None:
            w = w.to(cast)
    return remember(layer, w, cast)


def _key(layer, cast):
    params = [p for p in (layer.weight, getattr(layer, "gain", None)) if p is not None]
    return tuple((id(p), p._version) for p in params) + (cast,)


def remember(layer, w, cast):
    """Cache ``w`` (detached, in the attack dtype ``cast``) as ``layer``'s standardized weight
    for the current frozen context."""
    if _leaves and not w.requires_grad:
        w.requires_grad_(True)
    layer.__dict__["_frozen_cache"] = (_key(layer, cast), w)
    _cached_layers.add(layer)
    return w


def cached_weights() -> list:
    """The standardized weights cached in the current frozen context."""
    return [layer.__dict__["_frozen_cache"][1] for layer in _cached_layers if "_frozen_cache" in layer.__dict__]


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
        group = module.__dict__.get("_ws_group")
        if group is not None:  # grouped layers: one persistent buffer for the whole group
            groups[id(group[0])] = group[0]
            continue
        w = module.standardized_weight()
        store = module.__dict__.get("_frozen_store")
        if store is None or (store.shape, store.dtype, store.device) != (w.shape, w.dtype, w.device):
            module.__dict__["_frozen_store"] = w
        elif store is not w:
            with torch.no_grad():  # a leaf requiring grad under frozen_weights(leaves=True)
                store.copy_(w)
            remember(module, store, autocast_dtype(module.weight.device.type))
    for group in groups.values():
        group.fill_store(autocast_dtype(group.layers[0].weight.device.type))


@contextlib.contextmanager
def frozen_weights(leaves: bool = False):
    """Context in which weight-standardized layers compute their weight once (see module doc);
    ``leaves``: the cached weights require grad."""
    global _depth, _leaves
    _depth += 1
    outer, _leaves = _leaves, leaves
    try:
        yield
    finally:
        _depth -= 1
        _leaves = outer
        if _depth == 0:
            for layer in list(_cached_layers):
                layer.__dict__.pop("_frozen_cache", None)
            _cached_layers.clear()

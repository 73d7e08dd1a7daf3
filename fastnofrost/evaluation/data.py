"""What the evaluation reads: this rank's examples, in batches on the device.

``n_examples`` picks N examples *spread evenly* over the evaluation order (every
(M // N)-th of the M examples, the first N of those), so that a subset of a class-sorted
folder such as ImageNet's val/ still covers every class; the choice is deterministic. The N
examples are then dealt round-robin over the ranks (see :func:`fastnofrost.data.shard.shard_size`).

The command line's default protocol (:func:`examples_protocol`): a validation set of more than
``SUBSET_ABOVE`` images is evaluated on ``DEFAULT_SUBSET`` of them, spread evenly; a smaller one
whole. The Python API's ``n_examples=None`` always means every example.
"""
from typing import Iterator, Optional, Tuple, Union

import torch

from ..data import build_loader
from ..data.shard import Sharding, shard_size


def spread_indices(m: int, n: Optional[int]) -> torch.Tensor:
    """Indices of n of m examples spread evenly (all m when n is None or >= m)."""
    if n is None or n >= m:
        return torch.arange(m)
    return torch.arange(0, m, max(1, m // n))[:n]


SUBSET_ABOVE = 10_000   # validation sets larger than this are subset by default (command line) ...
DEFAULT_SUBSET = 5_000  # ... to this many images, spread evenly


def examples_protocol(m: int, flag: Union[None, str, int]) -> Tuple[int, str]:
    """(N, the sentence saying which images) for a validation set of ``m`` images and
    ``--n-examples`` as parsed: None (not given: ``DEFAULT_SUBSET`` spread evenly when ``m``
    exceeds ``SUBSET_ABOVE``, else all), 'all', or a number N (capped at ``m``)."""
    if flag is None and m > SUBSET_ABOVE:
        return DEFAULT_SUBSET, (f"{DEFAULT_SUBSET:,} of {m:,} validation images, spread evenly (default when the set "
                                f"exceeds {SUBSET_ABOVE:,}; --n-examples all for every image)")
    if flag is None or flag == "all" or flag >= m:
        return m, f"all {m:,} validation images"
    return flag, f"{flag:,} of {m:,} validation images, spread evenly (--n-examples {flag})"


def spread_sharding(m: int, n: Optional[int], batch_size: int, rank: int, world: int) -> Sharding:
    """The validation sharding whose rank ``rank`` reads its round-robin share of
    ``spread_indices(m, n)`` first (then more, which :class:`Examples` cuts off): every s-th
    example dealt over W ranks is the plain round-robin over s * W ranks, rank r * s."""
    stride = 1 if n is None or n >= m else m // n
    return Sharding(m, batch_size, False, rank * stride, world * stride)


def validation_loader(data, *, backend: str, image_size: int, batch_size: int, n_examples: Union[None, str, int],
                      rank: int, world: int, device, workers: int, **kw):
    """``build_loader``'s validation split of ``data`` (folder, 'digits' or 'fashion-mnist') for
    this rank, reading the spread subset first. ``n_examples``: ``--n-examples`` as parsed (see
    :func:`examples_protocol`); ``kw``: more of build_loader's options. Returns (loader, number
    of examples N, the sentence saying which)."""
    chosen = {}

    def sharding(m: int) -> Sharding:
        chosen["n"], chosen["text"] = examples_protocol(m, n_examples)
        return spread_sharding(m, chosen["n"], batch_size, rank, world)

    loader = build_loader(data, backend=backend, batch_size=batch_size, image_size=image_size, train=False,
                          rank=rank, world_size=world, device=device, workers=workers, sharding=sharding, **kw)
    return loader, chosen["n"], chosen["text"]


class Examples:
    """Re-iterable batches ``(x, y)`` of this rank's share, on ``device``.

    ``data``: a pair of tensors (x, y) holding the whole evaluation set (this class takes the
    spread subset and this rank's share), or a loader of (x, y) batches that yields this rank's
    share already (``build_loader(..., rank=, world_size=)`` does), of which the first
    ``shard_size(n_examples, rank, world)`` are read.
    """

    def __init__(self, data, *, n_examples: Optional[int], batch_size: int, rank: int, world: int, device):
        self.device, self.batch_size = torch.device(device), batch_size
        if isinstance(data, (tuple, list)) and len(data) == 2 and all(torch.is_tensor(t) for t in data):
            x, y = data
            if x.shape[0] != y.shape[0]:
                raise ValueError(f"x and y must hold the same number of examples, got {x.shape[0]} and {y.shape[0]}")
            mine = spread_indices(x.shape[0], n_examples)[rank::world]
            self.tensors: Optional[Tuple[torch.Tensor, torch.Tensor]] = (x[mine], y[mine])
            self.loader, self.limit = None, len(mine)
        else:
            self.tensors, self.loader = None, data
            self.limit = shard_size(n_examples, rank, world) if n_examples else None

    def __iter__(self) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        if self.tensors is not None:
            x, y = self.tensors
            for start in range(0, x.shape[0], self.batch_size):
                end = start + self.batch_size
                yield x[start:end].to(self.device), y[start:end].to(self.device)
            return
        seen = 0
        for batch in self.loader if self.limit != 0 else ():
            x, y = batch[0], batch[-1]
            take = x.shape[0] if self.limit is None else min(x.shape[0], self.limit - seen)
            yield x[:take].to(self.device), y[:take].to(self.device)
            seen += take
            if seen == self.limit:
                return

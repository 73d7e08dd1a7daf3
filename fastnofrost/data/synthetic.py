"""The ``synthetic`` backend: random pixels and labels made once on the device, for benchmarks.

Every step returns the same batch, so a benchmark measures the training step alone (no
decode, no host-to-device copy). ``len()`` is ``batches``.
"""
import torch

from .base import EpochLoader
from .shard import Sharding


class SyntheticLoader(EpochLoader):
    def __init__(self, *, batch_size, image_size, num_classes=1000, batches=100, nofrost_star=False,
                 rank=0, world_size=1, seed=0, **kw):
        sharding = Sharding(batches * batch_size * world_size, batch_size, True, rank, world_size, seed)
        super().__init__(sharding, num_classes=num_classes, **kw)
        g = torch.Generator().manual_seed(seed * 1009 + rank)
        views = 2 if nofrost_star else 1
        images = [torch.rand(batch_size, 3, image_size, image_size, generator=g) for _ in range(views)]
        labels = torch.randint(num_classes, (batch_size,), generator=g)
        self.batch = self.finish(*images, labels)

    def __iter__(self):
        for _ in range(len(self) - self.start_batch):
            yield self.batch

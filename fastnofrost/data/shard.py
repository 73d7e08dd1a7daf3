"""Which samples each rank reads in each epoch: one policy shared by every backend.

* train: a seeded permutation per epoch (the same on every rank), cut to
  ``world_size * per_rank`` samples with ``per_rank = (n // world_size) // batch_size * batch_size``,
  then dealt round-robin. Every rank gets the same number of full batches (so data-parallel
  ranks never wait on each other); the last partial batch is dropped, a different remainder
  each epoch.
* val: the data in order, dealt round-robin, nothing dropped and nothing padded: the shards'
  union is the data set exactly once, and the last batch of a shard may be partial (shards
  differ by at most one sample).

Per-sample augmentation seeds are a function of (seed, epoch, sample index) alone, so a run is
reproducible whatever the number of loader workers.
"""
from dataclasses import dataclass
from typing import List, Sequence

import numpy as np


def shard_size(n: int, rank: int, world: int) -> int:
    """How many of n samples rank ``rank`` gets when they are dealt round-robin."""
    return len(range(rank, n, world))


def merge(shards: Sequence[Sequence]) -> List:
    """Inverse of round-robin dealing: shard r holds items r, r + W, ...; returns all in order
    (evaluation puts every rank's per-sample results back in evaluation order)."""
    world, total = len(shards), sum(len(s) for s in shards)
    for r, shard in enumerate(shards):
        if len(shard) != shard_size(total, r, world):
            raise ValueError(f"rank {r} holds {len(shard)} results, round-robin dealing of {total} over {world} "
                             f"ranks gives it {shard_size(total, r, world)}")
    merged = [None] * total
    for r, shard in enumerate(shards):
        merged[r::world] = list(shard)
    return merged


@dataclass(frozen=True)
class Sharding:
    num_samples: int
    batch_size: int
    train: bool
    rank: int = 0
    world_size: int = 1
    seed: int = 0

    def __post_init__(self):
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.world_size < 1 or not 0 <= self.rank < self.world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={self.rank}, world_size={self.world_size}")
        if self.train and self.num_samples // self.world_size < self.batch_size:
            raise ValueError(
                f"{self.num_samples} training samples are too few for batch_size {self.batch_size} "
                f"on each of {self.world_size} rank(s): no full batch per rank")

    def _per_rank(self):
        return (self.num_samples // self.world_size) // self.batch_size * self.batch_size

    def __len__(self):
        """Batches per epoch on this rank."""
        if self.train:
            return self._per_rank() // self.batch_size
        return -(-shard_size(self.num_samples, self.rank, self.world_size) // self.batch_size)

    def indices(self, epoch):
        """This rank's sample indices for ``epoch``, in reading order."""
        if not self.train:
            return list(range(self.rank, self.num_samples, self.world_size))
        order = np.random.default_rng([self.seed, epoch]).permutation(self.num_samples)
        return order[: self._per_rank() * self.world_size][self.rank :: self.world_size].tolist()

    def sample_seeds(self, epoch):
        """Augmentation seeds of every sample (indexed by sample) for ``epoch``."""
        return np.random.default_rng([self.seed, epoch, 1]).integers(2**62, size=self.num_samples).tolist()

    def pipeline_seed(self, epoch):
        """One seed per (run seed, epoch, rank) for a whole-pipeline RNG (DALI)."""
        return int(np.random.SeedSequence([self.seed, epoch, self.rank]).generate_state(1)[0] & 0x7FFFFFFF)

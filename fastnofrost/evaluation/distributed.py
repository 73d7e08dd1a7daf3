"""Sharding the evaluation over ranks (``deepspeed`` or any launcher that sets RANK/WORLD_SIZE).

Examples are dealt round-robin: rank r evaluates examples r, r + W, r + 2W, ... of the
evaluation order (as the validation loaders shard, see ``fastnofrost.data.shard``). Per-sample
results come back to every rank with ``all_gather_object`` and are put back in order by
:func:`merge`, so the report is the one a single process would write.
"""
import os
from typing import List, Sequence

import torch
import torch.distributed as dist


def launched() -> bool:
    """True when a launcher asked for more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_from_env(device: str) -> torch.device:
    """Join the process group the launcher describes (nccl on CUDA, gloo on CPU); returns the
    rank's device (``cuda:LOCAL_RANK`` on CUDA)."""
    if device == "cuda":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        dist.init_process_group("nccl", device_id=torch.device("cuda", local))
        return torch.device("cuda", local)
    dist.init_process_group("gloo")
    return torch.device(device)


def rank_and_world():
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def shard_size(n: int, rank: int, world: int) -> int:
    """How many of n examples rank ``rank`` evaluates (round-robin)."""
    return len(range(rank, n, world))


def merge(shards: Sequence[Sequence]) -> List:
    """Inverse of round-robin dealing: shard r holds items r, r + W, ...; returns all in order."""
    world, total = len(shards), sum(len(s) for s in shards)
    for r, shard in enumerate(shards):
        if len(shard) != shard_size(total, r, world):
            raise ValueError(f"rank {r} holds {len(shard)} results, round-robin dealing of {total} over {world} "
                             f"ranks gives it {shard_size(total, r, world)}")
    merged = [None] * total
    for r, shard in enumerate(shards):
        merged[r::world] = list(shard)
    return merged


def gather(obj) -> list:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank (``[obj]`` without a process group)."""
    world = rank_and_world()[1]
    if world == 1:
        return [obj]
    out = [None] * world
    dist.all_gather_object(out, obj)
    return out

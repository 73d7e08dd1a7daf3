"""The process group, for training and evaluation alike.

DeepSpeed's launcher (``deepspeed [--num_gpus N | --hostfile H] ...``) or torchrun sets RANK /
WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT. Training joins through DeepSpeed
(:func:`init`; a plain ``python`` run gets a world of one here); evaluation, which must run
where DeepSpeed is not installed, joins through torch (:func:`init_from_env`). NCCL on CUDA,
gloo on CPU. Outside a process group every rank query answers as one process.
"""
import glob
import os
import socket
import time
from typing import List

import torch
import torch.distributed as dist


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# How long a run waits for another process's torch extension build (DeepSpeed builds its CPU
# communication op at start-up); a build takes well under a minute.
BUILD_LOCK_WAIT_S = 600


def wait_for_build_locks(timeout: float = BUILD_LOCK_WAIT_S, poll: float = 1.0, say=print) -> None:
    """Where torch guards extension builds with a lock FILE (torch <= 2.11: ``FileBaton``, whose
    file a killed build leaves behind and on which torch then waits forever): wait until no such
    file is under this process's extensions folder (``TORCH_EXTENSIONS_DIR``, default
    ``~/.cache/torch_extensions``), and after ``timeout`` seconds stop with a message naming it.
    Newer torch holds an OS lock on that file instead (released when its holder dies; the file
    stays): nothing to wait for here."""
    from torch.utils import cpp_extension

    if not hasattr(cpp_extension, "FileBaton"):
        return
    root = os.environ.get("TORCH_EXTENSIONS_DIR") or cpp_extension.get_default_build_root()
    deadline, said = time.monotonic() + timeout, False
    while True:
        locks = sorted(glob.glob(os.path.join(root, "*", "*", "lock")) + glob.glob(os.path.join(root, "*", "lock")))
        if not locks:
            return
        if time.monotonic() >= deadline:
            raise RuntimeError(
                f"{locks[0]} has been held for over {timeout:.0f} s: a torch extension build that was killed "
                "leaves its lock behind, and every later build of it waits forever. If no other run is building "
                f"it, delete {locks[0]}, or give this run its own folder (TORCH_EXTENSIONS_DIR=...)")
        if not said:
            say(f"waiting for {locks[0]}: another process is building a torch extension (up to {timeout:.0f} s)")
            said = True
        time.sleep(poll)


def init(device_type: str) -> None:
    if dist.is_available() and dist.is_initialized():
        return
    if "RANK" not in os.environ:  # plain python: a world of one
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(free_port()))
    wait_for_build_locks()  # DeepSpeed builds its CPU communication op inside init_distributed
    import deepspeed

    deepspeed.init_distributed(dist_backend="nccl" if device_type == "cuda" else "gloo")
    local = int(os.environ.get("LOCAL_SIZE", os.environ.get("LOCAL_WORLD_SIZE", os.environ["WORLD_SIZE"])))
    if device_type == "cpu" and local > 1 and "OMP_NUM_THREADS" not in os.environ:
        # ranks sharing a machine share its cores: OpenMP spinning on every core per rank is 10x slower
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local))


def launched() -> bool:
    """True when a launcher asked for more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_from_env(device: str) -> torch.device:
    """Join the process group the launcher describes without DeepSpeed (evaluation); returns the
    rank's device (``cuda:LOCAL_RANK`` on CUDA)."""
    if device == "cuda":
        local = local_rank()
        torch.cuda.set_device(local)
        dist.init_process_group("nccl", device_id=torch.device("cuda", local))
        return torch.device("cuda", local)
    dist.init_process_group("gloo")
    return torch.device(device)


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else int(os.environ.get("WORLD_SIZE", "1"))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def pick_device(name: str) -> torch.device:
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError("--device cuda was asked for, but torch sees no CUDA device")
        torch.cuda.set_device(local_rank())
        return torch.device("cuda", local_rank())
    return torch.device("cpu")


def all_sum(values, device) -> list:
    """Sum a list of numbers or 0-dim tensors over ranks (float64); one host read in all."""
    t = torch.stack([torch.as_tensor(v, device=device).to(torch.float64) for v in values])
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t)
    return t.tolist()


def gather(obj) -> List:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank (``[obj]`` without a process group)."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def shutdown() -> None:
    """Barrier + destroy: avoids a rare abort at exit (docs/design.md, rationales)."""
    if dist.is_initialized():
        barrier()
        dist.destroy_process_group()


def in_sync(module: torch.nn.Module) -> bool:
    """Whether every rank holds the same parameters (a float64 position-weighted checksum, equal
    on all ranks up to nothing: max - min over ranks must be exactly 0)."""
    flat = torch.cat([p.detach().reshape(-1).double() for p in module.parameters()])
    weights = torch.arange(flat.numel(), device=flat.device, dtype=torch.float64).remainder_(7).add_(1)
    value = (flat * weights).sum().reshape(1)
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return True
    hi, lo = value.clone(), value.clone()
    dist.all_reduce(hi, op=dist.ReduceOp.MAX)
    dist.all_reduce(lo, op=dist.ReduceOp.MIN)
    return bool((hi - lo).item() == 0)

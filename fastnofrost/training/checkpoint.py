"""Checkpoints of a run: DeepSpeed's (model, optimizer, scheduler, client state) plus each rank's
RNG states, written so that a crash never leaves a half-written checkpoint behind.

Layout under ``<out>/checkpoints``: one folder per tag (``step<N>``), and ``latest`` naming
the newest complete one. A save writes ``tmp-<tag>`` (every rank: DeepSpeed's files and its
own ``rng_rank<r>.pt``), then rank 0 renames it to ``<tag>`` and replaces ``latest`` with
``os.replace``; a crash before that leaves the previous checkpoint as ``latest``. The last
``keep_last`` tags are kept. (Assumes ``--out`` is on a file system every rank sees, as
DeepSpeed's own ``latest`` file does.)

Trust: ``--resume`` reads DeepSpeed's files, which DeepSpeed loads with ``weights_only=False``
(pickle): resume only from run folders you wrote. Weights for sharing and evaluation are the
``*.safetensors`` files (:func:`save_weights`), which hold tensors only.
"""
import os
import random
import shutil
from typing import Optional

import torch

from .. import distributed

LATEST = "latest"


def rng_state() -> dict:
    state = {"cpu": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["cpu"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _atomic_write_text(path: str, text: str) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def save_weights(model: torch.nn.Module, path: str) -> None:
    """The model's state dict as safetensors, written to a temporary name then renamed."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tmp = f"{path}.tmp{os.getpid()}"
    save_file(tensors, tmp)
    os.replace(tmp, path)


class Checkpoints:
    def __init__(self, root: str, keep_last: int = 2):
        self.root, self.keep_last = root, keep_last

    def latest(self) -> Optional[str]:
        path = os.path.join(self.root, LATEST)
        if not os.path.isfile(path):
            return None
        with open(path) as fh:
            tag = fh.read().strip()
        if not os.path.isdir(os.path.join(self.root, tag)):
            raise FileNotFoundError(f"{path} names checkpoint {tag!r}, which is missing from {self.root}")
        return tag

    def save(self, engine, tag: str, client_state: dict) -> None:
        tmp = f"tmp-{tag}"
        engine.save_checkpoint(self.root, tag=tmp, client_state=client_state, save_latest=False)
        torch.save(rng_state(), os.path.join(self.root, tmp, f"rng_rank{distributed.rank()}.pt"))
        distributed.barrier()
        if distributed.rank() == 0:
            final = os.path.join(self.root, tag)
            if os.path.isdir(final):
                shutil.rmtree(final)
            os.rename(os.path.join(self.root, tmp), final)
            _atomic_write_text(os.path.join(self.root, LATEST), tag)
            self._prune(keep=tag)
        distributed.barrier()

    def _prune(self, keep: str) -> None:
        tags = [t for t in os.listdir(self.root) if t.startswith("step") and os.path.isdir(os.path.join(self.root, t))]
        tags.sort(key=lambda t: int(t[4:]))
        for old in tags[:-self.keep_last]:
            if old != keep:
                shutil.rmtree(os.path.join(self.root, old), ignore_errors=True)
        for t in os.listdir(self.root):  # leftovers of an interrupted save
            if t.startswith("tmp-"):
                shutil.rmtree(os.path.join(self.root, t), ignore_errors=True)

    def load(self, engine) -> dict:
        """Load the latest checkpoint into ``engine`` and this rank's RNG states; returns the
        client state."""
        tag = self.latest()
        if tag is None:
            raise FileNotFoundError(f"--resume: no checkpoint in {self.root} (no {LATEST} file)")
        path, client_state = engine.load_checkpoint(self.root, tag=tag)
        if path is None:
            raise RuntimeError(f"--resume: DeepSpeed could not load checkpoint {tag} from {self.root}")
        rng_path = os.path.join(self.root, tag, f"rng_rank{distributed.rank()}.pt")
        if not os.path.isfile(rng_path):
            raise FileNotFoundError(f"--resume: {rng_path} is missing (was the run saved with another world size?)")
        set_rng_state(torch.load(rng_path, weights_only=True))
        return client_state

"""What a run reports (rank 0 only): a progress bar per epoch, a JSONL log, TensorBoard scalars,
PNG plots of loss and validation accuracy, and an end-of-run summary table.

``<out>/log.jsonl``: one JSON object per line, ``{"kind": "train", "step", "epoch", "lr",
"img_s", "loss", "loss_<part>", "acc_<view>"}`` every ``log_every`` steps and ``{"kind": "val",
"epoch", "step", "clean", "robust", ...}`` per validation. A resumed run appends; for a step
logged twice (after a crash) the later line wins.
"""
import json
import os
import sys
import time
from typing import Dict, List, Optional


class RunLog:
    def __init__(self, run_dir: str, enabled: bool, tensorboard: bool = True, progress: bool = True):
        self.run_dir, self.enabled, self.show_progress = run_dir, enabled, progress
        self.bar = None
        self.writer = None
        if not enabled:
            return
        os.makedirs(run_dir, exist_ok=True)
        path = os.path.join(run_dir, "log.jsonl")
        torn = os.path.isfile(path) and os.path.getsize(path) > 0 and not _ends_with_newline(path)
        self.jsonl = open(path, "a", buffering=1)
        if torn:  # a crash cut the last line: start on a fresh one
            self.jsonl.write("\n")
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(os.path.join(run_dir, "tb"))

    def info(self, message: str) -> None:
        if self.enabled:
            (self.bar.write if self.bar is not None else print)(message, flush=True)

    def warning(self, message: str, step: int) -> None:
        """A warning: on the console and in TensorBoard's text tab (the caller records it in log.jsonl)."""
        self.info(f"WARNING: {message}")
        if self.enabled and self.writer is not None:
            self.writer.add_text("warnings", message, step)

    # -------------------------------------------------------------- progress per epoch
    def start_epoch(self, epoch: int, epochs: int, total: int, initial: int = 0) -> None:
        if self.enabled and self.show_progress:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, desc=f"epoch {epoch + 1}/{epochs}", unit="step",
                            dynamic_ncols=True, file=sys.stderr, leave=True)

    def advance(self, postfix: Optional[Dict[str, float]] = None) -> None:
        if self.bar is not None:
            self.bar.update(1)
            if postfix:
                self.bar.set_postfix({k: f"{v:.4g}" for k, v in postfix.items()}, refresh=False)

    def end_epoch(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    # -------------------------------------------------------------- records
    def record(self, kind: str, **values) -> None:
        if not self.enabled:
            return
        self.jsonl.write(json.dumps({"kind": kind, "time": time.time(), **values}) + "\n")
        if self.writer is not None:
            step = values.get("step", 0)
            for key, value in values.items():
                if key not in ("step", "epoch") and isinstance(value, (int, float)):
                    self.writer.add_scalar(f"{kind}/{key}", value, step)

    def close(self) -> None:
        self.end_epoch()
        if self.enabled:
            self.jsonl.close()
            if self.writer is not None:
                self.writer.close()


def _ends_with_newline(path: str) -> bool:
    with open(path, "rb") as fh:
        fh.seek(-1, os.SEEK_END)
        return fh.read(1) == b"\n"


def read_log(run_dir: str) -> List[dict]:
    """Records of ``log.jsonl``; for a (kind, step) logged more than once, the last one. A line
    cut short by a crash is skipped."""
    latest = {}
    with open(os.path.join(run_dir, "log.jsonl")) as fh:
        for line in fh:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(rec, dict) and "kind" in rec:
                latest[(rec["kind"], rec.get("step"), rec.get("epoch") if rec["kind"] == "val" else None)] = rec
    return sorted(latest.values(), key=lambda r: (r.get("step", 0), r["kind"] != "train"))


def plot(run_dir: str) -> None:
    """``loss.png`` (training loss and its parts per step) and ``accuracy.png`` (validation clean
    and PGD accuracy per epoch, each validation attack's on its subset, and their worst case)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_log(run_dir)
    train = [r for r in records if r["kind"] == "train"]
    val = [r for r in records if r["kind"] == "val"]
    if train:
        fig, ax = plt.subplots(figsize=(6, 4))
        keys = ["loss"] + sorted({k for r in train for k in r if k.startswith("loss_")})
        for key in keys:
            ax.plot([r["step"] for r in train if key in r], [r[key] for r in train if key in r], label=key)
        ax.set_xlabel("step"), ax.set_ylabel("training loss"), ax.legend(), ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(os.path.join(run_dir, "loss.png"), dpi=100)
        plt.close(fig)
    if val:
        fig, ax = plt.subplots(figsize=(6, 4))
        epochs = [r["epoch"] + 1 for r in val]
        ax.plot(epochs, [r["clean"] for r in val], "o-", label="clean")
        ax.plot(epochs, [r["robust"] for r in val], "s-", label="PGD (first --val-examples)")
        attacks = sorted({k for r in val for k in r if k.startswith("strong_") and k not in (
            "strong_n", "strong_seconds", "strong_clean")})  # the validation attacks, on their subset
        for key in attacks + ["worst"]:
            points = [(r["epoch"] + 1, r[key]) for r in val if key in r]
            if points:
                ax.plot(*zip(*points), "x--" if key != "worst" else "k^-",
                        label=f"{key[len('strong_'):]} (subset)" if key != "worst" else "worst case (subset)")
        ax.set_xlabel("epoch"), ax.set_ylabel("validation accuracy (%)"), ax.legend(), ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(os.path.join(run_dir, "accuracy.png"), dpi=100)
        plt.close(fig)


def summary_table(rows: List[tuple]) -> str:
    """Two aligned columns."""
    width = max(len(k) for k, _ in rows)
    line = "-" * (width + 24)
    return "\n".join([line] + [f"{k:<{width}}  {v}" for k, v in rows] + [line])

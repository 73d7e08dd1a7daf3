"""Run fastnofrost/train.py in this process and count host reads of tensors and device
synchronizations inside training steps.

    python tests/host_reads.py OUT.json -- <train.py flags>

Counts calls of Tensor.item / tolist / __bool__ / __int__ / __float__ / cpu / numpy made while
the trainer's epoch loop runs a step: the stack holds ``Trainer._epoch`` and none of the
boundary work (logging, the loss watch's check, saving, validation, the loader's per-epoch set
up and report). Each call is recorded with the innermost frame of fastnofrost or deepspeed that
made it (the counter is benchmarks/reads.py's). Used by tests/test_train.py. The script runs as
``__main__`` (runpy), as ``deepspeed fastnofrost/train.py`` runs it: nothing imports train.py.
"""
import json
import os
import sys

from helpers import BENCHMARKS, run_train_here

sys.path.insert(0, BENCHMARKS)
from reads import ReadCounter  # noqa: E402

BOUNDARY = {"_log_train", "check", "_save", "_validate", "report", "set_epoch", "start_epoch", "end_epoch"}


def where_in_step():
    frame, names, site = sys._getframe(2), [], None
    while frame is not None:
        code = frame.f_code
        names.append(code.co_name)
        if site is None and ("fastnofrost" in code.co_filename or "deepspeed" in code.co_filename):
            site = f"{os.path.basename(code.co_filename)}:{code.co_name}"
        frame = frame.f_back
    if "_epoch" not in names or BOUNDARY & set(names):
        return None
    return site or "?"


def main():
    out, argv = sys.argv[1], sys.argv[sys.argv.index("--") + 1:]
    with ReadCounter(where_in_step) as counter:
        counter.active = True
        rc = run_train_here(argv)
    with open(out, "w") as fh:
        json.dump({"rc": rc, "calls": dict(counter.calls), "syncs": dict(counter.syncs)}, fh)


if __name__ == "__main__":
    main()

"""Run fastnofrost/train.py in this process with the loss of one micro-batch made NaN, and record
where DeepSpeed's counts stand after each ``engine.step()``.

    python tests/fp16_skip.py OUT.json N -- <train.py flags>     # N: the micro-batch made NaN (1-based)

Writes {"rc", "micro_batches" (method calls), "steps": [[micro_steps, global_steps], ...]}. Used
by tests/test_train.py (an fp16 batch skipped under --grad-accum).
"""
import json
import sys

from helpers import run_train_here


def main():
    import deepspeed.runtime.engine as ds_engine
    from fastnofrost.methods import base

    out, poisoned = sys.argv[1], int(sys.argv[2])
    calls, steps = [0], []
    method_call, engine_step = base.Method.__call__, ds_engine.DeepSpeedEngine.step

    def call(self, *args, **kwargs):
        result = method_call(self, *args, **kwargs)
        calls[0] += 1
        return result._replace(loss=result.loss * float("nan")) if calls[0] == poisoned else result

    def step(self, *args, **kwargs):
        result = engine_step(self, *args, **kwargs)
        steps.append([self.micro_steps, self.global_steps])
        return result

    base.Method.__call__, ds_engine.DeepSpeedEngine.step = call, step
    rc = run_train_here(sys.argv[sys.argv.index("--") + 1:])
    with open(out, "w") as fh:
        json.dump({"rc": rc, "micro_batches": calls[0], "steps": steps}, fh)


if __name__ == "__main__":
    main()

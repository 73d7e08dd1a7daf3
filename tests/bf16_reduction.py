"""Two DeepSpeed ranks on CPU: the gradient DeepSpeed reduces for a BatchNorm baseline under bf16
autocast, against the same local gradients all-reduced in fp32.

    deepspeed --num_gpus 2 tests/bf16_reduction.py OUT.json STAGE CONFIG   # CONFIG: ours | deepspeed-default

``ours``: the config fastnofrost.training.engine.deepspeed_config generates; ``deepspeed-default``:
the same without its ``lower_precision_safe_modules`` (DeepSpeed's default list: nn.Linear and
nn.Conv2d gradients communicated in bf16). One SGD step at lr 1 (no momentum, no decay): the
reduced gradient is the weights' change. Rank 0 writes the largest error, relative to each
tensor's largest gradient. Used by tests/test_train.py.
"""
import copy
import json
import sys

import torch
import torch.distributed as dist
import torch.nn.functional as F


def main():
    import deepspeed

    from fastnofrost import distributed
    from fastnofrost.config import TrainConfig
    from fastnofrost.models import create_model
    from fastnofrost.training.engine import deepspeed_config

    out, stage, config = [a for a in sys.argv[1:] if not a.startswith("--local_rank")]  # the launcher's
    stage = int(stage)
    distributed.init("cpu")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    model = create_model("resnet26_small", num_classes=10, width=0.25)  # nn.Conv2d, BatchNorm2d, nn.Linear
    reference = copy.deepcopy(model)
    ds = deepspeed_config(TrainConfig(batch_size=8 * world, zero_stage=stage), world, "bf16")
    if config == "deepspeed-default":
        del ds["torch_autocast"]["lower_precision_safe_modules"]
    engine, *_ = deepspeed.initialize(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=1.0), config=ds)
    torch.manual_seed(1 + rank)  # each rank its own batch
    x, y = torch.rand(8, 3, 16, 16), torch.randint(0, 10, (8,))
    before = [p.detach().clone() for p in engine.module.parameters()]
    engine.backward(F.cross_entropy(engine(x).float(), y))
    engine.step()
    reduced = [b - p.detach() for b, p in zip(before, engine.module.parameters())]
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the same local gradient, reduced in fp32
        loss = F.cross_entropy(reference(x).float(), y)
    loss.backward()
    flat = torch.cat([p.grad.flatten() for p in reference.parameters()])
    dist.all_reduce(flat)
    expected = (flat / world).split([p.numel() for p in reference.parameters()])
    error = max(float((r.flatten() - e).abs().max() / e.abs().max().clamp_min(1e-12))
                for r, e in zip(reduced, expected))
    if rank == 0:
        with open(out, "w") as fh:
            json.dump({"error": error, "stage": stage, "config": config, "world": world}, fh)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()

"""The official training loop (``PGDAT.py``'s epoch loop around its step) on a small data set: the
``official`` engine of ``fidelity.py``.

    python benchmarks/official_train.py --data fashion-mnist --method nofrost --model nf_resnet26_small \\
        --out runs/official --seed 0 --width 0.25 --image-size 16 --epochs 4 --batch-size 64 --lr 0.05 \\
        --warmup-epochs 0.5 --eps 8 --steps 5 --train-examples 8000

What it shares with our engine: the model (``fastnofrost.models``, every WS conv computed as timm
computes it: ``official.official_model``), the data subset (the same seeded pick of the training
split, through ``fastnofrost.data``), the schedule (peak lr, per-step cosine with linear warm-up,
as train.py's) and the hyper-parameters (eps, steps, step size, lambda 0.5, label smoothing 0.1,
SGD Nesterov momentum 0.9, weight decay 5e-5, no dropout / drop-path, as fidelity.py asks of
train.py). What is its own, as in ``PGDAT.py``:

- one ``torch.manual_seed(seed)`` at the start, then torch's default generator for everything:
  the model's initialization, the data order (a fresh ``torch.randperm`` per epoch, the
  DataLoader's ``shuffle=True``; the last partial batch dropped, as ours, so both engines take the
  same number of steps), the attack's random starts;
- the step (``official.official_step``): clean forward first with its graph alive, the attack
  inside ``ctx_noparamgrad_and_eval`` as advertorch's ``PGDAttack``, a separate adversarial
  forward, ``(1 - Lambda) loss_clean + Lambda loss_adv``, one backward, torch SGD over every
  parameter (weight decay on biases too), the per-step ``.item()`` meters;
- methods: ``nofrost`` (Lambda 0.5), ``sat`` (Lambda 1: the adversarial loss alone; the clean
  forward still runs first, in train mode, as ``PGDAT.py`` runs it) and ``st`` (no attack).

Fidelity diagnostics (NOT the official code; each moves one of its choices to ours', for
docs/fidelity.md's candidates table; the defaults are the official loop):

- ``--attack-first``: the attack before the clean train-mode forward (ours' order);
- ``--no-decay-1d``: no weight decay on biases and 1-d parameters (BatchNorm's weight and bias),
  ``fastnofrost.training.engine.param_groups``' rule under the paper recipe;
- ``--data-order ours``: each epoch's order from train.py's sampler
  (``fastnofrost.data.shard.Sharding``: a numpy permutation seeded by (seed, epoch)) instead of
  ``torch.randperm``, so with the same seed both engines read the same batches in the same order.

Writes ``final.safetensors`` (the model's weights under our models' keys) and ``summary.json``
(``wall_s``, ``steps``, ``final_loss``) in ``--out``, as train.py does, so fidelity.py evaluates
both engines' models by the same code.
"""
import argparse
import json
import math
import os
import sys
import time
from types import SimpleNamespace

import torch

from official import official_model, official_optimizer, official_step  # benchmarks/ is on sys.path
from fastnofrost.attacks import default_alpha
from fastnofrost.data import build_loader
from fastnofrost.data.shard import Sharding
from fastnofrost.models import create_model
from fastnofrost.training.checkpoint import save_weights
from fastnofrost.training.engine import param_groups
from fastnofrost.training.schedule import cosine_with_warmup

LAMBDAS = {"st": 0.0, "sat": 1.0, "nofrost": 0.5}  # PGDAT.py's --Lambda for each method it trains
MOMENTUM, WEIGHT_DECAY, SMOOTHING = 0.9, 5e-5, 0.1  # as train.py's defaults (and PGDAT.py's)


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="fashion-mnist or digits")
    p.add_argument("--method", required=True, choices=sorted(LAMBDAS))
    p.add_argument("--model", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--image-size", type=int, required=True)
    p.add_argument("--epochs", type=int, required=True)
    p.add_argument("--batch-size", type=int, required=True)
    p.add_argument("--lr", type=float, required=True, help="peak learning rate")
    p.add_argument("--warmup-epochs", type=float, default=0.0)
    p.add_argument("--eps", type=float, required=True, help="1/255 units")
    p.add_argument("--steps", type=int, required=True, help="PGD steps of the training attack")
    p.add_argument("--train-examples", type=int, default=0, help="seeded pick of the training split (0: all)")
    p.add_argument("--attack-first", action="store_true",
                   help="diagnostic: attack before the clean train-mode forward (ours' order)")
    p.add_argument("--no-decay-1d", action="store_true",
                   help="diagnostic: no weight decay on biases and 1-d parameters (ours under the paper recipe)")
    p.add_argument("--data-order", default="torch", choices=("torch", "ours"),
                   help="diagnostic: 'ours' reads each epoch in train.py's sampler order")
    args = p.parse_args(argv)
    if os.path.exists(os.path.join(args.out, "final.safetensors")):
        p.error(f"{args.out} already holds a finished run")
    return args


def training_set(args):
    """Every training example of the subset, as pixels in [0, 1] and labels, in the loader's
    epoch-0 order, and where each subset sample sits in it (the same pick of the split as
    train.py's ``--train-examples``: split seed 0)."""
    def loader(batch_size):
        return build_loader(args.data, train=True, batch_size=batch_size, image_size=args.image_size,
                            subset=args.train_examples, device=args.device, workers=0)

    count = loader(1).sharding.num_samples
    loader = loader(count)  # one batch of the whole subset, in the loader's epoch-0 order
    loader.set_epoch(0)
    (x, y), = list(loader)
    position = torch.tensor(loader.sharding.indices(0)).argsort()  # subset sample k is x[position[k]]
    return x, y, position


def epoch_order(args, position: torch.Tensor, epoch: int) -> torch.Tensor:
    """Rows of x for ``epoch`` in reading order: PGDAT.py's (a fresh ``torch.randperm`` from the
    default generator, as its DataLoader's ``shuffle=True``) or, ``--data-order ours``, train.py's
    (the subset samples its sampler reads, mapped to their rows)."""
    n = len(position)
    if args.data_order == "ours":
        return position[Sharding(n, args.batch_size, train=True, seed=args.seed).indices(epoch)]
    return torch.randperm(n)


def optimizer_for(args, model):
    """PGDAT.py's SGD (weight decay on every parameter) or, ``--no-decay-1d``, the same SGD on
    train.py's two groups (no decay on biases and 1-d parameters)."""
    groups = param_groups(SimpleNamespace(decay_all=False, wd=WEIGHT_DECAY), model) if args.no_decay_1d else None
    return official_optimizer(model, args.lr, MOMENTUM, WEIGHT_DECAY, params=groups)


def main(argv=None) -> int:
    args = parse(argv)
    torch.manual_seed(args.seed)  # PGDAT.py: one seed, then torch's default generator for everything
    x, y, position = training_set(args)
    model = official_model(create_model(args.model, num_classes=10, width=args.width, drop_rate=0.0,
                                        drop_path_rate=0.0)).to(args.device)
    per_epoch = len(x) // args.batch_size
    if per_epoch < 1:
        sys.exit(f"official_train: {len(x)} examples make no batch of {args.batch_size}")
    optimizer = optimizer_for(args, model)
    total, warmup = args.epochs * per_epoch, int(round(args.warmup_epochs * per_epoch))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine_with_warmup(total, warmup))
    eps = args.eps / 255
    step = official_step(model, optimizer, args.steps, eps, default_alpha(eps, max(args.steps, 1)),
                         LAMBDAS[args.method], SMOOTHING, attack_first=args.attack_first)
    os.makedirs(args.out, exist_ok=True)
    started, loss = time.time(), math.nan
    for epoch in range(args.epochs):
        order = epoch_order(args, position, epoch)
        for i in range(per_epoch):
            batch = order[i * args.batch_size:(i + 1) * args.batch_size]
            meters = step(x[batch], y[batch])
            loss = meters[1]
            scheduler.step()
        print(f"epoch {epoch + 1}/{args.epochs}: loss {loss:.4f}, lr {scheduler.get_last_lr()[0]:.4g}", flush=True)
        if not math.isfinite(loss):
            sys.exit(f"official_train: non-finite loss {loss} in epoch {epoch + 1}")
    wall = time.time() - started
    save_weights(model, os.path.join(args.out, "final.safetensors"))
    with open(os.path.join(args.out, "summary.json"), "w") as fh:
        json.dump({**vars(args), "engine": "official", "wall_s": wall, "optimizer_steps": total, "final_loss": loss}, fh,
                  indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Data for fastnofrost: one factory, four backends, a few small real data sets.

    loader = build_loader("/data/imagenet", backend="dali-gpu", batch_size=256, image_size=224,
                          train=True, rank=rank, world_size=world_size, seed=0, device=device)
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        for x, y in loader:            # (x, x_aug, y) with nofrost_star=True (training only)
            ...
        print(loader.skipped)          # files left out so far; loader.bad: {path: reason}

A batch: float32 pixels in [0, 1] (normalization is the model's first layer), N x 3 x S x S
(channels_last memory format with ``channels_last=True``), and int64 labels, on ``device``.
``len(loader)`` is the number of batches per epoch on this rank.

``data`` is an ImageNet-layout folder (``root/train/<class>/*`` and ``root/val/<class>/*``; a
folder named ``train`` or ``val`` is read whole; any other ``root/<class>/*`` is split into
train/val by a seeded hash of each file's path, ``val_fraction``, ``split_seed``), or a data set
name: ``digits`` (scikit-learn, always available) or ``fashion-mnist`` (Debian package
``dataset-fashion-mnist``). ``backend`` (``--data-backend``):

* ``dali-gpu``: DALI, JPEG decoding on the GPU (``device`` must be CUDA); ``dali-cpu``: the same
  DALI pipeline on CPU threads; ``torch``: PIL + torchvision in DataLoader worker processes.
  All three read the same files in the same order (shard.py) with the same augmentations
  (augment.py; dali.py builds them from DALI ops). Folders only.
* ``synthetic``: one random batch on the device, repeated ``synthetic_batches`` times.

Sharding (rank, world_size: the trainer passes DeepSpeed's): each rank reads a disjoint part;
training drops the last partial batch so every rank runs the same number of equal batches,
validation keeps every sample once (last batch may be partial, nothing padded).

Start-up (index.py): a folder is listed by rank 0 and its files checked once, each rank a share;
with ``index_dir`` (train.py: ``<run>/data-index``) the result is kept and a later launch (a
resume) reuses it while the folders are unchanged.

Bad files (see scan.py): every file is checked before training (``verify="header"``, or
``"decode"`` for a full decode); with ``skip_bad=True`` (the default for training) bad files, files
that fail to decode later, and empty class folders are left out, logged by name and counted in
``loader.skipped``; with ``skip_bad=False`` (the default for validation, whose set must stay
whole) a :class:`BadDataError` names them. Labels come from
the sorted class folders, so a left-out file never shifts a label. Grayscale, CMYK and RGBA
images are converted to RGB.

NoFrost* (``nofrost_star=True``): each training sample yields a clean and a texture-debiased
view cut from one decode. DeepAugment runs on the batch in the training loop:
:class:`fastnofrost.data.deepaugment.DeepAugment`.
"""
import logging
import os

from .augment import texture_debiased_transform, train_transform, val_transform
from .index import shared_scan
from .scan import BadDataError
from .shard import Sharding

log = logging.getLogger("fastnofrost.data")

BACKENDS = ("dali-gpu", "dali-cpu", "torch", "synthetic")
DATASETS = ("digits", "fashion-mnist")

__all__ = ["BACKENDS", "DATASETS", "BadDataError", "build_loader"]


def build_loader(data=None, *, backend="torch", batch_size=256, image_size=224, train=True, rank=0, world_size=1,
                 seed=0, channels_last=False, device="cpu", nofrost_star=False, skip_bad=None, verify="header",
                 workers=4, colour_strength=1.0, val_fraction=0.2, split_seed=0, synthetic_batches=100,
                 num_classes=1000, subset=0, sharding=None, index_dir=None):
    """Build the loader for one split on one rank (see the module docstring).
    ``skip_bad=None`` means skip-and-count for training, raise for validation. ``subset=N``
    keeps N samples of the split, drawn by a permutation seeded with ``split_seed`` (0: all).
    ``sharding``: a function of the split's sample count returning the :class:`Sharding` to
    read with, in place of ``Sharding(count, batch_size, train, rank, world_size, seed)``
    (the evaluation reads a spread subset first: ``fastnofrost.evaluation.data``). A folder is
    scanned once for all ranks of the process group (every rank must call this), its index kept
    in ``index_dir`` for the next launch when given (index.py)."""
    if subset < 0:
        raise ValueError(f"subset must be >= 0, got {subset}")
    if sharding is not None and backend == "synthetic":
        raise ValueError("the synthetic backend makes its own batches: it takes no sharding=")
    if sharding is None:
        sharding = lambda count: Sharding(count, batch_size, train, rank, world_size, seed)  # noqa: E731
    skip_bad = train if skip_bad is None else skip_bad
    if backend not in BACKENDS:
        raise ValueError(f"unknown data backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if image_size < 1 or batch_size < 1:
        raise ValueError(f"image_size and batch_size must be >= 1, got {image_size} and {batch_size}")
    if not 0 < colour_strength <= 2.5:
        raise ValueError(f"colour_strength must be in (0, 2.5] (hue jitter 0.2*s <= 0.5), got {colour_strength}")
    common = dict(device=device, channels_last=channels_last)
    if backend == "synthetic":
        from .synthetic import SyntheticLoader

        return SyntheticLoader(batch_size=batch_size, image_size=image_size, num_classes=num_classes,
                               batches=synthetic_batches, nofrost_star=nofrost_star and train, rank=rank,
                               world_size=world_size, seed=seed, **common)
    if data is None:
        raise ValueError(f"the {backend} backend needs data: a folder or one of {', '.join(DATASETS)}")
    debiased = texture_debiased_transform(image_size, colour_strength) if nofrost_star and train else None
    if data in DATASETS:
        return _tensor_loader(data, backend, train, val_fraction, split_seed, debiased, subset, sharding,
                              image_size=image_size, **common)
    scan = _scan(str(data), train, val_fraction, split_seed, verify=verify, skip_bad=skip_bad,
                 workers=max(4, workers), rank=rank, world=world_size, index_dir=index_dir)
    if subset:
        scan.samples = [scan.samples[i] for i in sorted(_pick(len(scan.samples), subset, split_seed))]
    sharding = sharding(len(scan.samples))
    if backend == "torch":
        from .folder import FolderLoader

        transforms = [train_transform(image_size) if train else val_transform(image_size)]
        transforms += [debiased] if debiased else []
        return FolderLoader(scan, sharding, transforms, workers=workers, skip_bad=skip_bad, **common)
    from .dali import DaliLoader

    return DaliLoader(scan, sharding, gpu=backend == "dali-gpu", image_size=image_size, nofrost_star=nofrost_star,
                      strength=colour_strength, num_threads=max(1, workers), skip_bad=skip_bad, **common)


def _scan(data, train, val_fraction, split_seed, **kw):
    """``data/train`` + ``data/val`` when present; a folder named train or val is used whole;
    any other folder of classes is split by a seeded hash of each file's path."""
    if os.path.isdir(os.path.join(data, "train")) and os.path.isdir(os.path.join(data, "val")):
        return shared_scan(os.path.join(data, "train" if train else "val"), **kw)
    if os.path.basename(os.path.normpath(data)) in ("train", "val"):
        return shared_scan(data, **kw)
    log.info("%s has no train/ and val/: splitting its files %g/%g by path (split_seed=%d)",
             data, 1 - val_fraction, val_fraction, split_seed)
    return shared_scan(data, split="train" if train else "val", val_fraction=val_fraction, split_seed=split_seed, **kw)


def _pick(n, subset, split_seed):
    """``subset`` of ``range(n)`` drawn by a seeded permutation (all of them when subset >= n)."""
    import numpy as np

    return np.random.default_rng([split_seed, 7]).permutation(n)[:subset].tolist()


def _tensor_loader(name, backend, train, val_fraction, split_seed, debiased, subset, sharding, *, image_size,
                   **common):
    import torch

    from .datasets import TensorLoader, load_digits, load_fashion_mnist

    if backend != "torch":
        raise ValueError(f"{name} is an in-memory data set: use --data-backend torch (the {backend} backend "
                         "reads image folders)")
    images, labels = load_digits(train, val_fraction, split_seed) if name == "digits" else load_fashion_mnist(train)
    if subset:
        keep = torch.tensor(sorted(_pick(len(images), subset, split_seed)), dtype=torch.int64)
        images, labels = images[keep], labels[keep]
    return TensorLoader(images, labels, sharding(len(images)), image_size=image_size, num_classes=10,
                        debiased=debiased, **common)

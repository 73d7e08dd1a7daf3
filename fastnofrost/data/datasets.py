"""Small real data sets that ship with installable packages, held in memory as uint8 tensors.

* ``digits``: scikit-learn's 1,797 8x8 handwritten digits (embedded in the wheel, always
  available); train/val split by a seeded permutation (``val_fraction``, ``split_seed``).
* ``fashion-mnist``: 70,000 28x28 clothing images from Debian's ``dataset-fashion-mnist``
  (``apt-get install dataset-fashion-mnist``: the IDX files in /usr/share/datasets/fashion-mnist);
  its own 60,000/10,000 train/test split.

Batches are resized to ``image_size`` (bilinear, antialiased) and repeated to 3 channels on the
way out, so the data stays small in memory; training batches are shuffled (shard.py) but not
augmented, except for the texture-debiased NoFrost* view.
"""
import gzip
import os

import numpy as np
import torch
import torch.nn.functional as F

from .base import EpochLoader

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
_FASHION_FILES = {True: ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
                  False: ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}


def load_digits(train, val_fraction=0.2, split_seed=0):
    """scikit-learn's digits as (uint8 images N x 1 x 8 x 8, int64 labels), one side of the split."""
    from sklearn.datasets import load_digits as sk_digits

    digits = sk_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[:, None]
    order = np.random.default_rng(split_seed).permutation(len(images))
    n_val = int(round(val_fraction * len(images)))
    keep = order[n_val:] if train else order[:n_val]
    return torch.from_numpy(images[keep]), torch.from_numpy(digits.target[keep].astype(np.int64))


def read_idx(path):
    """An IDX file (the MNIST format), gzip-compressed or not, as a numpy array."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[:2] != b"\0\0" or data[2] != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte IDX file")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise ValueError(f"{path} is truncated: header says {shape}, found {body.size} values")
    return body.reshape(shape)


def load_fashion_mnist(train, root=FASHION_MNIST_DIR):
    """Fashion-MNIST as (uint8 images N x 1 x 28 x 28, int64 labels)."""
    paths = [os.path.join(root, name) for name in _FASHION_FILES[bool(train)]]
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise FileNotFoundError(
            f"Fashion-MNIST not found ({', '.join(missing)} missing). Install Debian's package: "
            "apt-get install dataset-fashion-mnist (it puts the IDX files in "
            f"{FASHION_MNIST_DIR}), or pass the folder that holds them.")
    images, labels = (read_idx(p) for p in paths)
    return torch.from_numpy(images.copy())[:, None], torch.from_numpy(labels.astype(np.int64))


class TensorLoader(EpochLoader):
    """Batches of in-memory uint8 images, resized and made 3-channel on the way out."""

    def __init__(self, images, labels, sharding, *, image_size, num_classes, debiased=None, **kw):
        super().__init__(sharding, num_classes=num_classes, **kw)
        if len(images) != len(labels) or len(images) != sharding.num_samples:
            raise ValueError(f"{len(images)} images, {len(labels)} labels, sharding of {sharding.num_samples}")
        # checked once here, so every batch holds pixels in [0, 1] and valid labels (the training
        # attack does not read them again)
        if images.dtype != torch.uint8:
            raise ValueError(f"images must be uint8, got {images.dtype}")
        if len(labels) and not 0 <= int(labels.min()) <= int(labels.max()) < num_classes:
            raise ValueError(f"labels must lie in [0, {num_classes}), got [{int(labels.min())}, {int(labels.max())}]")
        self.images, self.labels = images, labels
        self.image_size = image_size
        self.debiased = debiased if sharding.train else None

    def _pixels(self, index):
        x = self.images[index].float().div_(255.0)
        if x.shape[-2:] != (self.image_size, self.image_size):
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear",
                              antialias=True, align_corners=False).clamp_(0.0, 1.0)
        return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x

    def _debiased_view(self, x, index, seeds):
        views = []
        for image, i in zip(x, index.tolist()):
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seeds[i])
                views.append(self.debiased(image.contiguous()))
        return torch.stack(views)

    def __iter__(self):
        indices = torch.tensor(self.epoch_indices(), dtype=torch.int64)
        seeds = self.sharding.sample_seeds(self.epoch) if self.debiased else None
        for index in indices.split(self.sharding.batch_size):
            x = self._pixels(index)
            views = (x, self._debiased_view(x, index, seeds)) if self.debiased else (x,)
            yield self.finish(*views, self.labels[index])

"""The ``torch`` backend: an image folder read by a torch DataLoader with torchvision transforms.

The portable fallback of the DALI backends: same files, same labels, same sharding (see
shard.py), decoding with PIL in ``workers`` processes. Each file is decoded once; with
NoFrost* views both the clean and the texture-debiased view are cut from that one image.
A file that passed the pre-scan but fails to decode is skipped and counted (``skip_bad``;
the batch is one sample shorter) or raises :class:`BadDataError` naming it.
"""
import logging

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from .base import EpochLoader
from .scan import BadDataError

log = logging.getLogger("fastnofrost.data")


class _Skipped:
    def __init__(self, path, reason):
        self.path, self.reason = path, reason


class ImageFiles(Dataset):
    """(path, label) samples; an item is ``(index, seed)`` so augmentations are reproducible."""

    def __init__(self, samples, transforms, skip_bad=True):
        self.samples, self.transforms, self.skip_bad = samples, transforms, skip_bad

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, item):
        index, seed = item
        path, label = self.samples[index]
        try:
            with Image.open(path) as im:
                image = im.convert("RGB")
        except Exception as e:  # PIL raises many types for bad data
            if not self.skip_bad:
                raise BadDataError(f"cannot decode {path}: {type(e).__name__}: {e}") from e
            return _Skipped(path, f"{type(e).__name__}: {e}")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return (*(t(image) for t in self.transforms), label)


def collate(items):
    """Stack the decoded samples; skipped ones come back as (path, reason) pairs."""
    skipped = [(s.path, s.reason) for s in items if isinstance(s, _Skipped)]
    good = [s for s in items if not isinstance(s, _Skipped)]
    if not good:
        return None, skipped
    columns = list(zip(*good))
    return (*(torch.stack(c) for c in columns[:-1]), torch.tensor(columns[-1], dtype=torch.int64)), skipped


class FolderLoader(EpochLoader):
    def __init__(self, scan, sharding, transforms, *, workers=4, skip_bad=True, **kw):
        super().__init__(sharding, num_classes=scan.num_classes, bad=scan.bad, **kw)
        self.dataset = ImageFiles(scan.samples, transforms, skip_bad)
        self.workers = workers

    def __iter__(self):
        seeds = self.sharding.sample_seeds(self.epoch)
        items = [(i, seeds[i]) for i in self.epoch_indices()]
        loader = DataLoader(self.dataset, batch_size=self.sharding.batch_size, sampler=items,
                            num_workers=self.workers, collate_fn=collate,
                            pin_memory=self.device.type == "cuda",
                            generator=torch.Generator())  # leave torch's global RNG untouched (exact resume)
        for batch, skipped in loader:
            for path, reason in skipped:
                if path not in self.bad:
                    log.warning("skipping %s: %s", path, reason)
                    self.bad[path] = reason
            if batch is not None:
                yield self.finish(*batch)
        self.report()

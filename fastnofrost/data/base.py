"""What every backend's loader shares: epoch bookkeeping and the hand-over of a batch.

A batch is ``(x, y)``, or ``(x, x_aug, y)`` with NoFrost* views: float32 pixels in [0, 1],
NCHW (channels_last memory format when asked), and int64 labels, on the training device.
"""
import logging

import torch

log = logging.getLogger("fastnofrost.data")


class EpochLoader:
    """Base of the backends' loaders: ``len()`` is batches per epoch on this rank,
    ``set_epoch(e, start_batch)`` picks the epoch (and first batch) the next iteration reads, ``skipped`` counts the files
    left out so far (pre-scan plus decode failures), ``bad`` maps each to the reason."""

    def __init__(self, sharding, *, num_classes, device="cpu", channels_last=False, bad=()):
        self.sharding = sharding
        self.num_classes = num_classes
        self.device = torch.device(device)
        self.channels_last = channels_last
        self.bad = dict(bad)  # path -> reason
        self.epoch, self.start_batch = 0, 0

    def __len__(self):
        return len(self.sharding)

    def set_epoch(self, epoch, start_batch=0):
        """Read ``epoch`` next, from its batch ``start_batch`` on (a resumed run continues
        mid-epoch on exactly the samples, order and augmentation seeds it would have read)."""
        if not 0 <= start_batch <= len(self):
            raise ValueError(f"start_batch must be in [0, {len(self)}], got {start_batch}")
        self.epoch, self.start_batch = int(epoch), int(start_batch)

    def epoch_indices(self):
        """This rank's sample indices still to read in the current epoch."""
        return self.sharding.indices(self.epoch)[self.start_batch * self.sharding.batch_size:]

    @property
    def skipped(self):
        return len(self.bad)

    def report(self):
        """Log the skip count at the end of an epoch (only when files were skipped)."""
        if self.bad:
            log.warning("epoch %d, rank %d: %d bad files skipped so far (loader.bad names them)",
                        self.epoch, self.sharding.rank, len(self.bad))

    def finish(self, *tensors):
        """Move images and labels to the device; images get their memory format."""
        *images, labels = tensors
        non_blocking = self.device.type == "cuda"
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        images = [x.to(self.device, non_blocking=non_blocking).contiguous(memory_format=fmt) for x in images]
        return (*images, labels.to(self.device, torch.int64, non_blocking=non_blocking).view(-1))

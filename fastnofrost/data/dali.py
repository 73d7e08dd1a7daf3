"""The ``dali-gpu`` and ``dali-cpu`` backends: one NVIDIA DALI pipeline, two placements.

``dali-gpu`` decodes JPEGs with ``device="mixed"`` (nvJPEG) and runs every later op on the
rank's GPU; ``dali-cpu`` runs the same graph on CPU threads (``device_id=None``: no GPU is
touched, so it works on machines without one) and the batch is copied to ``device``.

* train: ``decoders.image_random_crop`` (RandomResizedCrop area (0.08, 1), ratio (3/4, 4/3))
  -> resize to ``image_size`` -> random horizontal flip -> float [0, 1].
* NoFrost* train: decode once, then two ``random_resized_crop`` views of the same image: the
  clean one as above and the texture-debiased one (area (0.64, 1), flip, colour distortion
  with p 0.5, built from ``color_twist``, see ``_colour_distortion``).
* val: resize the shorter side to 256 (for 224) -> center crop -> float [0, 1].

Sharding and shuffling follow shard.py (the same samples, in the same order, as the torch
backend): the reader is given this rank's file list for the epoch, and the pipeline is built
anew each epoch with a seed drawn from (seed, epoch, rank). If DALI fails to decode a file the
pre-scan let through, the files of the batches in flight are decoded with PIL to name it; with
``skip_bad`` it is excluded (and replaced by another file of the shard in training, so every
rank keeps the same number of batches) and reading resumes where it stopped.
"""
import logging

from .augment import DEBIASED_SCALE, RATIO, TRAIN_SCALE, resize_size
from .base import EpochLoader
from .scan import BadDataError, check_image

log = logging.getLogger("fastnofrost.data")

PREFETCH = 2


def import_dali():
    try:
        import nvidia.dali
        import nvidia.dali.plugin.pytorch  # noqa: F401
    except ImportError as e:
        raise ImportError(
            "the dali-gpu and dali-cpu data backends need NVIDIA DALI: "
            "pip install 'fastnofrost[dali-cuda130]' (CUDA 13) or 'fastnofrost[dali-cuda120]' (CUDA 12), "
            "or use --data-backend torch") from e
    return nvidia.dali


def _colour_distortion(images, strength, fn, types):
    """ColorJitter(0.8s, 0.8s, 0.8s, 0.2s) with p 0.8 then grayscale with p 0.2, the whole
    applied with p 0.5, as one per-sample ``color_twist`` (an identity where not applied).
    Unlike torchvision, the four jitters are applied in one fixed order."""
    s = strength

    def coin(p):
        return fn.cast(fn.random.coin_flip(probability=p), dtype=types.FLOAT)

    def jitter(amount, on):
        return 1.0 + on * (fn.random.uniform(range=[max(0.0, 1.0 - amount), 1.0 + amount]) - 1.0)

    distort = coin(0.5)
    on = distort * coin(0.8)
    gray = distort * coin(0.2)
    return fn.color_twist(images, brightness=jitter(0.8 * s, on), contrast=jitter(0.8 * s, on),
                          saturation=jitter(0.8 * s, on) * (1.0 - gray),
                          hue=on * fn.random.uniform(range=[-0.2 * s * 360.0, 0.2 * s * 360.0]))


def build_pipeline(files, labels, *, gpu, device_id, batch_size, image_size, train, nofrost_star=False,
                   channels_last=False, strength=1.0, num_threads=2, seed=0):
    """The DALI pipeline for one rank and one pass over ``files`` (outputs x[, x_aug], y)."""
    dali = import_dali()
    fn, types = dali.fn, dali.types
    size = [image_size, image_size]
    layout = "HWC" if channels_last else "CHW"
    decode_on = "mixed" if gpu else "cpu"

    def to_float(images, mirror=0):
        return fn.crop_mirror_normalize(images, dtype=types.FLOAT, output_layout=layout,
                                        mean=[0.0], std=[255.0], mirror=mirror)

    def flip():
        return fn.random.coin_flip(probability=0.5)

    pipe = dali.Pipeline(batch_size=batch_size, num_threads=num_threads, device_id=device_id if gpu else None,
                         seed=seed, prefetch_queue_depth=PREFETCH)
    with pipe:
        data, y = fn.readers.file(files=files, labels=labels, random_shuffle=False, pad_last_batch=True,
                                  name="Reader")
        if train and not nofrost_star:
            images = fn.decoders.image_random_crop(data, device=decode_on, output_type=types.RGB,
                                                   random_area=list(TRAIN_SCALE),
                                                   random_aspect_ratio=list(RATIO), num_attempts=100)
            views = [to_float(fn.resize(images, size=size), flip())]
        elif train:
            images = fn.decoders.image(data, device=decode_on, output_type=types.RGB)
            clean = fn.random_resized_crop(images, size=size, random_area=list(TRAIN_SCALE),
                                           random_aspect_ratio=list(RATIO), num_attempts=100)
            debiased = fn.random_resized_crop(images, size=size, random_area=list(DEBIASED_SCALE),
                                              random_aspect_ratio=list(RATIO), num_attempts=100)
            debiased = _colour_distortion(debiased, strength, fn, types)
            views = [to_float(clean, flip()), to_float(debiased, flip())]
        else:
            images = fn.decoders.image(data, device=decode_on, output_type=types.RGB)
            images = fn.resize(images, resize_shorter=resize_size(image_size))
            views = [fn.crop_mirror_normalize(images, crop=size, dtype=types.FLOAT, output_layout=layout,
                                              mean=[0.0], std=[255.0])]
        pipe.set_outputs(*views, y)
    return pipe


def _replace_bad(order, bad, keep_length):
    """Drop bad files from ``order``; in training, refill it from its good files (a few
    samples are then read twice this epoch) so the batch count stays the same."""
    good = [s for s in order if s[0] not in bad]
    if not keep_length or len(good) == len(order):
        return good
    if not good:
        raise BadDataError("every remaining file of this shard failed to decode: " + ", ".join(sorted(bad)))
    return (good * (len(order) // len(good) + 1))[: len(order)]


class DaliLoader(EpochLoader):
    def __init__(self, scan, sharding, *, gpu, image_size, nofrost_star=False, strength=1.0, num_threads=2,
                 skip_bad=True, **kw):
        super().__init__(sharding, num_classes=scan.num_classes, bad=scan.bad, **kw)
        if gpu and self.device.type != "cuda":
            raise ValueError(f"dali-gpu decodes on a CUDA device; got device={str(self.device)!r} "
                             "(use --data-backend dali-cpu or torch without a GPU)")
        import_dali()
        self.samples = scan.samples
        self.gpu, self.skip_bad = gpu, skip_bad
        self.options = dict(image_size=image_size, train=sharding.train, nofrost_star=nofrost_star and sharding.train,
                            channels_last=self.channels_last, strength=strength, num_threads=num_threads)
        self.names = ["x", "x_aug", "y"] if self.options["nofrost_star"] else ["x", "y"]

    def _iterator(self, order, seed):
        from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy

        pipe = build_pipeline([p for p, _ in order], [label for _, label in order], gpu=self.gpu,
                              device_id=(self.device.index or 0) if self.gpu else None,
                              batch_size=self.sharding.batch_size, seed=seed, **self.options)
        return DALIGenericIterator([pipe], self.names, reader_name="Reader",
                                   last_batch_policy=LastBatchPolicy.PARTIAL)

    def __iter__(self):
        order = [self.samples[i] for i in self.epoch_indices()]
        order = _replace_bad(order, self.bad, keep_length=self.sharding.train)
        restarts, outputs = 0, None
        while order:
            try:
                if outputs is None:
                    seed = (self.sharding.pipeline_seed(self.epoch) + restarts) & 0x7FFFFFFF
                    outputs = iter(self._iterator(order, seed))
                out = next(outputs)[0]
            except StopIteration:
                break
            except RuntimeError as err:  # DALI reports a file it cannot decode as a RuntimeError
                order = self._exclude_undecodable(order, err)
                restarts, outputs = restarts + 1, None
                continue
            order = order[self.sharding.batch_size:]
            yield self.finish(*(self._nchw(out[name]) for name in self.names))
        self.report()

    def _nchw(self, t):
        """DALI's HWC output is NCHW in channels_last memory format once permuted (no copy)."""
        return t.permute(0, 3, 1, 2) if self.channels_last and t.dim() == 4 else t

    def _exclude_undecodable(self, order, err):
        window = order[: (PREFETCH + 2) * self.sharding.batch_size]
        found = {p: r for p, r in ((p, check_image(p, "decode")) for p, _ in window) if r is not None}
        if not found:
            raise RuntimeError(f"the DALI pipeline failed, and PIL decodes all {len(window)} files of the batches "
                               f"in flight (from {window[0][0]!r}), so no bad file is to blame: {err}") from err
        listing = "\n".join(f"  {p}: {r}" for p, r in found.items())
        if not self.skip_bad:
            raise BadDataError(f"cannot decode:\n{listing}\n(pass skip_bad=True to exclude and count such "
                               "files, or scan with verify='decode' to find them before training)") from err
        log.warning("skipping files DALI could not decode:\n%s", listing)
        self.bad.update(found)
        return _replace_bad(order, self.bad, keep_length=self.sharding.train)

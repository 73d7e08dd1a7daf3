"""Image transforms of the torch backend (torchvision), pixels out in [0, 1].

* train: RandomResizedCrop(scale (0.08, 1), ratio (3/4, 4/3)) + horizontal flip.
* val: resize the shorter side to ``round(size / 0.875)`` (256 for 224) + center crop.
* texture-debiased view (NoFrost*): RandomResizedCrop(scale (0.64, 1)) + flip + colour
  distortion applied with p 0.5; the colour distortion is ColorJitter(0.8 s brightness,
  contrast, saturation, 0.2 s hue) with p 0.8 then random grayscale with p 0.2 (s = strength).

The DALI backends build the same operations from DALI ops (see dali.py).
"""
import torch
from torchvision.transforms import v2

TRAIN_SCALE = (0.08, 1.0)
DEBIASED_SCALE = (0.64, 1.0)
RATIO = (3 / 4, 4 / 3)
VAL_CROP_FRACTION = 0.875


def resize_size(size):
    """Shorter side before the validation center crop (256 for 224)."""
    return round(size / VAL_CROP_FRACTION)


def to_float():
    return v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True)])


def train_transform(size):
    return v2.Compose([v2.RandomResizedCrop(size, scale=TRAIN_SCALE, ratio=RATIO, antialias=True),
                       v2.RandomHorizontalFlip(), to_float()])


def val_transform(size):
    return v2.Compose([v2.Resize(resize_size(size), antialias=True), v2.CenterCrop(size), to_float()])


def colour_distortion(strength=1.0):
    s = strength
    jitter = v2.ColorJitter(brightness=0.8 * s, contrast=0.8 * s, saturation=0.8 * s, hue=0.2 * s)
    return v2.Compose([v2.RandomApply([jitter], p=0.8), v2.RandomGrayscale(p=0.2)])


def texture_debiased_transform(size, strength=1.0):
    """The NoFrost* texture-debiased view (PIL images or CHW tensors in [0, 1])."""
    return v2.Compose([v2.RandomResizedCrop(size, scale=DEBIASED_SCALE, ratio=RATIO, antialias=True),
                       v2.RandomHorizontalFlip(), v2.RandomApply([colour_distortion(strength)], p=0.5),
                       to_float()])

"""Small ImageNet-layout folders, for tests, benchmarks, CPU-scale runs and the GPU acceptance run.

:func:`make_image_folder`: real pictures from packages: scikit-learn's sample photos (china.jpg,
flower.jpg, cropped at random) and its handwritten digits (grayscale), plus PIL re-encodings as
CMYK JPEG and RGBA PNG, so every channel layout a folder may hold is present.

:func:`make_class_folder`: as many classes as asked, each a learnable texture (a colour grating
of its own hue, orientation and frequency, at a random phase, with noise), as RGB JPEGs of
random sizes; written by worker processes.
"""
import os
from concurrent.futures import ProcessPoolExecutor

import numpy as np
from PIL import Image

CLASSES = ("china", "digits", "flower", "mixed")


def _crops(photo, rng, count, size_range):
    h, w = photo.shape[:2]
    for _ in range(count):
        ch, cw = rng.integers(*size_range), rng.integers(*size_range)
        y, x = rng.integers(0, h - ch), rng.integers(0, w - cw)
        yield Image.fromarray(photo[y:y + ch, x:x + cw])


def make_image_folder(root, per_class=(("train", 6), ("val", 3)), size_range=(64, 160), seed=0):
    """root/{train,val}/<class>/*.{JPEG,png}: len(CLASSES) classes, per_class files each."""
    try:
        from sklearn.datasets import load_digits, load_sample_images
    except ImportError as e:
        raise ImportError("the sample folder is cut from scikit-learn's images: pip install scikit-learn") from e
    rng = np.random.default_rng(seed)
    china, flower = load_sample_images().images
    digits = load_digits().images
    for split, count in per_class:
        for name in CLASSES:
            os.makedirs(os.path.join(root, split, name), exist_ok=True)
        for i, im in enumerate(_crops(china, rng, count, size_range)):
            im.save(os.path.join(root, split, "china", f"china_{i:03d}.JPEG"), quality=90)
        for i, im in enumerate(_crops(flower, rng, count, size_range)):
            im.save(os.path.join(root, split, "flower", f"flower_{i:03d}.JPEG"), quality=90)
        for i in range(count):
            digit = Image.fromarray(np.uint8(digits[rng.integers(len(digits))] * 15)).resize((64, 64))
            digit.save(os.path.join(root, split, "digits", f"digit_{i:03d}.JPEG"))  # 1 channel
        for i, im in enumerate(_crops(flower, rng, count, size_range)):
            if i % 2:
                im.convert("CMYK").save(os.path.join(root, split, "mixed", f"cmyk_{i:03d}.JPEG"))
            else:
                im.convert("RGBA").save(os.path.join(root, split, "mixed", f"rgba_{i:03d}.png"))
    return root


def _texture(label: int, classes: int, size: tuple, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    h, w = size
    angle = np.pi * ((label * 7) % classes) / classes
    freq = 0.04 + 0.16 * ((label * 3) % 5) / 4
    yy, xx = np.mgrid[0:h, 0:w]
    wave = np.sin(freq * (np.cos(angle) * xx + np.sin(angle) * yy) + rng.uniform(0, 2 * np.pi))
    hue = 2 * np.pi * label / classes
    colour = 0.5 + 0.4 * np.cos(hue + np.array([0.0, 2.1, 4.2]))
    image = colour * (0.65 + 0.35 * wave[..., None]) + rng.normal(0, 0.08, (h, w, 3))
    return np.uint8(np.clip(image, 0, 1) * 255)


def _write_class(job) -> int:
    path, label, classes, count, size_range, seed = job
    os.makedirs(path, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        size = tuple(int(v) for v in rng.integers(size_range[0], size_range[1] + 1, 2))
        Image.fromarray(_texture(label, classes, size, int(rng.integers(2**31)))).save(
            os.path.join(path, f"img_{i:04d}.JPEG"), quality=90)
    return count


def make_class_folder(root, classes=40, per_class=(("train", 64), ("val", 10)), size_range=(160, 320), seed=0,
                      workers=None) -> int:
    """root/{train,val}/class_<k>/*.JPEG: ``classes`` texture classes; returns the images written."""
    if classes < 2 or any(n < 1 for _, n in per_class) or not 8 <= size_range[0] <= size_range[1]:
        raise ValueError(f"make_class_folder: need >= 2 classes, >= 1 image per class and split, and sizes "
                         f"8 <= min <= max; got {classes}, {per_class}, {size_range}")
    jobs = [(os.path.join(root, split, f"class_{k:03d}"), k, classes, n, size_range, seed * 100003 + s * 1009 + k)
            for s, (split, n) in enumerate(per_class) for k in range(classes)]
    with ProcessPoolExecutor(max_workers=workers or os.cpu_count()) as pool:
        return sum(pool.map(_write_class, jobs))

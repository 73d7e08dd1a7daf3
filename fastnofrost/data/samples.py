"""A small ImageNet-layout folder of real images, for tests, benchmarks and CPU-scale runs.

Pictures come from packages: scikit-learn's sample photos (china.jpg, flower.jpg, cropped
at random) and its handwritten digits (grayscale), plus PIL re-encodings as CMYK JPEG and
RGBA PNG, so every channel layout a folder may hold is present.
"""
import os

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

"""Scan an ImageNet-layout folder: classes, (file, label) samples, and the files that are bad.

Layout: ``root/<class>/**/<image>``. Class indices are the positions of the class folders in
sorted order, counted over *every* class folder, also empty ones, so a bad or missing file can
never shift the label of another class (torchvision's ImageFolder convention otherwise).

Each file is checked before any training starts, on a thread pool:

* ``verify="header"`` (default, cheap): the extension is an image extension, PIL identifies
  the file and ``verify()`` passes, and a JPEG ends with its end-of-image marker (catches
  truncated files, the usual way a copy goes wrong).
* ``verify="decode"``: also decodes every pixel (catches corrupt data inside a complete file;
  costs a full decode of the data set, so use it once on a new copy of the data).

Bad files (and class folders left without a valid image) are returned in ``ScanResult.bad``;
with ``skip_bad=False`` the first problems are raised as :class:`BadDataError` naming each file.
Grayscale, palette, CMYK and RGBA images are valid: loaders convert them to 3-channel RGB.
"""
import hashlib
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from PIL import Image

log = logging.getLogger("fastnofrost.data")

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".pbm", ".pnm", ".tif", ".tiff", ".webp")
VERIFY_LEVELS = ("header", "decode")
_JPEG_EOI = b"\xff\xd9"


class BadDataError(ValueError):
    """A data folder holds files that cannot be used; the message names them."""


@dataclass
class ScanResult:
    root: str
    classes: list
    samples: list  # [(path, label)]
    bad: list = field(default_factory=list)  # [(path, reason)]

    @property
    def num_classes(self):
        return len(self.classes)


def check_image(path, verify="header"):
    """Return None when ``path`` is a usable image, else a short reason."""
    if not path.lower().endswith(IMAGE_EXTENSIONS):
        return "not an image file extension (" + ", ".join(IMAGE_EXTENSIONS) + ")"
    try:
        with Image.open(path) as im:
            fmt = im.format
            im.verify()
        if fmt == "JPEG":
            with open(path, "rb") as f:
                f.seek(max(0, os.path.getsize(path) - 1024))
                if _JPEG_EOI not in f.read():
                    return "truncated JPEG (no end-of-image marker)"
        if verify == "decode":
            with Image.open(path) as im:
                im.convert("RGB").load()
    except Exception as e:  # PIL raises many types for bad data; all mean "unusable"
        return f"{type(e).__name__}: {e}"
    return None


def _list_dir(path):
    try:
        return sorted(os.scandir(path), key=lambda e: e.name)
    except OSError as e:
        raise BadDataError(f"cannot read data folder {path!r}: {e.strerror or e}") from e


def _class_files(class_dir, dirs):
    """All files below ``class_dir``, sorted, following links (as ImageFolder); each folder
    walked goes into ``dirs`` with its modification time."""
    files = []
    for dirpath, dirnames, filenames in os.walk(class_dir, followlinks=True, onerror=_raise_walk_error):
        dirnames.sort()
        dirs[dirpath] = os.stat(dirpath).st_mtime_ns
        files.extend(os.path.join(dirpath, name) for name in sorted(filenames))
    return files


def _raise_walk_error(err):
    raise BadDataError(f"cannot read data folder {err.filename!r}: {err.strerror or err}") from err


def in_val_split(relpath, val_fraction, split_seed):
    """A file's split depends on its own path and the seed only, so it never moves when
    other files are added, removed or found bad."""
    digest = hashlib.blake2b(f"{split_seed}:{relpath}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2.0**64 < val_fraction


@dataclass
class Listing:
    """A folder's classes and candidate files, before any file is opened. ``dirs``: every
    folder walked (root included) with its modification time in ns, which changes when a file
    in it is added, removed or renamed: what a saved index is checked against (index.py)."""
    root: str
    classes: list
    candidates: list  # [(path, label)]
    bad: list  # [(path, reason)]: empty class folders
    dirs: dict


def list_folder(root, *, split=None, val_fraction=0.2, split_seed=0):
    """List ``root/<class>/...`` (no file opened); ``split`` ("train"/"val") keeps one side of a
    seeded split by file path (for folders without their own train/ and val/)."""
    if not os.path.isdir(root):
        raise BadDataError(f"data folder {root!r} does not exist or is not a directory")
    dirs = {root: os.stat(root).st_mtime_ns}
    classes = [e.name for e in _list_dir(root) if e.is_dir()]
    if not classes:
        raise BadDataError(f"no class folders in {root!r} (expected {root}/<class>/<image files>)")
    candidates, bad = [], []
    for label, name in enumerate(classes):
        files = _class_files(os.path.join(root, name), dirs)
        if not files:
            bad.append((os.path.join(root, name), "empty class folder"))
        for path in files:
            rel = os.path.relpath(path, root)
            if split is None or in_val_split(rel, val_fraction, split_seed) == (split == "val"):
                candidates.append((path, label))
    return Listing(root, classes, candidates, bad, dirs)


def check_files(paths, verify="header", workers=8):
    """:func:`check_image` of each path on a thread pool: a reason per path, None when usable."""
    if verify not in VERIFY_LEVELS:
        raise ValueError(f"verify must be one of {VERIFY_LEVELS}, got {verify!r}")
    with ThreadPoolExecutor(max(1, workers)) as pool:
        return list(pool.map(lambda path: check_image(path, verify), paths))


def settle(listing, reasons, *, skip_bad=True, split=None):
    """The :class:`ScanResult` of a listing and its files' reasons: bad ones left out and
    logged, or with ``skip_bad=False`` raised as :class:`BadDataError` naming them."""
    root = listing.root
    samples = [s for s, r in zip(listing.candidates, reasons) if r is None]
    bad = listing.bad + [(s[0], r) for s, r in zip(listing.candidates, reasons) if r is not None]
    if bad:
        listing_text = "\n".join(f"  {path}: {reason}" for path, reason in bad[:10])
        more = f"\n  ... and {len(bad) - 10} more" if len(bad) > 10 else ""
        if not skip_bad:
            raise BadDataError(f"{len(bad)} bad entries in {root!r}:\n{listing_text}{more}\n"
                               "Fix or remove them, or pass skip_bad=True to exclude and count them.")
        log.warning("excluding %d bad entries in %s:\n%s%s", len(bad), root, listing_text, more)
    if not samples:
        raise BadDataError(f"no usable images in {root!r}" + (f" ({split} split)" if split else ""))
    return ScanResult(root=root, classes=listing.classes, samples=samples, bad=bad)


def scan_folder(root, *, verify="header", skip_bad=True, workers=8, split=None, val_fraction=0.2, split_seed=0):
    """Scan ``root/<class>/...`` in this process: list, check every file, settle."""
    if verify not in VERIFY_LEVELS:
        raise ValueError(f"verify must be one of {VERIFY_LEVELS}, got {verify!r}")
    listing = list_folder(root, split=split, val_fraction=val_fraction, split_seed=split_seed)
    reasons = check_files([path for path, _ in listing.candidates], verify, workers)
    return settle(listing, reasons, skip_bad=skip_bad, split=split)

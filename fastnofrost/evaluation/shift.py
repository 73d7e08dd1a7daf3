"""Distribution shift: clean accuracy on ImageNet-C, -R, -A and -Sketch, from the folders users
download.

| set               | layout                                                   | classes                    |
| ----------------- | -------------------------------------------------------- | -------------------------- |
| ``imagenet-c``    | ``root/<corruption>/<severity 1-5>/<wnid>/*.JPEG``        | all (1000)                 |
| ``imagenet-r``    | ``root/<wnid>/*.jpg``                                    | 200, logits masked to them |
| ``imagenet-a``    | ``root/<wnid>/*.jpg``                                    | 200, logits masked to them |
| ``imagenet-sketch``| ``root/<wnid>/*.JPEG``                                  | all (1000)                 |

Class folders map onto the model's outputs by wnid through the *class index*: the model's
classes in output order, read from a file (one wnid per line, first word; extra words such as
the names of LOC_synset_mapping.txt are ignored) or the sorted class folders of the ImageNet
folder the model was trained on (``root/train/<wnid>``). For ImageNet-R and -A the prediction
is the arg-max over the logits of their 200 classes only (the standard protocol); ImageNet-C
and -Sketch predict over all classes, and without a class index their own sorted folders are
the class order. ImageNet-C reports the accuracy of every corruption x severity, their mean
per corruption, and the mean over all (mean accuracy; no mCE, which needs AlexNet's errors).

Transforms: ImageNet-C images are 224 x 224 center crops already, so they are resized to
``image_size`` (a no-op at 224) and center-cropped; the other sets get the validation transform
(resize the shorter side to image_size / 0.875, center crop).
"""
import os
from dataclasses import dataclass
from typing import Dict, List, Optional

import torch
from torchvision.transforms import v2

from ..data.augment import to_float, val_transform
from ..data.folder import FolderLoader
from ..data.index import shared_scan
from ..attacks.base import predict
from .data import Examples, spread_sharding
from .. import distributed
from .runner import sweep

TITLES = {"imagenet-c": "ImageNet-C", "imagenet-r": "ImageNet-R", "imagenet-a": "ImageNet-A",
          "imagenet-sketch": "ImageNet-Sketch"}
MASKED = ("imagenet-r", "imagenet-a")
SEVERITIES = ("1", "2", "3", "4", "5")


class ShiftDataError(ValueError):
    """A distribution-shift folder or class index that cannot be used; the message says why."""


@dataclass
class Split:
    """One folder of class folders to evaluate: a whole set, or one corruption x severity."""
    name: str  # imagenet-r, or imagenet-c
    root: str
    classes: List[str]  # its wnid folders, sorted (scan_folder's label order)
    columns: List[int]  # model output of each folder class
    corruption: Optional[str] = None
    severity: Optional[str] = None

    @property
    def masked(self) -> bool:
        """Arg-max over ``columns`` only (the 200-class sets)."""
        return self.name in MASKED


def _subdirs(path: str) -> List[str]:
    return sorted(e.name for e in os.scandir(path) if e.is_dir())


def read_class_index(path: str) -> List[str]:
    """The model's classes in output order: the first word of each non-empty line of ``path``."""
    if not os.path.isfile(path):
        raise ShiftDataError(f"class index file {path!r} does not exist")
    with open(path) as f:
        wnids = [line.split()[0] for line in f if line.strip()]
    duplicates = sorted({w for w in wnids if wnids.count(w) > 1})
    if not wnids or duplicates:
        raise ShiftDataError(f"class index file {path!r} must list each class once, one per line; "
                             + (f"repeated: {', '.join(duplicates[:5])}" if duplicates else "it is empty"))
    return wnids


def class_index_of_folder(data: str) -> Optional[List[str]]:
    """Sorted class folders of an ImageNet-layout folder (its train/ when there is one), or None
    when ``data`` is not a folder (a named data set such as digits)."""
    if not os.path.isdir(data):
        return None
    train = os.path.join(data, "train")
    return _subdirs(train if os.path.isdir(train) else data) or None


def _class_folders(title: str, root: str) -> List[str]:
    if not os.path.isdir(root):
        raise ShiftDataError(f"{title} folder {root!r} does not exist or is not a directory")
    classes = _subdirs(root)
    if not classes:
        raise ShiftDataError(f"{title} folder {root!r} holds no class folders (expected {root}/<wnid>/<images>)")
    return classes


def _columns(title: str, root: str, classes: List[str], index: Optional[List[str]]) -> List[int]:
    if index is None:
        return list(range(len(classes)))
    position = {w: k for k, w in enumerate(index)}
    unknown = [c for c in classes if c not in position]
    if unknown:
        raise ShiftDataError(f"{title} folder {root!r} holds class folder {unknown[0]!r}, which is not in the class "
                             f"index ({len(index)} classes; pass --class-index with the model's wnids)")
    return [position[c] for c in classes]


def _severity_splits(root: str, index) -> List[Split]:
    title = TITLES["imagenet-c"]
    corruptions = _class_folders(title, root)
    splits = []
    for corruption in corruptions:
        folder = os.path.join(root, corruption)
        severities = _subdirs(folder)
        wrong = [s for s in severities if s not in SEVERITIES]
        if wrong or not severities:
            found = f"holds {wrong[0]!r}, not a severity folder" if wrong else "holds no severity folders"
            raise ShiftDataError(f"{title} folder {folder!r} {found} (expected {root}/<corruption>/<severity 1-5>/"
                                 "<wnid>/<images>)")
        for severity in severities:
            sub = os.path.join(folder, severity)
            classes = _class_folders(title, sub)
            splits.append(Split("imagenet-c", sub, classes, _columns(title, sub, classes, index), corruption,
                                severity))
    return splits


def plan_shift(sets: Dict[str, str], class_index: Optional[List[str]]) -> List[Split]:
    """Check every folder's layout (directory listings only, before any work) and list the
    splits to evaluate."""
    splits = []
    for name, root in sets.items():
        if name not in TITLES:
            raise ShiftDataError(f"unknown distribution-shift set {name!r}; choose from {', '.join(TITLES)}")
        if name == "imagenet-c":
            splits += _severity_splits(root, class_index)
            continue
        classes = _class_folders(TITLES[name], root)
        if name in MASKED and class_index is None:
            raise ShiftDataError(f"{TITLES[name]} needs the model's class order to map its wnid folders: pass "
                                 "--class-index FILE or an ImageNet --data folder")
        splits.append(Split(name, root, classes, _columns(TITLES[name], root, classes, class_index)))
    return splits


def check_outputs(splits: List[Split], class_index: Optional[List[str]], outputs: int) -> None:
    """The class order must cover the model's outputs exactly: the class index, or (without
    one) the class folders of each split."""
    if class_index is not None and len(class_index) != outputs:
        raise ShiftDataError(f"the class index lists {len(class_index)} classes but the model has {outputs} outputs")
    for split in splits:
        if class_index is None and len(split.classes) != outputs:
            raise ShiftDataError(f"{TITLES[split.name]} folder {split.root!r} holds {len(split.classes)} class folders "
                                 f"but the model has {outputs} outputs; pass --class-index with the model's wnids")


def _transform(split: Split, image_size: int):
    if split.name == "imagenet-c":
        return v2.Compose([v2.Resize(image_size, antialias=True), v2.CenterCrop(image_size), to_float()])
    return val_transform(image_size)


def _accuracy(model, split: Split, *, image_size, batch_size, n_examples, workers, device, precision, progress):
    """(correct, n) of this rank on one split."""
    rank, world = distributed.rank(), distributed.world_size()
    scan = shared_scan(split.root, rank=rank, world=world, skip_bad=False, workers=max(4, workers))  # once, all ranks
    sharding = spread_sharding(len(scan.samples), n_examples, batch_size, rank, world)
    loader = FolderLoader(scan, sharding, [_transform(split, image_size)], workers=workers, skip_bad=False,
                          device=device)
    columns = torch.tensor(split.columns, device=device)

    def correct(x, y):
        logits = predict(model, x, precision)
        pred = columns[logits[:, columns].argmax(1)] if split.masked else logits.argmax(1)
        return {"correct": pred == columns[y]}

    title = TITLES[split.name] + (f" {split.corruption}/{split.severity}" if split.corruption else "")
    examples = Examples(loader, n_examples=n_examples, batch_size=batch_size, rank=rank, world=world, device=device)
    out, _ = sweep(title, examples, correct, progress=progress)
    hits = out.get("correct", torch.zeros(0, dtype=torch.bool))
    return int(hits.sum()), hits.numel()


def _pct(correct: int, n: int) -> float:
    return 100.0 * correct / n if n else 0.0


def evaluate_shift(model, sets: Dict[str, str], class_index: Optional[List[str]] = None, *, image_size: int = 224,
                   batch_size: int = 128, n_examples: Optional[int] = None, workers: int = 4, device="cpu",
                   precision: str = "fp32", progress: bool = True) -> dict:
    """Clean accuracy (%) on each set of ``sets`` ({name: folder}, see module doc); with
    ``n_examples``, that many examples spread over each split (each corruption x severity)."""
    splits = plan_shift(sets, class_index)
    outputs = predict(model, torch.zeros(1, 3, image_size, image_size, device=device)).shape[1]
    check_outputs(splits, class_index, outputs)
    counts = []
    for split in splits:
        correct, n = _accuracy(model, split, image_size=image_size, batch_size=batch_size, n_examples=n_examples,
                               workers=workers, device=device, precision=precision, progress=progress)
        counts.append([sum(v) for v in zip(*distributed.gather((correct, n)))])
    report = {}
    for split, (correct, n) in zip(splits, counts):
        if split.corruption is None:
            report[split.name] = {"accuracy": _pct(correct, n), "n": n, "classes": len(split.classes)}
            continue
        c = report.setdefault("imagenet-c", {"corruptions": {}})["corruptions"].setdefault(
            split.corruption, {"severities": {}})
        c["severities"][split.severity] = {"accuracy": _pct(correct, n), "n": n}
    if "imagenet-c" in report:
        corruptions = report["imagenet-c"]["corruptions"]
        every = [s["accuracy"] for c in corruptions.values() for s in c["severities"].values()]
        for c in corruptions.values():
            c["accuracy"] = sum(s["accuracy"] for s in c["severities"].values()) / len(c["severities"])
            c["n"] = sum(s["n"] for s in c["severities"].values())
        report["imagenet-c"].update(accuracy=sum(every) / len(every), n=sum(c["n"] for c in corruptions.values()))
    return {name: report[name] for name in sets}

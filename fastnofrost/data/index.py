"""A data folder's file index, made once per launch and kept for the next.

At ImageNet scale, scanning (scan.py: list 1.28M files, open each to check it) costs minutes on
a network file system, and every rank doing it at every launch multiplies that by the ranks.
:func:`shared_scan` makes it once:

1. rank 0 lists the folder (no file opened), or reads the index saved by an earlier launch in
   ``index_dir`` when that index was made with the same root, split and checks, and every folder
   it walked still has the modification time it had then (adding, removing or renaming a file
   changes its folder's time; a file rewritten in place does not, and a file that stopped
   decoding is still left out when it is read: folder.py, dali.py);
2. rank 0 sends the listing, or the saved index, to every rank;
3. each rank checks its own share of the files (every ``world``-th), and the bad ones are
   gathered: every file is opened once in all, by ``world`` processes at a time;
4. rank 0 saves the index (``index_dir/<folder>-<key>.json.gz``: relative paths, labels, the
   bad files with their reasons, the folders' times), and every rank settles the same result.

Without a process group (or with ``world == 1``) the same steps run in this process alone. The
index is plain JSON (no pickle: a run folder is not trusted code).
"""
import gzip
import hashlib
import json
import logging
import os
import time

import torch.distributed as dist

from .scan import VERIFY_LEVELS, Listing, ScanResult, check_files, list_folder, settle

log = logging.getLogger("fastnofrost.data")

INDEX_VERSION = 1


def _key(root, verify, split, val_fraction, split_seed) -> dict:
    return dict(version=INDEX_VERSION, root=os.path.realpath(root), verify=verify, split=split,
                val_fraction=val_fraction if split else None, split_seed=split_seed if split else None)


def index_path(index_dir, key) -> str:
    digest = hashlib.blake2b(json.dumps(key, sort_keys=True).encode(), digest_size=6).hexdigest()
    name = os.path.basename(os.path.normpath(key["root"])) or "root"
    return os.path.join(index_dir, f"{name}-{key['split'] or 'all'}-{digest}.json.gz")


def load_index(path, key, root):
    """The saved (listing, reasons) when ``path`` holds an index of ``key`` whose folders are
    unchanged, else None (and why, logged); paths under ``root`` as the caller names it (as a
    fresh scan gives them, also when ``key``'s real path differs: a link)."""
    if not os.path.isfile(path):
        return None
    try:
        with gzip.open(path, "rt") as fh:
            saved = json.load(fh)
    except (OSError, ValueError) as e:
        log.warning("ignoring the data index %s (unreadable: %s); scanning again", path, e)
        return None
    if saved.get("key") != key:
        return None
    for rel, mtime in saved["dirs"].items():
        folder = os.path.normpath(os.path.join(root, rel))
        try:
            now = os.stat(folder).st_mtime_ns
        except OSError:
            now = None
        if now != mtime:
            log.info("data index %s is stale (%s changed); scanning again", path, folder)
            return None
    files = [os.path.join(root, rel) for rel in saved["files"]]
    bad_empty = [(os.path.join(root, rel), reason) for rel, reason in saved["empty"]]
    reasons = [None] * len(files)
    for i, reason in saved["bad"]:
        reasons[i] = reason
    listing = Listing(root, saved["classes"], list(zip(files, saved["labels"])), bad_empty,
                      {os.path.join(root, rel): t for rel, t in saved["dirs"].items()})
    return listing, reasons


def save_index(path, key, listing: Listing, reasons) -> None:
    """Written to a temporary name, then renamed: a launch killed mid-write leaves no torn index."""
    root = listing.root
    rel = lambda p: os.path.relpath(p, root)  # noqa: E731
    saved = dict(key=key, classes=listing.classes,
                 files=[rel(p) for p, _ in listing.candidates], labels=[label for _, label in listing.candidates],
                 bad=[[i, r] for i, r in enumerate(reasons) if r is not None],
                 empty=[[rel(p), r] for p, r in listing.bad], dirs={rel(d): t for d, t in listing.dirs.items()})
    os.makedirs(index_dir := os.path.dirname(path), exist_ok=True)
    tmp = os.path.join(index_dir, f".{os.path.basename(path)}.{os.getpid()}")
    with gzip.open(tmp, "wt", compresslevel=3) as fh:
        json.dump(saved, fh)
    os.replace(tmp, path)


def _group(world):
    return dist.is_available() and dist.is_initialized() and world > 1 and dist.get_world_size() == world


def shared_scan(root, *, rank=0, world=1, index_dir=None, verify="header", skip_bad=True, workers=8, split=None,
                val_fraction=0.2, split_seed=0) -> ScanResult:
    """The folder's :class:`ScanResult`, the same on every rank, scanned once (module docstring).
    Every rank of the process group must call it, with the same arguments."""
    if verify not in VERIFY_LEVELS:
        raise ValueError(f"verify must be one of {VERIFY_LEVELS}, got {verify!r}")
    together = _group(world)
    if not together:
        rank, world = 0, 1
    key = _key(root, verify, split, val_fraction, split_seed)
    path = index_path(index_dir, key) if index_dir else None
    t0 = time.perf_counter()
    message = [None]
    if rank == 0:
        saved = load_index(path, key, root) if path else None
        try:
            message = [("saved", *saved) if saved else
                       ("listed", list_folder(root, split=split, val_fraction=val_fraction, split_seed=split_seed))]
        except Exception as e:  # noqa: BLE001  (every rank raises it, not only rank 0)
            message = [("error", e)]
    if together:
        dist.broadcast_object_list(message, src=0)
    kind, *content = message[0]
    if kind == "error":
        raise content[0]
    if kind == "saved":
        listing, reasons = content
        if rank == 0:
            log.info("%s: %d files from the data index %s (folders unchanged since it was made)", root,
                     len(listing.candidates), path)
        return settle(listing, reasons, skip_bad=skip_bad, split=split)
    listing = content[0]
    mine = list(range(rank, len(listing.candidates), world))
    found = check_files([listing.candidates[i][0] for i in mine], verify, workers)
    bad = [(i, r) for i, r in zip(mine, found) if r is not None]
    shares = [None] * world
    if together:
        dist.all_gather_object(shares, bad)
    else:
        shares = [bad]
    reasons = [None] * len(listing.candidates)
    for share in shares:
        for i, r in share:
            reasons[i] = r
    if rank == 0:
        log.info("%s: listed %d files and checked them on %d rank(s) in %.1f s", root, len(listing.candidates), world,
                 time.perf_counter() - t0)
        if path:
            try:
                save_index(path, key, listing, reasons)
            except OSError as e:  # the index only saves time: the run goes on without it
                log.warning("could not save the data index %s (%s): the next launch scans again", path, e)
    return settle(listing, reasons, skip_bad=skip_bad, split=split)

"""A data folder scanned once per launch (fastnofrost/data/index.py): the same result as a
plain scan, every file opened once across 2 real ranks, the saved index reused while the folders
are unchanged and made anew when they change, and bad input handled as before."""
import logging
import os
import shutil

import pytest
import torch.multiprocessing as mp

from fastnofrost.data import BadDataError, build_loader, index, scan
from fastnofrost.data.index import shared_scan
from fastnofrost.data.samples import make_image_folder
from fastnofrost.data.scan import scan_folder
from fastnofrost.distributed import free_port


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_image_folder(str(tmp_path_factory.mktemp("imagenet")))


@pytest.fixture
def bad_copy(tmp_path, folder):
    """val/ of the sample folder with a truncated JPEG, a text file and an empty class folder."""
    root = tmp_path / "val"
    shutil.copytree(os.path.join(folder, "val"), root)
    os.makedirs(root / "aaa_empty")
    good = (root / "china" / "china_000.JPEG").read_bytes()
    (root / "china" / "truncated.JPEG").write_bytes(good[: len(good) // 2])
    (root / "flower" / "text.jpg").write_text("not an image")
    return str(root)


def same(a, b):
    assert (a.root, a.classes, a.samples, sorted(a.bad)) == (b.root, b.classes, b.samples, sorted(b.bad))


def opened(monkeypatch):
    """Counts the files that the scan opens (check_image calls)."""
    paths = []
    real = scan.check_image

    def counting(path, verify="header"):
        paths.append(path)
        return real(path, verify)

    monkeypatch.setattr(scan, "check_image", counting)
    return paths


def test_one_process_equals_the_plain_scan(bad_copy, tmp_path):
    same(shared_scan(bad_copy, index_dir=str(tmp_path / "index")), scan_folder(bad_copy))
    for split in ("train", "val"):
        same(shared_scan(bad_copy, split=split, val_fraction=0.3, split_seed=5),
             scan_folder(bad_copy, split=split, val_fraction=0.3, split_seed=5))


def test_the_saved_index_is_reused_without_opening_a_file(bad_copy, tmp_path, monkeypatch, caplog):
    index_dir = str(tmp_path / "index")
    first = shared_scan(bad_copy, index_dir=index_dir)
    [saved] = os.listdir(index_dir)
    assert saved.startswith("val-all-") and saved.endswith(".json.gz")
    paths = opened(monkeypatch)
    with caplog.at_level(logging.INFO, logger="fastnofrost.data"):
        again = shared_scan(bad_copy, index_dir=index_dir)
    assert paths == [] and "from the data index" in caplog.text
    same(again, first)
    assert len(again.bad) == 3  # the bad files are remembered with their reasons
    with pytest.raises(BadDataError, match="truncated.JPEG"):  # and raised again where they must be
        shared_scan(bad_copy, index_dir=index_dir, skip_bad=False)
    assert paths == []


@pytest.mark.parametrize("change", ["add", "remove", "rename", "new-class"])
def test_a_changed_folder_is_scanned_again(bad_copy, tmp_path, monkeypatch, change):
    index_dir = str(tmp_path / "index")
    shared_scan(bad_copy, index_dir=index_dir)
    flower = os.path.join(bad_copy, "flower")
    first = sorted(os.listdir(flower))[0]
    if change == "add":
        shutil.copy(os.path.join(flower, first), os.path.join(flower, "added.JPEG"))
    elif change == "remove":
        os.remove(os.path.join(flower, first))
    elif change == "rename":
        os.rename(os.path.join(flower, first), os.path.join(flower, "renamed.JPEG"))
    else:
        os.makedirs(os.path.join(bad_copy, "zzz_new"))
        shutil.copy(os.path.join(flower, first), os.path.join(bad_copy, "zzz_new", "x.JPEG"))
    paths = opened(monkeypatch)
    again = shared_scan(bad_copy, index_dir=index_dir)
    assert paths  # scanned again
    same(again, scan_folder(bad_copy))


def test_other_checks_or_splits_do_not_share_an_index(bad_copy, tmp_path, monkeypatch):
    index_dir = str(tmp_path / "index")
    shared_scan(bad_copy, index_dir=index_dir)
    paths = opened(monkeypatch)
    shared_scan(bad_copy, index_dir=index_dir, verify="decode")
    assert len(paths) == len(scan.list_folder(bad_copy).candidates)  # every file, decoded this time
    del paths[:]
    shared_scan(bad_copy, index_dir=index_dir, split="train", val_fraction=0.3)
    assert len(paths) == len(scan.list_folder(bad_copy, split="train", val_fraction=0.3).candidates)
    assert len(os.listdir(index_dir)) == 3


def test_a_root_reached_through_a_link_keeps_its_paths_when_reused(bad_copy, tmp_path, monkeypatch):
    link = tmp_path / "linked"
    link.symlink_to(bad_copy)
    index_dir = str(tmp_path / "index")
    first = shared_scan(str(link), index_dir=index_dir)
    paths = opened(monkeypatch)
    again = shared_scan(str(link), index_dir=index_dir)
    assert paths == []
    same(again, first)
    assert all(p.startswith(str(link)) for p, _ in again.samples)


def test_an_unreadable_index_is_ignored_with_a_warning(bad_copy, tmp_path, caplog):
    index_dir = str(tmp_path / "index")
    first = shared_scan(bad_copy, index_dir=index_dir)
    [saved] = os.listdir(index_dir)
    with open(os.path.join(index_dir, saved), "wb") as fh:
        fh.write(b"\x1f\x8b not really gzip")
    with caplog.at_level(logging.INFO, logger="fastnofrost.data"):
        same(shared_scan(bad_copy, index_dir=index_dir), first)
    assert "ignoring the data index" in caplog.text


# --- two real ranks (gloo) ------------------------------------------------------------------

def _rank(rank, world, port, root, index_dir, queue):
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        paths = []
        real = scan.check_image
        scan.check_image = lambda path, verify="header": (paths.append(path), real(path, verify))[1]
        results = {}
        for name, kw in (("first", {}), ("again", {}), ("loader", None)):
            del paths[:]
            if kw is None:  # through build_loader, as train.py calls it (a folder named val: read whole)
                loader = build_loader(root, backend="torch", train=False, skip_bad=True, rank=rank, world_size=world,
                                      image_size=16, batch_size=2, workers=0, index_dir=index_dir)
                result = sorted(loader.bad)
            else:
                got = shared_scan(root, rank=rank, world=world, index_dir=index_dir)
                result = (got.classes, got.samples, sorted(got.bad))
            results[name] = (result, list(paths))
        try:
            shared_scan(os.path.join(root, "missing"), rank=rank, world=world)
            results["error"] = None
        except BadDataError as e:
            results["error"] = str(e)
        queue.put((rank, results))
    finally:
        dist.destroy_process_group()


def test_two_ranks_share_one_scan_and_open_each_file_once(bad_copy, tmp_path):
    index_dir = str(tmp_path / "index")
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_rank, args=(r, 2, port, bad_copy, index_dir, queue)) for r in range(2)]
    for p in procs:
        p.start()
    got = dict(queue.get(timeout=240) for _ in procs)
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    plain = scan_folder(bad_copy)
    expected = (plain.classes, plain.samples, sorted(plain.bad))
    for rank in (0, 1):
        assert got[rank]["first"][0] == expected
        assert got[rank]["again"] == (expected, [])  # from the index: nothing opened on any rank
        assert got[rank]["error"] is not None and "does not exist" in got[rank]["error"]
    candidates = sorted(scan.list_folder(bad_copy).candidates)
    share0, share1 = got[0]["first"][1], got[1]["first"][1]
    assert not set(share0) & set(share1)  # each file opened by one rank
    assert sorted(share0 + share1) == sorted(p for p, _ in candidates)
    assert abs(len(share0) - len(share1)) <= 1
    # build_loader(index_dir=...) reuses the same index
    for rank in (0, 1):
        assert got[rank]["loader"] == (sorted(p for p, _ in plain.bad), [])

"""Data backends on a folder of real JPEGs: torch and dali-cpu agree, shard, seed, and
handle bad files; the digits / Fashion-MNIST / synthetic loaders."""
import os
import shutil

import pytest
import torch
from PIL import Image

from fastnofrost.data import BadDataError, build_loader
from fastnofrost.data.datasets import FASHION_MNIST_DIR, load_fashion_mnist
from fastnofrost.data.samples import CLASSES, make_image_folder
from fastnofrost.data.scan import scan_folder
from fastnofrost.data.shard import Sharding

FOLDER_BACKENDS = ["torch", "dali-cpu"]
SIZE = 32


def _dali_available():
    try:
        import nvidia.dali  # noqa: F401
    except ImportError:
        return False
    return True


needs_dali = pytest.mark.skipif(not _dali_available(), reason="NVIDIA DALI is not installed")


def _backend(name):
    return pytest.param(name, marks=needs_dali) if name.startswith("dali") else name


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """root/{train,val}/<4 classes>: 24 train and 12 val images (JPEG RGB, grayscale, CMYK; RGBA PNG)."""
    return make_image_folder(str(tmp_path_factory.mktemp("imagenet")))


def loader(root, backend, **kw):
    kw = dict(batch_size=4, image_size=SIZE, workers=1, seed=7) | kw
    return build_loader(root, backend=backend, **kw)


def collect(ld, epoch=0):
    ld.set_epoch(epoch)
    batches = list(ld)
    assert len(batches) == len(ld)
    return batches


@pytest.mark.parametrize("train", [True, False])
@needs_dali
def test_dali_cpu_and_torch_read_the_same_labels_and_shapes(folder, train):
    a = collect(loader(folder, "torch", train=train))
    b = collect(loader(folder, "dali-cpu", train=train))
    assert [y.tolist() for *_, y in a] == [y.tolist() for *_, y in b]
    for (xa, ya), (xb, yb) in zip(a, b):
        assert xa.shape == xb.shape and xa.shape[1:] == (3, SIZE, SIZE)
        assert xa.dtype == xb.dtype == torch.float32 and ya.dtype == yb.dtype == torch.int64
        assert xa.min() >= 0 and xa.max() <= 1 and xb.min() >= 0 and xb.max() <= 1
    if not train:  # the same center crop, decoded and resized by two libraries
        assert (torch.cat([x for x, _ in a]) - torch.cat([x for x, _ in b])).abs().mean() < 0.05


@pytest.mark.parametrize("backend", [_backend(b) for b in FOLDER_BACKENDS])
def test_two_shards_cover_the_set(folder, backend):
    n_train, n_val = 24, 12
    all_val = sorted(label for _, label in scan_folder(os.path.join(folder, "val")).samples)
    val_labels, train_counts = [], []
    for rank in range(2):
        val = collect(loader(folder, backend, train=False, rank=rank, world_size=2, batch_size=4))
        assert [len(y) for _, y in val] == [4, 2]  # 6 per shard: last batch partial, nothing padded
        val_labels += [v for _, y in val for v in y.tolist()]
        train = collect(loader(folder, backend, train=True, rank=rank, world_size=2, batch_size=5))
        assert all(len(y) == 5 for _, y in train)  # partial batch dropped
        train_counts.append(len(train))
    assert sorted(val_labels) == all_val and len(val_labels) == n_val
    assert train_counts == [(n_train // 2) // 5] * 2


def test_in_memory_data_is_checked_once_where_batches_are_made():
    """The training attack does not read batches on the host: an in-memory data set must hold
    uint8 images (pixels in [0, 1] after / 255) and labels the model can score."""
    from fastnofrost.data.datasets import TensorLoader

    images, sharding = torch.zeros(8, 1, 4, 4, dtype=torch.uint8), Sharding(8, 4, True)
    TensorLoader(images, torch.arange(8) % 3, sharding, image_size=4, num_classes=3)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\), got \[0, 3\]"):
        TensorLoader(images, torch.arange(8) % 4, sharding, image_size=4, num_classes=3)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\), got \[-1, 1\]"):
        TensorLoader(images, torch.arange(8) % 3 - 1, sharding, image_size=4, num_classes=3)
    with pytest.raises(ValueError, match="images must be uint8, got torch.float32"):
        TensorLoader(images.float(), torch.arange(8) % 3, sharding, image_size=4, num_classes=3)


def test_sharding_is_disjoint_and_even():
    for n, b, w in [(24, 4, 2), (23, 4, 2), (37, 3, 4), (10, 1, 3)]:
        shards = [Sharding(n, b, True, r, w, seed=1) for r in range(w)]
        parts = [s.indices(5) for s in shards]
        assert len({len(p) for p in parts}) == 1 and len(parts[0]) == len(shards[0]) * b
        assert len(set().union(*map(set, parts))) == sum(map(len, parts))
        val = [Sharding(n, b, False, r, w).indices(0) for r in range(w)]
        assert sorted(i for p in val for i in p) == list(range(n))
    assert Sharding(24, 4, True, seed=1).indices(0) != Sharding(24, 4, True, seed=1).indices(1)
    with pytest.raises(ValueError, match="too few"):
        Sharding(5, 4, True, 0, 2)


@pytest.mark.parametrize("backend", [_backend(b) for b in FOLDER_BACKENDS])
def test_deterministic_under_a_seed(folder, backend):
    a = collect(loader(folder, backend, workers=1), epoch=1)
    b = collect(loader(folder, backend, workers=2), epoch=1)
    c = collect(loader(folder, backend, workers=1), epoch=2)
    for (xa, ya), (xb, yb) in zip(a, b):
        assert torch.equal(ya, yb) and torch.equal(xa, xb)
    assert not all(torch.equal(xa, xc) for (xa, _), (xc, _) in zip(a, c))


@pytest.mark.parametrize("backend", [_backend(b) for b in FOLDER_BACKENDS])
def test_nofrost_star_views_and_channels_last(folder, backend):
    batches = collect(loader(folder, backend, nofrost_star=True, channels_last=True))
    for x, x_aug, y in batches:
        assert x.shape == x_aug.shape == (4, 3, SIZE, SIZE) and y.shape == (4,)
        assert x.is_contiguous(memory_format=torch.channels_last)
        assert x_aug.is_contiguous(memory_format=torch.channels_last)
        assert 0 <= x_aug.min() and x_aug.max() <= 1
    assert not torch.equal(batches[0][0], batches[0][1])
    for batch in collect(loader(folder, backend, nofrost_star=True, train=False)):
        assert len(batch) == 2  # validation has no augmented view


# --- bad input ---------------------------------------------------------------------------

def _bad_folder(tmp_path, folder):
    """A copy of train/ with a truncated JPEG, text files, an unknown extension and an empty
    class folder (sorted first, so a dropped class would shift every label)."""
    shutil.copytree(folder, tmp_path / "bad")
    root = tmp_path / "bad" / "val"
    os.makedirs(tmp_path / "bad" / "train" / "aaa_empty")
    os.makedirs(root / "aaa_empty")
    good = open(root / "china" / "china_000.JPEG", "rb").read()
    (root / "china" / "truncated.JPEG").write_bytes(good[: len(good) // 2])
    (root / "flower" / "text.jpg").write_text("not an image")
    (root / "flower" / "zero.jpg").write_bytes(b"")
    (root / "digits" / "notes.txt").write_text("a stray file")
    return str(tmp_path / "bad"), ["aaa_empty", "truncated.JPEG", "text.jpg", "zero.jpg", "notes.txt"]


@pytest.mark.parametrize("backend", [_backend(b) for b in FOLDER_BACKENDS])
def test_bad_files_skipped_and_counted_without_label_shift(tmp_path, folder, backend):
    root, bad = _bad_folder(tmp_path, folder)
    ld = loader(root, backend, train=False, skip_bad=True)
    assert ld.skipped == len(bad) and ld.num_classes == len(CLASSES) + 1
    assert sorted(os.path.basename(p) for p in ld.bad) == sorted(bad)
    labels = [v for _, y in collect(ld) for v in y.tolist()]
    assert sorted(labels) == sorted([1 + CLASSES.index(c) for c in CLASSES for _ in range(3)])


def test_bad_files_raise_naming_each_file(tmp_path, folder):
    root, bad = _bad_folder(tmp_path, folder)
    with pytest.raises(BadDataError) as err:
        build_loader(root, backend="torch", batch_size=4, image_size=SIZE, train=False, skip_bad=False)
    for name in bad:
        assert name in str(err.value)


def _corrupt_inside(tmp_path, folder):
    """A complete JPEG whose entropy-coded data is damaged: the header scan passes it."""
    root = tmp_path / "corrupt"
    shutil.copytree(os.path.join(folder, "train"), root)
    path = root / "flower" / "flower_002.JPEG"
    data = bytearray(path.read_bytes())
    start = data.index(b"\xff\xda")  # start of scan
    for i in range(start + 4, start + 40):
        data[i] = 0xFF if i % 2 else 0x00
    path.write_bytes(bytes(data))
    assert scan_folder(str(root)).bad == []
    assert scan_folder(str(root), verify="decode").bad != []
    return str(root), str(path)


@pytest.mark.parametrize("backend", [_backend(b) for b in FOLDER_BACKENDS])
def test_decode_failure_mid_epoch_is_skipped_and_counted(tmp_path, folder, backend):
    root, path = _corrupt_inside(tmp_path, folder)
    ld = loader(root, backend, train=True, batch_size=4)
    batches = collect(ld)
    assert ld.skipped == 1 and list(ld.bad) == [path]
    if backend.startswith("dali"):  # the file is replaced: every rank keeps its batch count
        assert all(len(y) == 4 for _, y in batches)
    assert sum(len(y) for _, y in batches) >= 4 * len(ld) - 1
    strict = loader(root, backend, train=True, skip_bad=False)
    with pytest.raises(BadDataError, match="flower_002.JPEG"):
        collect(strict)


def test_missing_folder_and_unknown_backend(tmp_path):
    with pytest.raises(BadDataError, match="does not exist"):
        build_loader(str(tmp_path / "nope"), backend="torch")
    with pytest.raises(BadDataError, match="no class folders"):
        build_loader(str(tmp_path), backend="torch")
    with pytest.raises(ValueError, match="unknown data backend"):
        build_loader("digits", backend="jax")
    with pytest.raises(ValueError, match="in-memory data set"):
        build_loader("digits", backend="dali-cpu")


def test_folder_without_split_is_split_by_seed(folder):
    train = scan_folder(os.path.join(folder, "train"), split="train", val_fraction=0.25)
    val = scan_folder(os.path.join(folder, "train"), split="val", val_fraction=0.25)
    assert not {p for p, _ in train.samples} & {p for p, _ in val.samples}
    assert len(train.samples) + len(val.samples) == 24 and len(val.samples) > 0
    again = scan_folder(os.path.join(folder, "train"), split="val", val_fraction=0.25)
    assert again.samples == val.samples


# --- small real data sets and synthetic ---------------------------------------------------

def test_digits():
    train = build_loader("digits", batch_size=64, image_size=16, seed=1)
    val = build_loader("digits", batch_size=64, image_size=16, train=False)
    assert train.sharding.num_samples + val.sharding.num_samples == 1797
    x, y = next(iter(train))
    assert x.shape == (64, 3, 16, 16) and y.dtype == torch.int64 and 0 <= y.min() and y.max() <= 9
    assert 0 <= x.min() and x.max() <= 1 and x.max() > 0.5
    assert sum(len(y) for _, y in val) == val.sharding.num_samples  # val keeps its last partial batch
    x, x_aug, y = next(iter(build_loader("digits", batch_size=8, image_size=16, nofrost_star=True)))
    assert x.shape == x_aug.shape


@pytest.mark.skipif(not os.path.isdir(FASHION_MNIST_DIR),
                    reason=f"Debian package dataset-fashion-mnist not installed ({FASHION_MNIST_DIR} absent): "
                           "apt-get install dataset-fashion-mnist")
def test_fashion_mnist():
    images, labels = load_fashion_mnist(train=False)
    assert images.shape == (10000, 1, 28, 28) and images.dtype == torch.uint8
    assert sorted(labels.unique().tolist()) == list(range(10))
    ld = build_loader("fashion-mnist", batch_size=256, image_size=32, rank=1, world_size=2)
    assert len(ld) == 30000 // 256
    x, y = next(iter(ld))
    assert x.shape == (256, 3, 32, 32) and 0 <= x.min() and x.max() <= 1


def test_fashion_mnist_missing_says_how_to_install(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist(train=True, root=str(tmp_path))


@pytest.mark.parametrize("data", ["digits", "folder"])
def test_a_given_sharding_is_the_one_the_loader_reads_with(data, folder):
    """``sharding=`` (a function of the split's sample count) replaces the rank's default
    sharding before any batch is made: every third validation sample from sample 2 on."""
    source = folder if data == "folder" else data
    ld = build_loader(source, batch_size=4, image_size=16, train=False, workers=0,
                      sharding=lambda count: Sharding(count, 4, False, 2, 3))
    whole = build_loader(source, batch_size=1000, image_size=16, train=False, workers=0)
    x_all, y_all = next(iter(whole))
    assert ld.sharding == Sharding(whole.sharding.num_samples, 4, False, 2, 3)
    y = torch.cat([b[-1] for b in ld])
    assert torch.equal(y, y_all[2::3])
    with pytest.raises(ValueError, match="synthetic backend makes its own batches"):
        build_loader(backend="synthetic", batch_size=4, image_size=16, sharding=lambda count: None)


def test_synthetic():
    ld = build_loader(backend="synthetic", batch_size=4, image_size=16, num_classes=10, synthetic_batches=3,
                      nofrost_star=True, channels_last=True)
    batches = list(ld)
    assert len(ld) == len(batches) == 3
    x, x_aug, y = batches[0]
    assert x.shape == x_aug.shape == (4, 3, 16, 16) and x.is_contiguous(memory_format=torch.channels_last)
    assert y.dtype == torch.int64 and y.max() < 10


def test_grayscale_cmyk_rgba_come_out_rgb(folder):
    modes = {Image.open(os.path.join(folder, "val", c, f)).mode
             for c in ("digits", "mixed") for f in os.listdir(os.path.join(folder, "val", c))}
    assert {"L", "CMYK", "RGBA"} <= modes
    for backend in ["torch"] + (["dali-cpu"] if _dali_available() else []):
        for x, _ in collect(loader(folder, backend, train=False)):
            assert x.shape[1] == 3


@needs_dali
def test_dali_texture_debiased_view_is_sometimes_gray(folder):
    """DALI's colour distortion: grayscale with p 0.5 * 0.2 on colour photos, never on the clean view."""
    ld = loader(folder, "dali-cpu", nofrost_star=True, batch_size=8, seed=3)
    gray_clean, gray_aug, colour = 0, 0, 0
    for epoch in range(6):
        for x, x_aug, y in collect(ld, epoch):
            photo = y != CLASSES.index("digits")  # the digits class is gray already
            spread = lambda t: (t.amax(1) - t.amin(1)).amax((1, 2))[photo]  # noqa: E731
            gray_clean += int((spread(x) < 0.005).sum())
            gray_aug += int((spread(x_aug) < 0.005).sum())
            colour += int(photo.sum())
    assert gray_clean == 0 and 0.03 * colour < gray_aug < 0.25 * colour  # p = 0.1


def test_start_batch_resumes_mid_epoch_and_subset_is_seeded():
    full = build_loader("digits", batch_size=32, image_size=16, seed=3)
    full.set_epoch(1)
    whole = list(full)
    full.set_epoch(1, start_batch=5)
    tail = list(full)
    assert len(tail) == len(whole) - 5
    assert all(torch.equal(a, b) for x, y in zip(whole[5:], tail) for a, b in zip(x, y))
    with pytest.raises(ValueError, match="start_batch"):
        full.set_epoch(0, start_batch=len(full) + 1)
    small = build_loader("digits", batch_size=32, image_size=16, subset=100, split_seed=4)
    again = build_loader("digits", batch_size=32, image_size=16, subset=100, split_seed=4)
    assert small.sharding.num_samples == 100 and torch.equal(small.labels, again.labels)
    other = build_loader("digits", batch_size=32, image_size=16, subset=100, split_seed=5)
    assert not torch.equal(small.images, other.images)

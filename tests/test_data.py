"""Datasets: the paper's specs, the image-folder and synthetic sources, the cache, the device loader."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from densenet_repro import data
from densenet_repro.data.loader import _svhn_holdout

SHARED_JPEG = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DENSENET_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("DENSENET_DATA", raising=False)


def _jpeg(rgb: np.ndarray, quality: int = 75) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _fake_images(n_per_class: int, seed: int) -> list[tuple[str, str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [(c, f"{i:04d}.jpg", rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
            for c in CLASSES for i in range(n_per_class)]


def _make_tar(path: Path, top: str = "cifar10-jpeg") -> None:
    with tarfile.open(path, "w:gz") as tar:
        for split, n in (("train", 3), ("test", 2)):
            for c, name, img in _fake_images(n, seed=len(split)):
                payload = _jpeg(img)
                info = tarfile.TarInfo(f"{top}/{split}/{c}/{name}")
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))


def test_specs_follow_the_paper():
    assert data.DATASETS == ("c10", "c10+", "c100", "c100+", "svhn")
    for name in ("c10", "c100", "svhn"):
        assert not data.SPECS[name].augment and data.SPECS[name].paper_drop_rate == 0.2
    for name in ("c10+", "c100+"):
        assert data.SPECS[name].augment and data.SPECS[name].paper_drop_rate == 0.0
    assert data.SPECS["c100+"].num_classes == 100 and data.SPECS["c10"].num_classes == 10
    assert data.SPECS["svhn"].paper_epochs == 40 and data.SPECS["c10"].paper_epochs == 300
    assert data.SPECS["svhn"].val_holdout == 6000 and data.SPECS["svhn"].normalise == "div255"
    with pytest.raises(ValueError, match="use one of c10, c10\\+, c100, c100\\+, svhn"):
        data.get_spec("imagenet")


def test_image_folder_tar_gz(tmp_path):
    _make_tar(tmp_path / "cifar10-jpeg.tar.gz")
    src = data.resolve_source("c10", tmp_path, download=False)
    assert src.kind == "folder" and src.id == "folder:cifar10-jpeg.tar.gz"
    assert "JPEG re-encoding" in src.description
    d = data.load("c10+", tmp_path, download=False)
    assert d.train_x.shape == (30, 3, 32, 32) and d.train_x.dtype == torch.uint8
    assert d.test_x.shape == (20, 3, 32, 32)
    assert d.classes == CLASSES
    assert d.train_y.tolist() == [i for i in range(10) for _ in range(3)]  # class order = CIFAR-10 labels
    assert d.info["source_note"].startswith("JPEG, quality 75")
    # the decoded pixels are the JPEG's
    first = _fake_images(3, seed=len("train"))[0][2]
    from PIL import Image

    expected = np.asarray(Image.open(io.BytesIO(_jpeg(first))).convert("RGB"))
    assert np.array_equal(d.train_x[0].permute(1, 2, 0).numpy(), expected)


def test_second_load_comes_from_the_cache(tmp_path, monkeypatch):
    _make_tar(tmp_path / "cifar10-jpeg.tar.gz")
    a = data.load("c10", tmp_path, download=False)
    assert any((tmp_path / "cache").iterdir())

    def boom(*args, **kwargs):
        raise AssertionError("decoded again instead of reading the cache")

    monkeypatch.setattr(data.sources, "_read_image_folder", boom)
    b = data.load("c10", tmp_path, download=False)
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.test_y, b.test_y)
    assert a.mean == b.mean and a.std == b.std


def test_image_folder_directory_and_archive_as_data_root(tmp_path):
    _make_tar(tmp_path / "x.tar.gz", top="anything")
    from_archive = data.load("c10", tmp_path / "x.tar.gz", download=False)  # data_root = the archive
    with tarfile.open(tmp_path / "x.tar.gz") as tar:
        tar.extractall(tmp_path / "dir", filter="data")
    from_dir = data.load("c10", tmp_path / "dir", download=False)  # data_root = dir holding train/test
    assert torch.equal(from_archive.train_x, from_dir.train_x)
    assert from_dir.source.kind == "folder"


def test_wrong_number_of_classes_is_an_error(tmp_path):
    _make_tar(tmp_path / "cifar10-jpeg.tar.gz")
    with pytest.raises(ValueError, match="10 classes, but c100 has 100"):
        data.load("c100", tmp_path / "cifar10-jpeg.tar.gz", download=False)


def test_missing_data_says_where_to_put_it(tmp_path):
    with pytest.raises(data.DataNotFoundError) as e:
        data.load("c10", tmp_path / "empty", source="folder")
    msg = str(e.value)
    assert "\n" not in msg and "cifar-10-python.tar.gz" in msg and "train/<class>" in msg
    with pytest.raises(data.DataNotFoundError, match="put the official files"):
        data.resolve_source("c100", tmp_path, source="auto", download=False)


def test_synthetic_is_seeded_balanced_and_cifar_shaped():
    a, b = data.make_synthetic(10, seed=3), data.make_synthetic(10, seed=3)
    assert np.array_equal(a.train_x, b.train_x) and a.train_x.shape[1:] == (32, 32, 3)
    assert np.bincount(a.train_y).tolist() == [64] * 10
    assert not np.array_equal(a.train_x, data.make_synthetic(10, seed=4).train_x)
    d = data.load("svhn", source="synthetic")
    assert d.val_x is not None and d.info["val"] > 0 and d.mean == [0.0, 0.0, 0.0]  # pixels / 255


def test_svhn_holdout_is_400_and_200_per_class():
    train_y = np.repeat(np.arange(10), 1000)
    extra_y = np.repeat(np.arange(10), 3000)
    tr, ex = _svhn_holdout(train_y, extra_y, 6000)
    assert np.bincount(train_y[tr]).tolist() == [400] * 10
    assert np.bincount(extra_y[ex]).tolist() == [200] * 10


def test_balanced_subset():
    y = np.repeat(np.arange(10), 100)
    idx = data.balanced_subset(y, 55, 10)
    assert len(idx) == 55 and np.bincount(y[idx], minlength=10).max() == 6
    assert np.array_equal(idx, data.balanced_subset(y, 55, 10))  # the same for every run


def test_random_crop_flip_matches_pad_and_slice():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 3, 32, 32, generator=g)
    offsets = torch.randint(0, 9, (16, 2), generator=g)
    flips = torch.rand(16, generator=g) < 0.5
    out = data.random_crop_flip(x, offsets, flips)
    xp = F.pad(x, (4, 4, 4, 4))
    for i in range(16):
        r, c = offsets[i].tolist()
        ref = xp[i, :, r:r + 32, c:c + 32]
        assert torch.equal(out[i], ref.flip(-1) if flips[i] else ref)
    centre = data.random_crop_flip(x, torch.full((16, 2), 4), torch.zeros(16, dtype=torch.bool))
    assert torch.equal(centre, x)


def test_loader_normalises_and_is_reproducible_per_epoch():
    d = data.load("c10", source="synthetic")
    loader = d.train_loader(64, seed=0)
    xs = torch.cat([x for x, _, _ in loader.batches(0)])
    assert xs.shape[0] == len(d.train_y)
    assert torch.allclose(xs.mean((0, 2, 3)), torch.zeros(3), atol=1e-3)
    assert torch.allclose(xs.std((0, 2, 3)), torch.ones(3), atol=1e-2)
    again = torch.cat([x for x, _, _ in d.train_loader(64, seed=0).batches(0)])
    assert torch.equal(xs, again)
    other = torch.cat([x for x, _, _ in loader.batches(1)])
    assert not torch.equal(xs, other)


def test_ddp_shards_make_up_the_single_process_batch():
    d = data.load("c10+", source="synthetic")
    single = list(d.train_loader(64, seed=1).batches(2))
    shards = [list(d.train_loader(64, seed=1, rank=r, world_size=2).batches(2)) for r in range(2)]
    assert len(single) == len(shards[0]) == len(shards[1])
    for (x, y, n), (x0, y0, n0), (x1, y1, n1) in zip(single, *shards):
        assert n == n0 == n1 == len(y)
        assert torch.equal(x, torch.cat([x0, x1])) and torch.equal(y, torch.cat([y0, y1]))
    ev = [torch.cat([y for _, y, _ in d.eval_loader("test", 100, rank=r, world_size=3).batches()]) for r in range(3)]
    assert torch.equal(torch.cat(ev), d.test_y)


def test_channels_last_batches():
    d = data.load("c10+", source="synthetic")
    x, _, _ = next(iter(d.train_loader(32, seed=0, channels_last=True).batches(0)))
    assert x.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.skipif(not SHARED_JPEG.is_file(), reason="the offline CIFAR-10 copy is not beside the repo")
def test_shared_cifar10_jpeg_copy(monkeypatch):
    """The real offline copy: 50,000/10,000 images, CIFAR-10's classes, the official statistics."""
    monkeypatch.delenv("DENSENET_CACHE")  # the repo's ./data/cache: decoded once, reused by later runs
    monkeypatch.chdir(Path(__file__).resolve().parent.parent)
    d = data.load("c10", SHARED_JPEG.parent, test_subset=1000)
    assert d.info["train"] == 50_000 and d.info["test_full"] == 10_000 and d.classes == CLASSES
    assert d.source.id == "folder:cifar10-jpeg.tar.gz" and "quality 75" in d.info["source_note"]
    # Official code's statistics (0-255 scale): mean 125.3, 123.0, 113.9, std 63.0, 62.1, 66.7.
    # JPEG re-encoding changes the pixels a little: the means agree to 0.5, the stds to 1.
    assert np.allclose(np.array(d.mean) * 255, [125.3, 123.0, 113.9], atol=0.5)
    assert np.allclose(np.array(d.std) * 255, [63.0, 62.1, 66.7], atol=1.0)
    assert any(p.name.startswith("cifar10-jpeg-") for p in data.cache_dir().iterdir())  # decoded once

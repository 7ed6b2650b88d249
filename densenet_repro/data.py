"""The paper's datasets, kept on the training device as uint8, with batched on-device augmentation.

Names follow the paper's Table 2 columns:

    c10, c100     CIFAR-10/100, no augmentation (the paper then trains with dropout 0.2)
    c10+, c100+   the same with "standard augmentation": zero-pad 4, random 32x32 crop, random
                  horizontal flip
    svhn          SVHN train + extra, no augmentation, pixels / 255, 6,000 training images held
                  out for validation (the paper reports the model with the lowest validation error)

Every CIFAR image is normalised with the per-channel mean and std of the training set.

Sources (`source=`):

    torchvision   the official archives through torchvision.datasets, downloaded into data_root
    folder        an image-folder copy, `train/<class>/*` and `test/<class>/*`, as a directory or
                  a .tar.gz (e.g. data/cifar10-jpeg.tar.gz, CIFAR-10 re-encoded as JPEG)
    synthetic     a small learnable synthetic set of CIFAR's shape, generated in memory (smoke)
    auto          official files if present, else an image-folder copy, else a download

`data_root` is the argument, else $DENSENET_DATA, else ./data. It may be read-only: nothing is
written there except official downloads; decoded arrays are cached as .npy in $DENSENET_CACHE,
else ./data/cache, so the second load takes about a second.

The input pipeline (`DeviceLoader`) has no worker processes: the whole set lives on the training
device as uint8 (CIFAR-10: 150 MB), and each batch is gathered, normalised, padded, cropped and
flipped there with a few batched tensor ops, with the randomness drawn from a generator seeded by
(seed, epoch). The same code runs on CPU and CUDA, and a run resumed at epoch e draws exactly the
batches the uninterrupted run would have.

Why one module (~700 lines): it is one path, from a dataset name to augmented batches on the
device (spec, source, decoding and the .npy cache, splits and statistics, DeviceLoader); each stage
feeds the next, and callers use only its ends (get_spec, resolve_source, load_data, the loaders).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import math
import os
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from densenet_repro import atomic
from densenet_repro.errors import ConfigError, DataNotFoundError, DataReadError, MissingPackageError

# ----------------------------------------------------------------------------------------------
# Dataset specifications (the paper's Table 2 columns)
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DatasetSpec:
    """What the paper's protocol says about one Table 2 column."""

    name: str            # paper's column name: c10, c10+, c100, c100+, svhn
    family: str          # cifar10 | cifar100 | svhn (the underlying image set)
    num_classes: int
    augment: bool        # "+": zero-pad 4, random 32x32 crop, random horizontal flip
    normalise: str       # "meanstd": per-channel train mean/std; "div255": pixels / 255 only
    val_holdout: int     # training images held out for validation (SVHN: 6,000)
    paper_epochs: int    # CIFAR 300, SVHN 40
    paper_drop_rate: float  # 0.2 exactly when there is no augmentation

    @property
    def title(self) -> str:
        return {"c10": "C10", "c10+": "C10+", "c100": "C100", "c100+": "C100+", "svhn": "SVHN"}[self.name]


SPECS: dict[str, DatasetSpec] = {
    "c10": DatasetSpec("c10", "cifar10", 10, False, "meanstd", 0, 300, 0.2),
    "c10+": DatasetSpec("c10+", "cifar10", 10, True, "meanstd", 0, 300, 0.0),
    "c100": DatasetSpec("c100", "cifar100", 100, False, "meanstd", 0, 300, 0.2),
    "c100+": DatasetSpec("c100+", "cifar100", 100, True, "meanstd", 0, 300, 0.0),
    "svhn": DatasetSpec("svhn", "svhn", 10, False, "div255", 6000, 40, 0.2),
}
DATASETS = tuple(SPECS)
SOURCES = ("auto", "torchvision", "folder", "synthetic")
PAD = 4  # "+" augmentation: zero-pad 4 pixels on each side, then a random 32x32 crop

_FAMILY_TITLE = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100", "svhn": "SVHN"}
# Official archive names torchvision looks for (or downloads) in data_root.
_OFFICIAL_FILES = {
    "cifar10": ("cifar-10-batches-py", "cifar-10-python.tar.gz"),
    "cifar100": ("cifar-100-python", "cifar-100-python.tar.gz"),
    "svhn": ("train_32x32.mat", "extra_32x32.mat", "test_32x32.mat"),
}
# Names under which an image-folder copy is looked for in data_root (dir or .tar.gz/.tgz).
_FOLDER_NAMES = {
    "cifar10": ("cifar10-jpeg", "cifar10", "cifar-10", "CIFAR-10-images", "cifar10-png"),
    "cifar100": ("cifar100-jpeg", "cifar100", "cifar-100", "CIFAR-100-images", "cifar100-png"),
    "svhn": ("svhn-jpeg", "svhn", "svhn-png"),
}
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
_SUBSET_SEED = 0  # training/test subsets and the SVHN validation split never depend on the run seed


def get_spec(name: str) -> DatasetSpec:
    if name not in SPECS:
        raise ConfigError(f"unknown dataset {name!r}: use one of {', '.join(DATASETS)}")
    return SPECS[name]


def default_data_root(data_root: str | os.PathLike | None = None) -> Path:
    """data_root if given, else $DENSENET_DATA, else ./data."""
    return Path(data_root if data_root is not None else os.environ.get("DENSENET_DATA", "data"))


# ----------------------------------------------------------------------------------------------
# Sources
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SourceInfo:
    """Where a dataset comes from. `id` enters run hashes; `description` goes into every report."""

    kind: str                 # torchvision | folder | synthetic
    family: str
    path: str | None          # the archive/directory read (None: torchvision download, synthetic)
    description: str
    id: str                   # path-independent identity, e.g. "folder:cifar10-jpeg.tar.gz"
    present: bool = True      # False: the official archive still has to be downloaded


def _official_present(family: str, root: Path) -> bool:
    names = _OFFICIAL_FILES[family]
    if family == "svhn":
        return all((root / n).is_file() for n in names)
    return (root / names[0]).is_dir() or (root / names[1]).is_file()


def _is_archive(p: Path) -> bool:
    return p.is_file() and (p.name.endswith(".tar.gz") or p.name.endswith(".tgz") or p.name.endswith(".tar"))


def _folder_root(p: Path) -> Path | None:
    """p itself or its single subdirectory, whichever holds train/ and test/."""
    if (p / "train").is_dir() and (p / "test").is_dir():
        return p
    subdirs = [d for d in p.iterdir() if d.is_dir()] if p.is_dir() else []
    if len(subdirs) == 1 and (subdirs[0] / "train").is_dir() and (subdirs[0] / "test").is_dir():
        return subdirs[0]
    return None


def _find_folder_copy(family: str, root: Path) -> Path | None:
    if _is_archive(root):
        return root
    if root.is_dir() and _folder_root(root) is not None:
        return root
    for name in _FOLDER_NAMES[family]:
        for cand in (root / f"{name}.tar.gz", root / f"{name}.tgz", root / name):
            if _is_archive(cand) or (cand.is_dir() and _folder_root(cand) is not None):
                return cand
    return None


def _where_to_put(spec: DatasetSpec, root: Path) -> str:
    official = " / ".join(_OFFICIAL_FILES[spec.family])
    return (f"put the official files ({official}) in {root}, or an image-folder copy "
            f"(train/<class>/*, test/<class>/*) as {root}/{_FOLDER_NAMES[spec.family][0]}.tar.gz "
            f"or a directory, or point data_root / $DENSENET_DATA at them")


def resolve_source(dataset: str, data_root: str | os.PathLike | None = None, source: str = "auto",
                   download: bool = True) -> SourceInfo:
    """Decide where `dataset` comes from, without reading or downloading anything."""
    spec = get_spec(dataset)
    if source not in SOURCES:
        raise ConfigError(f"unknown data source {source!r}: use one of {', '.join(SOURCES)}")
    fam, title = spec.family, _FAMILY_TITLE[spec.family]
    if source == "synthetic":
        return SourceInfo("synthetic", fam, None,
                          f"synthetic stand-in for {title} (generated in memory; the numbers mean nothing)",
                          "synthetic")
    root = default_data_root(data_root)
    if root.is_file() and not _is_archive(root):
        raise DataReadError(f"data root {root} is a file, not a folder or a .tar.gz archive: pass the folder that "
                            f"holds the dataset (e.g. the one with {_FOLDER_NAMES[fam][0]}.tar.gz in it)")
    official = _official_present(fam, root) if root.is_dir() else False
    folder = _find_folder_copy(fam, root) if source in ("auto", "folder") and root.exists() else None
    if source == "torchvision" or (source == "auto" and (official or (folder is None and download))):
        if not official and not download:
            raise DataNotFoundError(f"{dataset}: no official {title} files in {root} and download=False: "
                                    + _where_to_put(spec, root))
        desc = f"{title}, official archive via torchvision ({'found in' if official else 'to be downloaded into'} {root})"
        return SourceInfo("torchvision", fam, str(root), desc, "torchvision", present=official)
    if folder is None:
        raise DataNotFoundError(f"{dataset}: no image-folder copy of {title} in {root}: " + _where_to_put(spec, root))
    desc = f"{title}, image-folder copy {folder.name}"
    if "jpeg" in folder.name.lower() or "jpg" in folder.name.lower():
        desc += " (JPEG re-encoding: pixels differ from the official archive, errors are not the official ones)"
    return SourceInfo("folder", fam, str(folder), desc, f"folder:{folder.name}")


# ----------------------------------------------------------------------------------------------
# Reading the sources into uint8 arrays (N, 32, 32, 3), cached as .npy
# ----------------------------------------------------------------------------------------------


@dataclass
class Arrays:
    """A dataset as numpy arrays: images uint8 (N, H, W, 3), labels int64 (N,)."""

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    classes: list[str]
    extra_x: np.ndarray | None = None  # SVHN's "extra" split
    extra_y: np.ndarray | None = None
    note: str = ""                     # e.g. the JPEG quality estimated from the files
    cache: Path | None = None          # the cache folder these arrays were loaded from / saved to


def cache_dir() -> Path:
    """Where decoded arrays are cached: $DENSENET_CACHE, else ./data/cache (git-ignored).

    Never inside data_root: that may be a read-only copy shared by several checkouts, and file
    permissions do not stop a process running as root from writing there.
    """
    return Path(os.environ.get("DENSENET_CACHE") or Path("data") / "cache")


def _fingerprint(path: Path) -> str:
    """Content hash of an archive, or of a directory's listing (names and sizes)."""
    h = hashlib.sha256()
    if path.is_file():
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    else:
        for p in sorted(path.rglob("*")):
            if p.is_file():
                h.update(f"{p.relative_to(path).as_posix()}:{p.stat().st_size}\n".encode())
    return h.hexdigest()[:12]


_CACHE_KEYS = ("train_x", "train_y", "test_x", "test_y", "extra_x", "extra_y")


def _save_cache(folder: Path, arrays: Arrays) -> None:
    tmp = atomic.temp_name(folder)
    tmp.mkdir(parents=True, exist_ok=True)
    for key in _CACHE_KEYS:
        value = getattr(arrays, key)
        if value is not None:
            np.save(tmp / f"{key}.npy", value)
    (tmp / "classes.txt").write_text("\n".join(arrays.classes) + "\n", encoding="utf-8")
    (tmp / "note.txt").write_text(arrays.note, encoding="utf-8")
    atomic.replace_dir(tmp, folder)  # a half-written cache is never seen; False: another process's is used


def _load_cache(folder: Path) -> Arrays | None:
    if not (folder / "classes.txt").is_file():
        return None
    values = {k: np.load(folder / f"{k}.npy") if (folder / f"{k}.npy").is_file() else None for k in _CACHE_KEYS}
    classes = (folder / "classes.txt").read_text(encoding="utf-8").split()
    note = (folder / "note.txt").read_text(encoding="utf-8") if (folder / "note.txt").is_file() else ""
    return Arrays(classes=classes, note=note, cache=folder, **values)


def _ijg_table(quality: int) -> np.ndarray:
    """The IJG (libjpeg) luminance quantisation table at `quality` (sorted values)."""
    base = np.array([16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40,
                     57, 69, 56, 14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35,
                     55, 64, 81, 104, 113, 92, 49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112,
                     100, 103, 99])
    scale = 5000 // quality if quality < 50 else 200 - 2 * quality
    return np.sort(np.clip((base * scale + 50) // 100, 1, 255))


def jpeg_quality(data: bytes) -> int | None:
    """The libjpeg quality a JPEG was written at, if its luminance table is a standard one."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        tables = getattr(im, "quantization", None)
        if not tables:
            return None
        lum = np.sort(np.asarray(tables[0]))
    for q in range(1, 101):
        if np.array_equal(_ijg_table(q), lum):
            return q
    return None


def _decode(data: bytes) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8)


def _read_image_folder(path: Path) -> Arrays:
    """Decode train/<class>/* and test/<class>/* from a directory or a tar archive."""
    items: dict[str, list[tuple[str, str, bytes]]] = {"train": [], "test": []}

    def add(rel: str, read) -> None:
        parts = rel.strip("/").split("/")  # .../<split>/<class>/<file>, at any depth
        if len(parts) >= 3 and parts[-3] in items and parts[-1].lower().endswith(_IMAGE_SUFFIXES):
            items[parts[-3]].append((parts[-2], parts[-1], read()))

    if path.is_file():
        try:
            with tarfile.open(path, "r:*") as tar:
                for member in tar:
                    if member.isfile():
                        add(member.name, lambda m=member: tar.extractfile(m).read())
        except (tarfile.TarError, EOFError, OSError) as e:  # truncated or not an archive at all
            raise DataReadError(f"cannot read the archive {path} ({type(e).__name__}: {e}): it is damaged; "
                                "copy it again, or point --data-root at another copy") from e
    else:
        for p in sorted(path.rglob("*")):
            if p.is_file():
                add(p.relative_to(path).as_posix(), p.read_bytes)
    if not items["train"] or not items["test"]:
        raise DataNotFoundError(f"{path}: no images under train/<class>/ and test/<class>/ "
                                "(expected an image-folder copy, e.g. cifar10-jpeg/{train,test}/<class>/*.jpg)")
    classes = sorted({c for c, _, _ in items["train"]})  # ImageFolder's order (= CIFAR-10's labels)
    index = {c: i for i, c in enumerate(classes)}
    out = {}
    for split, entries in items.items():
        unknown = {c for c, _, _ in entries} - set(index)
        if unknown:
            raise DataReadError(f"{path}: test classes {sorted(unknown)} are not among the training classes")
        entries.sort(key=lambda e: (index[e[0]], e[1]))
        try:
            images = [_decode(b) for _, _, b in entries]
        except OSError as e:  # PIL's UnidentifiedImageError and truncated images are OSErrors
            raise DataReadError(f"{path}: an image of the {split} split cannot be decoded ({e}): the copy is "
                                "damaged; copy it again") from e
        shapes = {im.shape for im in images}
        if len(shapes) != 1:
            raise DataReadError(f"{path}: {split} images have different sizes {sorted(shapes)[:3]}")
        out[split] = (np.stack(images), np.array([index[c] for c, _, _ in entries], dtype=np.int64))
    sample = items["train"][0][2]
    note = ""
    if sample[:2] == b"\xff\xd8":
        q = jpeg_quality(sample)
        note = f"JPEG, quality {q} (estimated from the quantisation tables)" if q else "JPEG"
    return Arrays(out["train"][0], out["train"][1], out["test"][0], out["test"][1], classes, note=note)


def _read_torchvision(spec: DatasetSpec, root: Path, download: bool) -> Arrays:
    import socket

    import torchvision.datasets as tvd

    old_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(30)  # a dead network fails in seconds, not minutes
    try:
        root.mkdir(parents=True, exist_ok=True)
        if spec.family in ("cifar10", "cifar100"):
            cls = tvd.CIFAR10 if spec.family == "cifar10" else tvd.CIFAR100
            tr = cls(str(root), train=True, download=download)
            te = cls(str(root), train=False, download=download)
            return Arrays(np.asarray(tr.data), np.asarray(tr.targets, dtype=np.int64), np.asarray(te.data),
                          np.asarray(te.targets, dtype=np.int64), list(tr.classes))
        try:
            import scipy  # noqa: F401  (torchvision reads SVHN's .mat files with scipy)
        except ImportError as e:
            raise MissingPackageError("SVHN needs scipy to read its .mat files: pip install scipy") from e
        splits = {s: tvd.SVHN(str(root), split=s, download=download) for s in ("train", "extra", "test")}
        nhwc = {s: np.ascontiguousarray(d.data.transpose(0, 2, 3, 1)) for s, d in splits.items()}
        labels = {s: np.asarray(d.labels, dtype=np.int64) for s, d in splits.items()}
        return Arrays(nhwc["train"], labels["train"], nhwc["test"], labels["test"], [str(i) for i in range(10)],
                      extra_x=nhwc["extra"], extra_y=labels["extra"])
    except ImportError:
        raise
    except Exception as e:  # noqa: BLE001 - torchvision raises many kinds; all mean "not there"
        raise DataNotFoundError(f"{spec.name}: could not read or download the official {_FAMILY_TITLE[spec.family]} "
                                f"({type(e).__name__}: {e}); " + _where_to_put(spec, root)) from e
    finally:
        socket.setdefaulttimeout(old_timeout)


def load_arrays(dataset: str, source: SourceInfo, download: bool = True) -> Arrays:
    """Read a dataset's images and labels as uint8 arrays, through the .npy cache."""
    spec = get_spec(dataset)
    if source.kind == "synthetic":
        return make_synthetic(spec.num_classes)
    path = Path(source.path)
    if source.kind == "folder":
        key = f"{path.name.split('.')[0]}-{_fingerprint(path)}"
    else:
        key = f"{spec.family}-official"
    folder = cache_dir() / key
    cached = _load_cache(folder)
    if cached is not None:
        return cached
    arrays = _read_image_folder(path) if source.kind == "folder" else _read_torchvision(spec, path, download)
    if len(arrays.classes) != spec.num_classes:
        raise DataReadError(f"{source.path}: {len(arrays.classes)} classes, but {dataset} has {spec.num_classes}")
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        _save_cache(folder, arrays)
        arrays.cache = folder
    except OSError as e:  # a read-only working directory: decode again next time, say so
        print(f"warning: could not cache decoded {dataset} in {folder} ({e}); set DENSENET_CACHE to a writable folder")
    return arrays


SYNTHETIC_SIZE = (640, 320)  # training, test images of the smoke budget's synthetic sets


def make_synthetic(num_classes: int = 10, n_train: int = SYNTHETIC_SIZE[0], n_test: int = SYNTHETIC_SIZE[1],
                   seed: int = 0) -> Arrays:
    """A small learnable dataset of CIFAR's shape (smoke budget): class = a smooth colour pattern.

    Each class has a random 4x4 colour pattern upsampled to 32x32; an image is its class pattern,
    shifted by up to 4 pixels, with random brightness and pixel noise. Balanced classes.
    """
    g = torch.Generator().manual_seed(seed)
    protos = torch.rand(num_classes, 3, 4, 4, generator=g) * 160 + 48
    protos = F.interpolate(protos, size=(36, 36), mode="bilinear", align_corners=False)

    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = torch.arange(n) % num_classes
        y = y[torch.randperm(n, generator=g)]
        dy, dx = torch.randint(0, 5, (2, n), generator=g)
        rows = (dy[:, None] + torch.arange(32))[:, :, None]
        cols = (dx[:, None] + torch.arange(32))[:, None, :]
        x = protos[y][torch.arange(n)[:, None, None], :, rows, cols]  # (n, 32, 32, 3)
        x = x * (0.8 + 0.4 * torch.rand(n, 1, 1, 1, generator=g)) + 20 * torch.randn(x.shape, generator=g)
        return x.clamp(0, 255).round().to(torch.uint8).numpy(), y.numpy().astype(np.int64)

    tx, ty = draw(n_train)
    vx, vy = draw(n_test)
    return Arrays(tx, ty, vx, vy, [f"class{i}" for i in range(num_classes)])


# ----------------------------------------------------------------------------------------------
# Splits, subsets, statistics; the device-resident dataset
# ----------------------------------------------------------------------------------------------


def balanced_subset(labels: np.ndarray, n: int, num_classes: int, seed: int = _SUBSET_SEED) -> np.ndarray:
    """Indices of n examples, as equal a number per class as possible, in their original order."""
    if n >= len(labels):
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    per_class = [np.flatnonzero(labels == c) for c in range(num_classes)]
    take = np.full(num_classes, n // num_classes)
    take[: n % num_classes] += 1
    chosen = [rng.permutation(idx)[: min(t, len(idx))] for idx, t in zip(per_class, take)]
    return np.sort(np.concatenate(chosen))


def _svhn_holdout(train_y: np.ndarray, extra_y: np.ndarray, total: int) -> tuple[np.ndarray, np.ndarray]:
    """Validation indices into train and extra: 2/3 of `total` from train, 1/3 from extra, per class.

    With total = 6,000 this is 400 per class from train and 200 per class from extra, the split
    of Sermanet et al. (2012) and Goodfellow et al. (2013) that the paper's SVHN protocol follows.
    """
    per_class = total // 10
    rng = np.random.default_rng(_SUBSET_SEED)
    tr = np.concatenate([rng.permutation(np.flatnonzero(train_y == c))[: per_class * 2 // 3] for c in range(10)])
    ex = np.concatenate([rng.permutation(np.flatnonzero(extra_y == c))[: per_class - per_class * 2 // 3]
                         for c in range(10)])
    return np.sort(tr), np.sort(ex)


def channel_stats(images: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean and (population) std of uint8 images (N, H, W, 3), on the 0-1 scale."""
    x = images.reshape(-1, images.shape[-1])
    s, ss = np.zeros(x.shape[1]), np.zeros(x.shape[1])
    for start in range(0, len(x), 1 << 22):  # chunks keep float64 temporaries small
        chunk = x[start:start + (1 << 22)].astype(np.float64)
        s += chunk.sum(0)
        ss += (chunk * chunk).sum(0)
    mean = s / len(x)
    std = np.sqrt(ss / len(x) - mean * mean)
    return (mean / 255).tolist(), (std / 255).tolist()


def _cached_stats(a: Arrays, spec: DatasetSpec, train_x: np.ndarray) -> tuple[list[float], list[float]]:
    """channel_stats of the training split, remembered in the cache folder (it takes ~1 s)."""
    import json

    path = a.cache / f"stats-holdout{spec.val_holdout}.json" if a.cache is not None else None
    if path is not None and path.is_file():
        stats = json.loads(path.read_text(encoding="utf-8"))
        if stats.get("n") == len(train_x):
            return stats["mean"], stats["std"]
    mean, std = channel_stats(train_x)
    if path is not None:
        try:
            atomic.write_text(path, json.dumps({"n": len(train_x), "mean": mean, "std": std}))
        except OSError:
            pass  # only a speed-up
    return mean, std


def _to_device(images: np.ndarray, device) -> Tensor:
    """uint8 (N, H, W, 3) numpy -> uint8 (N, 3, H, W) tensor on `device`."""
    return torch.from_numpy(np.ascontiguousarray(images)).to(device).permute(0, 3, 1, 2).contiguous()


@dataclass
class Data:
    """A dataset on the training device: uint8 images (N, 3, 32, 32), int64 labels (N,)."""

    spec: DatasetSpec
    source: SourceInfo
    train_x: Tensor
    train_y: Tensor
    test_x: Tensor
    test_y: Tensor
    mean: list[float]      # per channel, 0-1 scale (SVHN: 0, i.e. pixels / 255 only)
    std: list[float]
    classes: list[str]
    val_x: Tensor | None = None
    val_y: Tensor | None = None
    info: dict = field(default_factory=dict)  # sizes, subsets, notes: goes into the run summary

    @property
    def num_classes(self) -> int:
        return self.spec.num_classes

    def train_loader(self, batch_size: int, seed: int, rank: int = 0, world_size: int = 1,
                     channels_last: bool = False) -> "DeviceLoader":
        return DeviceLoader(self.train_x, self.train_y, batch_size, self.mean, self.std, train=True,
                            augment=self.spec.augment, seed=seed, rank=rank, world_size=world_size,
                            channels_last=channels_last)

    def eval_loader(self, split: str = "test", batch_size: int = 500, rank: int = 0, world_size: int = 1,
                    channels_last: bool = False) -> "DeviceLoader":
        x, y = (self.test_x, self.test_y) if split == "test" else (self.val_x, self.val_y)
        if x is None:
            raise ValueError(f"{self.spec.name} has no {split!r} split")
        return DeviceLoader(x, y, batch_size, self.mean, self.std, train=False, augment=False, seed=0,
                            rank=rank, world_size=world_size, channels_last=channels_last)


def load_data(dataset: str, data_root: str | os.PathLike | None = None, source: str = "auto",
              device: str | torch.device = "cpu", train_subset: int | None = None,
              test_subset: int | None = None, download: bool = True,
              resolved: SourceInfo | None = None) -> Data:
    """Load a Table 2 dataset onto `device`, following the paper's protocol.

    Args:
        dataset: c10, c10+, c100, c100+ or svhn.
        data_root: where the data is (see the module docstring); source: auto/torchvision/folder/synthetic.
        train_subset / test_subset: keep only this many images (class-balanced, fixed seed, the
            same for every run), for reduced budgets. Normalisation statistics always come from
            the full training set (minus any validation hold-out).
    """
    spec = get_spec(dataset)
    src = resolved or resolve_source(dataset, data_root, source, download)
    a = load_arrays(dataset, src, download)
    train_x, train_y = a.train_x, a.train_y
    val_x = val_y = None
    info: dict = {"source": src.description, "source_id": src.id}
    if a.note:
        info["source_note"] = a.note
    if spec.val_holdout:
        if a.extra_x is not None:
            vt, ve = _svhn_holdout(a.train_y, a.extra_y, spec.val_holdout)
            keep_t = np.setdiff1d(np.arange(len(train_y)), vt)
            keep_e = np.setdiff1d(np.arange(len(a.extra_y)), ve)
            val_x = np.concatenate([train_x[vt], a.extra_x[ve]])
            val_y = np.concatenate([train_y[vt], a.extra_y[ve]])
            train_x = np.concatenate([train_x[keep_t], a.extra_x[keep_e]])
            train_y = np.concatenate([train_y[keep_t], a.extra_y[keep_e]])
        else:  # synthetic or an image-folder copy without "extra": hold out from train
            n_val = min(spec.val_holdout, len(train_y) // 6)
            vi = balanced_subset(train_y, n_val, spec.num_classes)
            keep = np.setdiff1d(np.arange(len(train_y)), vi)
            val_x, val_y, train_x, train_y = train_x[vi], train_y[vi], train_x[keep], train_y[keep]
    if spec.normalise == "meanstd":
        mean, std = _cached_stats(a, spec, train_x)
    else:  # SVHN: "pixels / 255", no mean subtraction
        mean, std = [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]
    info["train_full"] = int(len(train_y))
    if train_subset is not None:
        idx = balanced_subset(train_y, train_subset, spec.num_classes)
        train_x, train_y = train_x[idx], train_y[idx]
    test_x, test_y = a.test_x, a.test_y
    info["test_full"] = int(len(test_y))
    if test_subset is not None:
        idx = balanced_subset(test_y, test_subset, spec.num_classes)
        test_x, test_y = test_x[idx], test_y[idx]
    info.update(train=int(len(train_y)), test=int(len(test_y)), val=0 if val_y is None else int(len(val_y)),
                mean=[round(m, 5) for m in mean], std=[round(s, 5) for s in std])
    device = torch.device(device)
    return Data(spec, src, _to_device(train_x, device), torch.from_numpy(train_y).to(device),
                _to_device(test_x, device), torch.from_numpy(test_y).to(device), mean, std, a.classes,
                None if val_x is None else _to_device(val_x, device),
                None if val_y is None else torch.from_numpy(val_y).to(device), info)


# ----------------------------------------------------------------------------------------------
# The loader: batched normalisation and augmentation on the device
# ----------------------------------------------------------------------------------------------


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The CPU generator for one epoch's shuffle and augmentation: a function of (seed, epoch) only,
    so a resumed run draws exactly what the uninterrupted run would have."""
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch + 1)


def random_crop_flip(x: Tensor, offsets: Tensor, flips: Tensor, pad: int = PAD) -> Tensor:
    """Zero-pad by `pad`, crop HxW at per-image offsets, flip where `flips`; batched, on x's device.

    x: (B, C, H, W) float, already normalised, so the zero padding is the mean colour, as in the
    official code (fb.resnet.torch: ColorNormalize, then HorizontalFlip, then RandomCrop(32, 4)).
    offsets: (B, 2) int64 in [0, 2*pad] (row, column); flips: (B,) bool. Returns (B, C, H, W).
    """
    b, c, h, w = x.shape
    hp, wp = h + 2 * pad, w + 2 * pad
    xp = F.pad(x, (pad, pad, pad, pad))  # (B, C, H+2p, W+2p), zeros
    rows = offsets[:, 0, None] + torch.arange(h, device=x.device)  # (B, H)
    cols = offsets[:, 1, None] + torch.arange(w, device=x.device)  # (B, W)
    cols = torch.where(flips[:, None], cols.flip(1), cols)         # a flip reads columns backwards
    index = (rows[:, :, None] * wp + cols[:, None, :]).view(b, 1, h * w).expand(b, c, h * w)
    return xp.view(b, c, hp * wp).gather(2, index).view(b, c, h, w)  # one gather: fast on CPU and GPU


class DeviceLoader:
    """Batches of a device-resident uint8 dataset, normalised (and augmented) on the device.

    Training: a fresh permutation each epoch from `epoch_generator(seed, epoch)`; the global batch
    of `batch_size` images is split between `world_size` processes (DDP), each taking its slice,
    so the union over processes is exactly the single-process batch. The last batch is partial
    (all images are seen every epoch). Evaluation: in order; each process takes a contiguous shard.
    Yields (images float32 (b, 3, H, W), labels int64 (b,), size of the global batch).
    """

    def __init__(self, images: Tensor, labels: Tensor, batch_size: int, mean: list[float], std: list[float],
                 *, train: bool, augment: bool, seed: int = 0, rank: int = 0, world_size: int = 1,
                 channels_last: bool = False) -> None:
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        self.images, self.labels = images, labels  # (N, 3, H, W) uint8, (N,) int64
        self.batch_size, self.train, self.augment, self.seed = batch_size, train, augment, seed
        self.rank, self.world_size = rank, world_size
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        dev = images.device
        # x_normalised = (x/255 - mean) / std = x * scale + shift
        self.scale = (1.0 / (255.0 * torch.tensor(std, device=dev))).view(1, -1, 1, 1)
        self.shift = (-torch.tensor(mean, device=dev) / torch.tensor(std, device=dev)).view(1, -1, 1, 1)

    def __len__(self) -> int:
        n = len(self.labels)
        if self.train:
            return math.ceil(n / self.batch_size)
        return math.ceil(self._shard(n)[1] / self.batch_size) if n else 0

    def _shard(self, n: int) -> tuple[int, int]:
        """[lo, hi) of this rank's part of n items, as equal as possible."""
        lo = self.rank * n // self.world_size
        hi = (self.rank + 1) * n // self.world_size
        return lo, hi - lo

    def batches(self, epoch: int = 0) -> Iterator[tuple[Tensor, Tensor, int]]:
        n, dev = len(self.labels), self.images.device
        if self.train:
            g = epoch_generator(self.seed, epoch)
            order = torch.randperm(n, generator=g)
            if self.augment:
                offsets = torch.randint(0, 2 * PAD + 1, (n, 2), generator=g).to(dev)
                flips = (torch.rand(n, generator=g) < 0.5).to(dev)
            order = order.to(dev)
            for start in range(0, n, self.batch_size):
                gsize = min(self.batch_size, n - start)
                lo, size = self._shard(gsize)
                with self._few_threads():
                    pos = torch.arange(start + lo, start + lo + size, device=dev)
                    idx = order[pos]
                    x = self._normalise(self.images[idx])
                    if self.augment:
                        x = random_crop_flip(x, offsets[pos], flips[pos])
                    x = x.contiguous(memory_format=self.memory_format)
                yield x, self.labels[idx], gsize
        else:
            lo, size = self._shard(n)
            for start in range(lo, lo + size, self.batch_size):
                stop = min(start + self.batch_size, lo + size)
                with self._few_threads():
                    x = self._normalise(self.images[start:stop]).contiguous(memory_format=self.memory_format)
                yield x, self.labels[start:stop], stop - start

    @contextlib.contextmanager
    def _few_threads(self):
        """On CPU, prepare a batch in one thread: these ops are tiny, and when the cores are shared
        with other processes a multi-threaded tiny op waits for a descheduled thread (README,
        "Performance notes")."""
        if self.images.device.type != "cpu" or torch.get_num_threads() == 1:
            yield
            return
        n = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            yield
        finally:
            torch.set_num_threads(n)

    def _normalise(self, x: Tensor) -> Tensor:  # uint8 (b, 3, H, W) -> float32 (b, 3, H, W)
        return x.float() * self.scale + self.shift

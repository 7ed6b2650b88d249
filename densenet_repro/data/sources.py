"""Where a dataset's images come from, read into uint8 arrays and cached as .npy.

Sources (`source=`):

    torchvision   the official archives through torchvision.datasets, downloaded into data_root
    folder        an image-folder copy, `train/<class>/*` and `test/<class>/*`, as a directory or
                  a .tar.gz (e.g. data/cifar10-jpeg.tar.gz, CIFAR-10 re-encoded as JPEG)
    synthetic     a small learnable synthetic set of CIFAR's shape, generated in memory (smoke)
    auto          official files if present, else an image-folder copy, else a download

`data_root` is the argument, else $DENSENET_DATA, else ./data. It may be read-only: nothing is
written there except official downloads; decoded arrays are cached as .npy in $DENSENET_CACHE,
else ./data/cache, so the second load takes about a second.

A source has two identities. `SourceInfo.id` names it ("folder:cifar10-jpeg.tar.gz", "torchvision",
"synthetic") and enters every run's config hash. Its content fingerprint (`fingerprint`: the images
per class of each split, and a digest of their names and sizes) is recorded with every run, so a
finished run is reused only on the data it was made on.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from densenet_repro import atomic
from densenet_repro.data.specs import SOURCES, DatasetSpec, get_spec
from densenet_repro.errors import ConfigError, DataNotFoundError, DataReadError, MissingPackageError

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
    return SourceInfo("folder", fam, str(folder), desc, f"folder:{copy_name(folder)}")


_ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")


def copy_name(path: Path) -> str:
    """The name an image-folder copy is known by, the same for a directory and its archive:
    cifar10-jpeg/, cifar10-jpeg.tar.gz and cifar10-jpeg.tgz are all "cifar10-jpeg.tar.gz"."""
    name = path.name
    for suffix in _ARCHIVE_SUFFIXES:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    return name + ".tar.gz"


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
    fingerprint: dict | None = None    # content_fingerprint, kept with the cache


def cache_dir() -> Path:
    """Where decoded arrays are cached: $DENSENET_CACHE, else ./data/cache (git-ignored).

    Never inside data_root: that may be a read-only copy shared by several checkouts, and file
    permissions do not stop a process running as root from writing there.
    """
    return Path(os.environ.get("DENSENET_CACHE") or Path("data") / "cache")


def _bytes_digest(path: Path) -> str:
    """Hash of an archive's bytes, or of a directory's listing (names and sizes): the cache key."""
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
    (tmp / FINGERPRINT_FILE).write_text(json.dumps(content_fingerprint(arrays)), encoding="utf-8")
    atomic.replace_dir(tmp, folder)  # a half-written cache is never seen; False: another process's is used


def _load_cache(folder: Path) -> Arrays | None:
    """The cached arrays, or None where there is no cache yet (or one from before fingerprints)."""
    if not (folder / "classes.txt").is_file() or not (folder / FINGERPRINT_FILE).is_file():
        return None
    try:
        values = {k: np.load(folder / f"{k}.npy") if (folder / f"{k}.npy").is_file() else None for k in _CACHE_KEYS}
        fingerprint = json.loads((folder / FINGERPRINT_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError, EOFError) as e:  # a truncated .npy or JSON
        raise DataReadError(f"the decoded-dataset cache {folder} is damaged ({type(e).__name__}: {e}): "
                            f"delete {folder} (it is rebuilt from the dataset)") from None
    classes = (folder / "classes.txt").read_text(encoding="utf-8").split()
    note = (folder / "note.txt").read_text(encoding="utf-8") if (folder / "note.txt").is_file() else ""
    return Arrays(classes=classes, note=note, cache=folder, fingerprint=fingerprint, **values)


FINGERPRINT_FILE = "fingerprint.json"


def content_fingerprint(arrays: Arrays) -> dict:
    """What a dataset holds, as recorded with every run: the images per class of each split and a
    digest of every pixel and label. The same pixels give the same fingerprint whatever their
    container (a directory or its .tar.gz, the official archive or a folder copy of it)."""
    h = hashlib.sha256()
    out: dict = {}
    for split in ("train", "test", "extra"):
        x, y = getattr(arrays, f"{split}_x"), getattr(arrays, f"{split}_y")
        if x is None:
            continue
        counts = np.bincount(y, minlength=len(arrays.classes))
        out[split] = {c: int(n) for c, n in zip(arrays.classes, counts)}
        h.update(split.encode())
        h.update(np.ascontiguousarray(x).data)
        h.update(np.ascontiguousarray(y).data)
    out["digest"] = h.hexdigest()[:16]
    return out


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
    class_dirs: dict[str, set[str]] = {"train": set(), "test": set()}

    def add(rel: str, read, is_dir: bool) -> None:
        parts = rel.strip("/").split("/")  # .../<split>/<class>/<file>, at any depth
        if is_dir:
            if len(parts) >= 2 and parts[-2] in items:
                class_dirs[parts[-2]].add(parts[-1])
        elif len(parts) >= 3 and parts[-3] in items and parts[-1].lower().endswith(_IMAGE_SUFFIXES):
            class_dirs[parts[-3]].add(parts[-2])
            items[parts[-3]].append((parts[-2], parts[-1], read()))

    if path.is_file():
        try:
            with tarfile.open(path, "r:*") as tar:
                for member in tar:
                    if member.isfile() or member.isdir():
                        add(member.name, lambda m=member: tar.extractfile(m).read(), member.isdir())
        except (tarfile.TarError, EOFError, OSError) as e:  # truncated or not an archive at all
            raise DataReadError(f"cannot read the archive {path} ({type(e).__name__}: {e}): it is damaged; "
                                "copy it again, or point --data-root at another copy") from e
    else:
        for p in sorted(path.rglob("*")):
            add(p.relative_to(path).as_posix(), p.read_bytes, p.is_dir())
    if not items["train"] or not items["test"]:
        raise DataNotFoundError(f"{path}: no images under train/<class>/ and test/<class>/ "
                                "(expected an image-folder copy, e.g. cifar10-jpeg/{train,test}/<class>/*.jpg)")
    for split in items:  # a class folder without images would silently drop a class
        empty = sorted(class_dirs[split] - {c for c, _, _ in items[split]})
        if empty:
            raise DataReadError(f"{path}: the {split} class folder(s) {empty} hold no images: the copy is "
                                "incomplete; copy it again")
    classes = sorted(class_dirs["train"])  # ImageFolder's order (= CIFAR-10's labels)
    index = {c: i for i, c in enumerate(classes)}
    missing = sorted(set(classes) - class_dirs["test"])
    if missing:
        raise DataReadError(f"{path}: the test split has no folder for the class(es) {missing}: the copy is "
                            "incomplete; copy it again")
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
        arrays = make_synthetic(spec.num_classes)
        arrays.fingerprint = content_fingerprint(arrays)
        return arrays
    path = Path(source.path)
    if source.kind == "folder":
        key = f"{path.name.split('.')[0]}-{_bytes_digest(path)}"
    else:
        key = f"{spec.family}-official"
    folder = cache_dir() / key
    cached = _load_cache(folder)
    if cached is not None:
        return cached
    arrays = _read_image_folder(path) if source.kind == "folder" else _read_torchvision(spec, path, download)
    if len(arrays.classes) != spec.num_classes:
        raise DataReadError(f"{source.path}: {len(arrays.classes)} classes, but {dataset} has {spec.num_classes}")
    arrays.fingerprint = content_fingerprint(arrays)
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        _save_cache(folder, arrays)
        arrays.cache = folder
    except OSError as e:  # a read-only working directory: decode again next time, say so
        print(f"warning: could not cache decoded {dataset} in {folder} ({e}); set DENSENET_CACHE to a writable folder")
    return arrays


_FINGERPRINTS: dict[tuple, dict] = {}  # per process: (dataset, source, file state) -> fingerprint


def fingerprint(dataset: str, source: SourceInfo) -> dict | None:
    """content_fingerprint of the data a source holds (None: not on this machine), kept with the
    decoded cache, so that it costs a hash of the archive (well under a second for CIFAR-10)."""
    if not source.present:
        return None
    state = None
    if source.path is not None:
        st = Path(source.path).stat()
        state = (st.st_size, st.st_mtime_ns)
    key = (dataset, source, state)
    if key not in _FINGERPRINTS:
        _FINGERPRINTS[key] = load_arrays(dataset, source, download=False).fingerprint
    return _FINGERPRINTS[key]


def describe_fingerprint(fp: dict) -> str:
    """'50,000 training / 10,000 test images (digest 1a2b...)' for one-line messages."""
    sizes = " / ".join(f"{sum(fp[s].values()):,} {'training' if s == 'train' else s}"
                       for s in ("train", "extra", "test") if s in fp)
    return f"{sizes} images (digest {fp['digest']})"


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

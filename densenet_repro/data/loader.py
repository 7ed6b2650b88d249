"""A dataset on the training device: splits, subsets and statistics, and the loader that
normalises and augments batches there.

The input pipeline (`DeviceLoader`) has no worker processes: the whole set lives on the training
device as uint8 (CIFAR-10: 150 MB), and each batch is gathered, normalised, padded, cropped and
flipped there with a few batched tensor ops, with the randomness drawn from a generator seeded by
(seed, epoch). The same code runs on CPU and CUDA, and a run resumed at epoch e draws exactly the
batches the uninterrupted run would have.
"""

from __future__ import annotations

import contextlib
import math
import os
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from densenet_repro import atomic
from densenet_repro.data.sources import Arrays, SourceInfo, load_arrays, resolve_source
from densenet_repro.data.specs import DatasetSpec, get_spec
from densenet_repro.errors import ConfigError

PAD = 4  # "+" augmentation: zero-pad 4 pixels on each side, then a random 32x32 crop
_SUBSET_SEED = 0  # training/test subsets and the SVHN validation split never depend on the run seed

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
        try:
            stats = json.loads(path.read_text(encoding="utf-8"))
            if stats.get("n") == len(train_x):
                return stats["mean"], stats["std"]
        except (ValueError, AttributeError):  # truncated: computed again and rewritten below
            pass
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


def load_data(spec: DatasetSpec, source: SourceInfo, device: str | torch.device = "cpu",
              train_subset: int | None = None, test_subset: int | None = None, download: bool = True) -> Data:
    """Load a Table 2 dataset from its resolved source onto `device`, following the paper's protocol.

    train_subset / test_subset: keep only this many images (class-balanced, fixed seed, the same
    for every run), for reduced budgets. Normalisation statistics always come from the full
    training set (minus any validation hold-out).
    """
    src = source
    a = load_arrays(spec.name, src, download)
    train_x, train_y = a.train_x, a.train_y
    val_x = val_y = None
    info: dict = {"source": src.description, "source_id": src.id, "fingerprint": a.fingerprint}
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


def load(dataset: str, data_root: str | os.PathLike | None = None, source: str = "auto",
         device: str | torch.device = "cpu", train_subset: int | None = None, test_subset: int | None = None,
         download: bool = True) -> Data:
    """A dataset by name, for analyses and tests: resolve its source, then `load_data`."""
    return load_data(get_spec(dataset), resolve_source(dataset, data_root, source, download), device,
                     train_subset, test_subset, download)


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

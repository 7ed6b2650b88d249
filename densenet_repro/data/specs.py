"""The paper's datasets as Table 2 names them: what its protocol says about each column.

    c10, c100     CIFAR-10/100, no augmentation (the paper then trains with dropout 0.2)
    c10+, c100+   the same with "standard augmentation": zero-pad 4, random 32x32 crop, random
                  horizontal flip
    svhn          SVHN train + extra, no augmentation, pixels / 255, 6,000 training images held
                  out for validation (the paper reports the model with the lowest validation error)

Every CIFAR image is normalised with the per-channel mean and std of the training set.
"""

from __future__ import annotations

from dataclasses import dataclass

from densenet_repro.errors import ConfigError

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


def get_spec(name: str) -> DatasetSpec:
    if name not in SPECS:
        raise ConfigError(f"unknown dataset {name!r}: use one of {', '.join(DATASETS)}")
    return SPECS[name]

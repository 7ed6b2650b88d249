"""The paper's Table 2, quoted: every row, its depth, parameters and errors; and the claims it supports.

Huang, Liu, van der Maaten, Weinberger, *Densely Connected Convolutional Networks* (CVPR 2017),
Table 2: test error (%) on CIFAR-10/100 (C10, C100; "+" = standard augmentation) and SVHN.
"All DenseNet results without augmentation use dropout 0.2." A None is the paper's "-" (not
reported). Every number here is the paper's, not ours; reports label it so.
"""

from __future__ import annotations

from dataclasses import dataclass

COLUMNS = ("c10", "c10+", "c100", "c100+", "svhn")


@dataclass(frozen=True)
class Table2Row:
    method: str                         # as printed in the paper
    depth: int
    params: str                         # as printed in the paper, e.g. "1.0M"
    errors: tuple[float | None, ...]    # in COLUMNS order
    model: str | None = None            # our registry name, for the DenseNet rows

    def error(self, column: str) -> float | None:
        return self.errors[COLUMNS.index(column)]

    @property
    def is_densenet(self) -> bool:
        return self.model is not None and self.model.startswith("densenet")


TABLE2: tuple[Table2Row, ...] = (
    Table2Row("ResNet (reported by Huang et al. 2016)", 110, "1.7M", (13.63, 6.41, 44.74, 27.22, 2.01), "resnet110"),
    Table2Row("ResNet with Stochastic Depth", 110, "1.7M", (11.66, 5.23, 37.80, 24.58, 1.75)),
    Table2Row("Wide ResNet", 16, "11.0M", (None, 4.81, None, 22.07, None)),
    Table2Row("Wide ResNet", 28, "36.5M", (None, 4.17, None, 20.50, None)),
    Table2Row("FractalNet with Dropout/Drop-path", 21, "38.6M", (7.33, 4.60, 28.20, 23.73, 1.87)),
    Table2Row("ResNet (pre-activation)", 164, "1.7M", (11.26, 5.46, 35.58, 24.33, None), "preact_resnet164"),
    Table2Row("ResNet (pre-activation)", 1001, "10.2M", (10.56, 4.62, 33.47, 22.71, None), "preact_resnet1001"),
    Table2Row("DenseNet (k = 12)", 40, "1.0M", (7.00, 5.24, 27.55, 24.42, 1.79), "densenet40_k12"),
    Table2Row("DenseNet (k = 12)", 100, "7.0M", (5.77, 4.10, 23.79, 20.20, 1.67), "densenet100_k12"),
    Table2Row("DenseNet (k = 24)", 100, "27.2M", (5.83, 3.74, 23.42, 19.25, 1.59), "densenet100_k24"),
    Table2Row("DenseNet-BC (k = 12)", 100, "0.8M", (5.92, 4.51, 24.15, 22.27, 1.76), "densenet_bc100_k12"),
    Table2Row("DenseNet-BC (k = 24)", 250, "15.3M", (5.19, 3.62, 19.64, 17.60, 1.74), "densenet_bc250_k24"),
    Table2Row("DenseNet-BC (k = 40)", 190, "25.6M", (None, 3.46, None, 17.18, None), "densenet_bc190_k40"),
)
DENSENET_ROWS = tuple(r for r in TABLE2 if r.is_densenet)


def row(model: str) -> Table2Row:
    """The Table 2 row of one of our models."""
    for r in TABLE2:
        if r.model == model:
            return r
    raise KeyError(f"{model} is not a row of Table 2")


def densenet_cells() -> list[tuple[Table2Row, str]]:
    """The DenseNet cells the paper reports a number for (27: six rows x five columns, minus three "-")."""
    return [(r, c) for r in DENSENET_ROWS for c in COLUMNS if r.error(c) is not None]


# --- the claims Table 2 supports, as comparisons two runs can test --------------------------------


@dataclass(frozen=True)
class Arm:
    """One side of a comparison: a model family (at a budget's scale), a dataset, a dropout rate."""

    label: str
    model: str
    dataset: str
    drop_rate: float | None = None  # None: the paper's rule (0.2 without augmentation)


@dataclass(frozen=True)
class Comparison:
    """The claim "arm a ends with a lower test error than arm b", at the same epochs and seeds."""

    key: str
    claim: str
    a: Arm
    b: Arm
    note: str = ""


PLAIN, BC = "densenet40_k12", "densenet_bc100_k12"
COMPARISONS = (
    Comparison("bc_vs_plain", "DenseNet-BC (k = 12) has a lower error than DenseNet (k = 12) of about its size",
               Arm("DenseNet-BC", BC, "c10+"), Arm("DenseNet", PLAIN, "c10+"),
               "Table 2: 4.51% (BC-100, 0.8M) against 5.24% (L=40, 1.0M) on C10+"),
    Comparison("augmentation", "augmentation lowers the error (dropout off on both sides)",
               Arm("DenseNet, C10+", PLAIN, "c10+"), Arm("DenseNet, C10 without dropout", PLAIN, "c10", 0.0),
               "Table 2 compares C10+ without dropout to C10 with dropout 0.2; here dropout is off on both sides"),
    Comparison("dropout", "without augmentation, dropout 0.2 lowers the error",
               Arm("DenseNet, C10, dropout 0.2", PLAIN, "c10"), Arm("DenseNet, C10 without dropout", PLAIN, "c10", 0.0),
               "the paper's protocol uses dropout 0.2 exactly on the data without augmentation"),
    Comparison("paper_columns", "C10+ (no dropout) has a lower error than C10 (dropout 0.2), as Table 2's columns",
               Arm("DenseNet, C10+", PLAIN, "c10+"), Arm("DenseNet, C10, dropout 0.2", PLAIN, "c10"),
               "the paper's own comparison: augmentation and dropout change together (confounded)"),
)

"""One visual style for every figure of every report, and a few small figure helpers.

Notebooks call `plots.set_style()` once (after the provenance cell) and then the helpers here
or plain seaborn/matplotlib. Figures go into the reports as PNG (the inline backend's format,
which set_style pins), at a dpi that keeps each report well under the 5 MB limit.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import matplotlib

DPI = 110
FIGSIZE = (6.4, 4.0)  # one panel, inches
PALETTE = "colorblind"
# One colour per model family across all reports.
FAMILY_COLOURS = {"DenseNet": "C0", "DenseNet-BC": "C0", "ResNet": "C1", "pre-act ResNet": "C1"}


def set_style() -> None:
    """Seaborn whitegrid/notebook style, colour-blind palette, PNG output at DPI."""
    import seaborn as sns

    sns.set_theme(context="notebook", style="whitegrid", palette=PALETTE)
    matplotlib.rcParams.update({
        "figure.dpi": DPI,
        "savefig.dpi": DPI,
        "figure.figsize": FIGSIZE,
        "axes.titlesize": "medium",
        "axes.titleweight": "bold",
        "legend.frameon": False,
    })
    try:  # inside IPython: make sure the inline backend emits PNG (not SVG/PDF)
        from IPython import get_ipython

        if get_ipython() is not None:
            from matplotlib_inline.backend_inline import set_matplotlib_formats

            set_matplotlib_formats("png")
    except ImportError:
        pass


def figure(ncols: int = 1, nrows: int = 1, width: float | None = None, height: float | None = None,
           **kwargs):
    """A figure with nrows x ncols panels of the house size; returns (fig, axes) like plt.subplots."""
    import matplotlib.pyplot as plt

    w = width if width is not None else FIGSIZE[0] * (0.8 if ncols > 1 else 1.0) * ncols
    h = height if height is not None else FIGSIZE[1] * nrows
    return plt.subplots(nrows, ncols, figsize=(w, h), layout="constrained", **kwargs)


def label_points(ax, xs: Iterable[float], ys: Iterable[float], labels: Iterable[str], *,
                 fontsize: str = "small", offset: tuple[float, float] = (4, 4)) -> None:
    """Write a short label beside each point (e.g. the model name on a scatter plot)."""
    for x, y, s in zip(xs, ys, labels):
        ax.annotate(s, (x, y), xytext=offset, textcoords="offset points", fontsize=fontsize)


def quoted_note(ax, text: str) -> None:
    """A small grey note in the lower corner of a panel, e.g. 'errors quoted from the paper'."""
    ax.text(0.99, 0.01, text, transform=ax.transAxes, ha="right", va="bottom", fontsize="x-small",
            color="0.4")


def lines_by_family(ax, df, x: str, y: str, family: str = "family", label: str = "model",
                    order: Sequence[str] | None = None) -> None:
    """One marker line per model family (sorted by x) with the model labels beside the points."""
    fams = order or list(dict.fromkeys(df[family]))
    for i, fam in enumerate(fams):
        sub = df[df[family] == fam].sort_values(x)
        ax.plot(sub[x], sub[y], marker="o", color=FAMILY_COLOURS.get(fam, f"C{i}"), label=fam)
        label_points(ax, sub[x], sub[y], sub[label])
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    ax.legend()

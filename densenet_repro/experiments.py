"""What each budget runs for Table 2, and the `table2` command.

    python -m densenet_repro table2 --budget cpu [--data-root ../shared/data] [--device cpu]

Table 2 has six DenseNet rows and five dataset columns (C10, C10+, C100, C100+, SVHN).

    paper   every DenseNet row on every column, the paper's exact protocol: full depth, the
            full training set, 300 epochs (CIFAR) / 40 (SVHN). Needs the official datasets and a GPU.
    cpu     the two families, DenseNet (k=12) and DenseNet-BC (k=12), scaled down to fit about
            15 minutes on a 2-core CPU: fewer layers per block, a class-balanced subset of the
            training and test sets, fewer epochs (milestones scaled), bf16 autocast and
            channels_last (the fast CPU path; the paper trained in fp32). Columns C10 and C10+ only:
            CIFAR-10 is the dataset available offline here. `scaling_table("cpu")` lists exactly
            what was scaled and by how much; the notebook prints it.
    smoke   the same two families at a toy size on synthetic data, four columns; seconds.

A cell that a budget does not run carries the reason, which the notebook shows in the table.

GPU check (issue 3; prepared, not run here: no GPU was lent to this task). One epoch of the
paper's protocol for DenseNet-BC-100 k=12 on C10+ (all 50,000 images, batch 64, augmentation),
bf16, channels_last, torch.compile; epoch 2 is the measurement (epoch 1 includes compilation):

    python -m densenet_repro train --model densenet_bc100_k12 --dataset c10+ --epochs 2 --amp bf16 \
        --channels-last --compile --device cuda --data-root ../shared/data --experiment gpu_check \
        --out results --results ""

results/gpu_check/<run>/metrics.csv then holds images/s and the epoch time per epoch, and
summary.json the device name and `peak_gpu_memory_gib` (torch.cuda.max_memory_allocated).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from densenet_repro.budgets import BUDGETS, check_budget
from densenet_repro.data import DATASETS, SYNTHETIC_SIZE, get_spec
from densenet_repro.errors import UserError
from densenet_repro.train import CIFAR_DENSENETS, OneLineParser, RunConfig, build_model, read_metrics, train

EXPERIMENT = "table2"

# The DenseNet rows of Table 2: model name, label as printed in the paper, depth L, growth rate k.
TABLE2_ROWS: list[tuple[str, str, int, int]] = [
    ("densenet40_k12", "DenseNet (k = 12)", 40, 12),
    ("densenet100_k12", "DenseNet (k = 12)", 100, 12),
    ("densenet100_k24", "DenseNet (k = 24)", 100, 24),
    ("densenet_bc100_k12", "DenseNet-BC (k = 12)", 100, 12),
    ("densenet_bc250_k24", "DenseNet-BC (k = 24)", 250, 24),
    ("densenet_bc190_k40", "DenseNet-BC (k = 40)", 190, 40),
]


@dataclass(frozen=True)
class Scale:
    """How a budget shrinks one Table 2 row. None everywhere means the paper's protocol."""

    depth: int | None = None          # L of the scaled model (same k, same B/C choices)
    epochs: int | None = None         # instead of 300 (CIFAR) / 40 (SVHN)
    train_subset: int | None = None   # class-balanced training images instead of all
    test_subset: int | None = None    # class-balanced test images instead of all
    amp: str = "none"                 # none | bf16 | fp16 (paper: fp32)
    channels_last: bool = False
    num_threads: int | None = None    # torch CPU threads (does not change the numbers' meaning)


# cpu budget, chosen from epoch times measured on this 2-core machine in one thread, bf16 autocast +
# channels_last, eager, while other jobs shared the machine: one epoch of 5,000 training images
# plus the evaluation of 2,000 test images took 30 s for DenseNet L=22 (C10, first epoch) and
# 23 + 4.5 s for DenseNet-BC L=40 (C10+). 8 epochs are then ~4 min per run, ~15 min for the 4 runs.
# One thread (num_threads=1): with two, any other process on the machine stalls every op
# (measured 5-20x slower while other jobs ran); one thread keeps the wall time predictable. On a
# machine you know to be idle, num_threads=None (both cores) should be faster.
# Depth L=22 DenseNet (6 layers per block, paper 12) and L=40 DenseNet-BC (6 per block, paper 16) keep each
# family's design (DenseNet: 3x3 convs, no compression, 16-map stem; DenseNet-BC: 1x1 bottleneck
# to 4k maps, compression 0.5, 2k stem) and k=12, at about a quarter of the paper's parameters.
CPU_ROWS = {
    "densenet40_k12": Scale(depth=22, epochs=8, train_subset=5_000, test_subset=2_000, amp="bf16",
                            channels_last=True, num_threads=1),
    "densenet_bc100_k12": Scale(depth=40, epochs=8, train_subset=5_000, test_subset=2_000, amp="bf16",
                                channels_last=True, num_threads=1),
}
CPU_COLUMNS = ("c10", "c10+")  # CIFAR-10 is the only dataset available offline here

# smoke: toy depths, 2 epochs, synthetic data (640 training / 320 test images); one thread, since
# for models this small a second thread only adds synchronisation (and stalls on a busy machine).
# Columns: one of each kind (no augmentation, augmentation, 100 classes, SVHN's validation split).
SMOKE_ROWS = {
    "densenet40_k12": Scale(depth=10, epochs=2, num_threads=1),
    "densenet_bc100_k12": Scale(depth=16, epochs=2, num_threads=1),
}
SMOKE_COLUMNS = ("c10", "c10+", "c100+", "svhn")


def _budget_plan(budget: str) -> tuple[dict[str, Scale], tuple[str, ...]]:
    check_budget(budget)
    if budget == "paper":
        return {m: Scale() for m, *_ in TABLE2_ROWS}, DATASETS
    if budget == "cpu":
        return CPU_ROWS, CPU_COLUMNS
    return SMOKE_ROWS, SMOKE_COLUMNS


def budget_config(model: str, dataset: str, budget: str, *, seed: int = 0, data_root: str | None = None,
                  device: str = "auto", experiment: str = "train") -> RunConfig:
    """The RunConfig a budget uses for (model, dataset). Models outside the budget's rows run at
    the paper's size (paper), or scaled by the smoke/cpu rule of their family."""
    rows, _ = _budget_plan(budget)
    get_spec(dataset)
    if model in rows:
        scale = rows[model]
    elif budget == "paper":
        scale = Scale()
    else:  # another model at a reduced budget: the schedule and data of its family's row
        scale = rows["densenet_bc100_k12" if model.startswith("densenet_bc") else "densenet40_k12"]
        if model not in CIFAR_DENSENETS:
            scale = dataclasses.replace(scale, depth=None)  # only the CIFAR DenseNets are rescaled
    kwargs = {"depth": scale.depth} if scale.depth is not None else {}
    return RunConfig(model=model, dataset=dataset, model_kwargs=kwargs, epochs=scale.epochs,
                     train_subset=scale.train_subset, test_subset=scale.test_subset, amp=scale.amp,
                     channels_last=scale.channels_last, num_threads=scale.num_threads,
                     data_source="synthetic" if budget == "smoke" else "auto", seed=seed, data_root=data_root,
                     device=device, experiment=experiment, budget=budget)


@dataclass
class Cell:
    """One (row, column) of Table 2 at a budget: a config to run, or why it is not run."""

    model: str
    label: str
    depth: int
    k: int
    dataset: str
    config: RunConfig | None
    reason: str = ""


def table2_cells(budget: str, *, seed: int = 0, data_root: str | None = None, device: str = "auto") -> list[Cell]:
    """Every DenseNet cell of Table 2, in the paper's order, with the budget's config or a reason."""
    from densenet_repro.table2 import PAPER_ERRORS

    rows, columns = _budget_plan(budget)
    cells = []
    for model, label, depth, k in TABLE2_ROWS:
        for dataset in DATASETS:
            if PAPER_ERRORS[model][dataset] is None and budget == "paper":
                cells.append(Cell(model, label, depth, k, dataset, None,
                                  "not run: the paper reports no error for this cell"))
            elif model in rows and dataset in columns:
                cfg = budget_config(model, dataset, budget, seed=seed, data_root=data_root, device=device,
                                    experiment=EXPERIMENT)
                cells.append(Cell(model, label, depth, k, dataset, cfg))
            else:
                why = ("not run: needs the official dataset and the GPU (paper) budget"
                       if dataset not in columns else
                       "not run: this row needs the GPU (paper) budget; the cpu budget scales one row per family")
                cells.append(Cell(model, label, depth, k, dataset, None, why))
    return cells


def scaling_table(budget: str):
    """What a budget scales, per model row, against the paper's protocol (a pandas DataFrame)."""
    import pandas as pd

    from densenet_repro import create_model

    rows, columns = _budget_plan(budget)
    out = []
    for model, label, depth, k, in TABLE2_ROWS:
        if model not in rows:
            continue
        s = rows[model]
        ours = build_model(budget_config(model, columns[0], budget), 10)
        paper_params = sum(p.numel() for p in create_model(model, num_classes=10).parameters())
        cfg = budget_config(model, columns[0], budget).resolved()
        spec = get_spec(columns[0])
        m1, m2 = (int(f * cfg.epochs) for f in cfg.lr_milestones)
        out.append({
            "model (paper)": f"{label}, L={depth}",
            "ours: depth L": s.depth or depth,
            "layers per block": f"{ours.block_config[0]} (paper {create_model(model).block_config[0]})",
            "parameters": f"{sum(p.numel() for p in ours.parameters()) / 1e6:.2f}M (paper's model {paper_params / 1e6:.2f}M)",
            "training images": (f"{SYNTHETIC_SIZE[0]} synthetic (paper: 50,000)" if budget == "smoke" else
                                f"{s.train_subset:,} of 50,000" if s.train_subset else "all (50,000)"),
            "test images": (f"{SYNTHETIC_SIZE[1]} synthetic (paper: 10,000)" if budget == "smoke" else
                            f"{s.test_subset:,} of 10,000" if s.test_subset else "all (10,000)"),
            "epochs": f"{cfg.epochs} (paper {spec.paper_epochs})",
            "LR 0.1 -> /10 at epoch": f"{m1 + 1} and {m2 + 1} (paper 151 and 226)",
            "precision": "fp32 (as the paper)" if s.amp == "none" else f"{s.amp} autocast (paper: fp32)",
            "columns run": ", ".join(get_spec(c).title for c in columns),
            "data": "synthetic" if budget == "smoke" else "CIFAR-10 (official, or the JPEG copy offline)",
        })
    return pd.DataFrame(out)


# ----------------------------------------------------------------------------------------------
# Running and publishing
# ----------------------------------------------------------------------------------------------

SMALL_FILES = ("config.json", "metrics.csv", "summary.json")


def publish(summary: dict[str, Any], results_root: str = "results") -> Path:
    """Copy a finished run's small files (not the checkpoint) to results/<experiment>/<run>/."""
    src = Path(summary["run_dir"])
    dst = Path(results_root) / summary["experiment"] / src.name
    if src.resolve() == dst.resolve():
        return dst
    dst.mkdir(parents=True, exist_ok=True)
    for name in SMALL_FILES:
        shutil.copy2(src / name, dst / name)
    return dst


def run_table2(budget: str, *, data_root: str | None = None, device: str = "auto", seed: int = 0,
               progress: str = "auto", publish_results: bool | None = None, out: str = "runs",
               results: str = "results") -> list[dict[str, Any]]:
    """Run (or look up) every cell a budget covers; one dict per Table 2 cell.

    Each dict has model/label/depth/k/dataset, and either `summary` (the run's summary, with
    `run_dir` pointing at its files) or `reason` (why it is not run). Finished runs of the cpu and
    paper budgets are copied to results/table2/ (`publish_results`; smoke runs stay in runs/).
    """
    publish_results = budget != "smoke" if publish_results is None else publish_results
    results_out = []
    for cell in table2_cells(budget, seed=seed, data_root=data_root, device=device):
        row = {"model": cell.model, "label": cell.label, "depth": cell.depth, "k": cell.k, "dataset": cell.dataset}
        if cell.config is None:
            row["reason"] = cell.reason
        else:
            cfg = dataclasses.replace(cell.config, progress=progress, resume=True, out=out, results=results)
            summary = train(cfg)
            if publish_results:
                summary["run_dir"] = publish(summary, results).as_posix()
            row["summary"] = summary
        results_out.append(row)
    return results_out


def result_files(cells: list[dict[str, Any]]) -> list[str]:
    """The metrics/summary files behind a table (for provenance.record)."""
    files = []
    for c in cells:
        if "summary" in c:
            d = Path(c["summary"]["run_dir"])
            files += [(d / "summary.json").as_posix(), (d / "metrics.csv").as_posix()]
    return files


def curves(cells: list[dict[str, Any]]):
    """Per-epoch metrics of every run of a table, in one long DataFrame (for the training curves)."""
    import pandas as pd

    frames = []
    for c in cells:
        if "summary" in c:
            df = read_metrics(c["summary"]["run_dir"])
            depth = (c["summary"].get("model_kwargs") or {}).get("depth") or c["depth"]
            df["model"] = f"{c['label']}, L={depth}" + (f" (paper: L={c['depth']})" if depth != c["depth"] else "")
            df["dataset"] = get_spec(c["dataset"]).title
            frames.append(df)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def table2_main(argv: list[str] | None = None) -> int:
    p = OneLineParser(prog="python -m densenet_repro table2",
                      description="Run (or reuse) every Table 2 cell of a budget and print the table.")
    p.add_argument("--budget", choices=BUDGETS, default="cpu")
    p.add_argument("--data-root", default=None, help="dataset folder (default: $DENSENET_DATA or ./data)")
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs")
    p.add_argument("--results", default="results")
    p.add_argument("--progress", choices=("auto", "bar", "line", "none"), default="auto")
    p.add_argument("--list", action="store_true", help="only list the cells and what is scaled")
    args = p.parse_args(argv)
    from densenet_repro import table2

    if args.list:
        print(scaling_table(args.budget).to_string(index=False))
        for c in table2_cells(args.budget, seed=args.seed, data_root=args.data_root, device=args.device):
            print(f"{c.model:20s} {c.dataset:6s} " + ("run" if c.config else c.reason))
        return 0
    try:
        cells = run_table2(args.budget, data_root=args.data_root, device=args.device, seed=args.seed,
                           progress=args.progress, out=args.out, results=args.results)
    except UserError as e:  # anything else is a bug: it keeps its traceback
        print(f"{p.prog}: error: {e}", file=sys.stderr)
        return 1
    print(table2.comparison_table(cells, budget=args.budget).to_string(index=False))
    print()
    print(table2.verdict(cells, budget=args.budget))
    return 0

"""What each budget runs for Table 2 (notebook 02), and the `table2` command.

    python -m densenet_repro table2 --budget cpu [--data-root DIR]    # the comparisons
    python -m densenet_repro table2 --headline [--data-root DIR]      # the headline run (hours on a CPU)

Table 2 has six DenseNet rows and five dataset columns (C10, C10+, C100, C100+, SVHN); the paper
reports 27 of those 30 cells.

    paper   every one of the 27 cells at the paper's exact protocol: full depth, the full training
            set, 300 epochs (CIFAR) / 40 (SVHN). Needs the official datasets and a GPU.
    cpu     the headline cell, the paper's DenseNet (L=40, k=12) on C10+ with every training and
            test image for 30 epochs (trained apart, resumable, its checkpoint committed); and the
            claims the table supports, compared at equal compute on small models of both families
            (full training set, 2 epochs, 2 seeds): `COMPARISONS`. Precision and blocks follow the
            CPU (`fastpath.settings`). `scaling_table("cpu")` lists what is scaled and by how much.
    smoke   two rows at toy sizes on synthetic data, four columns, and the comparisons; seconds.

A cell that a budget does not run carries the reason, which the notebook shows.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from densenet_repro import fastpath, paper
from densenet_repro.budgets import check_budget, comparison_seeds
from densenet_repro.paper import COMPARISONS, Arm
from densenet_repro.data import SYNTHETIC_SIZE, get_spec
from densenet_repro.errors import ConfigError
from densenet_repro.config import RunConfig, build_model, lr_schedule_text
from densenet_repro.plan import plan
from densenet_repro.runstore import publish, read_metrics, read_summary
from densenet_repro.train import train

CIFAR_DENSENET_MODELS = tuple(r.model for r in paper.DENSENET_ROWS)  # scaled by depth at reduced budgets

EXPERIMENT = "table2"
COMPARISON_EXPERIMENT = "table2_comparisons"

# The DenseNet rows of Table 2: model name, label as printed in the paper, depth L, growth rate k.
TABLE2_ROWS: list[tuple[str, str, int, int]] = [
    (r.model, r.method, r.depth, int(r.method.split("k = ")[1].rstrip(")"))) for r in paper.DENSENET_ROWS]


@dataclass(frozen=True)
class Scale:
    """How a budget shrinks one Table 2 row. None everywhere means the paper's protocol."""

    depth: int | None = None          # L of the scaled model (same k, same B/C choices)
    epochs: int | None = None         # instead of 300 (CIFAR) / 40 (SVHN)
    train_subset: int | None = None   # class-balanced training images instead of all (smoke only)
    test_subset: int | None = None
    num_threads: int | None = None    # torch CPU threads (does not change the numbers' meaning)


# --- what every run of a budget shares ----------------------------------------------------------
def run_fields(budget: str) -> dict:
    """The RunConfig fields every run of a budget shares, whatever experiment it belongs to.

    smoke: the synthetic set, small enough for seconds; cpu: all of CIFAR-10, in the precision the
    CPU runs fastest (bf16 where oneDNN has it natively, AVX512-BF16 or AMX; fp32 elsewhere, where
    bf16 is emulated and 100x slower); paper: the official data at the paper's fp32.
    """
    smoke = check_budget(budget) == "smoke"
    return {"train_subset": SYNTHETIC_SIZE[0] if smoke else None, "test_subset": SYNTHETIC_SIZE[1] if smoke else None,
            "data_source": "synthetic" if smoke else "auto",
            "amp": "bf16" if budget == "cpu" and fastpath.bf16_native() else "none", "budget": budget}


# --- the headline cell ------------------------------------------------------------------------
# The paper's own DenseNet (L = 40, k = 12, 1.0M parameters) on C10+: all 50,000 training and
# 10,000 test images, the paper's recipe with the step schedule scaled to 30 epochs (LR 0.1, /10
# at epochs 16 and 23), fp32 as the paper trained. Hours on a 2-core CPU, minutes on a GPU (README,
# "Performance notes"); `python -m densenet_repro table2 --headline` trains it, resuming from its checkpoint, into
# results/table2/ so that the checkpoint of an unfinished run is committed at one path.
HEADLINE = dict(model="densenet40_k12", dataset="c10+", epochs=30, amp="none")
HEADLINE_TARGET_PCT = 9.0  # final test error (the paper: 5.24 at 300 epochs)
# The schedules the headline is trained at, shortest first; `table2 --headline` trains (or resumes) each
# in turn. At 30 epochs the final error was 11.80 % [11.18, 12.45], the target missed: the test error
# sat at 11.7-12.7 % from epoch 17 on while the training error kept falling (9.2 to 5.9 %), so the
# network is far from fitted, and training longer at each learning rate is the paper's own recipe for a
# lower error. The second schedule is the same run at a third of the paper's 300 epochs (LR /10 at
# epochs 51 and 76): about 17 h on a 2-core CPU, over many restarts. It missed the target too (its
# summary.json and report 02 give the numbers): the test error sat at 9.7-10.2 % through the last 25
# epochs at LR 0.001 while the training error fell below 1.4 %. The third schedule is the paper's own,
# 300 epochs (LR /10 at epochs 151 and 226): about 65 h on a 2-core CPU, or a GPU slot's `headline`
# phase (gpu-check), both resuming the same committed checkpoint.
HEADLINE_SCHEDULES = (30, 100, 300)


def headline_snapshots(epochs: int, milestones: tuple[float, ...]) -> tuple[int, ...]:
    """The epochs whose weights the headline keeps for Figure 5: an early one (a tenth of the way),
    and the last epoch at each learning rate before a drop (milestones: the fractions of the schedule
    where the LR drops). The paper's drops: 30 epochs (3, 15, 22), 100 epochs (10, 50, 75), 300 epochs
    (30, 150, 225)."""
    return (max(1, epochs // 10), *(int(m * epochs) for m in milestones))


def headline_config(*, epochs: int = HEADLINE["epochs"], data_root: str | None = None, device: str = "auto",
                    results: str = "results") -> RunConfig:
    """The headline run at one of its schedules. It lives in results/ (out=results): its checkpoint is
    committed as it trains."""
    if epochs not in HEADLINE_SCHEDULES:
        *shorter, longest = map(str, HEADLINE_SCHEDULES)
        raise ConfigError(f"the headline is trained at {', '.join(shorter)} or {longest} epochs, not {epochs}")
    config = RunConfig(**(HEADLINE | {"epochs": epochs}), experiment=EXPERIMENT, out=results, results=results,
                       data_root=data_root, device=device, budget="cpu", download=False, speed_trial=True)
    return dataclasses.replace(config, keep_weights_at=headline_snapshots(epochs, config.lr_milestones))


def most_trained_headline(*, data_root: str | None = None, device: str = "auto", results: str = "results"):
    """The planned headline run that Figure 5 and the probes read: the longest schedule that has finished
    (final weights beat a checkpoint on the way), else the shortest, as far as it got. So when a
    longer schedule finishes, notebook 05 reads it and its snapshots without a code change."""
    runs = [plan(headline_config(epochs=e, data_root=data_root, device=device, results=results))
            for e in HEADLINE_SCHEDULES]
    return next((r for r in reversed(runs) if r.finished), runs[0])


# --- what each budget runs -------------------------------------------------------------------------
# cpu: the two families at a small depth, on the full training and test sets, for CPU_EPOCHS epochs
# (milestones scaled: with 2 epochs, LR 0.1 for the first and 0.001 for the second), seeds
# budgets.COMPARISON_SEEDS. The depths keep each family's design (DenseNet: 3x3 convs, no compression, 16-map
# stem; DenseNet-BC: 1x1 bottleneck to 4k maps, compression 0.5, 2k stem), k = 12, two layers per
# block, and about the same size: L = 10 DenseNet, 37,762 parameters; L = 16 DenseNet-BC, 44,410.
# Sized so that the 8 runs take under an hour on two quiet CPU cores in fp32 (README, "Performance notes").
CPU_EPOCHS = 2
CPU_ROWS = {"densenet40_k12": Scale(depth=10, epochs=CPU_EPOCHS),
            "densenet_bc100_k12": Scale(depth=16, epochs=CPU_EPOCHS)}
# smoke: toy depths, 2 epochs, synthetic data (640 training / 320 test images); one thread, since
# for models this small a second thread only adds synchronisation.
SMOKE_ROWS = {"densenet40_k12": Scale(depth=10, epochs=2, num_threads=1),
              "densenet_bc100_k12": Scale(depth=16, epochs=2, num_threads=1)}
SMOKE_COLUMNS = ("c10", "c10+", "c100+", "svhn")  # one of each kind: dropout, augmentation, 100 classes, val split


def _rows(budget: str) -> dict[str, Scale]:
    check_budget(budget)
    return {"paper": {m: Scale() for m, *_ in TABLE2_ROWS}, "cpu": CPU_ROWS, "smoke": SMOKE_ROWS}[budget]


def budget_config(model: str, dataset: str, budget: str, *, seed: int = 0, data_root: str | None = None,
                  device: str = "auto", experiment: str = "train", drop_rate: float | None = None) -> RunConfig:
    """The RunConfig a budget uses for (model, dataset). Models outside the budget's rows run at
    the paper's size (paper), or scaled by the smoke/cpu rule of their family."""
    rows = _rows(budget)
    get_spec(dataset)
    if model in rows:
        scale = rows[model]
    elif budget == "paper":
        scale = Scale()
    else:  # another model at a reduced budget: the schedule and data of its family's row
        scale = rows["densenet_bc100_k12" if model.startswith("densenet_bc") else "densenet40_k12"]
        if model not in CIFAR_DENSENET_MODELS:
            scale = dataclasses.replace(scale, depth=None)  # only Table 2's DenseNets are rescaled
    kwargs = {"depth": scale.depth} if scale.depth is not None else {}
    # blocks and layout are left to the engine, which takes the device's fast path
    return RunConfig(model=model, dataset=dataset, model_kwargs=kwargs, epochs=scale.epochs, drop_rate=drop_rate,
                     num_threads=scale.num_threads, seed=seed, data_root=data_root, device=device,
                     experiment=experiment, **run_fields(budget))


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
    """The 27 DenseNet cells the paper reports, in its order, with the budget's config or a reason.

    paper: every cell at the paper's protocol. cpu: the headline cell (DenseNet L=40 on C10+,
    30 epochs); the families are compared at a small scale by `comparisons` instead. smoke: two
    rows at toy sizes on four columns.
    """
    rows = _rows(budget)
    cells = []
    for r, dataset in paper.densenet_cells():
        k = int(r.method.split("k = ")[1].rstrip(")"))
        if budget == "paper":
            cfg = budget_config(r.model, dataset, budget, seed=seed, data_root=data_root, device=device,
                                experiment=EXPERIMENT)
            cells.append(Cell(r.model, r.method, r.depth, k, dataset, cfg))
        elif budget == "cpu" and (r.model, dataset) == (HEADLINE["model"], HEADLINE["dataset"]):
            cells.append(Cell(r.model, r.method, r.depth, k, dataset, headline_config(data_root=data_root,
                                                                                        device=device)))
        elif budget == "smoke" and r.model in rows and dataset in SMOKE_COLUMNS:
            cfg = budget_config(r.model, dataset, budget, seed=seed, data_root=data_root, device=device,
                                experiment=EXPERIMENT)
            cells.append(Cell(r.model, r.method, r.depth, k, dataset, cfg))
        else:
            why = ("not run: needs the official dataset and the GPU (paper) budget" if dataset not in ("c10", "c10+")
                   else "not run: needs the GPU (paper) budget; the cpu budget compares the families at a small scale")
            cells.append(Cell(r.model, r.method, r.depth, k, dataset, None, why))
    return cells


def scaling_table(budget: str):
    """What a budget scales against the paper's protocol, per run kind (a pandas DataFrame)."""
    import pandas as pd

    from densenet_repro import create_model

    out = []
    what = {"paper": "", "cpu": " family: the comparisons", "smoke": " family"}[budget]
    kinds = [(f"{label}{what} (paper's L={depth})", model) for model, label, depth, _ in TABLE2_ROWS
             if model in _rows(budget)]
    for title, model in kinds:
        cfg = budget_config(model, "c10+", budget).resolved()
        out.append(_scaling_row(title, cfg, budget, create_model, follows_cpu=budget == "cpu"))
    if budget == "cpu":
        out[:0] = [_scaling_row("DenseNet (k = 12), L=40: the headline cell" + (f", {e} epochs" if i else ""),
                                headline_config(epochs=e).resolved(), budget, create_model)
                   for i, e in enumerate(HEADLINE_SCHEDULES)]
    return pd.DataFrame(out)


PRECISION_FOLLOWS_CPU = ("follows the CPU: bf16 autocast where it is native (AVX512-BF16, AMX), else fp32 "
                         "(paper: fp32); each run records its own")


def _scaling_row(title: str, cfg: RunConfig, budget: str, create_model, follows_cpu: bool = False) -> dict[str, str]:
    ours = build_model(cfg, 10)
    paper_params = sum(p.numel() for p in create_model(cfg.model, num_classes=10).parameters())
    spec = get_spec(cfg.dataset)
    return {
        "run (paper's model)": title,
        "ours: depth L": cfg.model_kwargs.get("depth", paper.row(cfg.model).depth),
        "layers per block": f"{ours.block_config[0]} (paper {create_model(cfg.model).block_config[0]})",
        "parameters": f"{sum(p.numel() for p in ours.parameters()):,} (paper's model {paper_params / 1e6:.2f}M)",
        "training images": f"{SYNTHETIC_SIZE[0]} synthetic (paper: 50,000)" if budget == "smoke" else "all 50,000",
        "test images": f"{SYNTHETIC_SIZE[1]} synthetic (paper: 10,000)" if budget == "smoke" else "all 10,000",
        "epochs": f"{cfg.epochs} (paper {spec.paper_epochs})",
        "learning rate": f"{lr_schedule_text(cfg)} (paper: 0.1 in 1-150, 0.01 in 151-225, 0.001 in 226-300)",
        # the comparisons' precision follows the CPU that trains them: each run's summary records its own
        "precision": (PRECISION_FOLLOWS_CPU if follows_cpu else "fp32 (as the paper)" if cfg.amp == "none"
                      else f"{cfg.amp} autocast (paper: fp32)"),
        "data": "synthetic" if budget == "smoke" else "CIFAR-10 (official, or the JPEG copy offline)",
    }


# --- equal-compute comparisons ---------------------------------------------------------------------


def arm_config(arm: Arm, budget: str, seed: int, *, data_root: str | None = None, device: str = "auto") -> RunConfig:
    return budget_config(arm.model, arm.dataset, budget, seed=seed, data_root=data_root, device=device,
                         experiment=COMPARISON_EXPERIMENT, drop_rate=arm.drop_rate)


def finished_run(config: RunConfig) -> Path | None:
    """The folder of a finished run of this recipe: in its own precision, else (cpu budget) in the other.

    A cpu-budget run's precision follows the CPU that trains it (budgets.run_fields), so a run
    committed from an AVX2 machine (fp32) answers on an AMX one (bf16) and the other way round;
    each summary says which precision and CPU made it.
    """
    precisions = dict.fromkeys([config.amp, "none", "bf16"]) if config.budget == "cpu" else [config.amp]
    for amp in precisions:
        done = plan(dataclasses.replace(config, amp=amp)).finished
        if done is not None:
            return done
    return None


def run_or_reuse(config: RunConfig) -> dict[str, Any]:
    """The finished run of this recipe in either precision (finished_run), else train(config)."""
    done = finished_run(config)
    return read_summary(done) | {"cached": True} if done is not None else train(config)


def run_comparisons(budget: str, *, data_root: str | None = None, device: str = "auto", progress: str = "auto",
                    out: str = "runs", results: str = "results", publish_results: bool | None = None,
                    train_missing: bool = True) -> dict[tuple[Arm, int], dict[str, Any]]:
    """Train (or reuse) every arm of every comparison at every seed: {(arm, seed): summary}.

    With train_missing=False only finished runs are read (a report of work in progress); the
    analysis then says how many runs each claim still lacks.
    """
    publish_results = budget != "smoke" if publish_results is None else publish_results
    runs: dict[tuple[Arm, int], dict[str, Any]] = {}
    for comp in COMPARISONS:
        for arm in (comp.a, comp.b):
            for seed in comparison_seeds(budget):
                if (arm, seed) in runs:
                    continue
                cfg = dataclasses.replace(arm_config(arm, budget, seed, data_root=data_root, device=device),
                                          progress=progress, resume=True, out=out, results=results)
                summary = train_or_read(cfg, train_missing=train_missing, publish_results=publish_results,
                                        results=results)
                if summary is not None:
                    runs[(arm, seed)] = summary
    return runs


def train_or_read(cfg: RunConfig, *, train_missing: bool, publish_results: bool, results: str = "results",
                  weights: bool = False) -> dict[str, Any] | None:
    """A run's summary: trained (or reused) and published, or with train_missing=False only read if finished."""
    if not train_missing:
        done = finished_run(cfg)
        return None if done is None else read_summary(done)
    summary = run_or_reuse(cfg)
    if publish_results and not summary.get("cached"):
        summary["run_dir"] = publish(summary, results, weights=weights).as_posix()
    return summary


# ----------------------------------------------------------------------------------------------
# Running and publishing
# ----------------------------------------------------------------------------------------------

def run_table2(budget: str, *, data_root: str | None = None, device: str = "auto", seed: int = 0,
               progress: str = "auto", publish_results: bool | None = None, out: str = "runs",
               results: str = "results", train_headline: bool = False) -> list[dict[str, Any]]:
    """Run (or look up) every cell a budget covers; one dict per Table 2 cell.

    Each dict has model/label/depth/k/dataset, and either `summary` (the run's summary, with
    `run_dir` pointing at its files), or `progress` (the cpu budget's headline run, unfinished: it
    trains for hours, only with `train_headline`), or `reason` (why it is not run). Finished runs of
    the cpu and paper budgets are copied to results/table2/ (`publish_results`; smoke stays in runs/).
    """
    publish_results = budget != "smoke" if publish_results is None else publish_results
    results_out = []
    for cell in table2_cells(budget, seed=seed, data_root=data_root, device=device):
        if cell.config is None:
            results_out.append(_cell_fields(cell) | {"reason": cell.reason})
            continue
        run_it = budget != "cpu" or train_headline  # the cpu budget's one cell trains for hours: only when asked
        cfg = cell.config if budget == "cpu" else dataclasses.replace(cell.config, out=out)
        results_out.append(_cell_fields(cell) | _run_or_look_up(cfg, run_it, progress, results, publish_results))
    return results_out


def headline_runs(*, data_root: str | None = None, device: str = "auto", results: str = "results",
                  train_them: bool = False, progress: str = "auto") -> list[dict[str, Any]]:
    """The headline at each of its schedules (HEADLINE_SCHEDULES), shortest first, as Table 2 rows:
    `summary` where finished, else `progress`. With train_them, each unfinished one trains (or
    resumes) in turn, for hours: `python -m densenet_repro table2 --headline`."""
    cell = next(c for c in table2_cells("cpu") if (c.model, c.dataset) == (HEADLINE["model"], HEADLINE["dataset"]))
    return [_cell_fields(cell) | _run_or_look_up(headline_config(epochs=e, data_root=data_root, device=device,
                                                                 results=results), train_them, progress, results, True)
            for e in HEADLINE_SCHEDULES]


def _cell_fields(cell: Cell) -> dict[str, Any]:
    return {"model": cell.model, "label": cell.label, "depth": cell.depth, "k": cell.k, "dataset": cell.dataset}


def _run_or_look_up(cfg: RunConfig, run_it: bool, progress: str, results: str, publish_results: bool) -> dict[str, Any]:
    """{"summary": ...} of a finished run (trained now when run_it), else {"progress": ...} of how far it got."""
    if not run_it:
        run = plan(cfg)
        return {"summary": read_summary(run.finished)} if run.finished is not None else {"progress": run_progress(run)}
    summary = train(dataclasses.replace(cfg, progress=progress, resume=True, results=results))
    if publish_results:
        summary["run_dir"] = publish(summary, results).as_posix()
    return {"summary": summary}


def run_progress(run) -> dict[str, Any]:
    """How far an unfinished run got (a plan.Run), from the metrics.csv beside its checkpoint (none: not started)."""
    done = read_metrics(run.run_dir) if (run.run_dir / "metrics.csv").is_file() else None
    progress: dict[str, Any] = {"run_dir": run.run_dir.as_posix(), "epochs": run.config.epochs,
                                "epochs_done": 0 if done is None else int(done["epoch"].iloc[-1])}
    if done is not None:
        progress.update(test_err_pct=float(done["test_err_pct"].iloc[-1]), lr=float(done["lr"].iloc[-1]),
                        train_time_s=float((done["epoch_time_s"] + done["eval_time_s"]).sum()),
                        epoch_time_s=float(done["epoch_time_s"].median()))
    return progress


def result_files(cells: list[dict[str, Any]]) -> list[str]:
    """The metrics/summary files behind a table, and an independent evaluation of its weights where one
    was made (for provenance.record)."""
    files = []
    for c in cells:
        if "summary" in c:
            d = Path(c["summary"]["run_dir"])
            files += [(d / name).as_posix() for name in ("summary.json", "metrics.csv", "independent_eval.json")
                      if (d / name).is_file()]
        elif c.get("progress", {}).get("epochs_done"):
            files.append((Path(c["progress"]["run_dir"]) / "metrics.csv").as_posix())
    return files


def run_files(runs: dict) -> list[str]:
    """The metrics/summary files behind a dict of run summaries (for provenance.record)."""
    return [(Path(s["run_dir"]) / name).as_posix() for s in runs.values() for name in ("summary.json", "metrics.csv")]

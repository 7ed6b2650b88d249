"""The command line: `python -m densenet_repro train|table2 ...`, one parser class for every command.

Bad arguments get one line and exit code 2; a UserError (densenet_repro.errors) one line and exit
code 1; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from densenet_repro import data as data_lib
from densenet_repro.budgets import BUDGETS
from densenet_repro.errors import ConfigError, guarded
from densenet_repro.experiments import (HEADLINE_SCHEDULES, budget_config, run_comparisons, run_table2, scaling_table,
                                        table2_cells)
from densenet_repro.config import AMP_MODES, PROGRESS_MODES, RunConfig
from densenet_repro.plan import plan
from densenet_repro.runstore import CHECKPOINT
from densenet_repro.train import train

class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a bad argument in one line (with the valid values) and exits 2."""

    def error(self, message: str):  # noqa: D401 - argparse API
        self.exit(2, f"{self.prog}: error: {message}\n")


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {value}")
    return value


def json_dict(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"must be a JSON object such as '{{\"depth\": 22}}' ({e})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object such as '{\"depth\": 22}'")
    return value


def build_train_parser() -> OneLineParser:
    from densenet_repro import list_models

    p = OneLineParser(prog="python -m densenet_repro train",
                      description="Train one model on one Table 2 dataset with the paper's recipe.")
    p.add_argument("--model", required=True, choices=list_models(), metavar="MODEL",
                   help="one of: " + ", ".join(list_models()))
    p.add_argument("--dataset", required=True, choices=data_lib.DATASETS, help="Table 2 column")
    p.add_argument("--budget", choices=BUDGETS, default="paper",
                   help="paper (default): the model and recipe as named; cpu: scaled down as notebook 02 does; "
                        "smoke: tiny, synthetic data")
    p.add_argument("--epochs", type=positive_int, help="default: the budget's (paper: 300 CIFAR, 40 SVHN)")
    p.add_argument("--batch-size", type=positive_int, help="global batch (paper: 64)")
    p.add_argument("--lr", type=float, help="initial learning rate (paper: 0.1)")
    p.add_argument("--drop-rate", type=float, help="dropout (paper: 0.2 without augmentation, else 0)")
    p.add_argument("--model-kwargs", type=json_dict, help="extra create_model arguments as JSON")
    p.add_argument("--train-subset", type=positive_int, help="train on a class-balanced subset of this size")
    p.add_argument("--test-subset", type=positive_int, help="test on a class-balanced subset of this size")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--amp", choices=AMP_MODES, help="mixed precision (default: the budget's; paper: none)")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--memory-efficient", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--fast-blocks", action=argparse.BooleanOptionalAction, default=None,
                   help="exact fast dense blocks (default: wherever supported, i.e. on CPU)")
    p.add_argument("--speed-trial", action="store_true",
                   help="CPU: time a few steps of each exact path (blocks, layout) and train with the fastest")
    p.add_argument("--deterministic", action="store_true")
    p.add_argument("--no-sync-bn", action="store_true", help="DDP: per-process BatchNorm statistics")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N")
    p.add_argument("--threads", type=positive_int, help="torch CPU threads")
    p.add_argument("--data-root", help="dataset folder (default: $DENSENET_DATA or ./data)")
    p.add_argument("--data-source", choices=data_lib.SOURCES, help="default: the budget's (auto; smoke: synthetic)")
    p.add_argument("--no-download", action="store_true", help="never download the official datasets")
    p.add_argument("--experiment", default="train", help="runs are kept in OUT/EXPERIMENT/ (default: train)")
    p.add_argument("--out", default="runs", help="root of run folders (default: runs)")
    p.add_argument("--results", default="results", help="committed finished runs to reuse (default: results)")
    p.add_argument("--resume", action="store_true", help="continue an unfinished run from its checkpoint")
    p.add_argument("--progress", choices=PROGRESS_MODES, default="auto")
    return p


def config_from_args(args: argparse.Namespace) -> RunConfig:
    cfg = budget_config(args.model, args.dataset, args.budget, seed=args.seed, data_root=args.data_root,
                        device=args.device, experiment=args.experiment)
    overrides = {
        "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "drop_rate": args.drop_rate,
        "train_subset": args.train_subset, "test_subset": args.test_subset, "amp": args.amp,
        "channels_last": args.channels_last, "compile": args.compile, "memory_efficient": args.memory_efficient,
        "fast_blocks": args.fast_blocks, "data_source": args.data_source, "num_threads": args.threads,
    }
    cfg = dataclasses.replace(cfg, **{k: v for k, v in overrides.items() if v is not None})
    if args.model_kwargs:
        cfg.model_kwargs = {**cfg.model_kwargs, **args.model_kwargs}
    cfg.deterministic = cfg.deterministic or args.deterministic
    cfg.speed_trial = cfg.speed_trial or args.speed_trial
    cfg.sync_bn = not args.no_sync_bn
    cfg.download = not args.no_download
    cfg.out, cfg.results, cfg.resume, cfg.progress = args.out, args.results or None, args.resume, args.progress
    if args.data_root and cfg.data_source == "synthetic":
        raise ConfigError(f"--data-root is not read: this run trains on synthetic data (--budget {args.budget}); "
                          "drop --data-root, or pass --data-source auto to train on the real dataset")
    return cfg


def train_main(argv: list[str] | None = None) -> int:
    parser = build_train_parser()
    args = parser.parse_args(argv)

    def work() -> int:
        run = plan(config_from_args(args))
        if args.resume and run.finished is None and not (run.run_dir / CHECKPOINT).exists():
            print(f"note: nothing to resume in {run.run_dir} (no checkpoint.pt): starting the run", file=sys.stderr)
        summary = train(run)
        if summary.get("cached"):
            print(f"finished run found in {summary['run_dir']} (not retrained)")
        print(json.dumps({k: summary[k] for k in ("run_dir", "final_test_error_pct", "best_test_error_pct",
                                                  "reported_test_error_pct", "wall_time_s")}, indent=1))
        return 0

    return guarded(parser.prog, work)


def table2_main(argv: list[str] | None = None) -> int:
    p = OneLineParser(prog="python -m densenet_repro table2",
                      description="Run (or reuse) every Table 2 cell and comparison of a budget and print them.")
    p.add_argument("--budget", choices=BUDGETS, default="cpu")
    p.add_argument("--data-root", default=None, help="dataset folder (default: $DENSENET_DATA or ./data)")
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs")
    p.add_argument("--results", default="results")
    p.add_argument("--progress", choices=PROGRESS_MODES, default="auto")
    p.add_argument("--list", action="store_true", help="only list the cells and what is scaled")
    p.add_argument("--headline", action="store_true",
                   help="cpu budget: train (or resume) the headline run, DenseNet L=40 on C10+, at each of its "
                        "schedules (30, 100, then 300 epochs: hours to days on a CPU); its checkpoint stays in results/table2/ "
                        "to be committed")
    args = p.parse_args(argv)
    from densenet_repro import table2

    if args.list:
        print(scaling_table(args.budget).to_string(index=False))
        for c in table2_cells(args.budget, seed=args.seed, data_root=args.data_root, device=args.device):
            print(f"{c.model:20s} {c.dataset:6s} " + ("run" if c.config else c.reason))
        return 0
    if args.headline and args.budget != "cpu":
        p.error("--headline belongs to the cpu budget (the paper budget trains every cell at 300 epochs)")

    def work() -> int:
        if args.headline:  # each schedule in turn; each is checked outside the engine as soon as it finishes
            from densenet_repro.experiments import headline_runs
            from densenet_repro.independent_eval import read_result

            for row in headline_runs(data_root=args.data_root, device=args.device, results=args.results,
                                     train_them=True, progress=args.progress):
                epochs = row["summary"]["epochs"]
                run_dir = _evaluate_headline(args.data_root, again=False, epochs=epochs)
                print(f"the headline run at {epochs} epochs is finished ({run_dir}; independent check: "
                      f"{read_result(run_dir)['test_error_pct']:.2f} %)")
            print("Next: python -m densenet_repro reports --budget cpu, then commit results/table2/ and reports/")
            return 0
        cells = run_table2(args.budget, data_root=args.data_root, device=args.device, seed=args.seed,
                           progress=args.progress, out=args.out, results=args.results)
        runs = run_comparisons(args.budget, data_root=args.data_root, device=args.device,
                               progress=args.progress, out=args.out, results=args.results)
        print(table2.table2_matrix(cells, args.budget).to_string(index=False))
        if runs:
            print()
            print(table2.comparisons_table(runs, args.budget).to_string(index=False))
        return 0

    return guarded(p.prog, work)


def sweeps_main(argv: list[str] | None = None) -> int:
    from densenet_repro import sweeps

    p = OneLineParser(prog="python -m densenet_repro sweeps",
                      description="Train (or reuse) the runs of notebooks 03-05 at a budget, seed 0 of every network "
                                  "first; resumable and cached, so the notebooks then render from the results.")
    p.add_argument("--budget", choices=BUDGETS, default="cpu")
    p.add_argument("--only", action="append", choices=tuple(sweeps.PLANS),
                   help="one plan (repeatable): figure4 (notebooks 03, 04) or supervision (notebook 05)")
    p.add_argument("--data-root", default=None, help="dataset folder (default: $DENSENET_DATA or ./data)")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default="runs")
    p.add_argument("--results", default="results")
    p.add_argument("--progress", choices=PROGRESS_MODES, default="auto")
    args = p.parse_args(argv)

    def work() -> int:
        done = sweeps.run_plans(args.budget, tuple(args.only or sweeps.PLANS), data_root=args.data_root,
                                device=args.device, progress=args.progress, out=args.out, results=args.results)
        for name, runs in done.items():
            print(f"{name}: {len(runs)} runs finished")
        return 0

    return guarded(p.prog, work)


def upgrade_runs_main(argv: list[str] | None = None) -> int:
    from densenet_repro.records import upgrade_runs
    from densenet_repro.runstore import results_root

    p = OneLineParser(prog="python -m densenet_repro upgrade-runs",
                      description="Bring the run records under results/ that older versions wrote up to date: the "
                                  "data_source option, and the data's fingerprint once the data at hand is shown "
                                  "to be the run's (densenet_repro/records.py).")
    p.add_argument("--data-root", default=None, help="dataset folder (default: $DENSENET_DATA or ./data)")
    p.add_argument("--results", default="results")
    args = p.parse_args(argv)

    def work() -> int:
        for line in upgrade_runs(results_root(args.results), args.data_root):
            print(line)
        return 0

    return guarded(p.prog, work)


def _evaluate_headline(data_root: str | None, again: bool = True, epochs: int | None = None) -> Path:
    """The finished headline run's independent evaluation (independent_eval.json beside it; with
    again=False, only where there is none yet); its folder. epochs: which schedule (default: the first)."""
    import dataclasses as dc

    from densenet_repro.experiments import HEADLINE, headline_config
    from densenet_repro.independent_eval import evaluate_run, read_result, write_result

    run = plan(dc.replace(headline_config(epochs=epochs or HEADLINE["epochs"], data_root=data_root),
                          data_source="folder"))
    if run.finished is None:
        raise ConfigError(f"{run.run_dir} is not finished: train it first (python -m densenet_repro table2 --headline)")
    if not again and read_result(run.finished) is not None:
        return run.finished
    if run.source is None:
        raise data_lib.DataNotFoundError(run.missing_data)
    result = evaluate_run(run.finished, run.source.path)
    print(f"{write_result(run.finished, result)}: {result['wrong']} of {result['test_images']} test images wrong "
          f"({result['test_error_pct']:.2f} %; the engine reported {result['engine_final_test_error_pct']:.2f} %)")
    return run.finished


def evaluate_main(argv: list[str] | None = None) -> int:
    p = OneLineParser(prog="python -m densenet_repro evaluate",
                      description="Recompute a finished run's test error from its weights.pt without the training "
                                  "engine (densenet_repro/independent_eval.py) and write independent_eval.json beside it.")
    p.add_argument("--data-root", default=None, help="dataset folder (default: $DENSENET_DATA or ./data)")
    p.add_argument("--epochs", type=int, choices=HEADLINE_SCHEDULES, default=HEADLINE_SCHEDULES[0],
                   help="which schedule of the headline run")
    args = p.parse_args(argv)

    def work() -> int:
        _evaluate_headline(args.data_root, epochs=args.epochs)
        return 0

    return guarded(p.prog, work)

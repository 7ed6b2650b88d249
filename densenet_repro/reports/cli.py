"""python -m densenet_repro reports: render every notebook into reports/ and write the index.

    python -m densenet_repro reports [--budget cpu] [--data-root DIR] [--device cpu|cuda]
                                     [--seed 0] [--only 01] [--out reports] [-p NAME=VALUE]
    python -m densenet_repro reports --index-only      # rewrite index.html/json from the rows there

--data-root defaults to $DENSENET_DATA, else ./data (inside the repository).

Guards, all before anything runs:
- reports/ holds the committed cpu-budget reports only: any other budget, whether from --budget
  or from -p budget=..., must go elsewhere (--out DIR);
- --budget paper trains the paper's full protocol: on a machine without CUDA it states the cost
  and needs an explicit --device cpu;
- the output folder must be writable; an unknown parameter, budget or notebook is refused.

Exit codes: 0 every report rendered ok, 1 one failed (or a cause the user can fix, in one line:
a damaged index.json, a full disk), 2 bad usage, 130 interrupted (Ctrl-C: one line, nothing lost).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, Mapping

from densenet_repro import atomic
from densenet_repro.budgets import BUDGETS, DEFAULT_BUDGET, check_budget
from densenet_repro.errors import UserError, guarded
from densenet_repro.reports.index import INDEX_HTML, merge_row, read_index, rel, repo_root
from densenet_repro.reports.page import write_index
from densenet_repro.reports.render import (ReportError, check_parameters, find_notebooks, parse_parameter,
                                           render_notebook)

PROG = "python -m densenet_repro reports"
COMMITTED = "reports"  # the folder of the committed reports, under the repository root
INTERRUPTED = ("interrupted: nothing is lost: the reports finished before are written with the index, and the "
               "notebook that was rendering keeps its last good report")


def default_data_root(data_root: str | None, root: Path | None = None) -> str:
    """The data root handed to the notebooks: --data-root, else $DENSENET_DATA, else ./data (inside
    the repository, so that a download lands there), as a path relative to the repository root
    when it is given relative."""
    root = root or repo_root()
    if not data_root:
        data_root = os.environ.get("DENSENET_DATA") or str(root / "data")
    if os.path.isabs(data_root):
        p = Path(data_root)
        try:
            return p.resolve().relative_to(root.resolve()).as_posix()
        except ValueError:
            return p.as_posix()
    return Path(os.path.relpath(os.path.abspath(data_root), root)).as_posix()


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog=PROG,
        description="Execute notebooks/NN_*.ipynb with papermill and render reports/NN_name.html + index.html.")
    ap.add_argument("--budget", default=DEFAULT_BUDGET, help=f"one of {', '.join(BUDGETS)} (default {DEFAULT_BUDGET})")
    ap.add_argument("--data-root", default=None,
                    help="folder holding the datasets (or an offline copy), relative to where you run the command "
                         "(default: $DENSENET_DATA, else ./data inside the repository)")
    ap.add_argument("--device", default=None,
                    help="cpu, cuda or cuda:N (default cpu; the paper budget asks for it explicitly without CUDA)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", action="append", default=[], metavar="NN",
                    help="render only this notebook (number like 01 or name); repeatable")
    ap.add_argument("--out", default=None,
                    help=f"output folder (default: {COMMITTED}/ of the repo, which holds the committed "
                         f"{DEFAULT_BUDGET}-budget reports; other budgets must go elsewhere)")
    ap.add_argument("--notebooks", default=None, help="notebook folder (default: notebooks/ of the repo)")
    ap.add_argument("-p", "--parameter", action="append", default=[], metavar="NAME=VALUE",
                    help="extra papermill parameter; must be declared in every selected notebook")
    ap.add_argument("--index-only", action="store_true",
                    help="render nothing: rewrite index.html and index.json from the rows in the output folder "
                         "(e.g. to show how far a run in progress is now)")
    return ap


# --------------------------------------------------------------------------------------------
# Guards
# --------------------------------------------------------------------------------------------


def check_committed_budget(out_dir: Path, parameters: Mapping[str, Any], root: Path) -> None:
    """The committed reports folder takes cpu-budget reports only, however the budget was given."""
    committed = (root / COMMITTED).resolve()
    if out_dir.resolve() == committed and parameters["budget"] != DEFAULT_BUDGET:
        raise ReportError(f"{rel(committed, root)}/ holds the committed {DEFAULT_BUDGET}-budget reports: write "
                          f"{parameters['budget']}-budget reports elsewhere with --out DIR")


def paper_budget_cost() -> str:
    """What the paper budget costs on this machine's CPU, from the committed headline run's epoch times."""
    from densenet_repro import experiments, paper, provenance
    from densenet_repro.data import get_spec

    model, dataset = experiments.HEADLINE["model"], experiments.HEADLINE["dataset"]
    epochs = get_spec(dataset).paper_epochs
    cells = len(paper.densenet_cells())
    runs = sorted((repo_root() / "results" / experiments.EXPERIMENT).glob(f"{model}-{dataset}-*"))
    measured = [provenance.run_progress(r) for r in runs]
    times = [m["epoch_time_s"] for m in measured if m["epoch_time_s"]]
    if not times:
        return (f"it trains all {cells} DenseNet cells of Table 2 for {epochs} epochs each (CIFAR), which takes "
                "days on a GPU and far longer on a CPU")
    per_epoch = min(times)
    return (f"it trains all {cells} DenseNet cells of Table 2 for {epochs} epochs each (CIFAR); on a CPU like the one "
            f"that trained the committed headline run, one epoch of the smallest, {model} on {dataset}, took "
            f"{per_epoch / 60:.1f} min (median, training and evaluation), so that one cell alone would take about "
            f"{per_epoch * epochs / 3600:.0f} h")


def resolve_device(device: str | None, budget: str, log=print) -> str:
    """--device as given; unset: cpu, except that the paper budget wants a GPU (module doc)."""
    if budget != "paper":
        return device or "cpu"
    import torch

    if device is None:
        if torch.cuda.is_available():
            return "cuda"
        raise ReportError(f"--budget paper on a machine without CUDA: {paper_budget_cost()}. Run it on a GPU "
                          "(--device cuda), or pass --device cpu to run it here anyway")
    if device == "cpu" and not torch.cuda.is_available():
        log(f"[reports] --budget paper on the CPU, as asked: {paper_budget_cost()}")
    return device


def check_writable(out_dir: Path) -> None:
    """The output folder can be created and written, checked before any notebook runs."""
    atomic.ensure_writable(out_dir, "pass a writable --out DIR")


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def _out_dir(args, root: Path) -> Path:
    return Path(args.out).resolve() if args.out else root / COMMITTED


def _prepare(args, root: Path) -> tuple[Path, list[Path], dict[str, Any]]:
    """Everything checked before a notebook runs: (output folder, notebooks, parameters)."""
    out_dir = _out_dir(args, root)
    notebooks_dir = Path(args.notebooks).resolve() if args.notebooks else root / "notebooks"
    notebooks = find_notebooks(notebooks_dir, args.only)
    # the kernel runs in the repo root: express data_root relative to it, as typed if possible
    parameters: dict[str, Any] = {"budget": args.budget, "data_root": default_data_root(args.data_root, root),
                                  "device": args.device, "seed": args.seed}
    for text in args.parameter:
        name, value = parse_parameter(text)
        parameters[name] = value
    check_budget(parameters["budget"])  # as given by --budget or by -p budget=...
    check_committed_budget(out_dir, parameters, root)
    parameters["device"] = resolve_device(parameters["device"], parameters["budget"])
    for nb in notebooks:  # fail loudly before running anything
        check_parameters(nb, parameters)
    return out_dir, notebooks, parameters


def _render_all(out_dir: Path, notebooks: list[Path], parameters: Mapping[str, Any], root: Path) -> int:
    rows = {r["name"]: r for r in read_index(out_dir)}
    check_writable(out_dir)
    failed = []
    for nb in notebooks:
        row = render_notebook(nb, out_dir, parameters)
        rows[row["name"]] = merge_row(rows.get(row["name"]), row, out_dir)
        write_index(out_dir, list(rows.values()))  # after each notebook: a crash loses nothing
        if row["status"] != "ok":
            failed.append(row["name"])
    print(f"[reports] wrote {rel(out_dir / INDEX_HTML, root)}: "
          f"{len(notebooks) - len(failed)} ok, {len(failed)} failed" + (f" ({', '.join(failed)})" if failed else ""))
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    """CLI entry point: 0 every report ok, 1 one failed or a fixable cause, 2 bad usage, 130 interrupted."""
    ap = build_parser()
    args = ap.parse_args(argv)
    root = repo_root()
    try:
        import nbconvert  # noqa: F401
        import papermill  # noqa: F401
    except ImportError as e:
        ap.exit(2, f"{ap.prog}: error: {e.name} is not installed here; rendering reports needs the full "
                   "environment (pip install -e . or conda env create -f environment.yml)\n")

    def work() -> int:
        if args.index_only:
            out_dir = _out_dir(args, root)
            rows = read_index(out_dir)
            write_index(out_dir, rows)
            print(f"[reports] wrote {rel(out_dir / INDEX_HTML, root)} from its {len(rows)} rows")
            return 0
        try:
            out_dir, notebooks, parameters = _prepare(args, root)
        except ValueError as e:  # ReportError and check_budget's ValueError
            if isinstance(e, UserError):
                raise
            ap.exit(2, f"{ap.prog}: error: {e}\n")
        return _render_all(out_dir, notebooks, parameters, root)

    return guarded(ap.prog, work, interrupted=INTERRUPTED)

if __name__ == "__main__":
    sys.exit(main())

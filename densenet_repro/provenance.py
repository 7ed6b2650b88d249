"""Provenance of a notebook run: what every report states at its top, and what it hands to the index.

A notebook calls two functions from this module:

    # third cell, right after the `parameters` cell:
    from densenet_repro import provenance
    provenance.start(budget=budget, data_root=data_root, device=device, seed=seed)

    # anywhere later, as often as needed (values merge; the last dataset wins):
    provenance.record(headlines={"densenet121 GMACs": 2.83}, dataset="none", files=["results/x.csv"],
                      coverage=[coverage.entry("Table 1", "layer configuration", "exact")],
                      claims=[verdicts.claim(...)], in_progress=[provenance.progress_entry(...)])

`start` validates the parameters (unknown budget, unusable device -> one-line ValueError), seeds
python/numpy/torch, makes the repository root the working directory (so relative paths such as
`data_root="data"` or `results/...` mean the same in Jupyter, in the report pipeline and
on the command line) and displays the provenance block: budget and what it means, dataset source,
hardware, library versions, git commit, start time.

Both functions emit IPython display outputs that carry, besides HTML and plain text, a JSON payload
under a private mime type (PROVENANCE_MIME, RECORD_MIME). The report pipeline
(densenet_repro.reports) reads those payloads back from the executed notebook, adds what only it
knows (render time, status) to the provenance block, and builds reports/index.{html,json} from them.
`record` also hashes the package's source files that the kernel has imported by then (the code the
notebook ran), so that a report goes stale when that code changes, not only when its notebook or
result files do.

A run still training (the Table 2 headline run) is not a result file: its checkpoint and metrics
change every epoch. A report names it with `in_progress=[progress_entry(run_dir, ...)]`, which
records the epoch the report showed; the index reads how far the run is now (`run_progress`), and
the report goes stale only when the run finishes. `record` refuses a file of an unfinished run
folder that no such entry covers.

This module must import without papermill/nbconvert: train.py, bench/ and gpu_check/ import it,
and an environment set up only to train need not have them.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import html
import json
import os
import platform
import random
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterable, Mapping

from densenet_repro.budgets import BUDGETS, check_budget
from densenet_repro.devices import machine

PROVENANCE_MIME = "application/vnd.densenet-repro.provenance+json"
RECORD_MIME = "application/vnd.densenet-repro.record+json"

# One line per budget, shown in every report so a reduced-budget number is never read as the paper's.
BUDGET_MEANING = {
    "smoke": "seconds, synthetic data: proves every code path runs; the numbers mean nothing",
    "cpu": "real CIFAR-10, scaled-down models and schedules for a 2-core CPU; NOT the paper's protocol",
    "paper": "the paper's full protocol (official datasets, full depth, full schedule); needs a GPU",
}
assert set(BUDGET_MEANING) == set(BUDGETS), "BUDGET_MEANING must describe every budget in budgets.BUDGETS"


# --------------------------------------------------------------------------------------------
# Facts about the machine, the code and the libraries
# --------------------------------------------------------------------------------------------


def repo_root() -> Path | None:
    """The repository root (the folder holding pyproject.toml beside this package), or None.

    None when the package is installed somewhere else (e.g. a non-editable wheel).
    """
    root = Path(__file__).resolve().parent.parent
    return root if (root / "pyproject.toml").is_file() else None


# What a training run commits while it trains: its own checkpoints (results/), and the reports.
_NOT_CODE = (":(exclude)results", ":(exclude)reports")


def git_commit(root: Path | None = None, *, named: bool = True, code: bool = False) -> tuple[str, bool]:
    """(commit sha, dirty) of the repository; where git cannot say (a copy without .git, such as the
    GPU machine's), the commit named by $DENSENET_COMMIT ("<sha>" or "<sha>+changes") unless
    `named` is False, else ("unknown", False).

    `dirty` ignores reports/ (the pipeline is rewriting it while it runs) and untracked files. With
    `code`, the sha is the newest commit that changed the code (anything outside results/ and
    reports/) instead of HEAD, and `dirty` ignores results/ too: see `code_commit`.
    """
    root = root or repo_root()
    excluded = _NOT_CODE if code else (":(exclude)reports",)
    head = ["git", "log", "-1", "--format=%H", "--", ".", *excluded] if code else ["git", "rev-parse", "HEAD"]
    try:
        if root is None:
            raise OSError("no repository")
        sha = subprocess.run(head, cwd=root, capture_output=True, text=True, check=True, timeout=20).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".", *excluded],
                                cwd=root, capture_output=True, text=True, check=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        given = os.environ.get("DENSENET_COMMIT", "").strip() if named else ""
        if not given:
            return "unknown", False
        return given.removesuffix("+changes"), given.endswith("+changes")
    return sha or "unknown", bool(status.strip())


def commit_label(sha: str, dirty: bool) -> str:
    """A commit as config.json and $DENSENET_COMMIT write it: "<sha>", or "<sha>+changes" where the
    files differ from it."""
    return sha + ("+changes" if dirty and sha != "unknown" else "")


def code_commit(root: Path | None = None) -> str:
    """The code a process runs, as `commit_label` writes it: the newest commit outside results/ and
    reports/.

    A run that spans many sessions resumes each time from a checkpoint commit of its own. HEAD then
    differs at every resume while the code does not; this names the code, so that the epochs one code
    trained share one value.
    """
    return commit_label(*git_commit(root, code=True))


def versions() -> dict[str, str]:
    """Versions of python and of the libraries whose behaviour the numbers depend on."""
    out = {"python": platform.python_version()}
    for mod in ("torch", "torchvision", "timm", "numpy"):
        try:
            out[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001 - a missing optional library is reported, not fatal
            out[mod] = "not installed"
    return out


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def is_unfinished_run(folder: str | os.PathLike) -> bool:
    """A run folder (it has the engine's config.json) without the summary.json a finished run writes."""
    folder = Path(folder)
    return (folder / "config.json").is_file() and not (folder / "summary.json").is_file()


def run_progress(run_dir: str | os.PathLike, up_to_epoch: int | None = None) -> dict[str, Any]:
    """How far a run is now (or was after `up_to_epoch`), from the metrics.csv the engine appends one
    row to per epoch.

    epochs_done, the last epoch's test error, the time spent (training and evaluation), the median
    time of one epoch (training and evaluation) and whether the run has finished (summary.json).
    """
    import csv

    run_dir = Path(run_dir)
    rows = []
    if (run_dir / "metrics.csv").is_file():
        with open(run_dir / "metrics.csv", newline="", encoding="utf-8") as f:
            rows = [r for r in csv.DictReader(f) if r.get("epoch")]
    if up_to_epoch is not None:
        rows = [r for r in rows if int(r["epoch"]) <= up_to_epoch]
    per_epoch = sorted(float(r["epoch_time_s"]) + float(r.get("eval_time_s") or 0) for r in rows)
    return {"epochs_done": int(rows[-1]["epoch"]) if rows else 0,
            "test_err_pct": float(rows[-1]["test_err_pct"]) if rows else None,
            "time_s": sum(per_epoch),
            "epoch_time_s": per_epoch[len(per_epoch) // 2] if per_epoch else None,
            "finished": (run_dir / "summary.json").is_file(), "exists": run_dir.is_dir()}


def progress_entry(run_dir: str | os.PathLike, label: str, epoch: int, epochs: int, *,
                   paper_epochs: int | None = None, paper_error_pct: float | None = None) -> dict[str, Any]:
    """A run in progress as a report showed it: `epoch` of `epochs` (for `record(in_progress=...)`).

    paper_epochs and paper_error_pct are the paper's schedule and error for the same cell (quoted),
    so the index can say how far the budget's schedule is from the paper's.
    """
    if isinstance(epoch, bool) or not isinstance(epoch, int) or not 0 <= epoch <= epochs:
        raise ValueError(f"progress_entry: epoch must be an integer in 0..{epochs}, got {epoch!r}")
    return {"run": repo_relative(Path(run_dir)), "label": str(label), "epoch": epoch, "epochs": int(epochs),
            "paper_epochs": paper_epochs, "paper_error_pct": paper_error_pct}


def progress_text(epochs_done: int, epochs: int, shown: Mapping[str, int] | int) -> str:
    """'in progress: 8 of 30 epochs (report shows epoch 7)' ('not started: 0 of ...' before its first
    epoch), the one wording every page uses.

    `shown`: the epoch one report showed, or {report name: epoch} when several show the run.
    """
    if not isinstance(shown, Mapping):
        which = f"report shows epoch {shown}"
    elif len(shown) == 1:
        which = f"report shows epoch {next(iter(shown.values()))}"
    else:
        by_epoch: dict[int, list[str]] = {}
        for name, e in shown.items():
            by_epoch.setdefault(e, []).append(name[:2])
        which = ", ".join(f"{' and '.join(names)} show{'s' if len(names) == 1 else ''} epoch {e}"
                          for e, names in by_epoch.items())
    return f"{'in progress' if epochs_done else 'not started'}: {epochs_done} of {epochs} epochs ({which})"


def loaded_code(root: Path | None = None) -> dict[str, str]:
    """sha256 of every densenet_repro source file imported in this process (path relative to the repo),
    with the C++ source that a module builds (models/fast_dense_cpu.cpp beside fast_dense_cpu.py)."""
    root = root or repo_root()
    out = {}
    for name, mod in sorted(sys.modules.items()):
        if not (name == "densenet_repro" or name.startswith("densenet_repro.")):
            continue
        f = getattr(mod, "__file__", None)
        if not f or not f.endswith(".py") or not os.path.isfile(f):
            continue
        p = Path(f).resolve()
        # a module's non-Python sources (the fast blocks' .cpp) are its code too
        for src in [p] + sorted(p.parent.glob(f"{p.stem}.cpp")):
            try:
                key = src.relative_to(root).as_posix() if root is not None else src.as_posix()
            except ValueError:
                key = src.as_posix()
            out[key] = sha256_file(src)
    return out


def _describe_data_root(data_root: str, budget: str, uses_data: bool) -> str:
    if not uses_data:
        return "none: this notebook reads no dataset"
    if budget == "smoke":
        return "synthetic (smoke budget: generated in memory, data_root is not read)"
    p = Path(data_root)
    if not p.exists():
        return f"{data_root} (does not exist yet)"
    if p.is_dir():
        entries = sorted(x.name for x in p.iterdir() if not x.name.startswith("."))
        shown = ", ".join(entries[:6]) + (", ..." if len(entries) > 6 else "")
        return f"{data_root} (contains: {shown or 'nothing'})"
    return data_root


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------


def fmt_seconds(s: float) -> str:
    """'42.0 s', '3 min 07 s', '2 h 05 min 00 s'."""
    s = float(s)
    if s < 120:
        return f"{s:.1f} s"
    m, sec = divmod(int(round(s)), 60)
    h, m = divmod(m, 60)
    return f"{h} h {m:02d} min {sec:02d} s" if h else f"{m} min {sec:02d} s"


def provenance_rows(info: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The provenance block as (label, value) rows, in the order a reader wants them."""
    hw = info.get("hardware", {})
    hw_text = f"{hw.get('cpu', '?')}, {hw.get('cpu_cores', '?')} cores (torch threads: {hw.get('torch_threads', '?')})"
    if hw.get("memory_gib"):
        hw_text += f", {hw['memory_gib']} GiB RAM"
    if hw.get("gpu"):
        hw_text += f"; GPU: {hw['gpu']} x{hw.get('gpu_count', 1)} (CUDA {hw.get('cuda')})"
    v = info.get("versions", {})
    commit = info.get("commit", "unknown")
    commit_text = commit[:12] + (" (uncommitted changes)" if info.get("dirty") else "")
    wall = info.get("wall_time_s")
    rows = []
    if "status" in info:
        status = info["status"]
        if info.get("error"):
            status += f": {info['error']}"
        rows.append(("Status", status))
    if info.get("uses_data", True):
        budget_text = f"{info.get('budget')} ({BUDGET_MEANING.get(info.get('budget'), '?')})"
    else:
        budget_text = (f"{info.get('budget')} (this notebook reads no data and trains nothing: every budget "
                       "runs the same computation)")
    rows += [
        ("Budget", budget_text),
        ("Parameters", (f"data_root={info.get('data_root')!r}, " if info.get("uses_data", True) else "")
         + f"device={info.get('device')!r}, seed={info.get('seed')!r}"),
        ("Dataset", str(info.get("dataset", "?"))),
        ("Hardware", hw_text),
        ("Software", ", ".join(f"{k} {val}" for k, val in v.items())),
        ("Commit", commit_text),
        ("Started", str(info.get("started", "?"))),
        ("Render time", fmt_seconds(wall) + " (executing this notebook, not the training behind it)"
         if wall is not None else "not known until the notebook has finished (the report pipeline fills it in)"),
    ]
    if info.get("training"):
        rows.append(("Training behind it", str(info["training"])))
    return rows


def provenance_html(info: Mapping[str, Any]) -> str:
    rows = "".join(
        f"<tr><th style='text-align:left;padding-right:1em;vertical-align:top'>{html.escape(k)}</th>"
        f"<td style='text-align:left'>{html.escape(v)}</td></tr>"
        for k, v in provenance_rows(info)
    )
    colour = "#c00" if info.get("status") == "failed" else "#888"
    return (f"<div class='densenet-repro-provenance' style='border:1px solid {colour};padding:0.5em;"
            f"margin:0.5em 0'><b>Provenance</b><table>{rows}</table></div>")


def provenance_text(info: Mapping[str, Any]) -> str:
    return "Provenance\n" + "\n".join(f"  {k}: {v}" for k, v in provenance_rows(info))


def record_html(payload: Mapping[str, Any]) -> str:
    parts = []
    if payload.get("headlines"):
        rows = "".join(f"<tr><td style='text-align:left'>{html.escape(str(k))}</td>"
                       f"<td style='text-align:right'>{html.escape(_fmt_value(v))}</td></tr>"
                       for k, v in payload["headlines"].items())
        parts.append(f"<b>Headline numbers</b><table>{rows}</table>")
    if payload.get("claims"):
        from densenet_repro import verdicts

        items = "".join(f"<li>{html.escape(verdicts.record_text(c))}</li>" for c in payload["claims"])
        parts.append(f"<b>Claims judged here:</b><ul>{items}</ul>")
    if payload.get("in_progress"):
        items = "".join(f"<li>{html.escape(e['label'])} (<code>{html.escape(e['run'])}</code>): this report shows "
                        f"epoch {e['epoch']} of {e['epochs']}</li>" for e in payload["in_progress"])
        parts.append(f"<b>Runs in progress shown here:</b><ul>{items}</ul>")
    if payload.get("coverage"):
        from densenet_repro import coverage

        items = "".join(f"<li>{html.escape(e['item'])}, {html.escape(e['aspect'])}: "
                        f"<b>{html.escape(coverage.status_text(e))}</b>"
                        + (f" ({html.escape(e['note'])})" if e.get("note") else "") + "</li>"
                        for e in payload["coverage"])
        parts.append(f"<b>Paper items covered here:</b><ul>{items}</ul>")
    if payload.get("dataset"):
        parts.append(f"<b>Dataset used:</b> {html.escape(payload['dataset'])}")
    if payload.get("files"):
        items = "".join(f"<li><code>{html.escape(p)}</code></li>" for p in payload["files"])
        parts.append(f"<b>Result files read:</b><ul>{items}</ul>")
    return "<div class='densenet-repro-record'>" + "<br>".join(parts) + "</div>"


def _fmt_value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _display(bundle: dict[str, Any]) -> None:
    """Show a mime bundle in IPython; print its text outside IPython (plain python, scripts)."""
    try:
        from IPython import get_ipython
        from IPython.display import display
    except ImportError:
        get_ipython = None  # type: ignore[assignment]
    if get_ipython is not None and get_ipython() is not None:
        display(bundle, raw=True)
    else:
        print(bundle["text/plain"])


# --------------------------------------------------------------------------------------------
# Public API for notebooks
# --------------------------------------------------------------------------------------------


def _check_device(device: str) -> str:
    import torch

    if not isinstance(device, str) or not device:
        raise ValueError(f"device must be a string such as 'cpu' or 'cuda', got {device!r}")
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError) as e:
        raise ValueError(f"unknown device {device!r}: use 'cpu', 'cuda' or 'cuda:N'") from e
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} requested but CUDA is not available here: use device='cpu'")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device {device!r}: only {torch.cuda.device_count()} CUDA device(s) here")
    elif dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise ValueError(f"device {device!r} requested but MPS is not available here: use device='cpu'")
    elif dev.type != "cpu":
        raise ValueError(f"unsupported device {device!r}: use 'cpu', 'cuda' or 'cuda:N'")
    return device


def _seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def start(budget: str, data_root: str, device: str = "cpu", seed: int = 0, *,
          uses_data: bool = True, chdir: bool = True) -> None:
    """Validate a notebook's parameters, seed everything and display the provenance block.

    Args:
        budget: one of densenet_repro.budgets.BUDGETS (an unknown one raises ValueError).
        data_root: folder holding the datasets (relative paths are relative to the repo root).
        device: "cpu", "cuda" or "cuda:N" (raises ValueError when not available here).
        seed: seeds python's `random`, numpy and torch.
        uses_data: False for notebooks that read no dataset (the block then says so).
        chdir: make the repository root the working directory (see the module docstring).

    The provenance dict is embedded in the displayed output (PROVENANCE_MIME) for the pipeline.
    """
    check_budget(budget)
    if not isinstance(data_root, (str, os.PathLike)) or not str(data_root):
        raise ValueError(f"data_root must be a non-empty path string, got {data_root!r}")
    data_root = str(data_root)
    _check_device(device)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    root = repo_root()
    if chdir and root is not None and Path.cwd().resolve() != root:
        os.chdir(root)
    _seed_everything(seed)
    commit, dirty = git_commit(root)
    info: dict[str, Any] = {
        "budget": budget,
        "budget_meaning": BUDGET_MEANING[budget],
        "data_root": data_root,
        "device": device,
        "seed": seed,
        "dataset": _describe_data_root(data_root, budget, uses_data),
        "uses_data": bool(uses_data),
        "hardware": machine(device),
        "versions": versions(),
        "commit": commit,
        "dirty": dirty,
        "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    _display({"text/html": provenance_html(info), "text/plain": provenance_text(info),
              PROVENANCE_MIME: info})
    # returns nothing, so that the cell shows the block only (not the dict's repr)


def repo_relative(p: str | os.PathLike) -> str:
    """`p` relative to the repository root when inside it (posix), else absolute."""
    root = repo_root()
    resolved = Path(p).resolve()
    if root is not None:
        try:
            return resolved.relative_to(root).as_posix()
        except ValueError:
            pass
    return resolved.as_posix()


def _normalise_file(path: str | os.PathLike) -> str:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"record(files=...): {str(path)!r} is not a file (paths are relative to the repo root)")
    return repo_relative(p)


def record(headlines: Mapping[str, Any] | None = None, dataset: str | None = None,
           files: Iterable[str | os.PathLike] = (), coverage: Iterable[Mapping[str, Any]] = (),
           claims: Iterable[Mapping[str, Any]] = (), in_progress: Iterable[Mapping[str, Any]] = ()) -> None:
    """Hand headline numbers, claims, the dataset actually used and the inputs read to the report index.

    Args:
        headlines: short name -> number (or short string); shown in reports/index.html.
            Only numbers computed in this run, loaded from committed result files, or quoted and
            labelled as quoted in their name. Verdicts go into `claims`, with their budget.
        dataset: the dataset source this notebook actually used (overrides the guess of `start`).
        files: result files this notebook read; their sha256 goes into the index so that a report
            becomes stale (a test fails) when one of them changes. A file inside the folder of a run
            listed in `in_progress` is left out (the run's entry stands for it).
        coverage: which items of the paper this notebook covers and how (densenet_repro.coverage.entry);
            the index's coverage table is computed from these (and from the Table 2 runs in `files`).
        claims: the claims this notebook judged (densenet_repro.verdicts.claim): verdict, budget,
            numbers and caveats, for the index's claims table.
        in_progress: the unfinished runs it showed (`progress_entry`), with the epoch it showed.

    Headlines keep the order given (the conservative reading first). The sha256 of every package
    source file imported so far is recorded too (`loaded_code`).

    Can be called several times; the pipeline merges the calls (headlines update, lists add up).
    """
    headlines = dict(headlines or {})
    for k, v in headlines.items():
        if not isinstance(k, str):
            raise ValueError(f"headline names must be strings, got {k!r}")
        try:
            json.dumps(v, allow_nan=False)
        except (TypeError, ValueError) as e:
            raise ValueError(f"headline {k!r} must be a finite number or a string, got {v!r}") from e
        if not isinstance(v, (int, float, str)) or isinstance(v, bool):
            raise ValueError(f"headline {k!r} must be a number or a string, got {type(v).__name__}")
    if isinstance(files, (str, os.PathLike)):
        files = [files]
    progress = [dict(e) for e in in_progress]
    moving = {e["run"] for e in progress}
    hashes = {}
    for f in files:
        name = _normalise_file(f)
        folder = Path(name).parent.as_posix()
        if folder in moving:
            continue
        if is_unfinished_run(Path(f).parent):
            raise ValueError(f"record(files=...): {name} belongs to a run that has not finished: its files change "
                             "every epoch; name the run in in_progress=[provenance.progress_entry(...)] instead")
        hashes[name] = sha256_file(f)
    from densenet_repro import coverage as _coverage
    from densenet_repro import verdicts

    payload = {"headlines": headlines, "order": list(headlines), "dataset": dataset, "files": list(hashes),
               "sha256": hashes, "coverage": _coverage.check_entries(coverage),
               "claims": verdicts.check_claims(claims), "in_progress": progress, "code": loaded_code()}
    _display({"text/html": record_html(payload), "text/plain": json.dumps(payload, indent=1),
              RECORD_MIME: payload})

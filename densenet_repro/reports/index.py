"""The index rows: what a render writes to <out>/index.json, and what reads them back.

One row per report (`render.render_notebook` makes it): status, budget, dataset, device, render
time, commit, headline numbers, claims, coverage, the runs in progress it showed (with the epoch it
showed), and the sha256 of its notebook, of every result file it read and of every package source
file it imported. Three readers: `stale_reports` (is a committed report still what its inputs
give?), `page.write_index` (index.json and the page people read), and the next render (`merge_row`).

A run in progress is not a result file: it changes every epoch. A report records the epoch it
showed; the report stays valid while the run trains on, and goes stale when the run finishes (its
summary.json appears), disappears, or has fewer epochs than the report showed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable, Mapping

from densenet_repro import provenance
from densenet_repro.errors import UserError

INDEX_JSON = "index.json"
INDEX_HTML = "index.html"
NOTEBOOK_PATTERN = r"^(\d\d)_[A-Za-z0-9_\-]+\.ipynb$"


class IndexDamagedError(UserError, ValueError):
    """index.json cannot be read as a reports index; the message names the file and the fix."""


# --------------------------------------------------------------------------------------------
# Paths
# --------------------------------------------------------------------------------------------


def repo_root() -> Path:
    """Repository root (where notebooks/ and reports/ live); the cwd when not run from a checkout."""
    return provenance.repo_root() or Path.cwd()


def rel(path: Path, root: Path | None = None) -> str:
    """`path` relative to the repo root when inside it (posix), else absolute."""
    root = root or repo_root()
    path = Path(os.path.abspath(path))
    try:
        return path.relative_to(root.resolve()).as_posix()
    except ValueError:
        return path.as_posix()


def absolute(path: str, root: Path | None = None) -> Path:
    p = Path(path)
    return p if p.is_absolute() else (root or repo_root()) / p


# --------------------------------------------------------------------------------------------
# Reading and writing
# --------------------------------------------------------------------------------------------


def read_index(out_dir: Path) -> list[dict[str, Any]]:
    """The rows of out_dir/index.json ([] when there is none); IndexDamagedError when it is not one."""
    p = Path(out_dir) / INDEX_JSON
    if not p.is_file():
        return []
    fix = (f"restore it (git checkout -- {rel(p)}) or delete it and render every report again "
           "(python -m densenet_repro reports)")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise IndexDamagedError(f"{rel(p)} is damaged ({type(e).__name__}: {e}): {fix}") from None
    rows = data.get("reports") if isinstance(data, dict) else None
    if not isinstance(rows, list) or not all(isinstance(r, dict) and {"name", "status", "html"} <= set(r)
                                             for r in rows):
        raise IndexDamagedError(f"{rel(p)} is not a reports index (an object whose 'reports' list holds one "
                                f"row per report): {fix}")
    return rows


def merge_row(previous: Mapping[str, Any] | None, new: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    """The index row after a render: the new row if it succeeded (or nothing good existed before);
    after a failure, the last good row, kept with its report, plus a `failed_attempt` pointing at
    the failure page."""
    if new["status"] == "ok" or previous is None:
        return new
    good = previous.get("status") == "ok" and (Path(out_dir) / previous.get("html", "")).is_file()
    if not good:
        return new
    kept = dict(previous)
    kept["failed_attempt"] = {k: new[k] for k in ("error", "started", "commit", "dirty", "budget", "parameters",
                                                  "wall_time_s", "html", "ipynb")}
    return kept


# --------------------------------------------------------------------------------------------
# What lies behind a report: training time, runs in progress
# --------------------------------------------------------------------------------------------


def training_behind(files: Iterable[str], in_progress: Iterable[Mapping[str, Any]], root: Path | None = None
                    ) -> dict[str, Any]:
    """The training time behind a report: the wall time of every finished run whose summary.json it
    read, and the time of each run in progress up to the epoch it showed."""
    root = root or repo_root()
    in_progress = list(in_progress)
    finished = 0.0
    runs = 0
    for f in files:
        p = absolute(f, root)
        if p.name != "summary.json" or not p.is_file():
            continue
        try:
            finished += float(json.loads(p.read_text(encoding="utf-8")).get("wall_time_s") or 0.0)
            runs += 1
        except (OSError, ValueError):
            continue
    moving = sum(provenance.run_progress(absolute(e["run"], root), up_to_epoch=e["epoch"])["time_s"]
                 for e in in_progress)
    return {"finished_s": finished, "finished_runs": runs, "in_progress_s": moving,
            "in_progress_runs": len(in_progress)}


def training_text(t: Mapping[str, Any]) -> str:
    """'2.2 h in 12 finished runs (from their summaries) + 2.4 h of a run in progress', or 'none'."""
    parts = []
    if t["finished_runs"]:
        parts.append(f"{_hours(t['finished_s'])} in {t['finished_runs']} finished run"
                     f"{'s' if t['finished_runs'] != 1 else ''} (their summaries)")
    if t["in_progress_runs"]:
        parts.append(f"{_hours(t['in_progress_s'])} of {t['in_progress_runs']} run"
                     f"{'s' if t['in_progress_runs'] != 1 else ''} in progress, up to the epoch shown")
    return " + ".join(parts) or "none: this report trains nothing and reads no training run"


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.0f} min"


def runs_in_progress(rows: Iterable[Mapping[str, Any]], root: Path | None = None) -> dict[str, dict[str, Any]]:
    """Every run a report showed in progress: {run folder: {"entry", "shown": {report: epoch}, "now", "text"}}.

    "now" is how far the run is at this moment (provenance.run_progress); "text" is the one wording
    of its status that every page uses.
    """
    root = root or repo_root()
    out: dict[str, dict[str, Any]] = {}
    for r in rows:
        if r.get("status") != "ok":
            continue
        for e in r.get("in_progress") or []:
            got = out.setdefault(e["run"], {"entry": e, "shown": {}})
            got["shown"][r["name"]] = e["epoch"]
    for run, p in out.items():
        p["now"] = provenance.run_progress(absolute(run, root))
        p["text"] = provenance.progress_text(p["now"]["epochs_done"], p["entry"]["epochs"], p["shown"])
    return out


# --------------------------------------------------------------------------------------------
# Staleness
# --------------------------------------------------------------------------------------------


def stale_reports(reports_dir: str | os.PathLike, notebooks_dir: str | os.PathLike | None = None) -> list[str]:
    """Reports in reports_dir/index.json that no longer match their inputs, one line each.

    A report is stale when its notebook, one of the result files it read or one of the package
    source files it imported changed (sha256) or disappeared, when it recorded no code hashes, when a
    run it showed in progress has finished (or vanished, or has fewer epochs than it showed), or
    when it (or its latest render) failed. A run in progress that trains on does not make it stale, nor
    does one the report showed not started (epoch 0) whose folder is not there yet.
    With `notebooks_dir`, a notebook there without a report counts too.
    """
    import re

    reports_dir = Path(reports_dir)
    root = repo_root()
    problems = []
    rows = read_index(reports_dir)
    for r in rows:
        name = r["name"]
        nb = absolute(r["notebook"], root)
        if not nb.is_file():
            problems.append(f"{name}: notebook {r['notebook']} no longer exists")
        elif provenance.sha256_file(nb) != r["notebook_sha256"]:
            problems.append(f"{name}: notebook {r['notebook']} changed since the report was rendered")
        for kind, hashes in (("result file", r["files"]), ("package file", r.get("code") or {})):
            for f, h in hashes.items():
                p = absolute(f, root)
                if not p.is_file():
                    problems.append(f"{name}: {kind} {f} no longer exists")
                elif provenance.sha256_file(p) != h:
                    problems.append(f"{name}: {kind} {f} changed since the report was rendered")
        if r.get("code") is None and r["status"] == "ok":
            problems.append(f"{name}: no package code hashes recorded (rendered before they were): re-render")
        for e in r.get("in_progress") or []:
            now = provenance.run_progress(absolute(e["run"], root))
            shown = f"the report showed epoch {e['epoch']} of {e['epochs']}"
            if not now["exists"] and e["epoch"]:  # shown at epoch 0, it had no folder then either
                problems.append(f"{name}: run {e['run']} no longer exists ({shown})")
            elif now["finished"]:
                problems.append(f"{name}: run {e['run']} has finished since {shown}: re-render")
            elif now["epochs_done"] < e["epoch"]:
                problems.append(f"{name}: run {e['run']} has {now['epochs_done']} epochs, fewer than {shown}")
        if r["status"] != "ok":
            problems.append(f"{name}: status {r['status']} ({r.get('error')})")
        if r.get("failed_attempt"):
            problems.append(f"{name}: latest render failed ({r['failed_attempt'].get('error')}); "
                            f"the report shown is the last good one")
        if not (reports_dir / r["html"]).is_file():
            problems.append(f"{name}: {r['html']} is missing")
    if notebooks_dir is not None:
        have = {r["name"] for r in rows}
        for p in sorted(Path(notebooks_dir).glob("*.ipynb")):
            if re.match(NOTEBOOK_PATTERN, p.name) and p.stem not in have:
                problems.append(f"{p.stem}: notebook has no report")
    return problems

"""Run folders on disk: where a run lives, what it writes, and how a finished one is found again.

    <out>/<experiment>/<model>-<dataset>-<config hash>/
        config.json      the config, the data source and its fingerprint, versions, commit
        metrics.csv      one row per epoch
        checkpoint.pt    written atomically after every epoch (model, optimizer, RNG, rows)
        snapshots/       weights after the epochs a run keeps (keep_weights_at)
        summary.json     written last: its presence means "finished"
        weights.pt       the final model; it replaces checkpoint.pt when the run finishes

Finished runs are looked up by hash in the committed `results/` first (a relative `results` is the
repository's, wherever the command runs), then in `out`. Every read is checked: a damaged summary
or checkpoint is reported in one line and never used as a result. One process at a time trains in
a run folder (`RunLock`).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import platform
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from densenet_repro import atomic
from densenet_repro.data.sources import SourceInfo, describe_fingerprint
from densenet_repro.errors import (CheckpointError, DataMismatchError, OutputNotWritableError, ResultFileError,
                                   RunLockedError)

CHECKPOINT = "checkpoint.pt"
CHECKPOINT_VERSION = 1
WEIGHTS = "weights.pt"    # a finished run's final model state_dict (the checkpoint is dropped then)
SNAPSHOTS = "snapshots"   # <run>/snapshots/epoch_NNN.pt: the weights after the epochs of keep_weights_at
SMALL_FILES = ("config.json", "metrics.csv", "summary.json")  # what publishing copies to results/
REPO = Path(__file__).resolve().parent.parent  # the checkout this package sits in


def results_root(results: str | os.PathLike) -> Path:
    """Where committed results are looked up: a relative path is the repository's (a command run
    from another folder still finds them), an absolute one is taken as it is."""
    path = Path(results)
    return path if path.is_absolute() else REPO / path


def run_roots(results: str | None, out: str) -> tuple[Path, ...]:
    """Where runs are looked up, in order: the committed results (if any), then `out`, where runs
    train. `out` is relative to the working directory, except for a run that lives in its results
    folder (out == results: a long run committed as it trains), which lives in the repository's."""
    out_root = results_root(out) if results and out == results else Path(out)
    return ((results_root(results),) if results else ()) + (out_root,)


def bare_state_dict(state: dict[str, Any]) -> dict[str, Any]:
    """A saved state_dict without the prefixes that DDP (`module.`) and torch.compile (`_orig_mod.`)
    add to the model the engine trained, so that a run trained either way loads into a bare model."""
    return {k.removeprefix("module.").removeprefix("_orig_mod."): v for k, v in state.items()}


def snapshot_path(run_dir: str | os.PathLike, epoch: int) -> Path:
    return Path(run_dir) / SNAPSHOTS / f"epoch_{epoch:03d}.pt"


# ----------------------------------------------------------------------------------------------
# Checkpoints
# ----------------------------------------------------------------------------------------------


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """torch.save, atomically: a kill never leaves a half-written checkpoint."""
    atomic.save_torch(state, path)


CHECKPOINT_KEYS = ("version", "config_hash", "epoch", "model", "optimizer", "scaler", "rows", "rng")


def load_checkpoint(path: Path, expected_hash: str) -> dict[str, Any]:
    """Read a checkpoint; a corrupt, foreign or inconsistent one raises CheckpointError and is left untouched."""
    keep = "it was left as it is: move it away (or delete the run folder) to start the run over"
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 - any failure to unpickle means "corrupt"
        raise CheckpointError(f"cannot read checkpoint {path} ({type(e).__name__}: {e}); {keep}") from e
    if not isinstance(state, dict) or state.get("version") != CHECKPOINT_VERSION or "config_hash" not in state:
        raise CheckpointError(f"{path} is not a densenet-repro checkpoint (version {CHECKPOINT_VERSION}); {keep}")
    if state["config_hash"] != expected_hash:
        raise CheckpointError(f"checkpoint {path} belongs to config {state['config_hash']}, not {expected_hash}; {keep}")
    missing = [k for k in CHECKPOINT_KEYS if k not in state]
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks {', '.join(missing)}; {keep}")
    rows, epoch = state["rows"], state["epoch"]
    if [r.get("epoch") for r in rows] != list(range(1, epoch + 1)):
        raise CheckpointError(f"checkpoint {path} says epoch {epoch} but holds the metrics of epochs "
                              f"{[r.get('epoch') for r in rows]}; {keep}")
    return state


# ----------------------------------------------------------------------------------------------
# Summaries and metrics
# ----------------------------------------------------------------------------------------------

# What summary.json must hold for a run to count as finished (the engine writes all of these).
SUMMARY_FIELDS = {"finished": bool, "config_hash": str, "model": str, "dataset": str, "epochs": int,
                  "final_test_error_pct": (int, float), "best_test_error_pct": (int, float),
                  "reported_test_error_pct": (int, float), "wall_time_s": (int, float)}
_ERROR_FIELDS = ("final_test_error_pct", "best_test_error_pct", "reported_test_error_pct")


def _summary_problem(s: Any, folder: Path) -> str | None:
    if not isinstance(s, dict):
        return f"it holds a JSON {type(s).__name__}, not an object"
    missing = [k for k in SUMMARY_FIELDS if k not in s]
    if missing:
        return f"it lacks {', '.join(missing)}"
    wrong = [k for k, t in SUMMARY_FIELDS.items() if not isinstance(s[k], t) or (t is not bool and isinstance(s[k], bool))]
    if wrong:
        return f"wrong type of {', '.join(wrong)}"
    if s["finished"] is not True:
        return "it does not say finished"
    bad = [k for k in _ERROR_FIELDS if not (math.isfinite(s[k]) and 0 <= s[k] <= 100)]
    if bad or not (math.isfinite(s["wall_time_s"]) and s["wall_time_s"] >= 0):
        return f"{', '.join(bad) or 'wall_time_s'} is not a finite error in [0, 100] % (or time >= 0)"
    if not folder.name.endswith(s["config_hash"]):
        return f"its config_hash {s['config_hash']} is not the one in the folder's name"
    return None


def read_summary(folder: str | os.PathLike) -> dict[str, Any]:
    """A finished run's summary.json, checked: a damaged one raises ResultFileError, never a result."""
    folder = Path(folder)
    path = folder / "summary.json"
    try:
        s = json.loads(path.read_text(encoding="utf-8"))
        problem = _summary_problem(s, folder)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        s, problem = None, f"it cannot be read as JSON ({e})"
    if problem is not None:
        raise ResultFileError(f"{path} is damaged ({problem}) and is not used as a result: restore it "
                              f"(git checkout -- {path}) or delete {folder} to train the run again")
    s["run_dir"] = folder.as_posix()
    return s


def read_config(folder: str | os.PathLike) -> dict[str, Any] | None:
    """The config.json of a run folder as written (None where there is none or it cannot be read)."""
    try:
        stored = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return stored if isinstance(stored, dict) else None


def summarise(config, h: str, rows: list[dict[str, Any]], extra: dict[str, Any]) -> dict[str, Any]:
    """summary.json of a finished run: the final *and* the best test error, labelled, and what made it."""
    final = rows[-1]
    best = min(rows, key=lambda r: r["test_err_pct"])
    s: dict[str, Any] = {
        "finished": True, "model": config.model, "dataset": config.dataset, "budget": config.budget,
        "experiment": config.experiment, "config_hash": h, "epochs": config.epochs,
        "model_kwargs": config.model_kwargs,
        # The paper reports the test error at the end of training ...
        "final_test_error_pct": final["test_err_pct"],
        # ... the official code printed the lowest test error over all epochs. Both, labelled.
        "best_test_error_pct": best["test_err_pct"], "best_epoch": best["epoch"],
        "final_train_loss": final["train_loss"], "final_test_loss": final["test_loss"],
    }
    if "val_err_pct" in final:
        # SVHN protocol: the model with the lowest validation error is the one reported.
        chosen = min(rows, key=lambda r: (r["val_err_pct"], r["epoch"]))
        s.update(reported_test_error_pct=chosen["test_err_pct"], reported_epoch=chosen["epoch"],
                 reported_rule="test error at the epoch of lowest validation error (paper's SVHN protocol)")
    else:
        s.update(reported_test_error_pct=final["test_err_pct"], reported_epoch=final["epoch"],
                 reported_rule="test error after the last epoch (the paper's rule)")
    ips = sorted(r["train_images_per_s"] for r in rows)
    s["train_images_per_s"] = ips[len(ips) // 2]  # median over epochs
    s["wall_time_s"] = round(sum(r["epoch_time_s"] + r["eval_time_s"] + (r.get("compile_time_s") or 0)
                                 for r in rows), 2)
    s.update(extra)
    return s


# compile_time_s: the first compiled step of a process (compilation, CUDA-graph capture), left out
# of epoch_time_s. hardware, path and code_commit: what trained the epoch (a resumable run meets several
# machines, and may meet several versions of the code).
METRIC_COLUMNS = ["epoch", "lr", "train_loss", "train_err_pct", "test_loss", "test_err_pct", "val_loss",
                  "val_err_pct", "epoch_time_s", "eval_time_s", "train_images_per_s", "compile_time_s",
                  "hardware", "path", "code_commit"]


def write_metrics(path: Path, rows: list[dict[str, Any]]) -> None:
    cols = [c for c in METRIC_COLUMNS if any(c in r for r in rows)]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({c: r.get(c, "") for c in cols})
    atomic.write_text(path, buf.getvalue())


def read_metrics(folder: str | os.PathLike):
    """metrics.csv of a run as a pandas DataFrame."""
    import pandas as pd

    return pd.read_csv(Path(folder) / "metrics.csv")


# ----------------------------------------------------------------------------------------------
# Finding runs
# ----------------------------------------------------------------------------------------------


def find_finished(roots: list[Path], experiment: str, name: str) -> Path | None:
    """The folder of the finished run `name`: in the first of `roots` that holds one (results/ first,
    so that a report cites files a clone has). A damaged summary is reported, never taken as finished."""
    for root in roots:
        folder = root / experiment / name
        if (folder / "summary.json").exists():
            read_summary(folder)
            return folder
    return None


def find_run(roots: tuple[Path, ...], experiment: str, names: list[str]) -> tuple[int, Path | None]:
    """(index into `names`, finished folder or None): the first name with a finished run, else the
    first with a run in progress (its metrics.csv), else the first name."""
    for i, name in enumerate(names):
        finished = find_finished(list(roots), experiment, name)
        if finished is not None:
            return i, finished
    for i, name in enumerate(names):
        if any((root / experiment / name / "metrics.csv").is_file() for root in roots):
            return i, None
    return 0, None


def check_same_data(folder: Path, source: SourceInfo, here: dict | None) -> None:
    """A finished run is reused only on the data it was made on: its recorded fingerprint (or, for a
    run from before fingerprints, its image counts) must match `here`, the data at hand's."""
    if here is None:
        return
    recorded = (read_config(folder) or {}).get("data_fingerprint")
    if recorded is not None:
        same = recorded.get("digest") == here["digest"]
        what = describe_fingerprint(recorded)
    else:
        info = read_summary(folder).get("data") or {}
        train_here = sum(n for s in ("train", "extra") for n in here.get(s, {}).values())
        same = (info.get("train_full", 0) + info.get("val", 0) == train_here
                and info.get("test_full") == sum(here["test"].values()))
        what = f"{info.get('train_full', 0) + info.get('val', 0):,} training / {info.get('test_full', 0):,} test images"
    if not same:
        raise DataMismatchError(
            f"the finished run {folder} was made on other data ({what}) than {source.path} holds "
            f"({describe_fingerprint(here)}), under the same name {source.id!r}: point --data-root at the "
            f"copy that run used, or give this copy a name of its own (a copy is known by its name)")


def known_source_ids(roots: tuple[Path, ...], experiment: str, model: str, dataset: str) -> list[str]:
    """The data sources that runs of this model and dataset were made on, as their config.json say."""
    ids = []
    for root in roots:
        for folder in sorted(p.parent for p in (root / experiment).glob(f"{model}-{dataset}-*/config.json")):
            sid = (read_config(folder) or {}).get("data_source_id")
            if isinstance(sid, str) and sid not in ids:
                ids.append(sid)
    return ids


def publish(summary: dict[str, Any], results: str | os.PathLike = "results", weights: bool = False) -> Path:
    """Copy a finished run's small files to results/<experiment>/<run>/, and its weights if asked."""
    src = Path(summary["run_dir"])
    dst = results_root(results) / summary["experiment"] / src.name
    if src.resolve() == dst.resolve():
        return dst
    dst.mkdir(parents=True, exist_ok=True)
    for name in SMALL_FILES + ((WEIGHTS,) if weights else ()):
        shutil.copy2(src / name, dst / name)
    return dst


# ----------------------------------------------------------------------------------------------
# One process per run folder
# ----------------------------------------------------------------------------------------------


class RunLock:
    """An exclusive lock on a run folder for the whole run, so two processes never write one folder.

    An OS file lock (fcntl.flock on `<run>/.lock`): the kernel releases it when the process ends,
    however it ends, so a killed run never leaves a stale lock behind. The file names the holder.
    Where fcntl does not exist (Windows) runs are not locked. Once held, the temporary files that a
    killed writer left (atomic.temp_name) are removed: no process can be writing them any more.
    """

    def __init__(self, folder: Path) -> None:
        self.folder, self.file = folder, None

    def __enter__(self) -> "RunLock":
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            self.file = open(self.folder / ".lock", "a+", encoding="utf-8")
        except OSError as e:
            raise OutputNotWritableError(f"cannot write the run folder {self.folder} ({e.strerror or e}): "
                                         "choose a writable --out (out=...)") from None
        try:
            import fcntl
        except ImportError:
            return self
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self.file.seek(0)
            holder = self.file.read().strip() or "another process"
            self.file.close()
            raise RunLockedError(f"{self.folder} is in use by {holder}: wait for that run to end (or stop it), "
                                 "then try again") from None
        self.file.seek(0)
        self.file.truncate()
        self.file.write(f"process {os.getpid()} on {platform.node()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        self.file.flush()
        for leftover in [*self.folder.glob(".*.tmp*"), *self.folder.glob(f"{SNAPSHOTS}/.*.tmp*")]:
            leftover.unlink(missing_ok=True)
        return self

    def __exit__(self, *exc) -> None:
        if self.file is not None and not self.file.closed:
            self.file.close()  # closing releases the lock

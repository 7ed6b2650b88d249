"""`gpu-check --adopt DIR`: the files a GPU check returned, checked, into the committed results.

    <results>/gpu/                   gpu_check.json and the phases' logs (notebook 06 reads them)
    <results>/table2/<run>/          the headline run, at its one path: the returned checkpoint.pt
                                     (weights.pt and summary.json if it finished), its metrics.csv and
                                     config.json, and the snapshot of an epoch it keeps

Everything is checked before anything is written: the summary is a check's, a rehearsal's output
goes only into another folder than the repository's results/, the returned checkpoint belongs to
the run folder (config hash), is ahead of the committed one, and continues the same history (the
epochs both hold agree), and no training holds that folder now (its lock). Then git add and commit
what it lists.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
from pathlib import Path
from typing import Any

from densenet_repro.errors import UserError
from densenet_repro.gpu_check.phases import SUMMARY_FILE, run_epoch


class AdoptError(UserError):
    """The returned files cannot become results as they are (the message says why)."""


def adopt(returned: Path, results: str = "results") -> int:
    from densenet_repro.runstore import RunLock, results_root

    root = results_root(results)
    summary = _read_summary(returned)
    if summary["check"] == "rehearsal" and root == results_root("results"):
        raise AdoptError(f"{returned} holds a rehearsal's output (CPU, toy sizes), not a result: it is adopted only "
                         "into another folder (--results DIR)")
    head = summary["phases"].get("headline", {})
    run = _checked_headline(returned, head, root) if head.get("returned_file") else None
    # refused while a training holds the run folder (it would overwrite the checkpoint), before any write
    with RunLock(run["target"]) if run is not None else contextlib.nullcontext():
        done = [_copy_check_files(returned, root / "gpu", exclude=head.get("returned_file"))]
        if run is not None:
            done.append(_place_headline(returned, head, run))
    for line in done:
        print(f"gpu-check --adopt: {line}")
    print(f"gpu-check --adopt: commit them: git add {' '.join(sorted({str(p) for p in _written(root, head)}))}")
    return 0


def _read_summary(returned: Path) -> dict[str, Any]:
    path = returned / SUMMARY_FILE
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise AdoptError(f"{path} cannot be read ({e}): pass the folder the check's files came back to") from None
    if not isinstance(summary, dict) or summary.get("check") not in ("gpu", "rehearsal") or "phases" not in summary:
        raise AdoptError(f"{path} is not a gpu-check summary")
    return summary


def _checked_headline(returned: Path, head: dict[str, Any], root: Path) -> dict[str, Any]:
    """The returned headline run, checked against the committed folder; what _place_headline writes."""
    from densenet_repro.runstore import CHECKPOINT, load_checkpoint, read_config

    h, target = head["config_hash"], root / head["run"]
    if not target.is_dir() or not target.name.endswith(f"-{h}"):
        raise AdoptError(f"the returned checkpoint continues {head['run']} (config {h}), which is not in {root}")
    if (read_config(target) or {}).get("config_hash", h) != h:
        raise AdoptError(f"{target}/config.json names another config than {h}")
    if (target / "summary.json").is_file():
        raise AdoptError(f"{target} is finished already: nothing to continue")
    have = run_epoch(target, h)
    path = returned / head["returned_file"]
    if head["finished"]:
        s = json.loads(head["run_files"]["summary.json"])
        if s.get("config_hash") != h or s.get("finished") is not True:
            raise AdoptError(f"the returned summary.json is not the finished run {h}")
        import torch

        torch.load(path, map_location="cpu", weights_only=True)  # readable weights, or an error here
        metrics = csv.DictReader(io.StringIO(head["run_files"]["metrics.csv"]))
        rows = [{k: _number(v) for k, v in r.items()} for r in metrics]
        state = None
    else:
        state = load_checkpoint(path, h)  # version, config hash and rows checked
        rows = state["rows"]
    if len(rows) <= have:
        raise AdoptError(f"the returned run is at epoch {len(rows)}, not ahead of the committed one in {target} "
                         f"(epoch {have}): nothing to adopt")
    if have:  # both hold the epochs up to where the GPU started: they must be the same epochs
        mine = load_checkpoint(target / CHECKPOINT, h)["rows"]
        for a, b in zip(mine[: head["from_epoch"]], rows, strict=False):
            if not math.isclose(a["train_loss"], b["train_loss"], rel_tol=1e-9):
                raise AdoptError(f"epoch {a['epoch']} differs between {target} and the returned run (train loss "
                                 f"{a['train_loss']} against {b['train_loss']}): it continues another history")
    return {"target": target, "state": state, "epoch": len(rows), "had": have}


def _number(text: str) -> Any:
    try:
        return float(text)
    except ValueError:
        return text


def _copy_check_files(returned: Path, gpu: Path, exclude: str | None) -> str:
    """The check's summary and logs replace those of the check before (results/gpu/README.md stays)."""
    from densenet_repro import atomic

    gpu.mkdir(parents=True, exist_ok=True)
    for old in [gpu / SUMMARY_FILE, *gpu.glob("*.log")]:
        old.unlink(missing_ok=True)
    names = sorted(p.name for p in returned.iterdir() if p.is_file() and p.name != exclude)
    for name in names:
        atomic.write_bytes(gpu / name, (returned / name).read_bytes())
    return f"{gpu}: {', '.join(names)}"


def _place_headline(returned: Path, head: dict[str, Any], run: dict[str, Any]) -> str:
    from densenet_repro import atomic
    from densenet_repro.runstore import CHECKPOINT, save_checkpoint, snapshot_path

    target, state = run["target"], run["state"]
    atomic.write_bytes(target / head["returned_as"], (returned / head["returned_file"]).read_bytes())
    for name, text in head["run_files"].items():
        atomic.write_text(target / name, text)
    if head["finished"]:
        (target / CHECKPOINT).unlink(missing_ok=True)  # as the engine does: the final weights replace it
    kept = json.loads(head["run_files"]["config.json"]).get("keep_weights_at", [])
    snapshot = snapshot_path(target, run["epoch"])
    if state is not None and run["epoch"] in kept and not snapshot.exists():
        snapshot.parent.mkdir(exist_ok=True)
        save_checkpoint(snapshot, state["model"])  # the weights of a kept epoch: the checkpoint holds them
    finished = ", finished" if head["finished"] else ""
    return f"{target}: epoch {run['had']} -> {run['epoch']} ({head['returned_as']}{finished})"


def _written(root: Path, head: dict[str, Any]) -> list[Path]:
    return [root / "gpu"] + ([root / head["run"]] if head.get("returned_file") else [])

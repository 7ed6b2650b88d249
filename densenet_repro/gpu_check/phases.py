"""The phases of the check, in the order of what they tell, what each one runs, and what it measured.

Each phase runs as a subprocess with a time limit of its own and writes one flat file, its log,
whose last line is its result (runner.end_log); gpu_check.json gathers the results and is
rewritten after every phase. The files, 8 at most (what comes back from the GPU machine):

    gpu_check.json          the summary: every phase's result, the targets, the data, the commit
    env.log ... headline.log  one log per phase (PHASES)
    headline_checkpoint.pt  the headline run's checkpoint, continued (or headline_weights.pt if it finished)
"""

from __future__ import annotations

import csv
import dataclasses
import importlib.util
import io
import json
import math
import re
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

from densenet_repro.gpu_check.runner import Outcome, run_logged

if TYPE_CHECKING:
    from densenet_repro.config import RunConfig
    from densenet_repro.gpu_check import Check

PHASES = ("env", "compiled", "tests", "eager_bf16", "eager_fp32", "headline")
SUMMARY_FILE = "gpu_check.json"
RETURNED_RUN_FILE = "headline_{}"  # headline_checkpoint.pt, or headline_weights.pt for a run that finished


def log_name(phase: str) -> str:
    return f"{phase}.log"


# The epoch phases: (epochs, train command-line flags) of each; the same model, data and seed in all
# three. The compiled phase trains 2 epochs, so that the learning rate drops under the captured step
# (with 2 epochs the milestones fall on epoch 2: LR 0.1, then 0.001) and evaluation runs between two
# training epochs; epoch 2 is the steady epoch, free of compilation and graph recording.
EPOCH_MODES = {
    "compiled": (2, ["--amp", "bf16", "--channels-last", "--compile"]),
    "eager_bf16": (1, ["--amp", "bf16", "--channels-last", "--no-compile"]),
    # the paper's precision: amp none, and TF32 off (the engine's default, recorded in config.json)
    "eager_fp32": (1, ["--amp", "none", "--no-channels-last", "--no-compile"]),
}
CUDA_TESTS = "tests/test_gpu_path.py"  # the file that holds the tests marked cuda (and nothing else is collected)
CIFAR_TRAIN_IMAGES = 50_000

# The targets (issue 18), on one H100/H200, for DenseNet-BC-100 on C10+ at batch 64.
EPOCH_TARGET_S = 6.0    # the compiled step's steady epoch (all 50,000 images)
# From the epoch's start to the end of its first step: the compilation. (The CUDA graph is recorded in
# the next steps; that time is among epoch 1's extras, first_epoch_extra_s.)
WARMUP_TARGET_S = 90.0
# bf16 rounds differently in a compiled and an eager step; one epoch's mean training loss of the two
# stays within this relative difference when the compiled step computes the same function.
LOSS_RTOL = 0.02
# The headline run compiles only when its phase has this long: compilation (about 100 s) pays for
# itself over several minutes of training, not over one or two.
HEADLINE_COMPILE_MIN_S = 300
REHEARSED = "prepared, rehearsed on CPU, not measured"


@dataclass(frozen=True)
class Sizes:
    """What a check trains and how long each phase may take: the GPU check's, or the rehearsal's toy."""

    kind: str                                # "gpu" or "rehearsal"
    device: str                              # what the training phases train on
    epoch_args: tuple[str, ...]              # the epoch phases' model and its size (train command line)
    caps_s: Mapping[str, float | None]       # each phase's own time limit; None: the time left
    limit_s: float                           # the default time for all phases together
    # the headline run's config (data_root, results root), planned on the CPU (the device is not hashed)
    headline: Callable[[str | None, str], "RunConfig"]


def _paper_headline(data_root: str | None, results: str) -> "RunConfig":
    """The headline at its first schedule not yet finished (the last if all are): the run to continue."""
    from densenet_repro.experiments import HEADLINE_SCHEDULES, headline_config
    from densenet_repro.plan import plan

    configs = [headline_config(epochs=e, data_root=data_root, device="cpu", results=results)
               for e in HEADLINE_SCHEDULES]
    return next((c for c in configs if plan(c).finished is None), configs[-1])


GPU = Sizes("gpu", "cuda", ("--model", "densenet_bc100_k12", "--dataset", "c10+"),
            # typical: env 10 s, compiled 100-240 s, tests 60-90 s, eager epochs 50 s each (43 s + start-up)
            {"env": 30, "compiled": 240, "tests": 120, "eager_bf16": 90, "eager_fp32": 90, "headline": None},
            limit_s=450, headline=_paper_headline)


# ----------------------------------------------------------------------------------------------
# Running each phase: every runner returns the phase's result (a JSON-able dict with "ok", "status")
# ----------------------------------------------------------------------------------------------


def ended(outcome: Outcome, ok: bool, timeout_s: float, **more: Any) -> dict[str, Any]:
    """A phase's result: `ok` says whether it gave what it is for (the headline does when killed by
    its timeout, as planned, after getting further)."""
    killed = "killed by its timeout"
    status = ((f"ok, {killed}" if outcome.timed_out else "ok") if ok
              else killed if outcome.timed_out else f"failed (exit code {outcome.returncode})")
    return {"ok": ok, "status": status, "timed_out": outcome.timed_out, "returncode": outcome.returncode,
            "timeout_s": round(timeout_s), "wall_s": outcome.wall_s, **more}


def skipped(why: str) -> dict[str, Any]:
    return {"ok": False, "status": "skipped", "note": why}


def child_command(what: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "densenet_repro.gpu_check.child", what, *args]


def run_env(check: "Check", phase: str, timeout_s: float, log: Path) -> dict[str, Any]:
    seen: dict[str, Any] = {}

    def on_line(line: str) -> None:
        if line.startswith("{"):
            seen.update(json.loads(line))

    outcome = run_logged(child_command("env"), log, timeout_s, check.env, check.cwd, on_line)
    ok = outcome.returncode == 0 and bool(seen) and (check.sizes.kind == "rehearsal" or bool(seen.get("gpu_computes")))
    return ended(outcome, ok, timeout_s, **seen)


WARMUP_LINE = re.compile(r"first compiled step done after ([0-9.]+) s")  # printed by the engine (train.py)


def epoch_command(check: "Check", phase: str) -> list[str]:
    """The train command line of an epoch phase: its run folder goes to the scratch folder."""
    data = ["--data-root", check.data_root, "--no-download"] if check.data_present else ["--data-source", "synthetic"]
    epochs, flags = EPOCH_MODES[phase]
    return [sys.executable, "-m", "densenet_repro", "train", *check.sizes.epoch_args, *data, "--epochs", str(epochs),
            *flags, "--seed", "0", "--device", check.sizes.device, "--experiment", phase,
            "--out", str(check.scratch / "runs"), "--results", "", "--progress", "line"]


def run_epochs(check: "Check", phase: str, timeout_s: float, log: Path) -> dict[str, Any]:
    cmd, epochs = epoch_command(check, phase), EPOCH_MODES[phase][0]
    t0 = time.monotonic()
    live: dict[str, Any] = {}

    def on_line(line: str) -> None:  # the warm-up goes into gpu_check.json the moment the first step ends
        m = WARMUP_LINE.search(line)
        if m:
            warmup = float(m.group(1))
            live.update(warmup_s=warmup, warmup_seen_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                        startup_s=round(time.monotonic() - t0 - warmup, 1))
            check.record(phase, {"ok": False, "status": "running", **live})
            print(f"gpu-check: {phase}: first step done, warm-up {warmup:.1f} s (after {live['startup_s']:.0f} s "
                  "of start-up)", flush=True)

    outcome = run_logged(cmd, log, timeout_s, check.env, check.cwd, on_line)
    measured = read_epoch_run(check.scratch / "runs" / phase)
    ok = outcome.returncode == 0 and measured.get("epochs_done") == epochs
    return ended(outcome, ok, timeout_s, **(live | measured))


def read_epoch_run(experiment: Path) -> dict[str, Any]:
    """What an epoch phase's run folder says (also of a run killed after its first epoch)."""
    from densenet_repro.runstore import read_config

    folders = sorted(p.parent for p in experiment.glob("*/metrics.csv"))
    if not folders:
        return {}
    run_dir = folders[0]
    rows = [{k: _number(v) for k, v in r.items()} for r in csv.DictReader(io.StringIO(
        (run_dir / "metrics.csv").read_text(encoding="utf-8")))]
    summary_path = run_dir / "summary.json"
    summary = json.loads(summary_path.read_text(encoding="utf-8")) if summary_path.is_file() else {}
    return epoch_numbers(rows, read_config(run_dir) or {}, summary)


def _number(text: str) -> Any:
    try:
        return float(text) if text != "" else None
    except ValueError:
        return text


def epoch_numbers(rows: list[dict[str, Any]], config: dict[str, Any], summary: dict[str, Any]) -> dict[str, Any]:
    """The phase's numbers from its metrics rows: epoch 1 carries the compilation (compile_time_s,
    kept out of its epoch_time_s) and the graph capture of the first steps; epoch 2, where there is
    one, is the steady epoch. A run on fewer than 50,000 images (synthetic data) gets its full-epoch
    time estimated from its per-step time, and says so."""
    first, last = rows[0], rows[-1]
    # the summary of a finished run counts the images; the rows give them to rounding (time x rate)
    images = (summary.get("data") or {}).get("train") or round(first["epoch_time_s"] * first["train_images_per_s"])
    full = abs(images - CIFAR_TRAIN_IMAGES) <= CIFAR_TRAIN_IMAGES // 1000
    steps = math.ceil(images / config.get("batch_size", 64))
    out: dict[str, Any] = {
        "epochs_done": len(rows), "images": images, "lr": [round(r["lr"], 8) for r in rows],
        "first_epoch_train_loss": first["train_loss"], "test_err_pct": last["test_err_pct"],
        "warmup_s": first.get("compile_time_s"), "epoch_s": last["epoch_time_s"], "steady": len(rows) > 1,
        "images_per_s": last["train_images_per_s"], "eval_s": last["eval_time_s"], "path": last.get("path"),
        "amp": config.get("amp"), "tf32": config.get("tf32"), "commit_recorded": config.get("commit"),
        "peak_gpu_memory_gib": summary.get("peak_gpu_memory_gib"), "device": summary.get("device")}
    if len(rows) > 1:
        out["steady_step_s"] = round(rows[1]["epoch_time_s"] / steps, 5)
        out["first_epoch_extra_s"] = round(first["epoch_time_s"] - rows[1]["epoch_time_s"], 3)
    full_steps = math.ceil(CIFAR_TRAIN_IMAGES / config.get("batch_size", 64))
    out["full_epoch_estimated"] = not full
    out["full_epoch_s"] = (last["epoch_time_s"] if full
                           else round(out.get("steady_step_s", last["epoch_time_s"] / steps) * full_steps, 2))
    return {k: v for k, v in out.items() if v is not None}


def pytest_available() -> bool:
    return importlib.util.find_spec("pytest") is not None


PYTEST_COUNTS = re.compile(r"(\d+) (passed|failed|skipped|deselected|errors?|xfailed|xpassed)")


def run_tests(check: "Check", phase: str, timeout_s: float, log: Path) -> dict[str, Any]:
    if not pytest_available():
        return skipped("pytest is not installed on this machine: the cuda tests did not run "
                       "(pip install pytest, then --phases tests)")
    # Only the file that holds them: collecting tests/ would import every test module, and some need
    # the notebook packages the GPU machine lacks. No plugins but pytest's own: the machine has
    # several installed (timeout, xdist, cov...), and none of them is needed.
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "cuda", CUDA_TESTS]
    counts: dict[str, int] = {}

    def on_line(line: str) -> None:
        if re.search(r"\d+ (passed|failed|skipped|deselected|errors?)\b.* in [0-9.]+s", line):
            counts.clear()
            counts.update({("errors" if k == "error" else k): int(n) for n, k in PYTEST_COUNTS.findall(line)})

    outcome = run_logged(cmd, log, timeout_s, check.env | {"PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}, check.cwd, on_line)
    clean = outcome.returncode == 0 and not counts.get("failed") and not counts.get("errors")
    # on the GPU they must run; in the rehearsal (no GPU) they are collected, then skipped
    ran = counts.get("passed", 0) > 0 if check.sizes.kind == "gpu" else counts.get("skipped", 0) > 0
    return ended(outcome, clean and ran, timeout_s, counts=counts)


def run_headline(check: "Check", phase: str, timeout_s: float, log: Path) -> dict[str, Any]:
    """Continue the headline run from a copy of its committed folder (the committed one is never
    written), for the time left; what it reached comes back as one file (RETURNED_RUN_FILE) and
    the run's small files inside the result, for `gpu-check --adopt`."""
    config, run = plan_headline(check.sizes, check.data_root, check.committed_results)
    if run.source is None:
        return skipped(f"no dataset here ({run.missing_data})")
    if run.finished is not None:
        return skipped(f"the run is finished ({run.finished})")
    committed = run.run_dir
    start_epoch = run_epoch(committed, run.hash)
    work_root = check.scratch / "headline"
    work = work_root / config.experiment / run.name
    if committed.is_dir():
        shutil.copytree(committed, work, ignore=shutil.ignore_patterns(".lock", ".*.tmp*"))
    compiled = check.sizes.device == "cuda" and timeout_s >= HEADLINE_COMPILE_MIN_S
    continued = dataclasses.replace(config, out=str(work_root), results=str(work_root), device=check.sizes.device,
                                    resume=True, progress="line", compile=compiled)
    outcome = run_logged(child_command("headline", json.dumps({"config": continued.to_dict()})), log, timeout_s,
                         check.env, check.cwd)
    reached = run_epoch(work, run.hash)
    result: dict[str, Any] = {"run": f"{config.experiment}/{run.name}", "config_hash": run.hash,
                              "from_epoch": start_epoch, "to_epoch": reached, "compile": compiled}
    if reached > start_epoch:
        result.update(returned_run_files(work, run.hash, check.out))
    # its time is up by design: the phase succeeds when the run got further
    return ended(outcome, reached > start_epoch, timeout_s, **result)


def plan_headline(sizes: Sizes, data_root: str, committed_results: str):
    """(config, plan.Run) of the headline run in its committed folder, planned without the GPU."""
    from densenet_repro.plan import plan

    config = sizes.headline(data_root, committed_results)
    return config, plan(config)


def run_epoch(folder: Path, config_hash: str) -> int:
    """The last finished epoch of a run folder (0: none)."""
    from densenet_repro.runstore import CHECKPOINT, load_checkpoint

    if (folder / "summary.json").is_file():
        return len((folder / "metrics.csv").read_text(encoding="utf-8").splitlines()) - 1
    if (folder / CHECKPOINT).is_file():
        return load_checkpoint(folder / CHECKPOINT, config_hash)["epoch"]
    return 0


def returned_run_files(work: Path, config_hash: str, out: Path) -> dict[str, Any]:
    """Copy the continued run's one big file to `out` (flat); return its small files as text."""
    from densenet_repro.runstore import CHECKPOINT, WEIGHTS, load_checkpoint, write_metrics

    finished = (work / "summary.json").is_file()
    big = WEIGHTS if finished else CHECKPOINT
    if not finished:  # a kill can fall between the checkpoint and metrics.csv: the checkpoint's rows are the truth
        write_metrics(work / "metrics.csv", load_checkpoint(work / CHECKPOINT, config_hash)["rows"])
    returned = RETURNED_RUN_FILE.format(big)
    shutil.copyfile(work / big, out / returned)
    small = ("config.json", "metrics.csv") + (("summary.json",) if finished else ())
    return {"returned_file": returned, "returned_as": big, "finished": finished,
            "run_files": {name: (work / name).read_text(encoding="utf-8") for name in small if (work / name).is_file()}}


RUNNERS: dict[str, Callable[["Check", str, float, Path], dict[str, Any]]] = {
    "env": run_env, "compiled": run_epochs, "tests": run_tests, "eager_bf16": run_epochs, "eager_fp32": run_epochs,
    "headline": run_headline}


# ----------------------------------------------------------------------------------------------
# The targets, from the phases' results
# ----------------------------------------------------------------------------------------------


def targets(phases: Mapping[str, dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    """Each target with its number and a status: met or missed where it was measured on the GPU on
    the real data; an estimate where the data was synthetic; REHEARSED in a rehearsal, whose toy
    numbers show only that the pipeline computes them; "not measured" where its phase gave none."""
    compiled, eager = phases.get("compiled", {}), phases.get("eager_bf16", {})
    loss_rel = None
    if "first_epoch_train_loss" in compiled and "first_epoch_train_loss" in eager:
        c, e = compiled["first_epoch_train_loss"], eager["first_epoch_train_loss"]
        loss_rel = round(abs(c - e) / e, 5)
    epoch_s = compiled.get("full_epoch_s") if compiled.get("steady") else None  # epoch 2 only
    found = {  # name: (value, target, whether the value is an estimate, the phases it comes from)
        "compiled_epoch_s": (epoch_s, EPOCH_TARGET_S, compiled.get("full_epoch_estimated", False), ("compiled",)),
        "warmup_s": (compiled.get("warmup_s"), WARMUP_TARGET_S, False, ("compiled",)),
        "compiled_vs_eager_loss_rel": (loss_rel, LOSS_RTOL, False, ("compiled", "eager_bf16")),
    }
    out = {}
    for name, (value, target, estimated, sources) in found.items():
        entry: dict[str, Any] = {"target": target, "value": value, "from": ", ".join(sources)}
        if value is None:
            entry["status"] = "not measured (" + "; ".join(
                f"{p}: {phases.get(p, {}).get('status', 'not run')}" for p in sources) + ")"
        elif kind == "rehearsal":
            entry["status"] = REHEARSED
        elif estimated:
            entry["status"] = "estimated from synthetic data (not 50,000 images): not a measurement"
        else:
            entry["status"] = "met" if value <= target else "missed"
        out[name] = entry
    return out


def gpu_rows(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per epoch phase of a gpu_check.json, for the reports (bench/report.py, notebook 06):
    what each engine mode measured, and under "status" whether it is a measurement at all."""
    env = summary.get("phases", {}).get("env", {})
    rows = []
    for mode in EPOCH_MODES:
        m = summary.get("phases", {}).get(mode)
        if m is None:
            continue
        status = (m["status"] if not m.get("ok") else REHEARSED if summary.get("check") == "rehearsal"
                  else "measured on synthetic data (epoch time estimated)" if m.get("full_epoch_estimated")
                  else "measured")
        rows.append({"gpu": env.get("gpu"), "mode": mode, "status": status,
                     "epoch_s": m.get("full_epoch_s"), "epoch_estimated": m.get("full_epoch_estimated"),
                     "warmup_s": m.get("warmup_s"), "steady_step_s": m.get("steady_step_s"),
                     "images_per_s": m.get("images_per_s"), "peak_gpu_memory_gib": m.get("peak_gpu_memory_gib"),
                     "first_epoch_train_loss": m.get("first_epoch_train_loss")})
    return rows

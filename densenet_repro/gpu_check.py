"""`python -m densenet_repro gpu-check`: what one short GPU slot should measure, in one command.

    python -m densenet_repro gpu-check [--data-root data] [--limit-s 540] [--phases env,tests,epochs,headline]

Phases, each with its own time limit (a phase that overruns is stopped, recorded as such, and the
next one starts), everything written under one folder: $OUT when set (a remote runner that copies
back $OUT gets every file), else results/gpu/:

    env       the GPU, torch/CUDA versions and the commit                           (env.json)
    tests     the tests marked `cuda`: each engine mode for a short epoch, kill and
              resume on the GPU, memory-efficient equivalence, fp16 with the scaler (tests.log)
    epochs    one paper-protocol C10+ epoch of DenseNet-BC-100 (k = 12), batch 64, all 50,000
              training images, through the training engine (`python -m densenet_repro train`):
              eager fp32 (the paper's precision, the reference), eager bf16 + channels_last, and
              the engine's GPU default (bf16 + channels_last + a compiled step replayed as a CUDA
              graph). Epoch time, compilation time apart, images/s, peak memory, and the first
              epoch's training loss of the compiled step against the eager one, same seed.
    headline  continues Table 2's headline run (DenseNet L=40, k=12, C10+, 30 epochs, fp32) from
              the checkpoint committed in results/ for the time left; the run folder comes back
              under OUT/results/ (copy it over results/ and commit it; `--resume` goes on from there)

gpu_check.json sums it up; results/gpu/ keeps the committed copy that notebook 06 reads.
Needs only torch (2.11 or newer) and the package; pytest for the tests phase.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

PHASES = ("env", "tests", "epochs", "headline")
EPOCH_MODES = {  # name -> train CLI flags; each runs one epoch of the paper's protocol
    "eager_fp32": ["--amp", "none", "--no-channels-last", "--no-compile"],
    "eager_bf16_cl": ["--amp", "bf16", "--channels-last", "--no-compile"],
    "default_bf16_cl_compiled": ["--amp", "bf16", "--channels-last", "--compile"],
}
EPOCH_TARGET_S = 6.0    # engine default path, one epoch on one H100/H200
WARMUP_TARGET_S = 90.0  # its compilation and CUDA-graph capture
# bf16 rounds differently in a compiled and an eager step; one epoch's mean loss of the two stays
# within this relative difference when the compiled step computes the same function.
LOSS_RTOL = 0.02


def _out_dir(arg: str | None) -> Path:
    out = Path(arg or os.environ.get("OUT") or "results/gpu")
    out.mkdir(parents=True, exist_ok=True)
    return out


def _run(cmd: list[str], log: Path, limit_s: float) -> dict[str, Any]:
    """Run a phase's command with a time limit; its output goes to `log`."""
    t0 = time.perf_counter()
    with open(log, "w", encoding="utf-8") as f:
        try:
            rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, timeout=max(limit_s, 1)).returncode
            timed_out = False
        except subprocess.TimeoutExpired:
            rc, timed_out = None, True
    return {"command": " ".join(cmd), "returncode": rc, "timed_out": timed_out,
            "wall_s": round(time.perf_counter() - t0, 1), "log": log.name}


def _env() -> dict[str, Any]:
    import torch

    from densenet_repro.provenance import git_commit

    commit, dirty = git_commit(Path(__file__).resolve().parent.parent)
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"gpu": gpu, "gpu_count": torch.cuda.device_count(), "torch": torch.__version__,
            "cuda": torch.version.cuda, "python": sys.version.split()[0], "commit": commit, "dirty": dirty}


def _epochs(out: Path, data_root: str, limit_s: float) -> dict[str, Any]:
    base = [sys.executable, "-m", "densenet_repro", "train", "--model", "densenet_bc100_k12", "--dataset", "c10+",
            "--epochs", "1", "--data-root", data_root, "--no-download", "--device", "cuda", "--progress", "line",
            "--out", str(out / "runs"), "--results", ""]
    modes: dict[str, Any] = {}
    deadline = time.perf_counter() + limit_s
    for name, flags in EPOCH_MODES.items():
        left = deadline - time.perf_counter()
        if left < 30:
            modes[name] = {"skipped": "no time left in the phase"}
            continue
        runs = out / "runs" / name
        shutil.rmtree(runs, ignore_errors=True)
        cmd = [*base, *flags, "--experiment", name]
        modes[name] = _run(cmd, out / f"epoch_{name}.log", left)
        summaries = list(runs.glob("*/summary.json"))
        if summaries:
            s = json.loads(summaries[0].read_text(encoding="utf-8"))
            import csv

            row = next(csv.DictReader(open(summaries[0].parent / "metrics.csv", encoding="utf-8")))
            modes[name].update(
                epoch_s=float(row["epoch_time_s"]), images_per_s=float(row["train_images_per_s"]),
                compile_s=float(row["compile_time_s"]) if row.get("compile_time_s") else None,
                train_loss=float(row["train_loss"]), test_err_pct=float(row["test_err_pct"]),
                peak_gpu_memory_gib=s.get("peak_gpu_memory_gib"), device=s.get("device"))
    return modes


def _verdicts(modes: dict[str, Any]) -> dict[str, Any]:
    """Each target with its measured number; None where the number is missing (not measured)."""
    default, eager = modes.get("default_bf16_cl_compiled", {}), modes.get("eager_bf16_cl", {})
    out: dict[str, Any] = {}
    if "epoch_s" in default:
        out["epoch_s"] = {"measured": default["epoch_s"], "target": EPOCH_TARGET_S,
                          "met": default["epoch_s"] <= EPOCH_TARGET_S}
    if default.get("compile_s") is not None:
        out["warmup_s"] = {"measured": default["compile_s"], "target": WARMUP_TARGET_S,
                           "met": default["compile_s"] <= WARMUP_TARGET_S}
    if "train_loss" in default and "train_loss" in eager:
        rel = abs(default["train_loss"] - eager["train_loss"]) / eager["train_loss"]
        out["compiled_vs_eager_loss"] = {"compiled": default["train_loss"], "eager": eager["train_loss"],
                                         "relative_difference": rel, "tolerance": LOSS_RTOL, "met": rel <= LOSS_RTOL}
    return out


def _headline(out: Path, data_root: str, limit_s: float) -> dict[str, Any]:
    from densenet_repro.experiments import headline_config
    from densenet_repro.train import locate_run, run_name

    cfg = headline_config(data_root=data_root)
    _, h, done = locate_run(cfg.validate().resolved())
    if done is not None:
        return {"skipped": f"the run is finished ({done})"}
    name = run_name(cfg, h)
    committed = Path("results") / cfg.experiment / name
    moved = out / "results" / cfg.experiment / name
    if committed.is_dir():
        shutil.copytree(committed, moved, dirs_exist_ok=True)
    cmd = [sys.executable, "-m", "densenet_repro", "train", *headline_args(data_root), "--device", "cuda",
           "--out", str(out / "results"), "--results", "", "--resume", "--progress", "line"]
    result = _run(cmd, out / "headline.log", limit_s)
    result["run_folder"] = str(moved)
    return result


def headline_args(data_root: str) -> list[str]:
    """The train CLI arguments of the headline run (the config of experiments.headline_config)."""
    from densenet_repro.experiments import HEADLINE

    return ["--model", HEADLINE["model"], "--dataset", HEADLINE["dataset"], "--epochs", str(HEADLINE["epochs"]),
            "--amp", HEADLINE["amp"], "--experiment", "table2", "--data-root", data_root, "--no-download"]


def main(argv: list[str] | None = None) -> int:
    from densenet_repro.cli import OneLineParser

    p = OneLineParser(prog="python -m densenet_repro gpu-check", description=__doc__.split("\n\n")[0])
    p.add_argument("--data-root", default="data", help="folder with CIFAR-10 (official or cifar10-jpeg.tar.gz)")
    p.add_argument("--out", default=None, help="result folder (default: $OUT, else results/gpu)")
    p.add_argument("--limit-s", type=float, default=540, help="time for all phases together (default 540)")
    p.add_argument("--phases", default=",".join(PHASES), help=f"comma-separated, from {', '.join(PHASES)}")
    args = p.parse_args(argv)
    phases = [x for x in args.phases.split(",") if x]
    unknown = sorted(set(phases) - set(PHASES))
    if unknown:
        p.error(f"unknown phase(s) {', '.join(unknown)}: use {', '.join(PHASES)}")
    import torch

    if not torch.cuda.is_available():
        print(f"{p.prog}: error: no CUDA GPU here; run it on a GPU machine", file=sys.stderr)
        return 1
    out = _out_dir(args.out)
    t0 = time.perf_counter()
    left = lambda: args.limit_s - (time.perf_counter() - t0)  # noqa: E731
    report: dict[str, Any] = {"created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "phases": phases}
    if "env" in phases:
        report["env"] = _env()
        (out / "env.json").write_text(json.dumps(report["env"], indent=1) + "\n", encoding="utf-8")
    if "tests" in phases:
        report["tests"] = _run([sys.executable, "-m", "pytest", "-q", "-m", "cuda", "tests"], out / "tests.log",
                               min(150, left()))
    if "epochs" in phases:
        report["epochs"] = _epochs(out, args.data_root, min(330, left() - 20))
        report["targets"] = _verdicts(report["epochs"])
    if "headline" in phases and left() > 60:
        report["headline"] = _headline(out, args.data_root, left() - 15)
    report["wall_s"] = round(time.perf_counter() - t0, 1)
    (out / "gpu_check.json").write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    print(json.dumps(report.get("targets", {}), indent=1))
    print(f"wrote {out / 'gpu_check.json'} in {report['wall_s']:.0f} s")
    return 0

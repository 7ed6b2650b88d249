"""`python -m densenet_repro gpu-check`: everything one short GPU slot can tell, in one command.

    python -m densenet_repro gpu-check [--commit SHA] [--limit-s 450] [--phases env,compiled,...]
    python -m densenet_repro gpu-check --rehearse [--out DIR]        # every phase on this CPU, toy sizes
    python -m densenet_repro gpu-check --adopt DIR [--results DIR]   # what came back -> committed results

A GPU comes rarely and for minutes (one call of at most 10 minutes, 15 minutes a session), so the
check orders its phases by what they tell, gives each its own time limit, runs each in a process
of its own (a phase that hangs or is killed costs only its own time, and keeps its log), and
rewrites its summary after every phase:

    env         the GPU, torch/CUDA versions, the commit
    compiled    DenseNet-BC-100 on C10+, batch 64, bf16 + channels_last, the compiled step as a CUDA
                graph, 2 epochs: the warm-up (in gpu_check.json as soon as the first step ends), the
                steady epoch (epoch 2) apart from epoch 1's extras, the LR drop and the switch from
                evaluation back to training under the captured step
    tests       the tests marked cuda, from tests/test_gpu_path.py alone
    eager_bf16  one eager epoch with the same seed: its first-epoch loss against the compiled one
    eager_fp32  one eager epoch in the paper's fp32, TF32 off
    headline    Table 2's headline run at its first unfinished schedule (results/table2/: 30, then 100
                epochs) continued for the time left, from a copy; its checkpoint comes back as one file

Everything goes to $OUT (else build/gpu-check/) as 8 flat files at most (phases.py lists them), the
most that comes back from the GPU machine. The dataset is read from data/cifar10-jpeg.tar.gz inside
the checkout (--data-root); without it the epoch phases train on synthetic data and the headline is
skipped, as the first line printed says. The commit comes from --commit or $DENSENET_COMMIT, since
the copy on the GPU machine has no .git. The exit code is 1 when no phase succeeded.
README ("GPU check") gives the exact call; results/gpu/README.md the way back into results/.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from densenet_repro.gpu_check.phases import (EPOCH_MODES, GPU, PHASES, REHEARSED, RUNNERS, SUMMARY_FILE, Sizes,
                                             gpu_rows, log_name, skipped, targets)

__all__ = ["main", "gpu_rows", "Check", "run_check"]  # gpu_rows: what the reports read of a gpu_check.json
from densenet_repro.gpu_check.runner import end_log, layout_problems

REPO = Path(__file__).resolve().parents[2]
DATA_ROOT = "data"                   # inside the checkout: the only place that travels with it
DATA_ARCHIVE = "cifar10-jpeg.tar.gz"
DEFAULT_OUT = "build/gpu-check"      # where $OUT is not set (git-ignored)
RESERVE_S = 5                        # kept back from the last phase to write the summary
MIN_PHASE_S = 10                     # a phase given less than this is skipped


@dataclass
class Check:
    """One run of the check: what it trains (sizes), where it writes, and its summary so far."""

    sizes: Sizes
    out: Path
    scratch: Path              # run folders and copies: outside out, which comes back
    data_root: str
    data_present: bool
    committed_results: str     # where the headline's committed run lives ("results", or the rehearsal's toy)
    env: dict[str, str]        # the phases' environment
    limit_s: float
    cwd: Path = REPO
    summary: dict[str, Any] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)

    def left_s(self) -> float:
        return self.limit_s - (time.monotonic() - self.started)

    def record(self, phase: str, result: dict[str, Any]) -> None:
        """Put a phase's result into the summary and rewrite gpu_check.json (atomically)."""
        self.summary["phases"][phase] = result
        self.summary["targets"] = targets(self.summary["phases"], self.sizes.kind)
        self.write()

    def write(self) -> None:
        from densenet_repro import atomic

        self.summary["wall_s"] = round(time.monotonic() - self.started, 1)
        atomic.write_json(self.out / SUMMARY_FILE, self.summary)


def data_status(data_root: str, sizes: Sizes) -> tuple[bool, str]:
    """(whether the dataset is here, the check's first line, which says what the phases train on)."""
    from densenet_repro import data

    archive = Path(data_root) / DATA_ARCHIVE
    # a symbolic link travels as a link: its target stays behind, and the link dangles there
    dangling = archive.is_symlink() and not archive.exists()
    try:
        source = None if dangling else data.resolve_source("c10+", data_root, "auto", download=False)
    except (data.DataNotFoundError, data.DataReadError):
        source = None
    if source is not None and source.present:
        return True, f"gpu-check: the dataset is {source.description}, in {source.path}: every phase trains on it"
    why = "a link whose target did not travel: copy the archive itself there" if dangling else "absent"
    headline = ("the headline phase is skipped (its run trains on the JPEG copy)" if sizes.kind == "gpu"
                else "the headline phase continues the rehearsal's toy run")
    return False, (f"gpu-check: no dataset in {archive} ({why}): the phases {', '.join(EPOCH_MODES)} train on "
                   "synthetic data (their epoch times are estimated for 50,000 images from the per-step time), "
                   + headline)


def child_env(commit: str) -> dict[str, str]:
    """The phases' environment: unbuffered output (a killed phase keeps its log) and the commit."""
    from densenet_repro.gpu_check.child import COMMIT_ENV

    return os.environ | {"PYTHONUNBUFFERED": "1", COMMIT_ENV: commit}


def new_summary(check: Check, commit: str, data_line: str, phases: list[str], argv: list[str]) -> dict[str, Any]:
    return {"check": check.sizes.kind, "status": REHEARSED if check.sizes.kind == "rehearsal" else "measured",
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "commit": commit,
            "command": "python -m densenet_repro gpu-check " + " ".join(argv), "limit_s": check.limit_s,
            "data": data_line, "data_present": check.data_present, "phases_asked": phases, "phases": {}}


def run_check(check: Check, phases: list[str]) -> None:
    """Each phase in turn, within its own limit and the time left; the summary after each."""
    check.write()  # at once: the first line (the data) and the commit are there even if the first phase hangs
    for phase in PHASES:
        if phase not in phases:
            continue
        log = check.out / log_name(phase)
        log.unlink(missing_ok=True)
        cap, left = check.sizes.caps_s[phase], check.left_s() - RESERVE_S
        timeout = left if cap is None else min(cap, left)
        if timeout < MIN_PHASE_S:
            result = skipped(f"no time left ({max(left, 0):.0f} s of the {check.limit_s:.0f} s)")
        else:
            print(f"gpu-check: {phase} (at most {timeout:.0f} s)", flush=True)
            try:
                result = RUNNERS[phase](check, phase, timeout, log)
            except Exception as e:  # noqa: BLE001 - a bug in one phase must not cost the phases after it
                with open(log, "a", encoding="utf-8") as f:
                    traceback.print_exc(file=f)
                result = {"ok": False, "status": f"failed in gpu-check itself ({type(e).__name__}: {e})"}
        end_log(log, {k: v for k, v in result.items() if k != "run_files"})  # a skipped phase's file says why
        check.record(phase, result)
        note = f" ({result['note']})" if result.get("note") else ""
        took = f" in {result['wall_s']:.0f} s" if "wall_s" in result else ""
        print(f"gpu-check: {phase}: {result['status']}{took}{note}", flush=True)
    files = sorted(p.name for p in check.out.iterdir())
    check.summary.update(files=files + ([SUMMARY_FILE] if SUMMARY_FILE not in files else []),
                         layout_problems=layout_problems(check.out))
    check.write()


def main(argv: list[str] | None = None) -> int:
    from densenet_repro.cli import OneLineParser, guarded

    argv = list(sys.argv[1:] if argv is None else argv)
    p = OneLineParser(prog="python -m densenet_repro gpu-check", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=None, help=f"result folder (default: $OUT, else {DEFAULT_OUT})")
    p.add_argument("--data-root", default=DATA_ROOT,
                   help=f"the dataset's folder (default {DATA_ROOT}, which holds {DATA_ARCHIVE})")
    p.add_argument("--limit-s", type=float, default=None,
                   help=f"time for all phases together (default {GPU.limit_s:.0f}; the rehearsal's: 170)")
    p.add_argument("--phases", default=",".join(PHASES), help=f"comma-separated, from {', '.join(PHASES)}")
    p.add_argument("--commit", default=None, help="the commit of this checkout (default: $DENSENET_COMMIT, else git)")
    p.add_argument("--rehearse", action="store_true", help="run every phase on this CPU at toy sizes, under the GPU "
                                                           "machine's constraints, and check its output")
    p.add_argument("--adopt", metavar="DIR", help="put the files a check returned into the committed results")
    p.add_argument("--results", default="results", help="the results folder --adopt writes into (default results)")
    args = p.parse_args(argv)
    phases = [x for x in args.phases.split(",") if x]
    unknown = sorted(set(phases) - set(PHASES))
    if unknown:
        p.error(f"unknown phase(s) {', '.join(unknown)}: use {', '.join(PHASES)}")
    if args.adopt:
        from densenet_repro.gpu_check.adopt import adopt

        return guarded(p.prog, lambda: adopt(Path(args.adopt), args.results))
    out = Path(args.out or os.environ.get("OUT") or DEFAULT_OUT)
    from densenet_repro.gpu_check.child import checkout_commit

    commit = checkout_commit(args.commit)
    if args.rehearse:
        from densenet_repro.gpu_check.rehearsal import rehearse

        return rehearse(out, phases, commit, args.limit_s, argv)
    import torch

    if not torch.cuda.is_available():  # asks the driver; creates no CUDA context in this process
        print(f"{p.prog}: error: no CUDA GPU here; run it on a GPU machine (or --rehearse, every phase on this "
              "CPU at toy sizes)", file=sys.stderr)
        return 1
    present, line = data_status(args.data_root, GPU)
    print(line, flush=True)
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as scratch:
        check = make_check(GPU, out, Path(scratch), args.data_root, present, "results", child_env(commit),
                           args.limit_s or GPU.limit_s)
        check.summary = new_summary(check, commit, line, phases, argv)
        run_check(check, phases)
    return finish(check)


def make_check(sizes: Sizes, out: Path, scratch: Path, data_root: str, present: bool, committed: str,
               env: dict[str, str], limit_s: float) -> Check:
    out.mkdir(parents=True, exist_ok=True)
    return Check(sizes, out, scratch, data_root, present, committed, env, limit_s)


def finish(check: Check) -> int:
    """Print the targets and what OUT holds; 1 when no phase succeeded."""
    import json

    print(json.dumps({k: {"value": v["value"], "status": v["status"]} for k, v in check.summary["targets"].items()},
                     indent=1))
    for problem in check.summary["layout_problems"]:
        print(f"gpu-check: warning: {problem}: it would not come back from the GPU machine", flush=True)
    ok = [name for name, r in check.summary["phases"].items() if r.get("ok")]
    print(f"gpu-check: {len(ok)} of {len(check.summary['phases'])} phases succeeded ({', '.join(ok) or 'none'}); "
          f"{check.out / SUMMARY_FILE} after {check.summary['wall_s']:.0f} s", flush=True)
    return 0 if ok else 1

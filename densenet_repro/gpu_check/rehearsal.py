"""`gpu-check --rehearse`: every phase of the GPU check on this CPU, at toy sizes, under the GPU
machine's constraints, and its output checked against them.

The phases run through the same code as on the GPU (phases.py, the train command line, the
headline's continuation from a copy, the flat files), with the rehearsal's Sizes: a DenseNet-BC of
depth 10 on 160 synthetic images, a toy headline run of 300 short epochs. The constraints:

- papermill, nbformat, nbconvert and jupyter do not import, and nothing under ../shared is read
  (guard.py, in the rehearsal's own process and in every phase);
- the checkout has no git to ask (GIT_DIR points nowhere), so the commit must come in from outside;
- the dataset is absent (an empty data root), as it is on the GPU machine when it is not copied;
- OUT within what comes back from the GPU machine (runner.LIMITS);
- one phase is killed by its timeout and still leaves its file: the toy headline, whose 300 epochs
  never fit its 20 s, as the real headline never fits the time left;
- the whole rehearsal in under 3 minutes.

The rehearsal runs itself again as a guarded process (the guard cannot be taken back out of a
process, so the one that asked is left as it was); the result, with each constraint's verdict
under "rehearsal", is OUT/gpu_check.json.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from densenet_repro.gpu_check import (REPO, Check, child_env, data_status, finish, make_check, new_summary,
                                      run_check)
from densenet_repro.gpu_check import guard
from densenet_repro.gpu_check.phases import PHASES, Sizes, child_command, log_name, run_epoch
from densenet_repro.gpu_check.runner import layout_problems, read_log_result, run_logged

if TYPE_CHECKING:
    from densenet_repro.config import RunConfig

SCRATCH_ENV = "DENSENET_GPU_CHECK_SCRATCH"  # the guarded rehearsal's scratch folder, made by the one that asked
WALL_LIMIT_S = 180                          # the rehearsal must fit here: CI runs it
TOY_KILL_S = 20                             # the toy headline's own limit: it is always killed by it
# What never travels to the GPU machine: the folder beside the checkout where this machine keeps
# the dataset (data/cifar10-jpeg.tar.gz may be a link into it).
FORBIDDEN = (REPO.parent / "shared",)


def _toy_headline(data_root: str | None, results: str) -> "RunConfig":
    """A headline run small enough for seconds of CPU: the same shape of run (table2, resumable,
    weights kept after epoch 1, which the committed toy run has reached) on synthetic data."""
    from densenet_repro.config import RunConfig

    return RunConfig(model="densenet40_k12", dataset="c10+", model_kwargs={"depth": 10}, epochs=300,
                     data_source="synthetic", train_subset=64, test_subset=32, experiment="table2",
                     out=results, results=results, device="cpu", budget="smoke", num_threads=1,
                     fast_blocks=False, download=False, keep_weights_at=(1,))


REHEARSAL = Sizes(
    "rehearsal", "cpu",
    ("--model", "densenet_bc100_k12", "--dataset", "c10+", "--model-kwargs", '{"depth": 10}',
     "--train-subset", "160", "--test-subset", "64", "--threads", "1",
     "--no-fast-blocks"),  # as on the GPU, where the fast blocks do not exist; and nothing to build here
    {"env": 30, "compiled": 120, "tests": 60, "eager_bf16": 45, "eager_fp32": 45, "headline": TOY_KILL_S},
    limit_s=170, headline=_toy_headline)


def rehearse(out: Path, phases: list[str], commit: str, limit_s: float | None, argv: list[str]) -> int:
    """Set up the guard and a scratch folder, and run the same command again under them; that run
    (here again, with SCRATCH_ENV set) is the rehearsal. Returns its exit code: 0 when every
    constraint holds."""
    if os.environ.get(SCRATCH_ENV):  # the guarded run
        return _rehearse_guarded(out, phases, commit, limit_s, argv, Path(os.environ[SCRATCH_ENV]))
    with tempfile.TemporaryDirectory(prefix="gpu-check-rehearsal-") as tmp:
        scratch = Path(tmp)
        settings = {"blocked": list(guard.BLOCKED_PACKAGES), "forbidden": [str(p) for p in FORBIDDEN],
                    "violations": str(scratch / "guard-violations.txt")}
        site = scratch / "guard"
        site.mkdir()
        shutil.copyfile(guard.__file__, site / "sitecustomize.py")  # imported by every Python started below
        (scratch / "data").mkdir()
        env = child_env(commit) | {
            guard.GUARD_ENV: json.dumps(settings), SCRATCH_ENV: str(scratch),
            "PYTHONPATH": os.pathsep.join([str(site), *filter(None, [os.environ.get("PYTHONPATH")])]),
            "GIT_DIR": str(scratch / "no-git"),  # the GPU machine's copy has no .git
            "DENSENET_DATA": str(scratch / "data"), "DENSENET_CACHE": str(scratch / "cache")}
        return subprocess.run([sys.executable, "-m", "densenet_repro", "gpu-check", *argv], env=env,
                              cwd=REPO).returncode


def _rehearse_guarded(out: Path, phases: list[str], commit: str, limit_s: float | None, argv: list[str],
                      scratch: Path) -> int:
    """The check with the rehearsal's Sizes, the return trip into a scratch copy, the verdicts."""
    t0 = time.monotonic()
    data_root = str(scratch / "data")
    present, line = data_status(data_root, REHEARSAL)
    print(line, flush=True)
    print("gpu-check --rehearse: every phase on this CPU at toy sizes, under the GPU machine's constraints; "
          "nothing here is a measurement", flush=True)
    committed = scratch / "committed"  # the toy headline's "committed" run, one epoch in
    _prepare_toy_headline(committed, scratch)
    check = make_check(REHEARSAL, out, scratch, data_root, present, str(committed), dict(os.environ),
                       limit_s or REHEARSAL.limit_s)
    check.summary = new_summary(check, commit, line, phases, argv)
    run_check(check, phases)
    adopted = _return_trip(check, committed, scratch / "adopted")
    check.summary["rehearsal"] = verdicts(check, phases, committed, adopted, scratch / "guard-violations.txt",
                                          time.monotonic() - t0)
    check.write()
    finish(check)
    failed = [name for name, c in check.summary["rehearsal"].items() if c["ok"] is False]
    for name in failed:
        print(f"gpu-check --rehearse: FAILED: {name}: {check.summary['rehearsal'][name]['detail']}", flush=True)
    print(f"gpu-check --rehearse: {'passed' if not failed else 'failed'} in {time.monotonic() - t0:.0f} s", flush=True)
    return 1 if failed else 0


def _prepare_toy_headline(committed: Path, scratch: Path) -> None:
    """Train the toy headline's first epoch into `committed`, as results/ holds the real one part-way."""
    config = _toy_headline(None, str(committed))
    spec = {"config": config.to_dict(), "stop_after_epoch": 1}
    log = scratch / "prepare.log"
    outcome = run_logged(child_command("headline", json.dumps(spec)), log, 60, dict(os.environ), REPO)
    if outcome.returncode != 0:
        sys.exit(f"gpu-check --rehearse: the toy headline run could not be prepared:\n"
                 f"{log.read_text(encoding='utf-8')[-3000:]}")


def _return_trip(check: Check, committed: Path, results: Path) -> dict[str, Any]:
    """`gpu-check --adopt` of the rehearsal's OUT into a copy of the toy's committed results."""
    from densenet_repro.errors import UserError
    from densenet_repro.gpu_check.adopt import adopt

    head = check.summary["phases"].get("headline", {})
    shutil.copytree(committed, results)
    try:
        adopt(check.out, str(results))
    except UserError as e:
        return {"ok": False, "detail": str(e)}
    reached = run_epoch(results / head["run"], head["config_hash"]) if head.get("run") else None
    ok = reached is not None and reached == head.get("to_epoch") and (results / "gpu" / "gpu_check.json").is_file()
    return {"ok": ok, "detail": f"{head.get('run')} at epoch {reached} in the adopted copy; "
                                f"gpu/: {sorted(p.name for p in (results / 'gpu').glob('*'))}"}


def verdicts(check: Check, phases: list[str], committed: Path, adopted: dict[str, Any], violations: Path,
             wall_s: float) -> dict[str, Any]:
    """Each constraint of the rehearsal (module docstring) with ok True/False and what was seen;
    ok None marks what is reported, not required."""
    from densenet_repro.plan import plan

    ran = check.summary["phases"]
    env, head = ran.get("env", {}), ran.get("headline", {})
    asked = [p for p in PHASES if p in phases]
    imports = {name: env.get("packages", {}).get(name) for name in ("papermill", "nbformat", "nbconvert", "jupyter")}
    read = violations.read_text(encoding="utf-8").splitlines() if violations.is_file() else []
    files = sorted(p.name for p in check.out.iterdir())
    head_log = check.out / log_name("headline")
    toy = plan(_toy_headline(None, str(committed)))
    commits = sorted({r.get("commit_recorded") for r in ran.values() if r.get("commit_recorded")})

    def verdict(ok: bool | None, detail: Any) -> dict[str, Any]:
        return {"ok": ok, "detail": detail}

    return {
        "every phase ran": verdict(all(ran.get(p, {}).get("ok") for p in asked),
                                   {p: ran.get(p, {}).get("status", "not run") for p in asked}),
        "the notebook packages do not import": verdict(bool(env) and not any(imports.values()), imports),
        "nothing read from ../shared": verdict(not read, read[:5] or "no attempt"),
        "the commit comes in without git": verdict(env.get("git_commit") == "unknown" and env.get("commit")
                                                   == check.summary["commit"] != "unknown",
                                                   {"git": env.get("git_commit"), "recorded": env.get("commit")}),
        "a phase killed by its timeout left its file": verdict(
            "headline" not in asked or (bool(head.get("timed_out")) and read_log_result(head_log) is not None
                                        and head.get("returned_file") in files),
            {"status": head.get("status"), "epochs": [head.get("from_epoch"), head.get("to_epoch")],
             "files": [f for f in files if f.startswith("headline")]}),
        "the committed run is not written": verdict(run_epoch(toy.run_dir, toy.hash) == 1,
                                                    f"{toy.run_dir.name} at epoch {run_epoch(toy.run_dir, toy.hash)}"),
        "the returned files adopt into results": adopted,
        "OUT within the GPU machine's limits": verdict(not layout_problems(check.out),
                                                       layout_problems(check.out) or f"{len(files)} files: {files}"),
        f"under {WALL_LIMIT_S // 60} minutes": verdict(wall_s < WALL_LIMIT_S, f"{wall_s:.0f} s"),
        "the runs' config.json record the commit": verdict(None, commits or "no run recorded one"),
    }

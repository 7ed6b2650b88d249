"""What two phases run in their own process: `python -m densenet_repro.gpu_check.child env|headline`.

Every phase runs in a process of its own, so that a phase that hangs or is killed by its timeout
costs only its own time, and so that the check's own process never initialises CUDA (the
phases get the whole GPU). The training phases use the train command line; these two need code:

    env        prints one JSON line: the GPU, the versions, the commit, which packages import
    headline   continues a run (train.train with on_epoch_end), given as JSON on the command line
"""

from __future__ import annotations

import importlib
import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
COMMIT_ENV = "DENSENET_COMMIT"  # the commit of a checkout without .git (the GPU machine's copy)
PROBED_PACKAGES = ("pytest", "pandas", "papermill", "nbformat", "nbconvert", "jupyter")


def checkout_commit(given: str | None = None) -> str:
    """The commit this checkout is: as given (--commit or $DENSENET_COMMIT: the copy on the GPU
    machine has no .git), else git's answer (with "+changes" when files differ), else "unknown"."""
    given = given or os.environ.get(COMMIT_ENV)
    if given:
        return given
    from densenet_repro.provenance import commit_label, git_commit

    return commit_label(*git_commit(REPO))


def _importable(name: str) -> bool:
    try:
        importlib.import_module(name)
        return True
    except ImportError:
        return False


def env() -> dict[str, Any]:
    import torch

    from densenet_repro.provenance import git_commit

    info: dict[str, Any] = {
        "gpu": None, "gpu_count": 0, "torch": torch.__version__, "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "python": platform.python_version(), "cpus": os.cpu_count(), "commit": checkout_commit(),
        "git_commit": git_commit(REPO, named=False)[0],  # what git itself answers ("unknown" without .git)
        "packages": {name: _importable(name) for name in PROBED_PACKAGES}}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        ones = torch.ones(1 << 20, device="cuda")  # a kernel runs: the GPU computes, not only answers
        info.update(gpu=props.name, gpu_count=torch.cuda.device_count(), capability=f"{props.major}.{props.minor}",
                    gpu_memory_gib=round(props.total_memory / 2**30, 1),
                    gpu_computes=int(ones.sum().item()) == ones.numel())
    return info


def config_from_json(fields: dict[str, Any]):
    """The RunConfig that RunConfig.to_dict gave (JSON lists back to the tuples it holds)."""
    from densenet_repro.config import RunConfig

    fields = dict(fields)
    for name in ("lr_milestones", "keep_weights_at"):
        fields[name] = tuple(fields[name])
    return RunConfig(**fields)


class _Stop(Exception):
    pass


def headline(spec: dict[str, Any]) -> int:
    """Train the run of spec["config"] (resuming it) until it ends, is killed, or has finished an
    epoch at which it stops: spec["stop_after_epoch"], or an epoch whose weights the run keeps
    (keep_weights_at). Only one checkpoint comes back from the GPU machine, so the run stops
    there rather than train past a kept epoch whose snapshot could not come back; the returned
    checkpoint then holds those weights."""
    from densenet_repro.train import train

    config = config_from_json(spec["config"])
    stops = set(config.keep_weights_at) | ({spec["stop_after_epoch"]} if spec.get("stop_after_epoch") else set())

    def on_epoch_end(epoch: int, row: dict[str, Any]) -> None:
        if epoch in stops:  # the checkpoint (and any snapshot) of this epoch is on disk
            raise _Stop(epoch)

    try:
        train(config, on_epoch_end=on_epoch_end)
    except _Stop as stop:
        print(f"gpu-check: stopped after epoch {stop.args[0]} (an epoch the run keeps, or the one asked for); "
              "its checkpoint holds that epoch's weights", flush=True)
    return 0


def main(argv: list[str]) -> int:
    what = argv[0] if argv else ""
    if what == "env":
        print(json.dumps(env()), flush=True)
        return 0
    if what == "headline" and len(argv) == 2:
        return headline(json.loads(argv[1]))
    print("usage: python -m densenet_repro.gpu_check.child env | headline SPEC_JSON", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Running a phase (a subprocess with its own time limit and a live log) and the limits on what comes back.

What comes back from the GPU machine is its $OUT folder, within limits (LIMITS below): at most 8
files, each at most 16 MiB, 64 MiB together, no file more than 2 folders down, names of letters,
digits, '.', '_' and '-'. Anything else is silently left there, so the check writes flat files
only, and `layout_problems` says what would not come back.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

MIB = 2**20
LIMITS = {"files": 8, "file_bytes": 16 * MIB, "total_bytes": 64 * MIB, "folders_down": 2}
_NAME = re.compile(r"[A-Za-z0-9._-]+\Z")
RESULT_PREFIX = "gpu-check result: "  # the last line of every phase's log: how the phase ended, as JSON


@dataclass
class Outcome:
    returncode: int | None   # None: killed by its timeout
    timed_out: bool
    wall_s: float


def run_logged(cmd: list[str], log: Path, timeout_s: float, env: dict[str, str], cwd: Path,
               on_line: Callable[[str], None] | None = None) -> Outcome:
    """Run `cmd` with its output written line by line to `log` as it comes (a kill keeps all of it),
    each line also handed to `on_line`; after `timeout_s` it is killed with every process it started."""
    t0 = time.monotonic()
    with open(log, "a", encoding="utf-8", buffering=1) as f:  # line-buffered: each line is on disk at once
        f.write(f"$ {shlex.join(cmd)}\n")
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, errors="replace", bufsize=1,
                                start_new_session=True)  # its own process group: a kill reaches its children

        def pump() -> None:
            for line in proc.stdout:
                f.write(line)
                if on_line is not None:
                    on_line(line)

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        try:
            rc, timed_out = proc.wait(timeout=max(timeout_s, 1)), False
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            rc, timed_out = None, True
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:  # stuck in the kernel (a GPU driver call): go on without it
                pass
        reader.join(timeout=10)  # a grandchild that left the group may hold the pipe open: do not wait for it
    return Outcome(rc, timed_out, round(time.monotonic() - t0, 1))


def end_log(log: Path, result: dict[str, Any]) -> None:
    """The phase's last log line: its result, so that each log says by itself how its phase ended."""
    with open(log, "a", encoding="utf-8") as f:
        f.write(RESULT_PREFIX + json.dumps(result, default=str) + "\n")


def read_log_result(log: Path) -> dict[str, Any] | None:
    """The result line `end_log` wrote (None if the phase never ended, e.g. the machine went away)."""
    for line in reversed(log.read_text(encoding="utf-8", errors="replace").splitlines()):
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX):])
    return None


def layout_problems(out: Path) -> list[str]:
    """What in `out` would not come back from the GPU machine (LIMITS); empty when all of it does."""
    problems, files, total = [], 0, 0
    for folder, dirs, names in os.walk(out):
        for name in dirs + names:
            path = Path(folder) / name
            rel = path.relative_to(out)
            if not _NAME.match(name):
                problems.append(f"{rel}: the name has characters other than letters, digits, '.', '_', '-'")
            if path.is_symlink():
                problems.append(f"{rel}: a link (only plain files come back)")
            elif name in names and not path.is_file():
                problems.append(f"{rel}: not a plain file")
            elif name in names:
                files += 1
                size = path.stat().st_size
                total += size
                if len(rel.parts) - 1 > LIMITS["folders_down"]:
                    problems.append(f"{rel}: more than {LIMITS['folders_down']} folders down")
                if size > LIMITS["file_bytes"]:
                    problems.append(f"{rel}: {size / MIB:.1f} MiB, over {LIMITS['file_bytes'] // MIB} MiB")
    if files > LIMITS["files"]:
        problems.append(f"{files} files, over {LIMITS['files']}")
    if total > LIMITS["total_bytes"]:
        problems.append(f"{total / MIB:.1f} MiB together, over {LIMITS['total_bytes'] // MIB} MiB")
    return problems

"""The GPU machine's missing pieces, imposed on a CPU rehearsal: packages it lacks, folders it never gets.

The GPU machine has no papermill, nbformat, nbconvert or jupyter, and only the checkout travels
there: `../shared` (where this machine keeps the dataset) does not exist on it. A rehearsal that
could import those packages or read that folder would pass here and fail there, so it runs under
this guard:

- an import of a blocked package raises ModuleNotFoundError, as it would there;
- opening or listing anything under a forbidden folder raises PermissionError, and the path is
  appended to a violations file, so that code which catches the error still gets reported.

The rehearsal installs it in its own process (`install`) and in every process it starts: this
file is copied as `sitecustomize.py` into a folder put first on PYTHONPATH, and Python imports it
at start-up. It therefore imports nothing from this package, and reads its settings from the
environment variable GUARD_ENV (JSON: {"blocked": [...], "forbidden": [...], "violations": path}).
"""

from __future__ import annotations

import importlib.abc
import json
import os
import sys

GUARD_ENV = "DENSENET_GPU_CHECK_GUARD"
BLOCKED_PACKAGES = ("papermill", "nbformat", "nbconvert", "nbclient", "jupyter", "jupyter_client",
                    "jupyter_core", "jupyterlab", "notebook")  # what the notebooks need, absent there


class _BlockedImports(importlib.abc.MetaPathFinder):
    def __init__(self, names: list[str]) -> None:
        self.names = frozenset(names)

    def find_spec(self, fullname, path=None, target=None):
        top = fullname.partition(".")[0]
        if top in self.names:
            raise ModuleNotFoundError(f"No module named {fullname!r} (the GPU machine has no {top}; "
                                      "blocked by the gpu-check rehearsal)", name=fullname)
        return None


def _forbid_reads(roots: list[str], violations: str | None) -> None:
    prefixes = tuple(os.path.realpath(r).rstrip(os.sep) + os.sep for r in roots)
    busy = []  # re-entrance: realpath and the violations file must not trigger the hook again

    def hook(event: str, args: tuple) -> None:
        if busy or event not in ("open", "os.listdir", "os.scandir") or not args:
            return
        target = args[0]
        if not isinstance(target, (str, bytes, os.PathLike)):
            return  # an open file descriptor
        busy.append(1)
        try:
            path = os.path.realpath(os.fsdecode(target))
            if not (path + os.sep).startswith(prefixes):
                return
            if violations:
                with open(violations, "a", encoding="utf-8") as f:
                    f.write(f"{os.getpid()} {event} {path}\n")
        finally:
            busy.pop()
        raise PermissionError(f"{path}: the GPU machine has no such folder (only the checkout travels); "
                              "blocked by the gpu-check rehearsal")

    sys.addaudithook(hook)


def install(settings: dict) -> None:
    """Impose the settings (see the module docstring) on this process, for the rest of its life."""
    sys.meta_path.insert(0, _BlockedImports(settings.get("blocked", [])))
    if settings.get("forbidden"):
        _forbid_reads(settings["forbidden"], settings.get("violations"))


if GUARD_ENV in os.environ and __name__ == "sitecustomize":  # started as a guarded process
    install(json.loads(os.environ[GUARD_ENV]))

"""Atomic writes: write to a temporary name next to the target, then os.replace it into place.

A process killed mid-write (Ctrl-C, out of memory, a machine taken away) never leaves a half-written
file behind, and a reader sees either the old file or the new one, never a mix: os.replace is atomic
on POSIX and Windows when both names are on one filesystem, which a temporary in the same folder
guarantees. Files are fsync'ed before the replace, so a crash of the machine cannot leave the new
name pointing at data that never reached the disk. The temporary is removed when writing fails.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


def temp_name(path: str | os.PathLike) -> Path:
    """The temporary sibling `path` is written to first: hidden, and unique per process."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


@contextmanager
def _replacing(path: str | os.PathLike) -> Iterator[IO[bytes]]:
    """A binary file to write; on a clean exit it replaces `path`, on an exception `path` is untouched."""
    path = Path(path)
    tmp = temp_name(path)
    try:
        with open(tmp, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with _replacing(path) as f:
        f.write(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` as UTF-8 (no newline translation)."""
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """`obj` as indented JSON (values JSON does not know, such as paths, as their str)."""
    import json

    write_text(path, json.dumps(obj, indent=1, default=str) + "\n")


def save_torch(obj: Any, path: str | os.PathLike) -> None:
    """torch.save(obj) to `path`."""
    import torch

    with _replacing(path) as f:
        torch.save(obj, f)


def replace_dir(tmp: str | os.PathLike, folder: str | os.PathLike) -> bool:
    """Move the fully written folder `tmp` (e.g. temp_name(folder)) to `folder` in one step.

    Returns False, and removes `tmp`, when that fails because `folder` already exists with content:
    another process finished the same folder first, and its copy is used instead.
    """
    try:
        os.replace(tmp, folder)
        return True
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        return False


def write_texts(texts: dict[str | os.PathLike, str]) -> None:
    """Replace several files together (e.g. a report's .html and .ipynb): every temporary is written and
    fsync'ed first, and only then does each replace its target, so a write that fails (a full disk)
    leaves every target as it was."""
    written: list[tuple[Path, Path]] = []
    try:
        for path, text in texts.items():
            tmp = temp_name(path)
            written.append((tmp, Path(path)))
            with open(tmp, "wb") as f:
                f.write(text.encode("utf-8"))
                f.flush()
                os.fsync(f.fileno())
        for tmp, path in written:
            os.replace(tmp, path)
    finally:
        for tmp, _ in written:
            tmp.unlink(missing_ok=True)


def ensure_writable(folder: str | os.PathLike, fix: str) -> None:
    """Create `folder` and write (then remove) a file in it, before any long work, so that a result
    is never computed only to be lost; else a one-line OutputNotWritableError that ends with `fix`."""
    from densenet_repro.errors import OutputNotWritableError

    folder = Path(folder)
    probe = folder / ".write-check"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        write_text(probe, "")
        probe.unlink()
    except OSError as e:
        raise OutputNotWritableError(f"cannot write to {folder} ({e.strerror or e}): {fix}") from None

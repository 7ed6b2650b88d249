"""The errors a user can fix: bad input, missing data, a run folder in the way.

Every command prints a `UserError` as one line ("<command>: error: <what to do>") and exits 1 (2
for a bad command-line argument). Any other exception is a bug in this package: it propagates with
its traceback, so that it is never mistaken for a user's mistake.

Each class also derives from the built-in exception a caller would expect (ValueError for a bad
value, FileNotFoundError for missing data, ...), so `except ValueError` keeps working.
"""

from __future__ import annotations

import sys
from typing import Callable

INTERRUPTED = ("interrupted: nothing is lost; every finished epoch is in its run's checkpoint.pt "
               "(rerun with --resume to continue)")


def guarded(prog: str, work: Callable[[], int], interrupted: str = INTERRUPTED) -> int:
    """A command's work: a UserError is one line and exit 1, Ctrl-C one line (`interrupted`) and exit
    130; anything else is a bug in this package and keeps its traceback."""
    try:
        return work()
    except UserError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{prog}: {interrupted}", file=sys.stderr)
        return 130


class UserError(Exception):
    """Something the user can fix; the message says what to do."""


class ConfigError(UserError, ValueError):
    """A bad value: an option, a model argument, a device, a budget."""


class DataNotFoundError(UserError, FileNotFoundError):
    """The dataset is not in data_root and cannot be downloaded; the message says where to put it."""


class DataReadError(UserError, ValueError):
    """The dataset is there but cannot be read (a corrupt archive, a file where a folder belongs)."""


class CheckpointError(UserError, RuntimeError):
    """A checkpoint that cannot be used: unreadable, or written by a different config."""


class ResultFileError(UserError, ValueError):
    """A summary.json that is not what the engine writes; it is never used as a result."""


class RunExistsError(UserError, RuntimeError):
    """An unfinished run is in the way and `resume` was not asked for."""


class RunLockedError(UserError, RuntimeError):
    """Another process is training in the same run folder."""


class OutputNotWritableError(UserError, OSError):
    """The run folder cannot be created or written."""


class MissingPackageError(UserError, ImportError):
    """An optional package that this use needs is not installed; the message names it."""


class TrainingDiverged(UserError, RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class DataMismatchError(UserError, ValueError):
    """The data at hand is not the data a run was made on (another content under the same name)."""

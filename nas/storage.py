"""A full or read-only disk under the run directory stops the search with one line, wherever the
write failed (the driver's records, SQLite through SQLAlchemy and Optuna, a worker's checkpoint).
SQLite writes in transactions, so the study keeps every trial recorded before, and the same
command resumes once there is space."""
from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path

from . import SearchError

STORAGE_ERRNOS = {errno.ENOSPC: "is full", errno.EDQUOT: "is over its quota", errno.EROFS: "is read-only"}
SQLITE_MESSAGES = {"database or disk is full": "is full", "readonly database": "is read-only"}


class StorageError(SearchError):
    """The run directory cannot be written; nothing recorded is lost."""


def storage_problem(e: BaseException | None) -> str | None:
    """What is wrong with the disk ("is full", "is read-only"), if `e` or an error it was raised
    from says the disk refused a write; None for any other error."""
    seen: set[int] = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in STORAGE_ERRNOS:
            return STORAGE_ERRNOS[e.errno]
        problem = next((what for message, what in SQLITE_MESSAGES.items() if message in str(e)), None)
        if problem:
            return problem
        e = e.__cause__ or e.__context__
    return None


def storage_error(run_dir: Path, problem: str, where: str = "") -> StorageError:
    return StorageError(f"the disk of run directory {run_dir} {problem}{f' ({where})' if where else ''}; nothing "
                        f"recorded is lost: free space or make it writable, then re-run the same command to resume")


def one_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0][:200] if lines else type(e).__name__


def check_writable(run_dir: Path) -> None:
    """Refuse, before any work, a run directory whose disk takes no new file."""
    probe = Path(run_dir) / f".write-probe-{os.getpid()}"
    try:
        probe.write_bytes(b"\0" * 4096)
        probe.unlink()
    except OSError as e:
        with contextlib.suppress(OSError):
            probe.unlink()
        problem = storage_problem(e)
        if problem is None:  # named by the folder the user gave, not by the probe
            raise OSError(e.errno, e.strerror, str(run_dir)) from None
        raise storage_error(run_dir, problem) from None

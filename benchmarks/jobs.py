"""Long benchmark trainings in worker processes: results appended as they finish, progress with an
ETA on stderr, and workers that end with the script (a killed script leaves no training behind)."""
from __future__ import annotations

import ctypes
import json
import multiprocessing
import signal
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path


def _die_with_parent() -> None:
    """Linux: have the kernel send SIGTERM to this worker when the script that started it dies."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def proc_stat(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (state first, then the parent's pid),
    or None where the process is gone (Linux)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def descendants(pid: int) -> set[int]:
    """Every process below `pid` (a driver's Ray services and workers, say)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        fields = proc_stat(int(stat.parent.name))
        if fields is not None:
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def append_jsonl(path: Path, row: dict) -> None:
    with path.open("a") as fh:
        fh.write(json.dumps(row) + "\n")


def run_jobs(jobs: list[tuple], fn: Callable[..., dict], n_jobs: int, out: Path, label: Callable[[dict], str]) -> None:
    """Run fn(*job) `n_jobs` at a time in fresh processes, appending each result to `out` at once."""
    if not jobs:
        return
    start = time.time()
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(n_jobs, mp_context=ctx, initializer=_die_with_parent) as pool:
        futures = [pool.submit(fn, *job) for job in jobs]
        for i, f in enumerate(as_completed(futures), 1):
            row = f.result()
            append_jsonl(out, row)
            eta = (time.time() - start) / i * (len(jobs) - i)
            print(f"[{i}/{len(jobs)}] {label(row)}  (elapsed {(time.time() - start) / 60:.0f} min, "
                  f"ETA ~{eta / 60:.0f} min)", file=sys.stderr, flush=True)

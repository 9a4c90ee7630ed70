"""A run directory on a disk that fills up, then turns read-only (a real tmpfs, mounted where
this runs as root): one line, exit 2, the study intact, and the run resumes once space is back."""
import os
import shutil
import sqlite3
import subprocess
import threading
from contextlib import closing

import pytest

from .helpers import TARGET, TINY_ONE_WORKER, read_only_query, run_cli, synthetic_model
from .test_search import check_run, study_trials

pytestmark = pytest.mark.slow


@pytest.fixture
def small_disk(tmp_path):
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a small disk needs root")
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256m", "tmpfs", str(disk)]).returncode != 0:
        pytest.skip("tmpfs cannot be mounted here")
    yield disk
    subprocess.run(["umount", "-l", str(disk)])


def completed(run_dir) -> int:
    return len(read_only_query(run_dir, "SELECT 1 FROM trials WHERE state = 'COMPLETE'"))


def fill_once_completed(run_dir, trials: int, path, run_ended: threading.Event) -> None:
    """Fill the disk under `path` once `trials` trials of the run are complete (unless it ends first)."""
    while completed(run_dir) < trials:
        if run_ended.wait(0.1):
            return
    with open(path, "wb") as f:
        try:
            while True:
                f.write(b"\0" * (1 << 20))
                f.flush()
        except OSError:
            pass


def snapshot(run_dir):
    with closing(sqlite3.connect(run_dir / "study.db")) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    return {t.number: (t.state.name, t.values) for t in study_trials(run_dir)}


def error_line(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr[-3000:]
    return stderr.strip().splitlines()[-1]


def test_a_full_then_read_only_disk_stops_the_search_in_one_line_and_it_resumes(tmp_path, small_disk):
    model = synthetic_model(tmp_path / "digits.model")
    args = ["run", "--name", "d", "--target-ms", TARGET, "--latency-model", model, "--runs-dir", small_disk,
            "--presets", "none", *TINY_ONE_WORKER]
    run_dir = small_disk / "d"
    run_ended = threading.Event()  # the search in this process, the disk filled from a thread beside it
    filler = threading.Thread(target=fill_once_completed, args=(run_dir, 3, small_disk / "filler", run_ended))
    filler.start()
    try:
        res = run_cli(*args, "--trials", 14, check=False)
    finally:
        run_ended.set()
        filler.join()
    assert res.returncode == 2, res.stderr[-3000:]
    line = error_line(res.stderr)
    assert line.startswith(f"error: the disk of run directory {run_dir} is full") and "re-run the same command" in line
    before = snapshot(run_dir)
    assert sum(state == "COMPLETE" for state, _ in before.values()) >= 3

    (small_disk / "filler").unlink()
    run_cli(*args, "--trials", 14)
    after = snapshot(run_dir)
    assert all(after[n] == v for n, v in before.items() if v[0] == "COMPLETE")
    check_run(run_dir, 14, presets=())

    read_only = tmp_path / "read-only"  # the same files, seen through a read-only mount
    read_only.mkdir()
    subprocess.run(["mount", "--bind", str(small_disk), str(read_only)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(read_only)], check=True)
        res = run_cli(*[read_only if a == small_disk else a for a in args], "--trials", 16, check=False)
    finally:
        subprocess.run(["umount", "-l", str(read_only)])
    assert res.returncode == 2 and res.stderr.count("\n") == 1  # before its inputs load and say anything
    assert error_line(res.stderr).startswith(f"error: the disk of run directory {read_only / 'd'} is read-only")
    assert snapshot(run_dir) == after
    run_cli(*args, "--trials", 16)
    check_run(run_dir, 16, presets=())

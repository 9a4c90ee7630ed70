"""Shared test helpers: a latency model with a known true function, fitted in milliseconds, the
command line run as a user runs it, and costly folders made once per test session."""
import contextlib
import io
import os
import shutil
import sqlite3
import subprocess
import sys
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
from filelock import FileLock

from latency_models import LatencyModel
from latency_models.features import total_flops
from latency_models.measure import fingerprint
from nas import search as engine
from nas.config import SearchConfig
from nas.search import start_ray
from search_space import SearchSpace, sample

ROOT = Path(__file__).resolve().parents[1]
TARGET = "p50"  # a target half the space meets, so the constraint bites
# rungs at 2, 6 and 14 steps (8 steps an epoch): every feasible trial trains 2, a promoted share goes on
TINY_SETTINGS = ["--dataset", "digits", "--epochs", "2", "--base-epochs", "0.25", "--eta", "2", "--subset", "0.3",
                 "--seed", "1"]
TINY = [*TINY_SETTINGS, "--workers", "2"]
# where two trainings at once add nothing to what a test checks: one Ray worker process fewer to start
TINY_ONE_WORKER = [*TINY_SETTINGS, "--workers", "1"]


def synthetic_ms(spec) -> float:
    """A known 'device': 0.3 ms fixed cost plus 1 ms per 10 MFLOPs."""
    return 0.3 + total_flops(spec) / 1e7


def other_device_ms(spec) -> float:
    """A second known 'device', slower per FLOP and with less fixed cost: it ranks differently."""
    return 0.05 + total_flops(spec) / 2e6


def synthetic_model(path: Path, img_size: int = 8, in_chans: int = 1, n: int = 80, device_ms=synthetic_ms) -> Path:
    rng = np.random.default_rng(0)
    specs = [sample(rng, SearchSpace(), img_size, in_chans, 10) for _ in range(n)]
    model = LatencyModel(fingerprint=fingerprint("cpu", "torch", 1, 1, img_size))
    model.fit(specs, np.array([device_ms(s) for s in specs]), residual=False)
    model.save(path)
    return path


OWN_PROCESS = {"dashboard"}  # it starts a server, which would outlive the call


def run_cli(*args, check=True, timeout=600, one_log=False, own_process=None):
    """`etnas ARGS` as a user runs it, its output captured; one_log: stderr joins stdout, as `> log
    2>&1` writes them. A command runs in this process, which has paid for torch's import already,
    and a search joins this process's Ray (`joining_shared_ray`), as a second search from Python does;
    the dashboard, or any command with own_process=True, gets a process of its own."""
    argv = [str(a) for a in args]
    if own_process or (own_process is None and argv[0] in OWN_PROCESS):
        res = subprocess.run([sys.executable, str(ROOT / "search.py"), *argv], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT if one_log else subprocess.PIPE, text=True, cwd=ROOT,
                             timeout=timeout)
    else:
        with joining_shared_ray():
            res = run_in_process(argv, one_log)
    if check:
        assert res.returncode == 0, (res.stderr or res.stdout)[-3000:]
    return res


def one_line_error(res, *words):
    """A command refused bad input as the product promises: exit status 2 and a single line on
    stderr, `error: ...`, holding each of `words` (no blank line, no traceback)."""
    assert res.returncode == 2, res.stderr
    assert res.stderr.startswith("error:") and res.stderr.count("\n") == 1, res.stderr
    assert all(w in res.stderr for w in words), res.stderr


def joining_shared_ray():
    """Within it, a search started in this process joins this process's Ray (`start_shared_ray`)."""
    return mock.patch.object(engine, "start_ray", start_shared_ray)


def start_shared_ray(cfg: SearchConfig):
    """`nas.search.start_ray` for a search in this process: the local Ray it joins is started once,
    as `etnas run --workers 2` starts it, so that each search does not pay again for Ray's services
    and its workers' imports (a third of a tiny search). A search trains on at most its --workers."""
    if not cfg.ray_address:
        start_ray(SearchConfig(name="tests", target_ms=1.0, latency_model="", workers=2))
    return start_ray(cfg)


def run_in_process(argv: list[str], one_log: bool) -> subprocess.CompletedProcess:
    """search.main(argv) with its streams and exit status captured as a process's would be: an
    uncaught exception is a traceback on stderr and status 1. The command's consoles are made anew
    on the captured streams, as a process with pipes for output would make them (no colour, fixed
    widths), whatever terminal pytest runs in; the warning hook main() sets is put back after."""
    import search
    from rich.console import Console

    out, err = io.StringIO(), io.StringIO()
    consoles = {"out": Console(file=out, soft_wrap=True, width=200), "console": Console(file=out if one_log else err)}
    with contextlib.ExitStack() as stack:
        stack.enter_context(contextlib.chdir(ROOT))
        stack.enter_context(contextlib.redirect_stdout(out))
        stack.enter_context(contextlib.redirect_stderr(out if one_log else err))
        for name, console in consoles.items():
            stack.enter_context(mock.patch.object(search, name, console))
        stack.enter_context(mock.patch.object(warnings, "showwarning", warnings.showwarning))
        code = exit_status(search.main, argv)
    return subprocess.CompletedProcess(argv, code, out.getvalue(), None if one_log else err.getvalue())


def exit_status(main: Callable[[list[str]], None], argv: list[str]) -> int:
    """Call main as the interpreter runs a script: the status SystemExit carries (its message, if
    it is one, on stderr with status 1), or a traceback on stderr and 1."""
    try:
        main(argv)
    except SystemExit as e:
        if e.code is None or isinstance(e.code, int):
            return e.code or 0
        print(e.code, file=sys.stderr)
        return 1
    except Exception:  # noqa: BLE001 - what the interpreter would print before exiting with 1
        traceback.print_exc()
        return 1
    return 0


def made_once(tmp_path_factory, name: str, make: Callable[[Path], None]) -> Path:
    """The folder `make` fills, made once per test session: pytest-xdist's workers share their
    session's folder, so the first to ask makes it under a lock while the others wait for it. A
    make that failed leaves no folder but its error, which the others fail with at once."""
    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    folder, done, failed = shared / name, shared / f"{name}.done", shared / f"{name}.failed"
    with FileLock(shared / f"{name}.lock"):
        if failed.exists():
            pytest.fail(f"making {name} failed earlier in this session: {failed.read_text()}")
        if not done.exists():
            folder.mkdir()
            try:
                make(folder)
            except BaseException as e:
                shutil.rmtree(folder, ignore_errors=True)
                failed.write_text(f"{type(e).__name__}: {e}"[-3000:])
                raise
            done.touch()
    return folder


def read_only_query(run_dir: Path, sql: str) -> list[tuple]:
    """Rows of `sql` on a run's study, read in sqlite's read-only mode: Optuna's storage would create
    its tables if they are not there yet, racing the run that is creating them. No database or no
    tables yet: no rows."""
    try:
        with contextlib.closing(sqlite3.connect(f"file:{run_dir / 'study.db'}?mode=ro", uri=True, timeout=5)) as db:
            return db.execute(sql).fetchall()
    except sqlite3.OperationalError:
        return []

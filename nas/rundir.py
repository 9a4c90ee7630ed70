"""Reading a run directory, whatever state its files are in, and rewriting the files derived from its
study. The study (study.db) is the record; config.json is also kept in the study, and trials.csv
and front.json are rebuilt from it (with the finished final trainings) after every event, so a
missing or corrupt copy costs nothing. Every problem that cannot be repaired is one line naming
the file and what to do."""
from __future__ import annotations

import contextlib
import copy
import fcntl
import json
import shlex
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import optuna
import pandas as pd

from search_space.spec import json_value_fits

from . import SearchError
from .records import (TRIAL_COLUMNS, WHOLE_NUMBER_COLUMNS, atomic_write, front_entry, pareto_front, read_trials,
                      rung_agreement, trial_rows, trial_state, with_finals)
from .schema import Attr, TrialState
from .storage import check_writable


def command_path(path: Path) -> str:
    """A path as a suggested command gives it: quoted where a shell would split or expand it."""
    return shlex.quote(str(path))


def study_storage(run_dir: Path) -> str:
    """The study's database URL; the path quoted, since a ? or % in it would be read as URL syntax
    (a study of runs/a?b lands in a file runs/a, shared with every runs/a?...)."""
    return f"sqlite:///{quote(str(Path(run_dir).absolute() / 'study.db'))}"


def load_run_study(run_dir: Path) -> optuna.Study:
    """The run's study, or one line saying why it cannot be read."""
    db = Path(run_dir) / "study.db"
    if not db.is_file():
        raise SearchError(f"run {run_dir} has no study.db (it holds every trial); restore it from a copy, or "
                          f"start a new run with another --name")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        names = optuna.study.get_all_study_names(study_storage(run_dir))
        study = optuna.load_study(study_name=names[0], storage=study_storage(run_dir)) if len(names) == 1 else None
    except Exception as e:
        raise SearchError(f"{db} is unreadable ({type(e).__name__}); it holds every trial of the run: restore it "
                          f"from a backup, or start a new run with another --name") from None
    if study is None:
        raise SearchError(f"{db} holds {len(names)} studies ({', '.join(names) or 'none'}), a run's holds one; "
                          f"restore it from a backup, or start a new run with another --name")
    return study


REPORT_NUMBERS = ("test_acc", "pred_ms", "measured_ms", "p10_ms", "p90_ms", "epochs", "flops", "params")


def read_json(path: Path) -> object | None:
    """A JSON file's content, or None where it is missing, truncated or corrupt."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


@contextlib.contextmanager
def searching(run_dir: Path) -> Iterator[None]:
    """Held while a search writes `run_dir`: a second search of the same run at once is refused (it
    would requeue the first one's trials under it). The system frees it when its holder ends, even
    by kill -9."""
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / ".search.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SearchError(f"{run_dir} is being searched by another process; wait for it to end or stop it, "
                              f"or choose another --name") from None
        yield


def refuse_an_unsearchable_run(run_dir: Path) -> None:
    """What the search would refuse of an existing run directory (a disk that takes no file, another
    process searching it), asked before the search loads its data and latency model, which take
    seconds to minutes; the search still takes its lock when it starts."""
    if not run_dir.is_dir():
        return
    check_writable(run_dir)
    if (run_dir / ".search.lock").exists():
        with searching(run_dir):
            pass


def refuse_a_lost_study(run_dir: Path) -> None:
    """A run whose study.db is gone but whose records remain: searching again would start over and
    overwrite trials.csv and front.json, and leave final/ naming trials of another study."""
    kept = [name for name in ("trials.csv", "front.json", "final") if (run_dir / name).exists()]
    if kept and not (run_dir / "study.db").exists():
        raise SearchError(f"{run_dir} has no study.db but holds a search's records ({', '.join(kept)}); restore "
                          f"study.db from a copy, or start a new run with another --name")


def run_begun(run_dir: Path) -> bool:
    """Whether a run was started in `run_dir`: its config.json or its study is there."""
    return (Path(run_dir) / "config.json").exists() or (Path(run_dir) / "study.db").exists()


def run_config(run_dir: Path) -> dict:
    """The run's settings as its study records them. config.json is their copy: rebuilt from the
    record when it is missing or corrupt, and rewritten from it when it differs (a hand edit would
    otherwise change the target or data the run is searched, shown and trained under), with a
    warning; a run stopped before its study began, or from before the study kept a copy, has only
    config.json."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise SearchError(f"no run at {run_dir}; start one with `etnas run --name NAME --target-ms X`")
    path = run_dir / "config.json"
    cfg = read_json(path)
    readable = isinstance(cfg, dict) and json_value_fits(cfg.get("target_ms"), "float")
    if readable and not (run_dir / "study.db").exists():
        return cfg
    if not run_begun(run_dir):
        raise SearchError(f"no run at {run_dir}; start one with `etnas run --name NAME --target-ms X`")
    saved = recorded_settings(run_dir)
    if readable and (not saved or saved == cfg):
        return cfg
    damage = "corrupt" if path.exists() else "missing"
    if not saved:
        raise SearchError(f"{path} is {damage} and the study keeps no copy (a run from before etnas kept one); "
                          f"restore it, or start a new run with another --name")
    with contextlib.suppress(OSError):  # a read-only run is still read right
        write_config(run_dir, saved)
    if readable:
        changed = ", ".join(sorted(k for k in {*cfg, *saved} if cfg.get(k) != saved.get(k)))
        warnings.warn(f"{path} differs from the study's record of the run's settings ({changed}); the record is "
                      f"used, and config.json rewritten from it", stacklevel=2)
    else:
        warnings.warn(f"{path} was {damage}; rebuilt from the study", stacklevel=2)
    return saved


_RECORDED: dict[str, tuple[tuple[int, int], dict | None]] = {}  # study.db -> (its state, its settings)


def recorded_settings(run_dir: Path) -> dict | None:
    """The settings the run's study records (None: a run from before it kept them), read once for
    each state of study.db: opening the study takes about 0.1 s, and a command asks for the
    settings many times. A file written in the last second is read again each time (file times
    are coarse: a second write so soon could leave them as they were)."""
    db = Path(run_dir) / "study.db"
    if not db.is_file():
        load_run_study(run_dir)  # says so in one line
    stat = db.stat()
    state, key = (stat.st_mtime_ns, stat.st_size), str(db.resolve())
    recent = time.time_ns() - stat.st_mtime_ns < 1_000_000_000
    if recent or key not in _RECORDED or _RECORDED[key][0] != state:
        _RECORDED[key] = (state, load_run_study(run_dir).user_attrs.get(Attr.CONFIG))
    return copy.deepcopy(_RECORDED[key][1])  # the caller's to change


def write_config(run_dir: Path, cfg: dict) -> None:
    tmp = Path(run_dir) / "config.json.tmp"
    tmp.write_text(json.dumps(cfg, indent=1))
    tmp.replace(Path(run_dir) / "config.json")


def write_records(study: optuna.Study, run_dir: Path, target_ms: float) -> list[dict]:
    """Write trials.csv and front.json for the study's current state and the final trainings done;
    return the front."""
    rows = trial_rows(study.get_trials(deepcopy=False))
    agreement = rung_agreement(rows)
    front = with_finals([front_entry(r, agreement) for r in pareto_front(rows, target_ms)], final_reports(run_dir))
    table = pd.DataFrame(rows, columns=TRIAL_COLUMNS).astype(dict.fromkeys(WHOLE_NUMBER_COLUMNS, "Int64"))
    atomic_write(run_dir / "trials.csv", table.to_csv(index=False))
    atomic_write(run_dir / "front.json", json.dumps(front, indent=1))
    return front


def run_records(run_dir: Path) -> tuple[list[dict], list[dict]]:
    """(trials.csv rows, front.json), both rebuilt from the study when either is missing or corrupt."""
    run_dir = Path(run_dir)
    cfg = run_config(run_dir)
    rows, front = read_trials(run_dir / "trials.csv"), read_json(run_dir / "front.json")
    if rows is None or not front_of(front, rows):
        front = write_records(load_run_study(run_dir), run_dir, float(cfg["target_ms"]))
        rows = read_trials(run_dir / "trials.csv")
    return rows, front


def front_of(front: object, rows: list[dict]) -> bool:
    """Whether front.json's content is a front of these trials: points of trials they hold, with
    the point's numbers (a valid JSON file edited or written by something else is no front)."""
    numbers = {r["number"] for r in rows}
    return isinstance(front, list) and all(
        isinstance(f, dict) and f.get("trial") in numbers and isinstance(f.get("short"), str)
        and all(json_value_fits(f.get(k), "float") for k in ("val_acc", "pred_ms"))
        and all(f.get(k) is None or json_value_fits(f[k], "float") for k in ("flops", "params")) for f in front)


def final_report(run_dir: Path, number: int) -> dict | None:
    """final/N/final.json, or None where there is none; a corrupt one is one line."""
    path = Path(run_dir) / "final" / str(number) / "final.json"
    if not path.exists():
        return None
    report = read_json(path)
    if not (isinstance(report, dict) and "test_acc" in report
            and all(json_value_fits(report[k], "float") for k in REPORT_NUMBERS if k in report)):
        raise SearchError(f"{path} is corrupt; re-run `etnas train {command_path(run_dir)} --trial {number}` (it "
                          f"resumes or re-measures) to rewrite it")
    return report


def run_dataset(run_dir: Path, cfg: dict):
    """The dataset the run searched on, read again (to train, to quantize); one that cannot be read
    is one line saying it is the run's, for no option of these commands names another."""
    from evaluators.data import load_dataset
    from evaluators.sources import DataError

    try:
        return load_dataset(cfg["dataset"])
    except DataError as e:
        raise SearchError(f"run {run_dir} was searched on {cfg['dataset']}, which cannot be read now "
                          f"({str(e).split('; ')[0]}); put it back where the run found it") from None


def final_reports(run_dir: Path) -> dict[int, dict]:
    """Every finished final training of the run by trial; an unreadable one is a warning, not a
    reason to hide the rest."""
    folder = Path(run_dir) / "final"
    reports = {}
    for sub in sorted(folder.glob("*")) if folder.is_dir() else []:
        try:
            report = final_report(run_dir, int(sub.name)) if sub.name.isdigit() else None
        except SearchError as e:
            warnings.warn(str(e), stacklevel=2)
            report = None
        if report:
            reports[int(sub.name)] = report
    return reports


def load_trial(run_dir: Path, number: int) -> optuna.trial.FrozenTrial:
    """A trained trial of the run, or a SearchError saying why it cannot be used."""
    run_dir = Path(run_dir)
    run_config(run_dir)
    trials = load_run_study(run_dir).get_trials(deepcopy=False)
    if not 0 <= number < len(trials):
        raise SearchError(f"run {run_dir} has no trial {number} (it has trials 0..{len(trials) - 1}); "
                          f"see `etnas front {command_path(run_dir)}`")
    t = trials[number]
    state = trial_state(t)
    if state == TrialState.DUPLICATE:
        return load_trial(run_dir, t.user_attrs[Attr.CACHED_FROM])
    if state != TrialState.COMPLETE:
        why = t.user_attrs.get(Attr.FAILURE, "")
        raise SearchError(f"trial {number} of {run_dir} is {state}{': ' + why if why else ''}; pick a trained "
                          f"trial from `etnas front {command_path(run_dir)}`")
    return t


def resolve_trial(run_dir: Path, trial: str) -> int:
    """A trial number from the command line: an integer, or `best` (the front's most accurate)."""
    run_config(run_dir)
    if trial == "best":
        _, front = run_records(run_dir)
        if not front:
            raise SearchError(f"run {run_dir} has no feasible trained trial yet, so no 'best'; "
                              f"give a trial number or let the search finish")
        return max(front, key=lambda f: (f["val_acc"], -f["pred_ms"]))["trial"]
    try:
        return int(trial)
    except ValueError:
        raise SearchError(f"--trial {trial!r} is neither a trial number nor 'best'") from None

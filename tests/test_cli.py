"""The command line's shape: `etnas` and `search.py` are one program, every option of every
subcommand has help with its default, and the dashboard reads a run's study."""
import argparse
import json
import subprocess
import sys

import optuna
import pytest

from search import build_parser

from .helpers import ROOT, run_cli


def subparsers(parser: argparse.ArgumentParser, path=()):
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from subparsers(child, (*path, name))


def test_every_option_of_every_subcommand_has_help():
    missing = [(" ".join(path), a.dest) for path, p in subparsers(build_parser()) for a in p._actions
               if not isinstance(a, (argparse._HelpAction, argparse._SubParsersAction)) and not a.help]
    assert missing == []


def test_help_shows_defaults_and_version_is_printed():
    res = run_cli("train", "--help")
    assert "(default: 128)" in res.stdout and "(default: 0.001)" in res.stdout
    assert run_cli("--version").stdout.startswith("etnas ")


def test_etnas_console_script_is_the_same_program():
    etnas = ROOT / ".venv" / "bin" / "etnas"
    if not etnas.exists():
        pytest.skip("not installed in .venv (make setup installs it)")
    res = subprocess.run([str(etnas), "space", "sample", "--help"], capture_output=True, text=True)
    assert res.returncode == 0 and "--out OUT" in res.stdout


def get_json(app, path: str):
    """GET `path` from a WSGI app, as a browser would ask optuna-dashboard's API."""
    from wsgiref.util import setup_testing_defaults

    environ = {"PATH_INFO": path, "REQUEST_METHOD": "GET"}
    setup_testing_defaults(environ)
    status = []
    body = b"".join(app(environ, lambda s, headers, exc=None: status.append(s)))
    assert status[0].startswith("200"), status
    return json.loads(body)


def test_dashboard_reads_the_runs_study_and_user_attributes(tmp_path):
    from optuna_dashboard import wsgi

    storage = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(study_name="demo", storage=storage, directions=["maximize", "minimize"])
    trial = study.ask()
    trial.set_user_attr("pred_ms", 1.5)
    trial.set_user_attr("failure", "loss became nan")
    study.tell(trial, [0.5, 1.5])
    app = wsgi(storage)
    studies = get_json(app, "/api/studies")["study_summaries"]
    assert [s["study_name"] for s in studies] == ["demo"]
    detail = get_json(app, f"/api/studies/{studies[0]['study_id']}")
    attrs = {a["key"]: a["value"] for a in detail["trials"][0]["user_attrs"]}
    assert attrs == {"pred_ms": "1.5", "failure": "loss became nan"}


def test_dashboard_on_a_missing_run_is_one_line(tmp_path):
    res = run_cli("dashboard", str(tmp_path / "nope"), check=False)
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1 and "study.db" in res.stderr


BAD_OPTIONS = [
    (["run", "--name", "x", "--target-ms", "5", "--trials", "3"], "--trials: 3 is below the minimum, 7"),
    (["run", "--name", "x", "--target-ms", "5", "--workers", "0"], "--workers: 0 is below the minimum, 1"),
    (["run", "--name", "x", "--target-ms", "5", "--subset", "0"], "--subset: 0 is outside (0, 1]"),
    (["run", "--name", "x", "--target-ms", "5", "--subset", "1.5"], "--subset: 1.5 is outside (0, 1]"),
    (["run", "--name", "x", "--target-ms", "5", "--epochs", "-1"], "--epochs: -1 is outside (0, inf]"),
    (["run", "--name", "x", "--target-ms", "5", "--lr", "0"], "--lr: 0 is outside (0, inf]"),
    (["run", "--name", "x", "--target-ms", "5", "--batch-size", "many"], "--batch-size: 'many' is not an integer"),
    (["run", "--name", "x", "--target-ms", "-2"], "a latency target must be positive"),
    (["run", "--name", "x", "--target-ms", "p140"], "a percentile must lie in (0, 100]"),
    (["measure", "--out", "t.csv", "--remeasure", "1.2"], "--remeasure: 1.2 is outside [0, 1]"),
    (["measure", "--out", "t.csv", "--n", "-1"], "--n: -1 is below the minimum, 0"),
    (["space", "sample", "--out", "s.jsonl", "--img-size", "4"], "--img-size: 4 is below the minimum, 8"),
    (["train", "runs/x", "--trial", "best", "--epochs", "0"], "--epochs: 0 is outside (0, inf]"),
    (["train", "runs/x", "--trial", "best", "--mixup", "-0.5"], "--mixup: -0.5 is outside [0, inf]"),
    (["fit-latency", "t.csv", "--out", "m", "--test-fraction", "1"], "--test-fraction: 1 is outside (0, 0.9]"),
    (["nonsense"], "invalid choice: 'nonsense'"),
]


@pytest.mark.parametrize("args, message", BAD_OPTIONS)
def test_bad_options_are_one_line_exit_2_and_write_nothing(tmp_path, args, message):
    res = subprocess.run([sys.executable, str(ROOT / "search.py"), *args, "--runs-dir", str(tmp_path)]
                         if args[0] == "run" else [sys.executable, str(ROOT / "search.py"), *args],
                         capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in res.stderr
    assert list(tmp_path.iterdir()) == []  # nothing written

"""The command line's shape: `etnas` and `search.py` are one program, every option of every
subcommand has help with its default, the dashboard reads a run's study, and results go to stdout
while progress, warnings and errors go to stderr."""
import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import warnings

import optuna
import pytest

import search
from search import build_parser

from .helpers import ROOT, one_line_error, run_cli


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
    said = " ".join(res.stdout.split())
    assert "(default: as the trial's earlier final training, else 128)" in said and "else 0.001)" in said
    assert "(default: cpu)" in said
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
    one_line_error(res, "study.db")


def test_dashboard_on_a_damaged_study_or_a_busy_port_is_one_line_before_serving(tmp_path):
    (tmp_path / "study.db").write_bytes(b"SQLite format 3\x00 but not really")
    one_line_error(run_cli("dashboard", tmp_path, check=False), "study.db is unreadable")
    (tmp_path / "study.db").unlink()
    optuna.create_study(study_name="demo", storage=f"sqlite:///{tmp_path / 'study.db'}")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        one_line_error(run_cli("dashboard", tmp_path, "--port", port, check=False),
                       f"port {port} cannot be used here (Address already in use); choose another --port")


BAD_OPTIONS = [
    (["run", "--name", "x", "--target-ms", "5", "--trials", "3"], "--trials: 3 is below the minimum, 7"),
    (["run", "--name", "x", "--target-ms", "5", "--trials", "2", "--presets", "deit-tiny,slab-deit"],
     "--trials: 2 is below the minimum, 3: the 2 seed presets come first"),
    (["run", "--name", "x", "--target-ms", "5", "--presets", "deit-tiny,vit-huge"],
     "unknown preset 'vit-huge'; use all"),
    (["run", "--name", "x", "--target-ms", "5", "--workers", "0"], "--workers: 0 is below the minimum, 1"),
    (["run", "--name", "x", "--target-ms", "5", "--subset", "0"], "--subset: 0 is outside (0, 1]"),
    (["run", "--name", "x", "--target-ms", "5", "--subset", "1.5"], "--subset: 1.5 is outside (0, 1]"),
    (["run", "--name", "x", "--target-ms", "5", "--epochs", "-1"], "--epochs: -1 is outside (0, inf)"),
    (["run", "--name", "x", "--target-ms", "5", "--lr", "0"], "--lr: 0 is outside (0, inf)"),
    (["run", "--name", "x", "--target-ms", "5", "--batch-size", "many"], "--batch-size: 'many' is not an integer"),
    (["run", "--name", "x", "--target-ms", "-2"], "a latency target must be positive"),
    (["run", "--name", "x", "--target-ms", "p140"], "a percentile must lie in (0, 100]"),
    (["measure", "--out", "t.csv", "--remeasure", "1.2"], "--remeasure: 1.2 is outside [0, 1]"),
    (["measure", "--out", "t.csv", "--n", "-1"], "--n: -1 is below the minimum, 0"),
    (["space", "sample", "--out", "s.jsonl", "--img-size", "4"], "--img-size: 4 is below the minimum, 8"),
    (["train", "runs/x", "--trial", "best", "--epochs", "0"], "--epochs: 0 is outside (0, inf)"),
    (["train", "runs/x", "--trial", "best", "--mixup", "-0.5"], "--mixup: -0.5 is outside [0, inf)"),
    (["fit-latency", "t.csv", "--out", "m", "--test-fraction", "1"], "--test-fraction: 1 is outside (0, 0.9]"),
    (["run", "--name", "x", "--target-ms", "5", "--dataset", "npz:none.npz"], "dataset file none.npz does not exist"),
    (["run", "--name", "x", "--target-ms", "5", "--dataset", "cifar"], "unknown dataset 'cifar'; use digits"),
    (["export", "runs/x", "--trial", "0", "--out", "o", "--format", "tflite"], "'tflite': choose a comma-separated"),
    (["export", "runs/x", "--trial", "0", "--out", "o", "--format", ","], "',': choose a comma-separated"),
    (["train", "runs/x", "--trial", "best", "--batch-size", "1"], "--batch-size: 1 is below the minimum, 2"),
    (["measure", "--out", "t.csv", "--specs", "/dev/null"], "spec file /dev/null holds no specs"),
    (["export", "runs/x", "--trial", "0", "--out", ""], "--out: an empty path; give a file or folder name"),
    (["train", "runs/x", "--trial", "best", "--epochs", "inf"], "--epochs: 'inf' is not a finite number"),
    (["train", "runs/x", "--trial", "best", "--randaugment", "bogus"], "'bogus' is not a timm RandAugment config"),
    (["run", "--name", "x", "--target-ms", "inf"], "a latency target must be positive, finite milliseconds"),
    (["nonsense"], "invalid choice: 'nonsense'"),
    (["run", "--name", "../x", "--target-ms", "5"], "--name: '../x': give one folder name, without '/'"),
    (["run", "--name", "a\tb", "--target-ms", "5"], "--name: 'a\\tb' holds a control character (tab, newline)"),
    (["run", "--name", "x" * 300, "--target-ms", "5"], "--name: a name of 300 bytes; give one of at most 255"),
    (["dashboard", "runs/x", "--port", "70000"], "--port: 70000 is above the maximum, 65535"),
]


@pytest.mark.parametrize("args, message", BAD_OPTIONS)
def test_bad_options_are_one_line_exit_2_and_write_nothing(tmp_path, args, message):
    res = subprocess.run([sys.executable, str(ROOT / "search.py"), *args, "--runs-dir", str(tmp_path)]
                         if args[0] == "run" else [sys.executable, str(ROOT / "search.py"), *args],
                         capture_output=True, text=True, cwd=tmp_path, timeout=300)
    one_line_error(res, message)
    assert res.stdout == ""
    assert list(tmp_path.iterdir()) == []  # nothing written


LONG_NAME = "p4 downsample=efficientvit 64x1[batchnorm·sla·h4k32v1·ffn1x2] 160x1[batchnorm·mhsa·h2k16v2·ffn1x2·dw]"


def finished_run(run_dir):
    """A run directory as `etnas run` leaves it, two top-rung trials after one promotion, written
    directly (no training)."""
    import pandas as pd

    from nas.records import TRIAL_COLUMNS

    rows = [{**dict.fromkeys(TRIAL_COLUMNS), "number": n, "state": "COMPLETE", "rung": 1, "rung_acc": acc,
             "val_acc": acc, "short": f"{LONG_NAME} #{n}", "pred_ms": ms, "flops": 1e6, "params": 1000,
             "rung_accs": json.dumps([acc / 2, acc])} for n, acc, ms in ((0, 0.5, 1.0), (1, 0.6, 2.0))]
    tau = [{"rungs": "0->1", "trials": 2, "kendall_tau": None}]
    run_dir.mkdir()
    (run_dir / "config.json").write_text(json.dumps({"target_ms": 3.0}))
    pd.DataFrame(rows, columns=TRIAL_COLUMNS).to_csv(run_dir / "trials.csv", index=False)
    (run_dir / "front.json").write_text(json.dumps(
        [{**{k: r[k] for k in ("val_acc", "rung", "pred_ms", "flops", "params", "short")}, "trial": r["number"],
          "preset": None, "rung_tau": tau, "measured_ms": None} for r in rows]))
    return run_dir


def test_front_prints_results_on_stdout_and_warnings_on_stderr(tmp_path):
    run = finished_run(tmp_path / "a-run-directory-whose-path-is-longer-than-the-eighty-columns-of-a-pipe")
    (run / "final" / "1").mkdir(parents=True)
    (run / "final" / "1" / "final.json").write_text("{")  # unreadable: a warning, the front still shows
    res = run_cli("front", run)
    assert "Pareto front" in res.stdout and "Kendall tau n/a" in res.stdout
    assert f"plot: {run / 'front.html'}\n" in res.stdout  # one line, to pipe
    assert f"{LONG_NAME} #0" in res.stdout and f"{LONG_NAME} #1" in res.stdout  # not cut at 80 columns
    assert "final.json is corrupt" in res.stderr and "corrupt" not in res.stdout
    assert res.stderr.startswith("warning:") and len(res.stderr.strip().splitlines()) == 1  # not Python's two lines


def test_written_files_and_version_on_stdout_bad_options_on_stderr(tmp_path):
    res = run_cli("space", "sample", "--n", 2, "--out", tmp_path / "s.jsonl")
    assert res.stdout == f"wrote 2 specs (2 distinct) to {tmp_path / 's.jsonl'}\n" and res.stderr == ""
    version = run_cli("--version")
    assert version.stdout.startswith("etnas ") and version.stderr == ""
    bad = run_cli("space", "sample", "--n", -1, "--out", tmp_path / "t.jsonl", check=False)
    assert bad.returncode == 2 and bad.stdout == "" and bad.stderr.startswith("error:")


@pytest.mark.parametrize("refusal, advice", [
    ((13, "Permission denied"), "Permission denied; give this user the right to read or write it (or, for an "
                                "output, choose another path)"),
    ((30, "Read-only file system"), "Read-only file system; its file system is read-only: remount it writable"),
    ((28, "No space left on device"), "No space left on device; free space, then re-run the same command"),
    ((21, "Is a directory"), "Is a directory; choose another path"),
])
def test_a_file_that_cannot_be_written_is_one_line_with_advice_for_its_cause(tmp_path, monkeypatch, refusal, advice):
    from pathlib import Path

    def refuse(path, *args, **kwargs):
        raise OSError(*refusal, str(path))

    monkeypatch.setattr(Path, "write_text", refuse)
    one_line_error(run_cli("space", "sample", "--n", 2, "--out", tmp_path / "s.jsonl", check=False),
                   f"error: {tmp_path / 's.jsonl'}: {advice}")


def test_more_timing_threads_than_cores_are_warned_of(monkeypatch):
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    with pytest.warns(UserWarning, match="--threads 3 is above this machine's 2 cores"):
        search.warn_of_more_threads_than_cores(3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        search.warn_of_more_threads_than_cores(2)


def test_a_spec_file_for_other_inputs_is_not_timed_into_this_table(tmp_path):
    specs = tmp_path / "s.jsonl"
    run_cli("space", "sample", "--n", 2, "--img-size", 32, "--in-chans", 3, "--out", specs)
    one_line_error(run_cli("measure", "--specs", specs, "--img-size", 8, "--in-chans", 1, "--out", tmp_path / "t.csv",
                           check=False),
                   f"spec 1 of {specs} takes 32-px images of 3 channel(s), not the --img-size 8 --in-chans 1 timed here")
    assert not (tmp_path / "t.csv").exists()


def test_an_out_path_holding_other_work_is_replaced_only_with_force(tmp_path):
    from .helpers import synthetic_model

    table = tmp_path / "t.csv"
    table.write_text("hours,of,timings\n1,2,3\n")
    one_line_error(run_cli("fit-latency", table, "--out", table, "--force", check=False),
                   f"--out {table} is the timing table being fitted; give the model a path of its own")
    one_line_error(run_cli("fit-latency", tmp_path / "other.csv", "--out", table, check=False),
                   f"--out {table} exists and is not a latency model; pass --force to replace it")
    one_line_error(run_cli("space", "sample", "--n", 2, "--out", table, check=False),
                   f"--out {table} exists and is not a spec file (JSONL); pass --force")
    assert table.read_text() == "hours,of,timings\n1,2,3\n"
    old_format = tmp_path / "old.model"
    old_format.write_bytes(b"\x80\x04 a pickled model of an earlier etnas")
    for model in (synthetic_model(tmp_path / "m.model"), old_format):  # a model is replaced (a re-fit): the
        refit = run_cli("fit-latency", table, "--out", model, check=False)  # table is what is refused then
        assert refit.returncode == 2 and "--out" not in refit.stderr and "t.csv" in refit.stderr
    run_cli("space", "sample", "--n", 2, "--out", table, "--force")
    run_cli("space", "sample", "--n", 3, "--out", table)  # a spec file now: sampled again without --force
    assert len(table.read_text().splitlines()) == 3


def test_a_bad_run_directory_is_one_line_on_stderr_only(tmp_path):
    res = run_cli("front", tmp_path / "nope", check=False)
    one_line_error(res, "no run at")
    assert res.stdout == ""


def test_only_input_errors_become_one_line_and_exit_2(monkeypatch, capsys):
    from nas import SearchError

    def failing(error):
        def cmd_front(args):
            raise error
        monkeypatch.setattr(search, "cmd_front", cmd_front)  # main's parser binds it when built

    failing(SearchError("the run is broken; start again"))
    with pytest.raises(SystemExit) as exit_:
        search.main(["front", "nowhere"])
    assert exit_.value.code == 2 and capsys.readouterr().err.strip() == "error: the run is broken; start again"
    failing(RuntimeError("a bug"))  # not bad input: the traceback is the report
    with pytest.raises(RuntimeError, match="a bug"):
        search.main(["front", "nowhere"])


def test_a_second_ctrl_c_lets_the_first_ones_clean_up_finish_and_a_third_interrupts(monkeypatch, capsys):
    def interrupted(args):
        raise KeyboardInterrupt
    monkeypatch.setattr(search, "cmd_front", interrupted)
    before = signal.getsignal(signal.SIGINT)
    try:
        with pytest.raises(SystemExit) as exit_:
            search.main(["front", "nowhere"])
        assert signal.getsignal(signal.SIGINT) is search.say_still_stopping
        os.kill(os.getpid(), signal.SIGINT)  # as it lands while Ray's exit-time shutdown runs
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # a third one interrupts
    finally:
        signal.signal(signal.SIGINT, before)
    err = capsys.readouterr().err
    assert exit_.value.code == 130 and "interrupted" in err and "still stopping the worker processes" in err


def test_sigterm_stops_a_command_as_ctrl_c_does_with_its_own_word_and_status(monkeypatch, capsys):
    def terminated(args):
        assert signal.getsignal(signal.SIGTERM) is search.interrupt_on_sigterm  # else the kill ends pytest
        os.kill(os.getpid(), signal.SIGTERM)
    monkeypatch.setattr(search, "cmd_front", terminated)
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    try:
        with pytest.raises(SystemExit) as exit_:
            search.main(["front", "nowhere"])
    finally:
        signal.signal(signal.SIGINT, before[0])
        signal.signal(signal.SIGTERM, before[1])
    assert exit_.value.code == 143 and capsys.readouterr().err.startswith("terminated: what was already saved is kept")


def test_the_constraint_is_the_first_latency_model_unless_named():
    from nas import SearchError
    from nas.targets import constraint_and_others

    models = ["lat/cpu-fp32.model", "lat/cpu-int8.model", "lat/phone.model"]
    assert constraint_and_others(models, None) == (models[0], tuple(models[1:]))
    assert constraint_and_others(models, "cpu-int8") == (models[1], (models[0], models[2]))
    assert constraint_and_others([], None) == ("", ())  # none given: this machine is calibrated
    with pytest.raises(SearchError, match="--constraint gpu names none of the --latency-model files "
                                          r"\(cpu-fp32, cpu-int8, phone\)"):
        constraint_and_others(models, "gpu")


def test_the_live_line_counts_down_the_time_limit_when_it_ends_the_run_first():
    from nas.config import SearchConfig
    from nas.search import SearchProgress

    cfg = SearchConfig(name="r", target_ms=1.0, latency_model="", workers=2)
    by_trials = SearchProgress(done=10, total=30, training_s_left=600.0)
    assert "ETA ~10.0 min" in search.progress_text(by_trials, cfg)
    by_limit = SearchProgress(done=10, total=30, training_s_left=600.0, minutes_left=4.0)
    assert "ETA ~4.0 min" in search.progress_text(by_limit, cfg)
    assert "ETA ~10.0 min" in search.progress_text(SearchProgress(done=10, total=30, training_s_left=600.0,
                                                                  minutes_left=25.0), cfg)
    assert "ETA ~7.5 min" in search.progress_text(SearchProgress(minutes_left=7.5), cfg)  # before any training
    assert "ETA" not in search.progress_text(SearchProgress(done=1, total=30), cfg)
    assert "ETA ~42 s" in search.progress_text(SearchProgress(training_s_left=42.3), cfg)
    assert "2 training (1 more queued)," in search.progress_text(SearchProgress(running=2, queued=1), cfg)
    assert "2 training," in search.progress_text(SearchProgress(running=2), cfg)


def test_a_log_gets_a_line_per_search_event_and_a_progress_line_every_so_often(monkeypatch):
    import io

    from rich.console import Console

    import nas.search
    from nas.config import SearchConfig
    from nas.search import SearchProgress

    log = io.StringIO()
    monkeypatch.setattr(search, "console", Console(file=log, width=80))  # a file, as `> log 2>&1` gives

    def events(cfg, on_progress, inputs, started):
        for last in ("", "starting Ray workers", "trial 6 training p4 96x6[layernorm·mhsa]",
                     "trial 6: 0.612 at rung 0, 1.10 ms"):
            on_progress(SearchProgress(done=1, total=30, last=last))
        return []

    monkeypatch.setattr(nas.search, "run_search", events)
    search.watch_search(SearchConfig(name="r", target_ms=1.0, latency_model=""), None, 0.0)
    lines = log.getvalue().splitlines()
    assert len(lines) == 3 and lines[0].endswith("| starting Ray workers")  # an event each, unwrapped
    assert lines[1].startswith("r 1/30 done") and lines[1].endswith("| trial 6 training p4 96x6[layernorm·mhsa]")
    monkeypatch.setattr(search, "LOG_EVERY_S", 0)
    with search.progress_bar() as bar:
        task = bar.add_task("calibrating", total=None, info="")
        bar.update(task, advance=3, info="1.20 ms")
    assert "\ncalibrating: 3 in 0 s 1.20 ms\n" in log.getvalue()
    monkeypatch.setattr(search, "LOG_EVERY_S", 3600)
    with search.progress_bar() as bar:  # the last line when the work is done, not after what follows it
        task = bar.add_task("measuring", total=2, info="")
        bar.update(task, advance=1, info="a")
        bar.update(task, advance=1, info="b")
        search.console.print("what follows")
    assert log.getvalue().endswith("measuring: 2/2 in 0 s b\nwhat follows\n")


def test_a_reader_that_stops_reading_ends_the_command_without_a_word():
    """`etnas front RUN --json | head -c 100`: the reader closed the pipe; not 'error: Broken pipe'.
    A pipe that is not standard output breaking is an error like any other."""
    broken = ("import errno, time, search\n"
              "def front(args):\n"
              "    time.sleep(0.5)  # the reader is gone by then, or not\n"
              "    raise BrokenPipeError(errno.EPIPE, 'Broken pipe')\n"
              "search.cmd_front = front\n"
              "search.main(['front', 'runs/x'])\n")
    child = subprocess.Popen([sys.executable, "-c", broken], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    child.stdout.close()
    assert (child.wait(), child.stderr.read()) == (1, b"")
    res = subprocess.run([sys.executable, "-c", broken], cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 2 and res.stderr.startswith("error: [Errno 32] Broken pipe")

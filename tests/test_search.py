"""The search engine end to end on digits: real Optuna studies, real Ray workers, real training."""
import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest
import torch

from benchmarks.jobs import descendants
from evaluators.recipes import PROXY_EVALUATION
from latency_models import LatencyModel
from nas.config import SearchConfig
from nas.records import pareto_front
from nas.rungs import Rungs
from search_space.presets import PRESETS

from .helpers import (ROOT, TARGET, TINY, TINY_ONE_WORKER, one_line_error, read_only_query, run_cli,
                      start_shared_ray, synthetic_model)


@pytest.fixture(scope="module")
def latency_model(tmp_path_factory):
    return synthetic_model(tmp_path_factory.mktemp("lat") / "digits.model")


def study_trials(run_dir):
    storage = f"sqlite:///{run_dir}/study.db"
    (name,) = optuna.study.get_all_study_names(storage)
    return optuna.load_study(study_name=name, storage=storage).trials


def dominated(a, b):
    return b["val_acc"] >= a["val_acc"] and b["pred_ms"] <= a["pred_ms"] and (
        b["val_acc"] > a["val_acc"] or b["pred_ms"] < a["pred_ms"])


def check_run(run_dir, trials_asked, presets=tuple(PRESETS)):
    """The rules every finished search keeps; `presets`: the seed presets it was asked for."""
    target = json.loads((run_dir / "config.json").read_text())["target_ms"]
    trials = pd.read_csv(run_dir / "trials.csv")
    finished = trials[~trials["state"].isin(["RUNNING", "INTERRUPTED", "DUPLICATE"])]
    assert len(finished) >= trials_asked  # duplicates cost no trial of the count
    # presets first, as reference points, trained (even over target)
    first = trials.sort_values("number").head(len(presets))  # one stopped before its attributes were written runs later
    assert (first["preset"].notna() | (first["state"] == "INTERRUPTED")).all()
    # re-run after a kill; a searched proposal of a preset's design is a duplicate of its training
    trained_presets = trials[trials["preset"].notna() & ~trials["state"].isin(["INTERRUPTED", "DUPLICATE"])]
    assert set(trained_presets["preset"]) == set(presets) and (trained_presets["state"] == "COMPLETE").all()
    assert not trained_presets["preset"].duplicated().any()  # each trained once
    copies = trials[trials["preset"].notna() & (trials["state"] == "DUPLICATE")]
    assert copies["cached_from"].isin(trained_presets["number"]).all()
    # infeasible candidates are recorded with their prediction but never trained
    infeasible = trials[trials["state"] == "INFEASIBLE"]
    assert (infeasible["pred_ms"] > target).all() and infeasible["train_s"].isna().all()
    over = trials[(trials["pred_ms"] > target) & trials["preset"].isna()]
    assert over["val_acc"].isna().all()
    trained = trials[trials["val_acc"].notna()]
    assert not trained["arch_id"].duplicated().any()
    front = json.loads((run_dir / "front.json").read_text())
    assert front and all(p["pred_ms"] <= target for p in front)
    assert not any(dominated(p, q) for p in front for q in front)
    best = trained[trained["pred_ms"] <= target]["val_acc"].max()
    assert max(p["val_acc"] for p in front) == pytest.approx(best)
    complete = [t for t in study_trials(run_dir) if t.state == optuna.trial.TrialState.COMPLETE]
    assert all("spec" in t.user_attrs for t in complete)
    return trials


def check_dashboard_view(run_dir, trials):
    """What optuna-dashboard shows agrees with etnas: named objectives, infeasible trials marked
    by their constraint, rung accuracies as learning curves, and Optuna's best trials differing
    from the front only by what the study's note says (lower-rung trials and duplicates)."""
    from optuna_dashboard import get_note, wsgi

    from .test_cli import get_json

    storage = f"sqlite:///{run_dir}/study.db"
    (name,) = optuna.study.get_all_study_names(storage)
    study = optuna.load_study(study_name=name, storage=storage)
    assert study.metric_names == ["val_acc", "pred_ms"]
    infeasible = [t for t in study.trials if t.user_attrs.get("infeasible")]
    assert infeasible and all(max(t.constraints.values()) > 0 for t in infeasible)
    trained = [t for t in study.trials if t.user_attrs.get("rung_accs") and t.user_attrs.get("cached_from") is None]
    assert trained and all(list(t.intermediate_values.values()) == t.user_attrs["rung_accs"] for t in trained)
    for t in trained:  # at the optimizer step each rung ended on, counted from the training's start
        a = t.user_attrs
        assert list(t.intermediate_values) == [s + n for s, n in zip(a["started_at"], a["trained_steps"])]
    top = trials["rung"].max()
    front = {f["trial"] for f in json.loads((run_dir / "front.json").read_text())}
    by_number = trials.set_index("number")
    for n in {t.number for t in study.best_trials} - front:
        assert by_number.at[n, "rung"] < top or by_number.at[n, "state"] == "DUPLICATE", n
    assert "Optuna's best trials also count trials stopped at a lower rung" in get_note(study)
    app = wsgi(storage)  # and the dashboard's own API reads the same
    (summary,) = get_json(app, "/api/studies")["study_summaries"]
    detail = get_json(app, f"/api/studies/{summary['study_id']}")
    shown = {t["number"]: t for t in detail["trials"]}
    assert all(shown[t.number]["constraints"] == [t.constraints["0"]] for t in infeasible)
    assert {len(shown[t.number]["intermediate_values"]) for t in trained} == {len(t.intermediate_values)
                                                                              for t in trained}
    assert detail["objective_names"] == ["val_acc", "pred_ms"] and "etnas search" in detail["note"]["body"]


def check_other_target(run_dir, trials, latency_model, other):
    """The second latency model's predictions are recorded on every trial, and the front on it is
    the same from the record as from the model file; the run's own model re-specializes to its front."""
    from latency_models import LatencyModel
    from search_space import ArchSpec

    described = trials[trials["spec"].notna()]
    model = LatencyModel.load(other)
    recorded = [json.loads(r)["other-device"] for r in described["pred_ms_targets"]]
    assert recorded == pytest.approx(list(model.predict([ArchSpec.from_json(s) for s in described["spec"]])))
    from_record = json.loads(run_cli("front", run_dir, "--target", "other-device", "--json").stdout)
    from_file = run_cli("front", run_dir, "--target", other, "--json")
    assert "warning" not in from_file.stderr
    from_file = json.loads(from_file.stdout)
    assert from_record["front"] == from_file["front"] and from_record["front"]
    points = [(f["val_acc"], f["pred_ms"]) for f in from_record["front"]]
    top = described[described["val_acc"].notna()]
    for acc, ms in zip(top["val_acc"], recorded_of(top, "other-device")):  # nothing beats a point of it
        assert not any(acc >= a and ms <= m and (acc > a or ms < m) for a, m in points)
    target = json.loads((run_dir / "config.json").read_text())["target_ms"]
    same = json.loads(run_cli("front", run_dir, "--target", latency_model, "--target-ms", target, "--json").stdout)
    assert [f["trial"] for f in same["front"]] == [f["trial"] for f in json.loads((run_dir / "front.json").read_text())]
    assert "Pareto front of" in run_cli("front", run_dir, "--target", "other-device").stdout
    res = run_cli("front", run_dir, "--target", "phone", check=False)
    assert res.returncode == 2 and "neither a target of this run (other-device)" in res.stderr
    assert "the run's own target is `etnas front RUN` without --target" in res.stderr
    at_32_px = synthetic_model(run_dir.parent / "at-32-px.model", img_size=32, in_chans=3)
    said = " ".join(run_cli("front", run_dir, "--target", at_32_px).stderr.split())
    assert (f"warning: latency model {at_32_px} was measured on 32x32 inputs and this run's models take 8x8: their "
            f"latencies on it are extrapolated") in said


def recorded_of(rows, label):
    return [json.loads(r)[label] for r in rows["pred_ms_targets"]]


@pytest.mark.slow
def test_tiny_search_completes(two_target_run, tmp_path):
    latency_model, other = two_target_run / "digits.model", two_target_run / "other-device.model"
    shutil.copytree(two_target_run / "runs" / "tiny", tmp_path / "tiny")
    log = (two_target_run / "run.log").read_text()
    trials = check_run(tmp_path / "tiny", 12)
    assert (trials["state"] == "INFEASIBLE").any()  # the constraint was exercised
    with open(tmp_path / "tiny" / "trials.csv", newline="") as f:
        written = list(csv.DictReader(f))
    assert {"0", "2"} <= {r["rung"] for r in written} <= {"", "0", "1", "2"}  # whole numbers, beside blanks
    assert all(r["params"].isdigit() for r in written[:6])
    check_dashboard_view(tmp_path / "tiny", trials)
    check_other_target(tmp_path / "tiny", trials, latency_model, other)
    assert "also recorded: latency on other-device" in log
    assert "\nPareto front" in log  # on a line of its own, after the progress line
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "tiny").iterdir()}
    shown = json.loads(run_cli("front", tmp_path / "tiny", "--json").stdout)
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "tiny").iterdir()} == before  # writes nothing
    assert shown["front"] == json.loads((tmp_path / "tiny" / "front.json").read_text())
    config = json.loads((tmp_path / "tiny" / "config.json").read_text())
    assert shown["target_ms"] == config["target_ms"] and shown["target"] == config["latency_target"]
    assert shown["rung_epochs"] == pytest.approx(Rungs(0.25, 2, 2).budgets)  # TINY's rungs
    assert sorted(p["preset"] for p in shown["presets"]) == sorted(trials[trials["preset"].notna()]["preset"])
    html = (tmp_path / "tiny" / "front.html").read_text()
    assert len(html) > 10_000 and html.count("plotly-graph-div") == 2  # the search's view, then other-device's
    assert "the same trials on target other-device" in html and "predicted latency on other-device" in html
    assert "infeasible: predicted over the search's target" in html  # other-device has no target of its own
    assert config["other_targets"]["other-device"]["fingerprint"] == LatencyModel.load(other).fingerprint


@pytest.mark.slow
def test_a_finished_run_searched_again_says_so_and_starts_no_workers(two_target_run, tmp_path):
    shutil.copytree(two_target_run / "runs" / "tiny", tmp_path / "tiny")
    before = [(t.number, t.state, t.values) for t in study_trials(tmp_path / "tiny")]
    res = run_cli("run", "--name", "tiny", "--target-ms", TARGET, "--trials", 10, "--latency-model",
                  two_target_run / "digits.model", "--latency-model", two_target_run / "other-device.model",
                  "--runs-dir", tmp_path, *TINY, own_process=True)
    assert "12 trials done already, --trials 10: nothing left to search" in " ".join(res.stderr.split())
    assert "starting Ray workers" not in res.stderr and res.stdout.startswith("Pareto front of ")
    assert [(t.number, t.state, t.values) for t in study_trials(tmp_path / "tiny")] == before


@pytest.mark.slow
def test_a_total_training_budget_stops_new_candidates(tmp_path, latency_model):
    budget = 2.0  # eight first-rung trainings
    run_cli("run", "--name", "budget", "--target-ms", TARGET, "--trials", 40, "--budget-epochs", budget,
            "--presets", "none", "--latency-model", latency_model, "--runs-dir", tmp_path,
            *TINY)  # trainings under way count too
    trials = pd.read_csv(tmp_path / "budget" / "trials.csv")
    trained = trials[trials["rung"].notna() & (trials["state"] != "DUPLICATE")]
    budgets = Rungs(0.25, 2, 2).budgets  # TINY's rungs
    spent = sum(budgets[int(r)] for r in trained["rung"])
    assert len(trials) < 40 and spent >= budget  # stopped by the budget, not by the count
    # every candidate started while the first rungs already begun stayed under the budget
    assert (len(trained) - 1) * budgets[0] < budget
    assert trials["preset"].isna().all()  # --presets none: every trial searched


@pytest.mark.slow
def test_a_time_limit_stops_the_trainings_in_flight_and_keeps_them(tmp_path, latency_model):
    start_shared_ray(SearchConfig(name="x", target_ms=1.0, latency_model=""))  # its start outside the limit
    # a first rung of 200 epochs outlasts the 24 s limit, which begins with the run (before its inputs load)
    res = run_cli("run", "--name", "timed", "--target-ms", TARGET, "--minutes", 0.4, "--epochs", 400,
                  "--base-epochs", 200, "--eta", 2, "--dataset", "digits", "--subset", 0.3, "--workers", 1,
                  "--presets", "efficientvit-m0", "--latency-model", latency_model, "--runs-dir", tmp_path)
    said = "the time limit of 0.4 min is reached after 0 trials: 1 training(s) in flight stopped; 1 trial(s) queued"
    assert said in res.stderr
    assert "0 architectures on the front" in res.stdout and "warning: no trial finished the top rung within the " \
        "target: give more --trials or --minutes (the same command resumes the run)" in " ".join(res.stderr.split())
    trials = {t.number: t for t in study_trials(tmp_path / "timed")}
    assert [t.state.name for t in trials.values()] == ["FAIL", "WAITING"]  # no new candidate after the limit
    # queued again with what it carries, to go on from its checkpoint (as after a kill: the test below)
    assert trials[0].user_attrs["interrupted"] and trials[1].user_attrs["requeued_from"] == 0


@pytest.mark.slow
def test_a_stopped_search_leaves_no_trial_running_in_its_records(tmp_path, latency_model):
    """SIGTERM (as Ctrl-C): the training under way is closed as interrupted and queued again at once,
    as at the time limit, not left running in the study and trials.csv until a resume."""
    args = [sys.executable, str(ROOT / "search.py"), "run", "--name", "stop", "--target-ms", TARGET, "--epochs", "400",
            "--base-epochs", "200", "--eta", "2", "--dataset", "digits", "--subset", "0.3", "--workers", "1",
            "--presets", "efficientvit-m0", "--latency-model", str(latency_model), "--runs-dir", str(tmp_path)]
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not (tmp_path / "stop" / "checkpoints").exists():  # its training began
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 143, proc.stderr.read()[-2000:]
    assert "terminated: what was already saved is kept" in proc.stderr.read()
    trials = study_trials(tmp_path / "stop")
    assert [t.state.name for t in trials] == ["FAIL", "WAITING"]
    assert trials[0].user_attrs["interrupted"] and trials[1].user_attrs["requeued_from"] == 0
    assert list(pd.read_csv(tmp_path / "stop" / "trials.csv")["state"]) == ["INTERRUPTED", "WAITING"]


def promoted_in_training(run_dir):
    """A trial training at a rung above the first (it finished rung 0 and was promoted)."""
    return bool(read_only_query(run_dir, "SELECT 1 FROM trials JOIN trial_user_attributes USING (trial_id) "
                                         "WHERE state = 'RUNNING' AND key = 'rung_accs'"))


KILL_PRESETS = "efficientvit-m0,slab-deit"  # two queued first: the kill may stop one before its attributes are set


@pytest.mark.slow
def test_killed_run_resumes_without_loss_or_retraining(tmp_path, latency_model):
    """The command in a process of its own, as a user starts it: its Ray stays on loopback and says
    nothing of its defaults; killed with its workers mid-rung, the run resumes from its checkpoints."""
    args = [sys.executable, str(ROOT / "search.py"), "run", "--name", "kill", "--target-ms", TARGET, "--trials", "14",
            "--presets", KILL_PRESETS, "--latency-model", str(latency_model), "--runs-dir", str(tmp_path),
            *TINY]  # two cut off at once
    log = tmp_path / "run.log"
    # without the RAY_ settings the tests' keep_ray_local made: the command's own are what this checks
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    with open(log, "w") as stderr:
        proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=stderr,
                                start_new_session=True)
    run_dir = tmp_path / "kill"
    deadline = time.time() + 400
    while time.time() < deadline and proc.poll() is None and not promoted_in_training(run_dir):
        time.sleep(0.2)
    assert proc.poll() is None, f"the run ended before a promoted trial trained: {log.read_text()[-2000:]}"
    check_ray_is_local(proc.pid)
    before = {t.number: (t.state.name, t.values) for t in study_trials(run_dir) if t.state.is_finished()}
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and its Ray workers, mid-rung above the first
    proc.wait()
    assert "Token authentication" not in log.read_text()  # Ray's notice about its default: asked for by name
    killed_above_first = [t.number for t in study_trials(run_dir)
                          if t.state == optuna.trial.TrialState.RUNNING and t.user_attrs.get("rung_accs")]
    assert killed_above_first
    run_cli("run", "--name", "kill", "--target-ms", TARGET, "--trials", 14, "--presets", KILL_PRESETS,
            "--latency-model", latency_model, "--runs-dir", tmp_path, *TINY)
    trials = study_trials(run_dir)
    after = {t.number: (t.state.name, t.values) for t in trials}
    assert all(after[n] == v for n, v in before.items() if v[0] == "COMPLETE")
    resumed = [t for t in trials if t.user_attrs.get("requeued_from") in killed_above_first]
    assert resumed and all(len(t.user_attrs["rung_accs"]) >= 2 for t in resumed)  # went on from its rung
    for t in trials:  # no rung trained twice: the steps each call trained add up to no more than the training's
        if t.user_attrs.get("trained_steps") and t.user_attrs.get("cached_from") is None:
            assert sum(t.user_attrs["trained_steps"]) <= t.user_attrs["steps"]
    check_run(run_dir, 14, presets=KILL_PRESETS.split(","))


def check_ray_is_local(pid: int) -> None:
    """The Ray a command started (Linux: read from /proc) listens on loopback only, with no dashboard."""
    listening = listening_sockets()
    bound = [listening[i].split(":") for p in {pid, *descendants(pid)} for i in socket_inodes(p) if i in listening]
    assert len(bound) >= 3  # the GCS, the raylet and a worker at least
    assert {address for address, _ in bound} <= LOOPBACK, bound
    assert DASHBOARD_PORT not in {int(port, 16) for _, port in bound}


DASHBOARD_PORT = 8265
LOOPBACK = {"0100007F", "0000000000000000FFFF00000100007F", "00000000000000000000000001000000"}


def listening_sockets() -> dict[str, str]:
    """Socket inode -> local address:port (hex, as /proc/net/tcp writes it) of every listening TCP socket."""
    out = {}
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A":  # LISTEN
                out[fields[9]] = fields[1]
    return out


def socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").glob("*"):
        try:
            target = fd.readlink().name
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    return inodes


@pytest.mark.slow
def test_a_search_whose_every_trial_fails_says_why_and_keeps_its_records(tmp_path, latency_model):
    res = run_cli("run", "--name", "boom", "--target-ms", TARGET, "--trials", 3, "--presets", "none",
                  "--latency-model", latency_model, "--runs-dir", tmp_path, "--lr", "1e9", *TINY_ONE_WORKER,
                  check=False)
    trials = pd.read_csv(tmp_path / "boom" / "trials.csv")
    failed = trials[trials["state"] == "FAIL"]
    assert len(failed) >= 1 and failed["failure"].str.contains("loss became").all()
    assert set(trials["state"]) <= {"FAIL", "INFEASIBLE"} and len(trials) >= 3  # none trained
    last = res.stderr.splitlines()[-1]
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert last.startswith(f"error: every trial of {tmp_path / 'boom'} sent to training failed ({len(failed)}); "
                           f"trial {failed['number'].iloc[0]}: "
                           f"{failed['failure'].iloc[0]}") and "start a new run with another --name" in last
    assert "on the front; browse" not in res.stdout


def test_changed_settings_refuse_to_resume(tmp_path, latency_model):
    run_dir = tmp_path / "x"
    run_dir.mkdir()
    (run_dir / "config.json").write_text(json.dumps({"target_ms": 1.0, "proxy_evaluation": PROXY_EVALUATION}))
    res = run_cli("run", "--name", "x", "--target-ms", TARGET, "--latency-model", latency_model,
                  "--runs-dir", tmp_path, check=False, own_process=False)
    assert res.returncode == 2 and "already exists with other settings" in res.stderr
    res = run_cli("run", "--name", "x", "--target-ms", TARGET, "--calibrate-n", 8, "--runs-dir", tmp_path,
                  check=False, own_process=False)  # no latency model given: refused before calibrating one
    assert res.returncode == 2 and "already exists with other settings" in res.stderr
    assert "target_ms" not in res.stderr and not (tmp_path / "latency").exists()


def test_a_run_resumes_only_on_the_target_it_was_searched_for(tmp_path, latency_model):
    run_dir = tmp_path / "x"
    run_dir.mkdir()
    searched_for = {**LatencyModel.load(latency_model).fingerprint, "runtime": "onnxruntime", "onnxruntime": "1.0",
                    "precision": "int8", "id": "0123456789"}
    saved = {**SearchConfig(name="x", target_ms=1.0, latency_model="").identity(), "latency_target": searched_for}
    (run_dir / "config.json").write_text(json.dumps(saved))
    res = run_cli("run", "--name", "x", "--target-ms", TARGET, "--latency-model", latency_model,
                  "--runs-dir", tmp_path, check=False, own_process=False)
    one_line_error(res, "run x was searched for onnxruntime 1.0 int8 on", "and would resume on another target "
                   "(onnxruntime '1.0' vs now None; precision 'int8' vs now None; runtime 'onnxruntime' vs now 'torch')",
                   "resume it with --latency-model of the model it was searched with", "or choose a new --name")
    res = run_cli("run", "--name", "x", "--target-ms", TARGET, "--runtime", "torch", "--calibrate-n", 8,
                  "--runs-dir", tmp_path, check=False, own_process=False)  # this machine's target: refused before timing it
    one_line_error(res, "run x was searched for onnxruntime 1.0 int8 on", "runtime 'onnxruntime' vs now 'torch'")
    assert not (tmp_path / "latency").exists() and json.loads((run_dir / "config.json").read_text()) == saved
    with_two = {**saved, "other_targets": {"digits": {"fingerprint": LatencyModel.load(latency_model).fingerprint,
                                                      "reference_ms": None}}}
    (run_dir / "config.json").write_text(json.dumps(with_two))  # searched under the int8 model, digits recorded
    res = run_cli("run", "--name", "x", "--target-ms", TARGET, "--latency-model", latency_model,
                  "--runs-dir", tmp_path, check=False, own_process=False)
    one_line_error(res, "run x was searched under the constraint of another of its latency models than digits; "
                        "resume it with the --constraint it was searched with")


def test_a_resume_under_another_target_is_refused_before_the_workers_start(tmp_path, latency_model):
    run_dir = tmp_path / "x"
    run_dir.mkdir()
    saved = {**SearchConfig(name="x", target_ms=123.0, latency_model="").identity(),
             "latency_target": LatencyModel.load(latency_model).fingerprint}
    (run_dir / "config.json").write_text(json.dumps(saved))
    res = run_cli("run", "--name", "x", "--target-ms", TARGET, "--latency-model", latency_model, "--runs-dir", tmp_path,
                  check=False, own_process=False)
    assert res.returncode == 2 and "already exists with other settings (target_ms: 123.0 -> " in res.stderr
    assert "starting Ray workers" not in res.stderr and "rungs at" not in res.stderr


def test_a_run_being_searched_by_another_process_is_refused_untouched(tmp_path, latency_model):
    """The lock is the file's: held here through another open file, as another process holds it."""
    from nas.rundir import searching

    with searching(tmp_path / "x"):
        res = run_cli("run", "--name", "x", "--target-ms", TARGET, "--latency-model", latency_model,
                      "--runs-dir", tmp_path, *TINY, check=False, own_process=False)
        one_line_error(res, "is being searched by another process")  # before its inputs load and say anything
        assert [p.name for p in (tmp_path / "x").iterdir()] == [".search.lock"]  # nothing written
    with searching(tmp_path / "x"):  # released at its end: free again
        pass


def test_a_run_that_lost_its_study_is_not_searched_over_its_records(tmp_path, latency_model):
    run_dir = tmp_path / "x"
    (run_dir / "final" / "11").mkdir(parents=True)
    (run_dir / "config.json").write_text(json.dumps({"target_ms": 1.0, "proxy_evaluation": PROXY_EVALUATION}))
    (run_dir / "trials.csv").write_text("number,state\n0,COMPLETE\n")
    res = run_cli("run", "--name", "x", "--target-ms", TARGET, "--latency-model", latency_model,
                  "--runs-dir", tmp_path, check=False, own_process=False)
    assert res.returncode == 2 and "has no study.db but holds a search's records (trials.csv, final)" in res.stderr
    assert (run_dir / "trials.csv").read_text() == "number,state\n0,COMPLETE\n" and not (run_dir / "study.db").exists()


def test_a_proxy_resolution_above_the_datas_is_refused(tmp_path, latency_model):
    res = run_cli("run", "--name", "y", "--target-ms", TARGET, "--latency-model", latency_model, "--resolution", 100000,
                  "--runs-dir", tmp_path, check=False, own_process=False)
    one_line_error(res, "--resolution 100000 is above the data's image size, 8")


def test_unreachable_target_says_fastest_and_suggests(tmp_path, latency_model):
    res = run_cli("run", "--name", "slow", "--target-ms", "0.01", "--latency-model", latency_model,
                  "--runs-dir", tmp_path, check=False, own_process=False)
    assert res.returncode == 2 and "starting Ray workers" not in res.stderr and not (tmp_path / "slow").exists()
    assert "below the fastest architecture" in res.stderr and "try --target-ms" in res.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_train_on_a_missing_gpu_says_so(tmp_path):
    res = run_cli("train", tmp_path, "--trial", "0", "--device", "cuda", check=False)
    assert res.returncode == 2 and "sees no CUDA device" in res.stderr and "Traceback" not in res.stderr


def test_pareto_front_keeps_only_non_dominated_feasible_rows():
    rows = [{"number": i, "state": "COMPLETE", "val_acc": a, "pred_ms": m}
            for i, (a, m) in enumerate([(0.5, 1.0), (0.6, 2.0), (0.55, 2.5), (0.9, 9.0), (0.6, 1.5)])]
    front = pareto_front(rows, target_ms=5.0)
    assert [(r["val_acc"], r["pred_ms"]) for r in front] == [(0.5, 1.0), (0.6, 1.5)]


@pytest.mark.slow
def test_an_address_no_cluster_answers_at_is_one_line_at_once():
    import socket

    from nas import SearchError
    from nas.search import check_cluster_answers

    with socket.socket() as probe:  # a port nothing listens at once this socket is closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    started = time.monotonic()
    with pytest.raises(SearchError, match=f"no Ray cluster answers at --ray-address 127.0.0.1:{port} "
                                          f"\\(Connection refused\\); start one there with `ray start --head`"):
        check_cluster_answers(f"127.0.0.1:{port}")
    assert time.monotonic() - started < 5
    for left_to_ray in ("auto", "ray://head:10001"):
        check_cluster_answers(left_to_ray)


def test_a_process_on_one_ray_refuses_the_address_of_another():
    """The engine searches on the Ray its process has joined (a second search from Python, the
    tests' shared one); an address naming another cluster is an error, not silently ignored."""
    import ray

    from nas import SearchError
    from nas.search import start_ray

    def on(address):
        return SearchConfig(name="t", target_ms=1.0, latency_model="", ray_address=address)

    start_shared_ray(on(None))
    joined = ray.get_runtime_context().gcs_address
    with pytest.raises(SearchError, match=f"has joined the Ray at {joined} already, so --ray-address 10.9.9.9:6379"):
        start_ray(on("10.9.9.9:6379"))
    for same in (None, "auto", joined, f"localhost:{joined.rpartition(':')[2]}"):
        assert start_ray(on(same)) is ray


@pytest.mark.slow
def test_starting_ray_keeps_the_callers_sigterm_handling():
    """Ray's init installs a core worker that aborts the process with a stack dump on SIGTERM; the
    command line's handler (stop as on Ctrl-C) must still be the one that runs."""
    code = """
import os, signal, sys
from nas.config import SearchConfig
from nas.search import start_ray
signal.signal(signal.SIGTERM, lambda *_: (print("handled by the caller", flush=True), sys.exit(7)))
start_ray(SearchConfig(name="t", target_ms=1.0, latency_model="", workers=1))
os.kill(os.getpid(), signal.SIGTERM)
"""
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 7 and "handled by the caller" in res.stdout, res.stderr[-2000:]

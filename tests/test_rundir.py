"""A run directory whose files are missing, truncated or corrupt: what can be rebuilt from the study
is rebuilt, anything else is one line naming the file and what to do, and nothing else is lost; and
what a finished run with a second latency target exports."""
import json
import os
import shutil
import time

import pandas as pd
import pytest

from .helpers import one_line_error, run_cli

ON_A_FINISHED_RUN = pytest.mark.slow  # a real search, left out of the edit loop's subset


@pytest.fixture(scope="module")
def finished_run(two_target_run, tmp_path_factory):
    """The session's finished two-target search, with its best trial trained."""
    run = tmp_path_factory.mktemp("rundir") / "r"
    shutil.copytree(two_target_run / "runs" / "tiny", run)
    run_cli("train", run, "--trial", "best", "--epochs", 0.2)
    return run


@pytest.fixture
def run(finished_run, tmp_path):
    copy = tmp_path / "r"
    shutil.copytree(finished_run, copy)
    return copy


@ON_A_FINISHED_RUN
@pytest.mark.parametrize("name", ["config.json", "trials.csv", "front.json"])
@pytest.mark.parametrize("damage", ["missing", "truncated", "garbage", "wrong shape"])
def test_derived_files_are_rebuilt_from_the_study(run, name, damage):
    original = (run / name).read_text()
    wrong_shape = {"config.json": '{"target_ms": "abc"}', "trials.csv": "a,b\n1,2\n", "front.json": "[{}]"}
    if damage == "missing":
        (run / name).unlink()
    else:
        (run / name).write_text({"truncated": original[: len(original) // 2], "garbage": "\x00\x01 garbage",
                                 "wrong shape": wrong_shape[name]}[damage])
    res = run_cli("front", run, "--json")
    assert json.loads(res.stdout)["front"]
    rebuilt = (run / name).read_text()
    if name == "config.json":
        assert json.loads(rebuilt) == json.loads(original)
    else:
        assert rebuilt == original


@ON_A_FINISHED_RUN
@pytest.mark.parametrize("edit", [[{"trial": 99}], "a trial of the run with a text for its accuracy"])
def test_a_front_file_that_is_json_but_no_front_of_the_run_is_rebuilt(run, edit):
    original = json.loads((run / "front.json").read_text())
    if isinstance(edit, str):
        edit = [{**original[0], "val_acc": "0.9"}]
    (run / "front.json").write_text(json.dumps(edit))
    assert json.loads(run_cli("front", run, "--json").stdout)["front"] == original
    assert json.loads((run / "front.json").read_text()) == original


@ON_A_FINISHED_RUN
def test_a_hand_edited_config_gives_way_to_the_studys_record(run):
    """config.json is a copy: a target edited there is neither shown as the run's nor resumed under."""
    cfg = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**cfg, "target_ms": cfg["target_ms"] / 3}, indent=1))
    res = run_cli("front", run, "--json")
    assert json.loads(res.stdout)["target_ms"] == cfg["target_ms"]
    said = " ".join(res.stderr.split())
    assert f"{run / 'config.json'} differs from the study's record of the run's settings (target_ms)" in said
    assert json.loads((run / "config.json").read_text()) == cfg
    assert "differs" not in run_cli("front", run, "--json").stderr  # once rewritten, nothing more to say


@ON_A_FINISHED_RUN
def test_a_corrupt_study_is_one_line_and_nothing_else_is_touched(run):
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file() and p.name != "study.db"}
    (run / "study.db").write_bytes(b"SQLite format 3\x00 but not really")
    (run / "front.json").unlink()
    one_line_error(run_cli("front", run, check=False), "study.db", "unreadable")
    one_line_error(run_cli("train", run, "--trial", "0", check=False), "study.db")
    after = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file() and p.name not in ("study.db",)}
    assert after == {k: v for k, v in before.items() if k != "front.json"}


@ON_A_FINISHED_RUN
def test_a_missing_study_is_one_line(run):
    (run / "study.db").unlink()
    one_line_error(run_cli("train", run, "--trial", "0", check=False), "study.db")


@ON_A_FINISHED_RUN
def test_front_of_a_read_only_run_still_shows_its_tables(run, monkeypatch):
    import errno

    def refuse(path, text):
        raise OSError(errno.EROFS, "Read-only file system", str(path))

    monkeypatch.setattr("nas.front.atomic_write", refuse)
    res = run_cli("front", run)
    assert "Pareto front of" in res.stdout and "plot:" not in res.stdout
    assert "front.html was not written (Read-only file system); the tables above are complete" in res.stderr


@ON_A_FINISHED_RUN
def test_front_says_how_many_trials_failed_and_why(run):
    trials = pd.read_csv(run / "trials.csv", dtype={"failure": object})
    off_front = trials.index[~trials["number"].isin(f["trial"] for f in json.loads((run / "front.json").read_text()))
                             & (trials["state"] == "COMPLETE")][0]
    trials.loc[off_front, ["state", "failure"]] = ["FAIL", "RuntimeError: out of memory"]
    trials.to_csv(run / "trials.csv", index=False)
    trained = int(trials["state"].isin(["COMPLETE", "PRUNED"]).sum())
    res = run_cli("front", run)
    assert (f"warning: 1 of the {trained + 1} trials sent to training failed; trial {trials.loc[off_front, 'number']}: "
            f"RuntimeError: out of memory (every trial's reason is in the failure column of {run / 'trials.csv'})"
            ) in " ".join(res.stderr.split())
    failed = json.loads(run_cli("front", run, "--json").stdout)["failed"]
    assert failed == [{"trial": int(trials.loc[off_front, "number"]), "failure": "RuntimeError: out of memory"}]


@ON_A_FINISHED_RUN
def test_a_corrupt_final_report_is_one_line_naming_it(run, tmp_path):
    (final,) = run.glob("final/*/final.json")
    report = json.loads(final.read_text())
    for damaged in ("{", json.dumps({**report, "test_acc": "0.9"})):
        final.write_text(damaged)
        one_line_error(run_cli("export", run, "--trial", final.parent.name, "--out", tmp_path / "out", check=False),
                       "final.json", "corrupt")
        assert not (tmp_path / "out").exists()  # refused before writing anything
    assert json.loads(run_cli("front", run, "--json").stdout)["front"]  # still shown, without that measure


@ON_A_FINISHED_RUN
@pytest.mark.parametrize("command", [
    lambda run, blocker: ["export", run, "--trial", "best", "--out", blocker],
    lambda run, blocker: ["space", "sample", "--n", "2", "--out", blocker / "x.jsonl"],
    lambda run, blocker: ["run", "--name", "n", "--target-ms", "5", "--runs-dir", blocker],
])
def test_output_paths_that_are_files_are_one_line(run, tmp_path, command):
    blocker = tmp_path / "a-file"
    blocker.write_text("keep me")
    one_line_error(run_cli(*command(run, blocker), check=False), "a-file")
    assert blocker.read_text() == "keep me"


@ON_A_FINISHED_RUN
def test_the_card_gives_the_latency_on_every_target_of_the_search(run, tmp_path):
    run_cli("export", run, "--trial", "best", "--out", tmp_path / "export", "--format", "onnx")
    (target,) = json.loads((tmp_path / "export" / "targets.json").read_text())
    arch_id = json.loads((tmp_path / "export" / "arch.json").read_text())["arch_id"]
    trials = pd.read_csv(run / "trials.csv")
    (recorded,) = trials[(trials["arch_id"] == arch_id) & (trials["state"] == "COMPLETE")]["pred_ms_targets"]
    assert target["target"] == "other-device" and target["pred_ms"] == json.loads(recorded)["other-device"]
    assert target["timing"]["measured_ms"] > 0 and target["device"]["runtime"] == "torch"  # this machine: timed
    card = (tmp_path / "export" / "MODEL_CARD.md").read_text()
    (row,) = [line for line in card.splitlines() if line.startswith("| latency on target other-device |")]
    assert f"{target['pred_ms']:.3f} ms predicted; measured here {target['timing']['measured_ms']:.3f} ms median" in row


@pytest.mark.slow
def test_a_holdout_final_training_leaves_the_validation_part_out_and_starts_over(run):
    from evaluators.data import load_dataset

    folder = next((run / "final").iterdir())
    whole = json.loads((folder / "final.json").read_text())
    res = run_cli("train", run, "--trial", folder.name, "--epochs", 0.2, "--holdout")
    held = json.loads((folder / "final.json").read_text())
    part, _ = load_dataset("digits").split(seed=0)
    assert not whole["holdout"] and whole["val_curve"] is None
    assert held["holdout"] and held["trained_examples"] == len(part) < whole["trained_examples"]
    assert len(held["val_curve"]) == 1 and 0 <= held["val_curve"][0] <= 1
    # the whole-split checkpoint is another schedule: set aside in one line, not continued
    assert (folder / "checkpoint.other-recipe.pt").exists() and "another recipe" in res.stderr
    assert len([line for line in res.stderr.splitlines() if "warning" in line]) == 1
    assert f"| held_out_val_acc | {held['val_curve'][-1]:.4f}" in " ".join(res.stdout.replace("│", "|").split())
    # the same command without its options goes on with that training: evaluated and timed again, not redone
    again = run_cli("train", run, "--trial", folder.name)
    assert f"trial {folder.name} was trained already (0.2 epochs): evaluated and timed again" in again.stdout
    assert "warning" not in again.stderr and not (folder / "checkpoint.other-recipe-2.pt").exists()
    redone = json.loads((folder / "final.json").read_text())
    assert redone["holdout"] and redone["epochs"] == 0.2 and redone["test_acc"] == held["test_acc"]
    assert redone["resumed_at_step"] == redone["steps"] == held["steps"] > held["resumed_at_step"] == 0


@ON_A_FINISHED_RUN
def test_bad_training_options_from_python_are_refused_before_a_training_is_touched(run):
    import etnas
    from nas import SearchError

    folder = next((run / "final").iterdir())
    before = sorted(p.name for p in folder.iterdir())
    for options, said in (({"lr": -1}, r"lr: -1 is not a number in \(0, inf\)"),
                          ({"epochs": 0}, r"epochs: 0 is not a number in \(0, inf\)"),
                          ({"batch_size": 1.5}, r"batch_size: 1.5 is not an integer in \[2, inf\)"),
                          ({"randaugment": "bogus"}, "'bogus' is not a timm RandAugment config"),
                          ({"momentum": 0.9}, "unknown training options momentum")):
        with pytest.raises(SearchError, match=said):
            etnas.train(run, int(folder.name), **options)
    assert sorted(p.name for p in folder.iterdir()) == before  # nothing set aside, nothing written


@pytest.mark.parametrize("names", [("a?x", "a?y"), ("p%41", "pA"), ("sp ace#ü", "sp ace")])
def test_a_study_stays_in_its_own_folder_whatever_the_folder_is_called(tmp_path, names):
    import optuna

    from nas.rundir import load_run_study, study_storage

    for name in names:
        (tmp_path / name).mkdir()
        optuna.create_study(study_name=name, storage=study_storage(tmp_path / name))
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["study.db", "study.db"]
    assert [load_run_study(tmp_path / name).study_name for name in names] == list(names)


def test_the_studys_record_is_read_once_for_each_state_of_the_study(tmp_path, monkeypatch):
    """A command asks for the settings many times; opening the study takes about 0.1 s each time."""
    import optuna

    import nas.rundir as rundir
    from nas.schema import Attr

    cfg = {"target_ms": 1.5, "dataset": "digits"}
    study = optuna.create_study(study_name="r", storage=rundir.study_storage(tmp_path))
    study.set_user_attr(Attr.CONFIG, cfg)
    rundir.write_config(tmp_path, cfg)
    written_long_ago = time.time() - 60  # a file written within the last second is read each time
    os.utime(tmp_path / "study.db", (written_long_ago, written_long_ago))
    opened = []
    monkeypatch.setattr(rundir, "load_run_study", lambda run_dir: opened.append(run_dir) or study)
    assert rundir.run_config(tmp_path) == rundir.run_config(tmp_path) == cfg and len(opened) == 1
    study.set_user_attr(Attr.CONFIG, {**cfg, "target_ms": 2.0})  # the study written: read again
    with pytest.warns(UserWarning, match=r"differs from the study's record of the run's settings \(target_ms\)"):
        assert rundir.run_config(tmp_path)["target_ms"] == 2.0
    assert len(opened) == 2


def test_a_suggested_command_quotes_a_path_a_shell_would_split(tmp_path):
    from nas import SearchError
    from nas.rundir import final_report

    run = tmp_path / "my runs" / "100% r4"
    (run / "final" / "3").mkdir(parents=True)
    (run / "final" / "3" / "final.json").write_text("{")
    with pytest.raises(SearchError, match=f"re-run `etnas train '{run}' --trial 3`"):
        final_report(run, 3)


def test_a_runs_dataset_that_cannot_be_read_is_named_as_the_runs(tmp_path):
    from nas import SearchError
    from nas.rundir import run_dataset

    gone = tmp_path / "moved.npz"
    with pytest.raises(SearchError, match=f"run {tmp_path} was searched on npz:{gone}, which cannot be read now "
                                          f"\\(dataset file {gone} does not exist\\); put it back where the run found it"):
        run_dataset(tmp_path, {"dataset": f"npz:{gone}"})


@pytest.mark.parametrize("record", ['[1]', '"x"', '{"epochs": null}', '{"weight_decay": "x", "epochs": 3.0}',
                                    '{"lr": "0.001"}', '{"holdout": "false"}'])
def test_a_damaged_recipe_record_is_no_recipe_to_go_on_with(tmp_path, record):
    """The options left out of `train` come from the record of the trial's earlier training; one
    that is no such record gives the defaults (and that training is set aside), not a crash."""
    from evaluators.recipes import FINAL_RECIPE
    from nas.final import final_config

    (tmp_path / "checkpoint.pt").write_bytes(b"state")
    (tmp_path / "checkpoint.json").write_text(record)
    config, holdout = final_config(tmp_path, {}, {"epochs": 1.0, "seed": 0}, "cpu")
    assert (config.epochs, config.lr, config.batch_size, config.weight_decay, holdout) == (
        10, FINAL_RECIPE["lr"], FINAL_RECIPE["batch_size"], 0.05, False)
    (tmp_path / "checkpoint.json").write_text('{"epochs": 3.0, "lr": 0.01, "holdout": true, "seed": 7}')
    config, holdout = final_config(tmp_path, {"lr": 0.02}, {"epochs": 1.0, "seed": 0}, "cpu")
    assert (config.epochs, config.lr, config.seed, holdout) == (3.0, 0.02, 0, True)  # given > recorded; the run's seed


def test_a_checkpoint_is_continued_only_with_its_own_recipe(tmp_path):
    from dataclasses import asdict

    from evaluators.train import TrainConfig
    from nas.final import recipe_checkpoint

    recipe = {**asdict(TrainConfig(epochs=15, batch_size=128, lr=1e-3)), "holdout": True}
    (tmp_path / "checkpoint.pt").write_text("15-epoch state")
    assert recipe_checkpoint(tmp_path, recipe).read_text() == "15-epoch state"  # no record: kept, now recorded
    assert recipe_checkpoint(tmp_path, {**recipe, "threads": 2, "device": "cuda"}).exists()  # same curve: kept
    (tmp_path / "final.json").write_text("{}")
    with pytest.warns(UserWarning, match=r"another recipe \(epochs 15 -> 30"):
        assert not recipe_checkpoint(tmp_path, {**recipe, "epochs": 30}).exists()
    assert (tmp_path / "checkpoint.other-recipe.pt").read_text() == "15-epoch state"
    assert (tmp_path / "final.other-recipe.json").exists() and not (tmp_path / "final.json").exists()
    (tmp_path / "checkpoint.pt").write_text("30-epoch state")
    with pytest.warns(UserWarning, match=r"another recipe \(epochs 30 -> 15.*set aside as \*\.other-recipe-2\.\*"):
        recipe_checkpoint(tmp_path, recipe)  # a second change: the first set-aside is kept
    assert (tmp_path / "checkpoint.other-recipe.pt").read_text() == "15-epoch state"
    assert (tmp_path / "checkpoint.other-recipe-2.pt").read_text() == "30-epoch state"


def test_a_finished_training_from_before_recipe_records_is_judged_by_its_report(tmp_path):
    from dataclasses import asdict

    from evaluators.train import TrainConfig
    from nas.final import recipe_checkpoint

    recipe = {**asdict(TrainConfig(epochs=10, batch_size=128, lr=1e-3)), "holdout": False}
    (tmp_path / "checkpoint.pt").write_text("state")
    (tmp_path / "final.json").write_text(json.dumps({"epochs": 10, "recipe": {"batch_size": 128, "lr": 1e-3}}))
    assert recipe_checkpoint(tmp_path, recipe).exists()  # the report says: same recipe, whole split
    (tmp_path / "checkpoint.json").unlink()
    with pytest.warns(UserWarning, match="holdout False -> True"):
        assert not recipe_checkpoint(tmp_path, {**recipe, "holdout": True}).exists()
    (tmp_path / "checkpoint.pt").write_text("state")
    (tmp_path / "checkpoint.json").write_text('{"epo')  # cut short by a kill: another recipe, not a crash
    with pytest.warns(UserWarning, match="has an unreadable checkpoint.json; set aside as"):
        assert not recipe_checkpoint(tmp_path, recipe).exists()

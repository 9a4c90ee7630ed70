"""The searched-vs-presets benchmark: its --quick mode on digits runs end to end, and its parts keep their rules."""
import json
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from .helpers import ROOT, run_cli, synthetic_model


@pytest.mark.slow
def test_cifar10_vs_presets_quick_on_digits(tmp_path, monkeypatch):
    """The script's main in this process, its `etnas run` too (`run_cli`: the search joins this
    process's Ray), so that the test pays for neither a second interpreter nor a second Ray."""
    proof = proof_script()
    model = synthetic_model(tmp_path / "digits.model")
    monkeypatch.setattr(proof, "cli", lambda *args, **_: run_cli(*args))
    monkeypatch.setattr(sys, "argv", ["cifar10_vs_presets.py", "--quick", "--data", "digits",
                                      "--out", str(tmp_path / "out"), "--latency-model", str(model),
                                      "--trials", "12", "--top-epochs", "0.4", "--baselines", "deit-pico",
                                      "--jobs", "1"])
    proof.main()
    res = json.loads((tmp_path / "out" / "results.json").read_text())
    assert res["target_ms"] > 0
    kinds = [r["kind"] for r in res["rows"]]
    assert kinds.count("preset") == 6 and kinds.count("searched") == 1 and kinds.count("timm") == 1  # quick: 1
    assert res["runtime"] == "torch"  # the latency model's, which both the search and the timing use
    assert res["budget"]["base_epochs"] < res["budget"]["epochs"] == 0.4  # the multi-fidelity search
    assert res["budget"]["trials"] == 12 and res["search_training_min"] > 0
    assert res["invocation_min"]["total"] >= res["invocation_min"]["search"] > 0
    assert all(r["source"] == "trained" and len(r["val_curve"]) == 1 for r in res["rows"])  # --holdout, no reference
    for r in res["rows"]:
        assert {"name", "kind", "short", "test_acc", "measured_ms", "pred_ms", "params", "flops", "train_min"} <= set(r)
        assert (r["pred_ms"] is None) == (r["kind"] == "timm")  # a baseline outside the space has no prediction
        assert 0 <= r["test_acc"] <= 1 and r["measured_ms"] > 0
        assert (r["test_acc_int8"] is None) == (r["kind"] == "timm")  # the final training's quantized accuracy
    presets_ms = [r["measured_ms"] for r in res["rows"] if r["kind"] == "preset"]
    assert sum(ms <= res["target_ms"] for ms in presets_ms) == 3  # the measured median of six
    assert res["search_target_ms"] > 0
    assert (tmp_path / "out" / "cifar10_front.png").stat().st_size > 5_000

    # again, as a resumed rerun would: the baseline is read from the first run's results, not trained,
    # and the finished finals are read, not evaluated and quantized again
    finals = sorted((tmp_path / "out" / "runs" / "search" / "final").glob("*/final.json"))
    written = [p.stat().st_mtime_ns for p in finals]
    monkeypatch.setattr(sys, "argv", [*sys.argv, "--baselines-from", str(tmp_path / "out")])
    proof.main()
    assert len(finals) == 7 and [p.stat().st_mtime_ns for p in finals] == written
    again = json.loads((tmp_path / "out" / "results.json").read_text())
    first_pico, pico = (next(r for r in rows if r["kind"] == "timm") for rows in (res["rows"], again["rows"]))
    assert pico["source"] == "earlier results" and pico["test_acc"] == first_pico["test_acc"]
    assert pico["train_min"] == first_pico["train_min"] and pico["measured_ms"] > 0  # timed again


def proof_script():
    import importlib.util

    spec = importlib.util.spec_from_file_location("proof", ROOT / "benchmarks" / "cifar10_vs_presets.py")
    proof = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(proof)
    return proof


def test_reuse_final_copies_only_the_same_architecture_recipe_and_data(tmp_path):
    proof = proof_script()
    previous, run = tmp_path / "old", tmp_path / "new"
    (previous / "final" / "3").mkdir(parents=True)
    report = {"arch_id": "abc", "epochs": 6.0, "dataset": "digits", "holdout": False}
    (previous / "final" / "3" / "final.json").write_text(json.dumps(report))
    (previous / "final" / "3" / "checkpoint.pt").write_text("finished")
    assert not proof.reuse_final(previous, run, 0, "abc", 6.0, "digits")  # trained on the whole split
    (previous / "final" / "3" / "final.json").write_text(json.dumps({**report, "holdout": True}))
    assert not proof.reuse_final(previous, run, 0, "abc", 12.0, "digits")  # another recipe
    assert not proof.reuse_final(previous, run, 0, "xyz", 6.0, "digits")  # another architecture
    assert not proof.reuse_final(previous, run, 0, "abc", 6.0, "npz:other.npz")  # other data
    recipe = {"batch_size": 128, "lr": 0.01, "weight_decay": 0.05, "mixup": 0.0, "cutmix": 0.0, "randaugment": None}
    (previous / "final" / "3" / "final.json").write_text(json.dumps({**report, "holdout": True, "recipe": recipe}))
    assert not proof.reuse_final(previous, run, 0, "abc", 6.0, "digits")  # another learning rate
    recipe["lr"] = 0.001
    (previous / "final" / "3" / "final.json").write_text(json.dumps({**report, "holdout": True, "recipe": recipe}))
    assert proof.reuse_final(previous, run, 5, "abc", 6.0, "digits")
    assert proof.reuse_final(previous, run, 7, "abc", 6.0, "digits")
    assert (run / "final" / "7" / "checkpoint.pt").read_text() == "finished"


def test_reference_trainings_are_reused_only_with_the_same_recipe(tmp_path):
    from dataclasses import asdict

    from evaluators.recipes import FINAL_RECIPE
    from evaluators.train import TrainConfig

    proof = proof_script()
    recipe = asdict(TrainConfig(**FINAL_RECIPE, epochs=15, seed=0, threads=1))
    rows = [{"arch_id": "a", "seed": 0, "recipe": recipe}, {"arch_id": "a", "seed": 1, "recipe": recipe},
            {"arch_id": "b", "seed": 0, "recipe": {**recipe, "lr": 5e-4}},
            {"arch_id": "c", "seed": 0, "recipe": {**recipe, "threads": 2, "device": "cuda"}},
            {"arch_id": "d", "seed": 0, "recipe": {k: v for k, v in recipe.items() if not k.startswith("cycle_")}}]
    (tmp_path / "reference.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    reused = proof.reference_trainings(tmp_path, 15)
    # where it trained does not change the curve, nor do fields added since with their defaults
    assert set(reused) == {"a", "c", "d"} and reused["a"]["seed"] == 0
    assert proof.reference_trainings(tmp_path, 6) == {} and proof.reference_trainings(None, 15) == {}


def test_a_baseline_is_read_from_earlier_results_only_if_trained_as_it_would_be_now(tmp_path):
    from dataclasses import asdict

    from benchmarks.timm_baselines import BASELINES, baseline_dir, finished_baselines, make_baseline
    from evaluators.recipes import FINAL_RECIPE
    from evaluators.train import TrainConfig
    from search_space import count_params

    recipe = asdict(TrainConfig(**FINAL_RECIPE, epochs=15, seed=0, threads=1))
    model = {name: {"timm": BASELINES[name][0], "img_size": BASELINES[name][1],
                    "params": count_params(make_baseline(name, 10, 3))} for name in BASELINES}
    reports = {"deit-pico": {**model["deit-pico"], "recipe": recipe},
               "timm-efficientvit_m0": {**model["timm-efficientvit_m0"], "recipe": {**recipe, "lr": 5e-4}},
               "timm-mobilevit_xxs": model["timm-mobilevit_xxs"]}  # a report that does not say how it was trained
    for name, fields in reports.items():
        baseline_dir(tmp_path, name).mkdir(parents=True)
        (baseline_dir(tmp_path, name) / "final.json").write_text(
            json.dumps({"dataset": "npz:c.npz", "holdout": True, "test_acc": 0.6, **fields}))
    names, shape = sorted(reports), (10, 3)
    assert set(finished_baselines(tmp_path, names, 15.0, "npz:c.npz", 0, *shape)) == {"deit-pico"}
    assert finished_baselines(tmp_path, names, 15.0, "npz:c.npz", 1, *shape) == {}  # another seed
    assert finished_baselines(tmp_path, names, 6.0, "npz:c.npz", 0, *shape) == {}  # another length
    assert finished_baselines(tmp_path, names, 15.0, "digits", 0, *shape) == {}  # other data
    assert finished_baselines(tmp_path, names, 15.0, "npz:c.npz", 0, 100, 3) == {}  # another model: 100 classes
    assert finished_baselines(None, names, 15.0, "npz:c.npz", 0, *shape) == {}
    committed = ROOT / "benchmarks" / "results" / "cifar10"  # what the next proof on the shared data reads
    data = json.loads((committed / "results.json").read_text())["data"]
    assert set(finished_baselines(committed, names, 15.0, data, 0, *shape)) == set(names)


@pytest.mark.parametrize("jobs, may_begin", [(1, {1}), (2, {1, 2})])
def test_a_failing_final_training_cancels_the_ones_not_started(monkeypatch, jobs, may_begin):
    """One job trains in this process, more in `etnas train` processes: either way, the trainings not
    begun when one fails never begin (with two jobs, 2 may have begun beside 1)."""
    proof, started = proof_script(), []

    def train(number):
        started.append(number)
        if number == 1:
            sys.exit("error: `etnas train` exited with status 2")
        time.sleep(0.2)

    def etnas_train(*args, threads=None):
        options = ("--batch-size=128", "--lr=0.001", "--mixup=0.0", "--cutmix=0.0", "--randaugment=off")
        assert args == ("train", Path("run"), "--trial", args[3], "--epochs", 1.0, "--holdout", *options)
        assert threads == 1  # the reference recipe whole: `train` would keep an earlier training's options
        train(args[3])

    def train_final(run, number, epochs, holdout, **options):
        assert options == {"batch_size": 128, "lr": 0.001, "mixup": 0.0, "cutmix": 0.0, "randaugment": ""}
        train(number)

    if jobs == 1:
        monkeypatch.setattr(proof, "train_final", train_final)
    else:
        monkeypatch.setattr(proof, "cli", etnas_train)
    with pytest.raises(SystemExit, match="status 2"):
        proof.train_finals(Path("run"), [1, 2, 3, 4], [], epochs=1.0, jobs=jobs, out=Path("out"))
    assert 1 in started and set(started) <= may_begin


def test_the_soak_audit_finds_a_lost_a_duplicated_and_a_retrained_training(tmp_path):
    """The soak's counts come from the study: each kind of damage it reports is one it can see."""
    import optuna

    from benchmarks.soak import audit
    from nas.rundir import study_storage

    study = optuna.create_study(storage=study_storage(tmp_path), directions=["maximize", "minimize"])
    complete, failed = optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL

    def add(state, values=None, **attrs):
        study.add_trial(optuna.trial.create_trial(state=state, values=values, user_attrs={"pred_ms": 1.0, **attrs}))
        return len(study.trials) - 1

    ok = add(complete, [0.6, 1.0], arch_id="a", rung_accs=[0.5, 0.6], started_at=[0, 6], trained_steps=[6, 12])
    cut = add(failed, arch_id="b", rung_accs=[0.4], started_at=[0], trained_steps=[6], interrupted=True)
    add(complete, [0.5, 1.0], arch_id="b", rung_accs=[0.4, 0.5], started_at=[0, 12], trained_steps=[6, 6],
        requeued_from=cut)  # rung 1 went on from the checkpoint of step 12
    add(complete, [0.4, 1.0], arch_id="b", rung_accs=[0.4], started_at=[0], trained_steps=[6],
        requeued_from=cut)  # queued twice (killed between queuing the copy and closing the original): trained twice
    never = add(failed, arch_id="c", interrupted=True)  # interrupted, and nothing took its place
    twice = add(complete, [0.7, 1.0], arch_id="a", rung_accs=[0.7], started_at=[0], trained_steps=[6])
    kills = [{"complete": {str(ok): [0.6, 1.0], str(twice): [0.1, 1.0]}, "in_flight": [cut]}]
    found = audit(tmp_path, kills)
    assert found["lost_finished_trials"] == [twice] and found["lost_interrupted_trials"] == [never]
    assert found["duplicated_rung_trainings"] == 2  # the second trainings of "a" and of "b": one rung each
    assert (found["retrained_rung_trainings"], found["retrained_from_a_checkpoint"],
            found["retrained_with_no_step_left"]) == (1, 1, 0)
    assert found["trials_interrupted"] == 2 and found["rung_trainings"] == 2 + 2 + 1 + 1


def test_the_int8_accuracy_benchmark_takes_the_presets_and_the_furthest_searched_and_reads_finished_reports(
        tmp_path):
    """Which trainings it asks for (one per architecture, cheapest first) and which reports count: the
    15-epoch holdout ones with int8 figures only."""
    from benchmarks.int8_accuracy import chosen, collect, still_to_train

    def spec(norm, attention):
        stage = {"attention": attention, "norm": norm, "width": 16, "depth": 1}
        return json.dumps({"stages": [stage, {**stage, "attention": "cga"}]})

    rows = [(0, "COMPLETE", "deit-tiny", 0, None, 40, spec("layernorm", "mhsa")),
            (1, "COMPLETE", None, 2, 0.6, 9, spec("batchnorm", "cga")),
            (2, "COMPLETE", None, 2, 0.7, 5, spec("batchnorm", "sla")),
            (3, "COMPLETE", None, 1, 0.9, 1, spec("prepbn", "cga")),
            (4, "COMPLETE", None, 2, 0.7, 5, spec("batchnorm", "sla")),  # the same architecture as 2
            (5, "INFEASIBLE", None, None, None, 2, spec("unified", "cga"))]
    trials = pd.DataFrame(rows, columns=["number", "state", "preset", "rung", "rung_acc", "flops", "spec"])
    trials["arch_id"] = [f"a{n}" for n in trials["number"]]
    trials.loc[4, "arch_id"] = "a2"
    trials.to_csv(tmp_path / "trials.csv", index=False)
    models = chosen(tmp_path, searched=2)
    assert models["number"].tolist() == [2, 1, 0]  # the preset and the two at the top rung, cheapest first
    for number, report in [(2, {"epochs": 15, "holdout": True, "test_acc_int8": 0.5}),
                           (1, {"epochs": 15, "holdout": True}),  # no int8 figures: quantization failed
                           (0, {"epochs": 3, "holdout": True, "test_acc_int8": 0.5})]:  # another recipe
        (tmp_path / "final" / str(number)).mkdir(parents=True)
        full = {"short": "s", "test_acc": 0.6, "int8_top1_agreement": 0.9, "params": 1, "train_s": 60, **report}
        (tmp_path / "final" / str(number) / "final.json").write_text(json.dumps(full))
    assert still_to_train(tmp_path, models) == [0]  # 1 finished, without int8 figures: not trained again
    (row,) = collect(tmp_path, models)
    assert (row["name"], row["kind"], row["norm"], row["attention"]) == ("trial-2", "searched", "batchnorm", "mixed")
    assert row["drop"] == pytest.approx(0.1)


def test_the_accuracy_ceiling_counts_each_15_epoch_training_once_where_it_ran(tmp_path, capsys):
    """Reference and probe trainings at 15 epochs, and the proofs' own finals at 15 epochs; a reused
    training (a preset read from the reference, a baseline read from earlier results) is not counted again."""
    from benchmarks.accuracy_ceiling import main
    from evaluators.recipes import FINAL_RECIPE

    def write(folder, name, text):
        (tmp_path / folder).mkdir(exist_ok=True)
        (tmp_path / folder / name).write_text(text)

    def recipe(**change):
        return {**FINAL_RECIPE, "epochs": 15, "seed": 0, **change}

    reference = [{"short": "p4 96x6[slab]", "test_acc": 0.70, "seed": 0, "origin": "preset slab-deit",
                  "recipe": recipe()},
                 {"short": "p8 a", "test_acc": 0.74, "seed": 0, "recipe": recipe()},
                 {"short": "p8 b", "test_acc": 0.99, "seed": 0, "recipe": recipe(epochs=1)},  # a proxy
                 {"short": "p8 c", "test_acc": 0.98, "seed": 0, "recipe": recipe(lr=1.0)}]  # another recipe
    write("reference", "reference.jsonl", "\n".join(json.dumps(r) for r in reference))
    proof = {"budget": {"final_epochs": 15}, "rows": [
        {"name": "slab-deit", "kind": "preset", "short": "p4 96x6[slab]", "test_acc": 0.70, "source": "reference"},
        {"name": "trial-1", "kind": "searched", "short": "p2 c", "test_acc": 0.72, "source": "trained"},
        {"name": "pico", "kind": "timm", "short": "vit", "test_acc": 0.80, "source": "earlier results"}]}
    write("cifar10", "results.json", json.dumps(proof))
    write("cifar10-flat6", "results.json", json.dumps({**proof, "budget": {"final_epochs": 6}}))
    main(["--results", str(tmp_path), "--top", "5"])
    head, *listed = capsys.readouterr().out.splitlines()
    assert head.startswith("3 trainings at 15 epochs, 3 architectures; slab-deit 0.7000, bar 0.7300; above it: 1")
    assert [line.split()[0] for line in listed] == ["0.7400", "0.7200", "0.7000"]


def test_the_proof_plot_labels_near_ties_without_overlap():
    """The four isotropic presets lie within 3% of latency and 1 point of accuracy of each other."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    proof = proof_script()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    points = [("deit-tiny", 3.140, 0.6220), ("skipat-tiny", 3.152, 0.6228), ("pre-rmsnorm", 3.188, 0.6202),
              ("unified-norm", 2.845, 0.6274), ("deit-pico", 3.078, 0.6032), ("trial-15", 2.650, 0.7140)]
    ax.plot([p[1] for p in points], [p[2] for p in points], "D", markersize=proof.MARKER_PT)
    fig.tight_layout()
    proof.label_points(ax, points)
    renderer = fig.canvas.get_renderer()
    boxes = [t.get_window_extent(renderer) for t in ax.texts]
    assert sorted(t.get_text() for t in ax.texts) == sorted(p[0] for p in points)
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])
    plt.close(fig)

"""The searched-vs-presets benchmark stays runnable: its --quick mode on digits."""
import json
import subprocess
import sys

from .helpers import ROOT, synthetic_model


def test_cifar10_vs_presets_quick_on_digits(tmp_path):
    model = synthetic_model(tmp_path / "digits.model")
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "cifar10_vs_presets.py"), "--quick", "--data", "digits",
                    "--out", str(tmp_path / "out"), "--latency-model", str(model)], check=True, cwd=ROOT,
                   capture_output=True, timeout=900)
    res = json.loads((tmp_path / "out" / "results.json").read_text())
    assert res["target_ms"] > 0
    kinds = [r["kind"] for r in res["rows"]]
    assert kinds.count("preset") == 6 and 1 <= kinds.count("searched") <= 3
    assert res["budget"]["base_epochs"] < res["budget"]["epochs"]  # the multi-fidelity search
    assert all(r["source"] == "trained" and len(r["val_curve"]) == 1 for r in res["rows"])  # --holdout, no reference
    for r in res["rows"]:
        assert {"name", "kind", "short", "test_acc", "measured_ms", "pred_ms", "params", "flops", "train_min"} <= set(r)
        assert 0 <= r["test_acc"] <= 1 and r["measured_ms"] > 0
    presets_ms = [r["measured_ms"] for r in res["rows"] if r["kind"] == "preset"]
    assert sum(ms <= res["target_ms"] for ms in presets_ms) == 3  # the measured median of six
    assert res["search_target_ms"] > 0
    assert (tmp_path / "out" / "cifar10_front.png").stat().st_size > 5_000


def test_reuse_final_copies_only_the_same_architecture_recipe_and_data(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("proof", ROOT / "benchmarks" / "cifar10_vs_presets.py")
    proof = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(proof)
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
    assert proof.reuse_final(previous, run, 7, "abc", 6.0, "digits")
    assert (run / "final" / "7" / "checkpoint.pt").read_text() == "finished"


def test_reference_trainings_are_reused_only_with_the_same_recipe(tmp_path):
    import importlib.util
    from dataclasses import asdict

    from evaluators.recipes import FINAL_RECIPE
    from evaluators.train import TrainConfig

    spec = importlib.util.spec_from_file_location("proof", ROOT / "benchmarks" / "cifar10_vs_presets.py")
    proof = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(proof)
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

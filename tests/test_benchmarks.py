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
    (previous / "final" / "3" / "final.json").write_text(json.dumps({"arch_id": "abc", "epochs": 6.0, "dataset": "digits"}))
    (previous / "final" / "3" / "checkpoint.pt").write_text("finished")
    assert not proof.reuse_final(previous, run, 0, "abc", 12.0, "digits")  # another recipe
    assert not proof.reuse_final(previous, run, 0, "xyz", 6.0, "digits")  # another architecture
    assert not proof.reuse_final(previous, run, 0, "abc", 6.0, "npz:other.npz")  # other data
    assert proof.reuse_final(previous, run, 7, "abc", 6.0, "digits")
    assert (run / "final" / "7" / "checkpoint.pt").read_text() == "finished"

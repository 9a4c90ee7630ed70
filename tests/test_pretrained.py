"""The fine-tunable export files: safetensors weights and config.json back to the trainable model,
a fresh classifier for new classes, clear errors on unusable files, and the Python API."""
import json
import re
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from search_space import build_model, presets
from search_space.check import randomize_norms
from search_space.pretrained import CONFIG_FILE, WEIGHTS_FILE, PretrainedError, create_model, save_pretrained

from .helpers import ROOT, joining_shared_ray

PRESETS = presets(8, 1, 4, width_mult=0.25, depth_mult=0.25)
PREPROCESSING = {"input_size": [1, 8, 8], "interpolation": "bicubic", "crop_mode": "squash", "crop_pct": 1.0,
                 "mean": [0.3], "std": [0.2]}
NAMES = ["cat", "dog", "owl", "eel"]


def trained_like(name: str) -> torch.nn.Module:
    """A preset with every norm's statistics and affine moved off their initial values."""
    model = build_model(PRESETS[name])
    randomize_norms(model, torch.Generator().manual_seed(0))
    return model


@pytest.mark.parametrize("name", ["slab-deit", "efficientvit-m0", "unified-norm"])
def test_exported_files_rebuild_the_trained_model(tmp_path, name):
    model = trained_like(name).eval()
    save_pretrained(model, tmp_path, pretrained_cfg=PREPROCESSING, label_names=NAMES)
    loaded = create_model(tmp_path)
    assert loaded.training  # ready to fine-tune, as timm's create_model returns it
    x = torch.randn(5, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(loaded.eval()(x), model(x))  # norm statistics included: bit-identical
    assert loaded.label_names == NAMES and loaded.pretrained_cfg == {**PREPROCESSING, "num_classes": 4}
    assert json.loads((tmp_path / CONFIG_FILE).read_text())["spec"] == json.loads(model.spec.to_json())
    assert loaded.spec == model.spec


def test_a_new_class_count_gets_a_fresh_classifier_that_trains(tmp_path):
    model = trained_like("deit-tiny")
    save_pretrained(model, tmp_path, pretrained_cfg=PREPROCESSING, label_names=NAMES)
    tuned = create_model(tmp_path, num_classes=3)
    assert tuned.spec.num_classes == 3 and tuned.get_classifier().out_features == 3
    body = {k: v for k, v in model.state_dict().items() if not k.startswith("head.fn.fc")}
    assert all(torch.equal(tuned.state_dict()[k], v) for k, v in body.items())  # only the classifier is new
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(16, 1, 8, 8, generator=g), torch.randint(0, 3, (16,), generator=g)
    opt = torch.optim.AdamW(tuned.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        loss = F.cross_entropy(tuned(x), y)
        opt.zero_grad()
        loss.backward()
        if not losses:  # every weight of the rebuilt model learns, not only the new classifier
            assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in tuned.parameters())
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.9 * losses[0]
    assert len(tuned.label_names) == 3 and tuned.pretrained_cfg["num_classes"] == 3


def test_untrained_weights_need_no_weights_file(tmp_path):
    save_pretrained(trained_like("deit-tiny"), tmp_path, pretrained_cfg=PREPROCESSING, label_names=NAMES)
    (tmp_path / WEIGHTS_FILE).unlink()
    assert create_model(tmp_path, pretrained=False).spec == PRESETS["deit-tiny"]
    with pytest.raises(PretrainedError, match="not found; pass pretrained=False"):
        create_model(tmp_path)


@pytest.mark.parametrize("damage, message", [
    (lambda d: (d / CONFIG_FILE).unlink(), "config.json not found: give a folder written by `etnas export`"),
    (lambda d: (d / CONFIG_FILE).write_text("{oops"), "config.json is not JSON"),
    (lambda d: (d / CONFIG_FILE).write_text('{"architecture": "resnet50"}'), "is not an etnas model config"),
    (lambda d: (d / WEIGHTS_FILE).write_bytes(b"garbage"), "model.safetensors does not match the checksum"),
    (lambda d: ((d / WEIGHTS_FILE).write_bytes(b"garbage"), without_checksum(d)),
     "model.safetensors is not a readable safetensors file"),
    (lambda d: save_file(build_model(PRESETS["slab-deit"]).state_dict(), str(d / WEIGHTS_FILE)),
     "does not match the checksum in config.json: the file is damaged or not this model's"),
    (lambda d: (save_file(build_model(PRESETS["slab-deit"]).state_dict(), str(d / WEIGHTS_FILE)),
                without_checksum(d)),
     "does not fit the config's architecture"),
    (lambda d: (d / CONFIG_FILE).write_text(json.dumps({"architecture": "etnas-nasvit", "spec": {"stages": [
        {"width": 7, "depth": 1}]}})), "its spec does not build"),
    (lambda d: edit_config(d, pretrained_cfg=None), "config.json: pretrained_cfg of the wrong JSON type"),
    (lambda d: edit_config(d, label_names=["a"]), "config.json: 1 label names for 4 classes"),
    (lambda d: damage_data(d / WEIGHTS_FILE), "model.safetensors does not match the checksum in config.json: "
                                              "the file is damaged"),
])
def test_unusable_model_files_say_what_is_wrong(tmp_path, damage, message):
    save_pretrained(trained_like("deit-tiny"), tmp_path, pretrained_cfg=PREPROCESSING, label_names=NAMES)
    damage(tmp_path)
    with pytest.raises(PretrainedError, match=message.replace("(", r"\(").replace(")", r"\)")):
        create_model(tmp_path)


def test_a_model_file_given_for_the_folder_is_named_as_such(tmp_path):
    (tmp_path / "model.onnx").write_bytes(b"\x08\x8a\x01 protobuf bytes")
    with pytest.raises(PretrainedError, match="model.onnx is not an export's config.json; give the folder `etnas "
                                              "export` wrote"):
        create_model(tmp_path / "model.onnx")


def edit_config(folder, **changes):
    config = json.loads((folder / CONFIG_FILE).read_text())
    (folder / CONFIG_FILE).write_text(json.dumps({**config, **changes}))


def without_checksum(folder):
    """As folders exported before config.json recorded the weights' checksum."""
    config = json.loads((folder / CONFIG_FILE).read_text())
    del config["weights_sha256"]
    (folder / CONFIG_FILE).write_text(json.dumps(config))


def damage_data(weights):
    """Bytes in the tensor data changed, the header intact: safetensors itself loads such a file."""
    data = bytearray(weights.read_bytes())
    data[-100:] = b"\xff" * 100
    weights.write_bytes(bytes(data))


def test_weights_are_written_as_any_file_is_and_an_unreadable_one_is_named(tmp_path, monkeypatch):
    import os
    import pathlib

    save_pretrained(trained_like("deit-tiny"), tmp_path, pretrained_cfg=PREPROCESSING, label_names=NAMES)
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / WEIGHTS_FILE).stat().st_mode & 0o777 == 0o666 & ~umask  # not private to its writer
    read_bytes = pathlib.Path.read_bytes

    def denied(path):
        if path.name == WEIGHTS_FILE:
            raise PermissionError(13, "Permission denied")
        return read_bytes(path)

    monkeypatch.setattr(pathlib.Path, "read_bytes", denied)
    with pytest.raises(PretrainedError, match="model.safetensors cannot be read \\(Permission denied\\); make it "
                                              "readable"):
        create_model(tmp_path)


@pytest.mark.parametrize("num_classes", ["5", 5.0, True, [5], 0, np.int64(-1)])
def test_a_class_count_that_is_no_positive_int_is_named(tmp_path, num_classes):
    save_pretrained(trained_like("deit-tiny"), tmp_path, pretrained_cfg=PREPROCESSING, label_names=NAMES)
    with pytest.raises(PretrainedError, match=re.escape(f"num_classes must be a positive integer, got {num_classes!r}")):
        create_model(tmp_path, num_classes=num_classes)
    with pytest.raises(PretrainedError, match="path must be a folder written by `etnas export`"):
        create_model(None)


def test_a_reset_classifier_renames_the_classes_and_counts_them_in_pretrained_cfg(tmp_path):
    save_pretrained(trained_like("deit-tiny"), tmp_path, pretrained_cfg=PREPROCESSING, label_names=NAMES)
    model = create_model(tmp_path)
    model.reset_classifier(np.int64(3))  # as y.max() + 1 gives it
    assert model.label_names == ["0", "1", "2"] and model.pretrained_cfg == {**PREPROCESSING, "num_classes": 3}
    save_pretrained(model, tmp_path, pretrained_cfg=model.pretrained_cfg, label_names=model.label_names)
    assert create_model(tmp_path).get_classifier().out_features == 3  # saved again, as it is now


def test_label_names_must_match_the_class_count(tmp_path):
    with pytest.raises(ValueError, match="3 label names for a 4-class model"):
        save_pretrained(trained_like("deit-tiny"), tmp_path, pretrained_cfg=PREPROCESSING, label_names=NAMES[:3])


def test_importing_the_python_api_imports_nothing_heavy():
    code = "import sys, etnas; print(sorted({'torch', 'ray', 'optuna'} & set(sys.modules)))"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert res.returncode == 0 and res.stdout.strip() == "[]", res.stdout + res.stderr[-2000:]


@pytest.mark.slow
def test_python_api_goes_on_with_the_search_the_command_line_began(two_target_run, tmp_path, capsys):
    """The API's settings are the command line's: the run `etnas run` made with TINY's options, its
    folder renamed since, is resumed (a changed setting would be refused) and searched two trials
    further."""
    import etnas

    from nas.rundir import load_run_study

    from .test_search import check_run

    shutil.copytree(two_target_run / "runs", tmp_path / "runs")
    run = (tmp_path / "runs" / "tiny").rename(tmp_path / "runs" / "renamed")
    before = pd.read_csv(run / "trials.csv")
    capsys.readouterr()
    with joining_shared_ray():
        front = etnas.search("digits", "p50", name="renamed", runs_dir=tmp_path / "runs", trials=14,
                             latency_model=two_target_run / "digits.model",
                             other_latency_models=(str(two_target_run / "other-device.model"),),
                             epochs=2, base_epochs=0.25, eta=2, subset=0.3, workers=1, seed=1)
    printed = capsys.readouterr().out
    assert front and front == json.loads((run / "front.json").read_text())
    config = json.loads((run / "config.json").read_text())
    assert (config["seed"], config["base_epochs"], config["subset"]) == (1, 0.25, 0.3)
    assert f"target p50 of the space's predicted latencies: {config['target_ms']:g} ms" in printed
    assert "deployment target: torch" in printed
    after = check_run(run, 14)
    added = after[after["number"] > before["number"].max()]
    assert (added["rung_acc"].notna() | (added["state"] == "INFEASIBLE")).sum() >= 2  # searched on, not re-read
    assert all("other-device" in json.loads(r) for r in added["pred_ms_targets"].dropna())  # the second target too
    assert load_run_study(run).study_name == "tiny"  # the run's one study, continued

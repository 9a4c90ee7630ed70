"""Export round-trips for every preset, and the main job end to end (run, front, train, export)."""
import dataclasses
import errno
import json
import types
import zipfile

import onnx
import onnxruntime
import pandas as pd
import pytest
import torch

import etnas
from nas import SearchError
from latency_models.measure import fingerprint
from nas.package import model_card, verified_difference, verify_pt2, write_deployed
from search_space import ArchSpec, build_model, deploy, presets
from search_space.check import randomize_norms
from search_space.export import (OPSET, _exporters_onnx_program, _untranslated_ops, export_onnx, export_program,
                                 export_pt2, onnx_trace, verify_onnx)

from .helpers import ROOT, one_line_error, run_cli

PRESETS = presets(8, 1, 10, width_mult=0.25, depth_mult=0.25)


@pytest.mark.parametrize("name", PRESETS)
def test_preset_exports_match_pytorch(tmp_path, name):
    model = build_model(PRESETS[name]).eval()
    randomize_norms(model, torch.Generator().manual_seed(0))
    deployed = deploy(model)
    write_deployed(deployed, tmp_path, ("onnx", "pt2"), {}, report=lambda: None)  # as `export` writes them
    for batch in (1, 3):  # batch 1 as deployed; 3 through the dynamic batch dimension
        x = torch.randn(batch, 1, 8, 8)
        assert verify_onnx(tmp_path / "model.onnx", deployed, x) <= 1e-4
        assert verify_pt2(tmp_path / "model.pt2", deployed, x) <= 1e-4
    images = onnx.load(tmp_path / "model.onnx").graph.input[0]
    assert [d.dim_param or d.dim_value for d in images.type.tensor_type.shape.dim] == ["batch", 1, 8, 8]
    with torch.no_grad():  # no upper bound on the batch
        assert torch.export.load(tmp_path / "model.pt2").module()(torch.zeros(5000, 1, 8, 8)).shape == (5000, 10)
    with zipfile.ZipFile(tmp_path / "model.pt2") as pt2:  # no source paths of the machine that exported it
        assert not any(str(ROOT).encode() in pt2.read(member) for member in pt2.namelist())
    ops = {n.op_type for n in onnx.load(tmp_path / "model.onnx").graph.node}
    assert not ops & {"BatchNormalization", "LayerNormalization"} or PRESETS[name].stages[0].skip


def one_head_cga() -> ArchSpec:
    spec = PRESETS["efficientvit-m0"]
    return dataclasses.replace(spec, stages=(dataclasses.replace(spec.stages[0], heads=1), *spec.stages[1:]))


@pytest.mark.slow  # two exports each, ours and torch.onnx.export's
@pytest.mark.parametrize("name", ["deit-tiny", "slab-deit", "efficientvit-m0", "pre-rmsnorm", "one-head-cga"])
def test_onnx_graph_is_the_exporters_own_without_its_retrace(tmp_path, name):
    """Every deployed op has a translation (so the decomposition pass is skipped), and the graph
    is the one `torch.onnx.export` writes through that pass: the same ops, the same outputs."""
    deployed = deploy(build_model(one_head_cga() if name == "one-head-cga" else PRESETS[name]).eval())
    program = onnx_trace(deployed)  # traced once, as `export` traces it for every file it writes
    assert _untranslated_ops(program) == set()
    export_onnx(deployed, tmp_path / "fast.onnx", program=program)
    torch.onnx.export(deployed, (torch.randn(2, 1, 8, 8),), dynamo=True, opset_version=OPSET,
                      dynamic_shapes=({0: torch.export.Dim("batch", min=1)},),
                      input_names=["images"], output_names=["logits"]).save(str(tmp_path / "reference.onnx"))
    fast, reference = (onnx.load(tmp_path / f).graph for f in ("fast.onnx", "reference.onnx"))
    assert [n.op_type for n in fast.node] == [n.op_type for n in reference.node]
    assert [i.name for i in fast.input] == ["images"] and [o.name for o in fast.output] == ["logits"]
    x = torch.randn(3, 1, 8, 8)
    assert verify_onnx(tmp_path / "fast.onnx", deployed, x) <= 1e-4


def test_onnx_export_decomposes_ops_without_a_translation(tmp_path):
    class InPlace(torch.nn.Module):
        def forward(self, x):
            return torch.relu_(x * 2)

    x = torch.randn(2, 3)
    program = torch.export.export(InPlace(), (x,))
    assert _untranslated_ops(program) == {torch.ops.aten.relu_.default}
    _exporters_onnx_program(program).save(str(tmp_path / "m.onnx"))
    (out,) = onnxruntime.InferenceSession(str(tmp_path / "m.onnx")).run(None, {"images": x.numpy()})
    assert torch.equal(torch.from_numpy(out), torch.relu(x * 2))


def test_onnx_export_falls_back_to_the_decomposition_where_the_direct_graph_is_wrong(tmp_path):
    class OneChunk(torch.nn.Module):  # the exporter's chunk of 1 translates to no list
        spec = types.SimpleNamespace(in_chans=1, img_size=4)

        def forward(self, x):
            return x.chunk(1, dim=-1)[0] * 2

    model = OneChunk()
    assert _untranslated_ops(export_program(model)) == set()
    export_onnx(model, tmp_path / "m.onnx")
    assert verify_onnx(tmp_path / "m.onnx", model, torch.randn(3, 1, 4, 4)) == 0


def test_a_one_token_model_with_skipat_exports_with_a_dynamic_batch(tmp_path):
    """Its trace guards the batch (SkipAt's conv on a 1x1 map); the file still runs any batch."""
    from search_space.spec import StageSpec

    spec = ArchSpec(stages=(StageSpec(width=64, depth=2, norm="batchnorm", heads=2, key_dim=8, skip=(1,)),),
                    img_size=8, in_chans=1, patch=8, stem="patch")
    torch.manual_seed(0)
    model = deploy(build_model(spec).eval())
    export_onnx(model, tmp_path / "m.onnx")
    export_pt2(model, tmp_path / "m.pt2")
    for batch in (1, 5):
        assert verify_onnx(tmp_path / "m.onnx", model, torch.randn(batch, 1, 8, 8)) < 1e-5
        assert verify_pt2(tmp_path / "m.pt2", model, torch.randn(batch, 1, 8, 8)) < 1e-5


def test_a_file_that_refuses_the_deployed_batch_is_an_error_not_a_shipped_file(tmp_path):
    """The ONNX trace (sizes 0 and 1 oblivious) saved as pt2 keeps a check refusing batch 1 in a
    model with a conv on the token grid: export's verification must catch such a file."""
    deployed = deploy(build_model(PRESETS["efficientvit-m0"]).eval())
    torch.export.save(onnx_trace(deployed), str(tmp_path / "model.pt2"))
    with pytest.raises(SearchError, match=r"exported model.pt2 fails on a batch of 1 \(.*\); please report"):
        verified_difference("pt2", tmp_path / "model.pt2", deployed)
    export_pt2(deployed, tmp_path / "model.pt2")
    assert verified_difference("pt2", tmp_path / "model.pt2", deployed) <= 1e-4


def test_a_pt2_file_that_cannot_be_written_is_an_os_error_naming_it(tmp_path):
    """torch's own writer fails with a RuntimeError that says neither the file nor why."""
    deployed = deploy(build_model(PRESETS["deit-tiny"]).eval())
    with pytest.raises(FileNotFoundError) as raised:
        export_pt2(deployed, tmp_path / "gone" / "model.pt2")
    assert raised.value.filename == str(tmp_path / "gone" / "model.pt2")


def test_the_card_loads_only_what_was_written_and_needs_no_dataset_on_this_machine():
    """A pt2-only export with int8, of a run whose npz is gone: the card neither loads nor names
    model.onnx, and says how the source's pixels were read without opening it."""
    spec = PRESETS["deit-tiny"]
    device = fingerprint("cpu", "onnxruntime", 1, 1, 8)
    timing = {"measured_ms": 2.0, "p10_ms": 1.8, "p90_ms": 2.4, "on_predictor_scale": False, "device": device}
    final = {"test_acc": 0.9, "dataset": "npz:gone.npz", "epochs": 15, "pred_ms": 1.9, "pred_rel_err": -0.05,
             "flops": 1000, **timing}
    quantized = {"test_acc_int8": 0.89, "int8_top1_agreement": 0.98, "latency": {**timing, "measured_ms": 3.0},
                 "vs_fp32": {"fp32_ms": 1.0, "int8_ms": 2.0, "speedup": 0.5}}
    preprocessing = {"input_size": [1, 8, 8], "interpolation": "bicubic", "crop_mode": "squash", "crop_pct": 1.0,
                     "mean": [0.5], "std": [0.25], "num_classes": 10}
    card = model_card(spec, final, 1234, {"pt2": 0.0}, preprocessing, [str(c) for c in range(10)], None,
                      {"dataset": "npz:gone.npz", "latency_target": device}, quantized)
    assert "model.onnx" not in card and 'torch.export.load("model.pt2")' in card
    assert "| model.int8.onnx vs the fp32 ONNX graph (not exported) | 0.50x the speed" in card
    assert "8-bit pixels, as the npz file holds them, divided by 255" in " ".join(card.split())
    assert "| trained on | training images (the whole training split), 15 epochs |" in card  # a report of before
    recipe = {"batch_size": 128, "lr": 0.001, "weight_decay": 0.05, "mixup": 0.2, "cutmix": 0.0, "randaugment": None}
    held_out = {**final, "holdout": True, "trained_examples": 1293, "recipe": recipe}
    card = model_card(spec, held_out, 1234, {"pt2": 0.0}, preprocessing, [str(c) for c in range(10)], None,
                      {"dataset": "npz:gone.npz", "latency_target": device}, quantized)
    assert ("| trained on | 1,293 training images (the search's training part; its validation part held out), "
            "15 epochs |") in card
    assert "| recipe | AdamW, peak lr 0.001, weight decay 0.05, batch 128; RandAugment off; mixup 0.2 |" in card


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """The demo path at a tiny budget, calibration included."""
    runs = tmp_path_factory.mktemp("runs")
    run_cli("run", "--name", "demo", "--target-ms", "p60", "--trials", 9, "--epochs", 1, "--subset", 0.3,
            "--calibrate-n", 8, "--workers", 2, "--runs-dir", runs)
    return runs / "demo"


@pytest.mark.slow
def test_demo_path_trains_and_exports_the_best(demo_run, tmp_path):
    assert list((demo_run.parent / "latency").glob("auto-*.model"))  # calibrated and cached
    res = run_cli("train", demo_run, "--trial", "best", "--epochs", 1)
    best = max(json.loads((demo_run / "front.json").read_text()), key=lambda f: f["val_acc"])
    final = json.loads((demo_run / "final" / str(best["trial"]) / "final.json").read_text())
    for key in ("trial", "arch_id", "test_acc", "pred_ms", "measured_ms", "epochs", "train_s"):
        assert key in final
    assert final["trial"] == best["trial"] and 0 <= final["test_acc"] <= 1 and final["measured_ms"] > 0
    assert 0 <= final["test_acc_int8"] <= 1 and 0 <= final["int8_top1_agreement"] <= 1  # beside fp32
    assert "test_acc_int8" in res.stdout
    assert any("params (deployed)" in line and f" {final['params']} " in line for line in res.stdout.splitlines())
    assert f"{final['wall_s']:.4f}" in res.stdout and final["wall_s"] > final["train_s"]  # the loop's time, and all of it
    # calibrated on this machine, so the final latency is measured on the predictor's scale
    assert final["on_predictor_scale"] and final["reference_ms"] == json.loads((demo_run / "config.json").read_text())[
        "latency_reference_ms"]
    assert "test_acc" in res.stdout and f"plot: {demo_run / 'front.html'}" in res.stdout
    assert "final training (test acc, measured ms)" in (demo_run / "front.html").read_text()  # redrawn with it
    run_cli("export", demo_run, "--trial", "best", "--out", tmp_path / "export")
    assert {p.name for p in (tmp_path / "export").iterdir()} >= {"model.onnx", "model.pt2", "arch.json", "MODEL_CARD.md",
                                                                 "model.safetensors", "config.json"}
    card = (tmp_path / "export" / "MODEL_CARD.md").read_text()
    check_take_away_files(tmp_path / "export", card)
    assert f"{final['test_acc']:.4f}" in card and "onnxruntime" in card
    shipped = json.loads((tmp_path / "export" / "latency.json").read_text())  # the shipped file, timed
    assert shipped["device"]["runtime"] == "onnxruntime" and shipped["measured_ms"] > 0
    as_timed = shipped["anchor_ms"] / shipped["reference_ms"]  # on the predictor's scale, and as timed first
    assert (f"| model.onnx latency | {shipped['measured_ms'] * as_timed:.3f} ms median (p10-p90 "
            f"{shipped['p10_ms'] * as_timed:.3f}") in card
    assert f"as timed, {shipped['measured_ms']:.3f} ms on the predictor's scale; timed here: onnxruntime" in card
    assert "| search target | onnxruntime " in card and "fp32 on" in card  # the default calibration's runtime
    front = json.loads(run_cli("front", demo_run, "--json").stdout)["front"]
    shown = next(f for f in front if f["trial"] == best["trial"])
    assert (shown["measured_ms"], shown["test_acc"]) == (final["measured_ms"], final["test_acc"])
    assert next(f for f in json.loads((demo_run / "front.json").read_text())  # kept current by `train`
                if f["trial"] == best["trial"])["measured_ms"] == final["measured_ms"]


def check_take_away_files(exported, card):
    """The fine-tunable files alone rebuild the model model.onnx ships, with its class names and
    preprocessing in config.json, the card and the ONNX metadata."""
    model = etnas.create_model(exported).eval()
    session = onnxruntime.InferenceSession(str(exported / "model.onnx"))
    x = torch.randn(4, *model.pretrained_cfg["input_size"], generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert abs(session.run(None, {"images": x.numpy()})[0] - model(x).numpy()).max() < 1e-4
    meta = session.get_modelmeta().custom_metadata_map
    assert json.loads(meta["label_names"]) == model.label_names == [str(d) for d in range(10)]  # digits' classes
    assert json.loads(meta["pretrained_cfg"]) == model.pretrained_cfg
    assert ArchSpec.from_json(meta["etnas.spec"]) == model.spec
    assert "for the classes `0`, `1`, `2`" in card and "etnas.create_model" in card
    assert "scikit-learn's digits (values 0..16) as 8-bit pixels, value x 255/16 rounded, divided by 255" in " ".join(card.split())
    arch = json.loads((exported / "arch.json").read_text())
    assert arch["label_names"] == model.label_names and arch["pretrained_cfg"]["interpolation"] == "bicubic"


@pytest.mark.slow
def test_export_refuses_a_non_empty_folder_unless_forced(demo_run, tmp_path, monkeypatch):
    best = max(json.loads((demo_run / "front.json").read_text()), key=lambda f: f["val_acc"])["trial"]
    if not (demo_run / "final" / str(best) / "model.pt").exists():
        run_cli("train", demo_run, "--trial", best, "--epochs", 1)
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    one_line_error(run_cli("export", demo_run, "--trial", best, "--out", out, check=False),
                    f"--out {out} is not empty; pass --force")
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    (out / "model.pt2").write_text("stale")
    res = run_cli("export", demo_run, "--trial", best, "--out", out, "--format", "onnx", "--force", "--int8")
    assert not (out / "model.pt2").exists() and (out / "notes.txt").read_text() == "mine"  # only its own files
    assert (out / "model.onnx").exists() and "exported to" in res.stdout and "notes.txt" not in res.stdout
    int8 = json.loads((out / "model.int8.json").read_text())
    final = json.loads((demo_run / "final" / str(best) / "final.json").read_text())
    assert int8["test_acc_int8"] == pytest.approx(final["test_acc_int8"])  # the same quantization as train's
    assert int8["latency"]["device"]["precision"] == "int8" and int8["latency"]["measured_ms"] > 0
    card = (out / "MODEL_CARD.md").read_text()
    assert f"| model.int8.onnx accuracy | {int8['test_acc_int8']:.4f} test" in card
    assert "| model.int8.onnx latency | " in card
    vs = int8["vs_fp32"]  # both files timed in one interleaved session
    assert vs["fp32_ms"] > 0 and vs["int8_ms"] > 0 and vs["speedup"] == pytest.approx(vs["fp32_ms"] / vs["int8_ms"])
    assert f"| model.int8.onnx vs model.onnx | {vs['speedup']:.2f}x the speed ({vs['int8_ms']:.3f} vs" in card
    shipped = {p.name: p.read_bytes() for p in out.iterdir()}
    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(out / "MODEL_CARD.md"))

    with monkeypatch.context() as m:  # the disk fills at the last step: the earlier export stays as it was
        m.setattr("nas.package.model_card", full_disk)
        failed = run_cli("export", demo_run, "--trial", best, "--out", out, "--force", check=False)
    assert failed.returncode == 2 and "Traceback" not in failed.stderr  # after the progress lines, one error line
    assert failed.stderr.splitlines()[-1].startswith(f"error: {out / 'MODEL_CARD.md'}: No space left on device; free")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == shipped  # no half export, no staging folder left
    one_line_error(run_cli("export", demo_run, "--trial", best, "--out", demo_run, "--force", check=False),
                   f"--out {demo_run} is a run folder; export into a folder of its own")
    report = demo_run / "final" / str(best) / "final.json"
    report.rename(report.with_suffix(".kept"))  # as a training killed between its last step and its report leaves it
    try:
        one_line_error(run_cli("export", demo_run, "--trial", best, "--out", tmp_path / "unreported", check=False),
                       f"trial {best} of {demo_run} has a trained model but no final.json")
    finally:
        report.with_suffix(".kept").rename(report)
    assert not (tmp_path / "unreported").exists() or not any((tmp_path / "unreported").iterdir())
    etnas.export(demo_run, tmp_path / "pt2", trial=best, formats="pt2")  # one format, named as a string
    written = {p.name for p in (tmp_path / "pt2").iterdir()}
    assert "model.pt2" in written and "model.onnx" not in written
    card = (tmp_path / "pt2" / "MODEL_CARD.md").read_text()
    assert "torch.export.load(\"model.pt2\")" in card and "model.onnx" not in card  # it loads what was written


@pytest.mark.slow  # on the demo run: a real calibration and search
def test_bad_input_is_one_line_exit_2(demo_run, tmp_path):
    one_line_error(run_cli("front", tmp_path / "nope", check=False), "no run at")
    one_line_error(run_cli("train", demo_run, "--trial", 999, check=False), "has no trial 999")
    trials = pd.read_csv(demo_run / "trials.csv")
    untrained = trials[trials["state"].isin(["INFEASIBLE", "FAIL", "PRUNED"])]
    if len(untrained):
        n = int(untrained["number"].iloc[0])
        one_line_error(run_cli("train", demo_run, "--trial", n, check=False), f"trial {n} of")
    never_trained = trials[trials["state"] == "COMPLETE"]["number"].iloc[-1]
    if not (demo_run / "final" / str(never_trained)).exists():
        one_line_error(run_cli("export", demo_run, "--trial", never_trained, "--out", tmp_path / "x", check=False),
                        "has no final training yet")
    one_line_error(run_cli("run", "--name", "d", "--target-ms", 5, "--dataset", f"npz:{tmp_path}/none.npz",
                            "--runs-dir", tmp_path, check=False), "does not exist")
    one_line_error(run_cli("train", demo_run, "--trial", "fastest", check=False), "neither a trial number")


def test_a_second_export_into_a_folder_being_written_is_refused_untouched(tmp_path):
    from nas.package import STAGING, staged

    with staged(tmp_path) as stage:
        (stage / "model.onnx").write_text("the first export's")
        with pytest.raises(SearchError, match=f"another export is writing to {tmp_path}; wait for it to end"):
            with staged(tmp_path):
                pass
        assert (stage / "model.onnx").read_text() == "the first export's"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]  # moved in; the staging folder gone
    (tmp_path / STAGING).mkdir()
    (tmp_path / STAGING / "model.pt2").write_text("a killed export's")
    with staged(tmp_path) as stage:
        assert not any(stage.iterdir())  # not shipped with the next

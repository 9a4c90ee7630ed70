"""int8 as a precision of the target: static quantization of the exported graph, its own fingerprint,
timing tables of quantized models, and one-line errors where quantization cannot be done."""
import json

import numpy as np
import onnx
import onnxruntime
import pandas as pd
import pytest
import torch

from latency_models.measure import fingerprint, fingerprint_id, measure_all
from nas.int8 import fp32_onnx, int8_speedup
from search_space import build_model, deploy, presets
from search_space.check import randomize_norms
from search_space.export import export_onnx
from search_space.quantize import QuantizationError, quantize_int8

from .helpers import run_cli

ONE_THREAD = {"device": "cpu", "threads": 1, "batch": 1}  # the default target's timing setting

PRESETS = presets(8, 1, 10, width_mult=0.25, depth_mult=0.25)


def exported(tmp_path, name: str):
    model = build_model(PRESETS[name]).eval()
    randomize_norms(model, torch.Generator().manual_seed(0))
    return export_onnx(deploy(model), tmp_path / f"{name}.onnx")


def test_the_int8_speedup_times_each_file_in_its_role(tmp_path):
    """Given a small graph as fp32 and a much larger one as int8, the int8 file is the slower;
    swapped, the faster: each file is timed as what it is."""
    small = exported(tmp_path, "deit-tiny")
    large = export_onnx(deploy(build_model(presets(8, 1, 10, width_mult=2.0, depth_mult=2.0)["deit-tiny"]).eval()),
                        tmp_path / "large.onnx")
    deployed = deploy(build_model(PRESETS["deit-tiny"]).eval())
    slower = int8_speedup(small, large, deployed, sweeps=20)
    assert slower["speedup"] == pytest.approx(slower["fp32_ms"] / slower["int8_ms"]) and slower["speedup"] < 0.5
    assert int8_speedup(large, small, deployed, sweeps=20)["speedup"] > 2


@pytest.mark.parametrize("name", ["slab-deit", "unified-norm", "pre-rmsnorm"])
def test_int8_model_is_quantized_per_channel_and_computes_what_fp32_does(tmp_path, name):
    x = torch.randn(64, 1, 8, 8, generator=torch.Generator().manual_seed(1)).numpy()
    fp32 = exported(tmp_path, name)
    int8 = quantize_int8(fp32, tmp_path / "m.int8.onnx", x[:32])  # calibrated on other images than tested
    graph = onnx.load(str(int8)).graph
    weight_axes = [a.i for n in graph.node if n.op_type == "DequantizeLinear" for a in n.attribute if a.name == "axis"]
    assert weight_axes and {n.op_type for n in graph.node} >= {"QuantizeLinear", "DequantizeLinear"}
    a = onnxruntime.InferenceSession(str(fp32)).run(None, {"images": x[32:]})[0]
    b = onnxruntime.InferenceSession(str(int8)).run(None, {"images": x[32:]})[0]
    a, b = a - a.mean(0), b - b.mean(0)  # how the logits move between images, where quantization errs
    assert (a * b).sum() / np.linalg.norm(a) / np.linalg.norm(b) > 0.95
    assert onnxruntime.InferenceSession(str(int8)).run(None, {"images": x[:1]})[0].shape == (1, 10)  # any batch


def test_an_int8_file_keeps_the_class_names_where_no_fp32_file_is_shipped(tmp_path):
    """`export --format pt2 --int8` quantizes a temporary fp32 export: it carries the metadata too."""
    metadata = {"label_names": json.dumps(["a", "b"]), "etnas.arch_id": "x"}
    deployed = deploy(build_model(PRESETS["slab-deit"]).eval())
    with fp32_onnx(deployed, metadata=metadata) as fp32:
        int8 = quantize_int8(fp32, tmp_path / "m.int8.onnx", np.zeros((4, 1, 8, 8), np.float32))
    kept = onnxruntime.InferenceSession(str(int8)).get_modelmeta().custom_metadata_map
    assert {k: kept.get(k) for k in metadata} == metadata


def test_a_file_onnxruntime_cannot_quantize_is_one_clear_error(tmp_path):
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model")
    with pytest.raises(QuantizationError, match="onnxruntime could not quantize broken.onnx to int8"):
        quantize_int8(broken, tmp_path / "out.onnx", np.zeros((2, 1, 8, 8), np.float32))


def test_a_file_that_cannot_be_written_is_the_disks_error_not_the_graphs(tmp_path):
    """A full or read-only disk is an OSError naming the file (advice for the disk), not 'could not quantize'."""
    fp32 = exported(tmp_path, "deit-tiny")
    with pytest.raises(OSError) as raised:
        quantize_int8(fp32, tmp_path / "no such folder" / "m.int8.onnx", np.zeros((2, 1, 8, 8), np.float32))
    assert not isinstance(raised.value, QuantizationError)


def test_int8_has_a_fingerprint_of_its_own_and_fp32_keeps_its_id():
    fp32 = fingerprint("cpu", "onnxruntime", 1, 1, 8)
    assert "precision" not in fp32  # the ids of every fp32 table and model stay what they were
    assert fingerprint("cpu", "onnxruntime", 1, 1, 8, "fp32") == fp32
    int8 = fingerprint("cpu", "onnxruntime", 1, 1, 8, "int8")
    assert int8 == {**fp32, "precision": "int8"} and fingerprint_id(int8) != fingerprint_id(fp32)


@pytest.mark.slow
def test_measure_times_the_quantized_graphs_into_an_int8_table(tmp_path):
    specs = [PRESETS["slab-deit"], PRESETS["unified-norm"]]
    out = tmp_path / "int8.csv"
    assert measure_all(specs, out, runtime="onnxruntime", **ONE_THREAD, remeasure=0, sweeps=5, precision="int8") == 2
    table = pd.read_csv(out)
    assert set(table["arch_id"]) == {s.arch_id for s in specs} and (table["median_ms"] > 0).all()
    assert {json.loads(f)["precision"] for f in table["fingerprint_json"]} == {"int8"}
    with pytest.raises(ValueError, match="timed in onnxruntime only"):
        measure_all(specs, tmp_path / "t.csv", runtime="torch", **ONE_THREAD, precision="int8")


def test_int8_with_torch_is_one_line_before_any_work(tmp_path):
    res = run_cli("measure", "--out", tmp_path / "t.csv", "--n", 1, "--runtime", "torch", "--precision", "int8",
                  check=False)
    assert res.returncode == 2 and res.stderr.strip() == (
        "error: --precision int8 is timed in onnxruntime only; add --runtime onnxruntime")
    assert not (tmp_path / "t.csv").exists()

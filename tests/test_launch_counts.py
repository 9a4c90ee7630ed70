"""The latency features describe the deployed model the runtime executes: their kernel launches,
kind by kind, equal the operators PyTorch's profiler records for every preset and 20 sampled specs.
(Layout copies are left out: PyTorch makes them inside other kernels as it sees fit.)"""
import collections

import numpy as np
import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from latency_models.features import KINDS, tally
from search_space import SearchSpace, build_model, deploy, presets, sample
from search_space.presets import SEARCH_SCALE

KIND_OF = {
    "aten::linear": "linear", "aten::matmul": "matmul", "aten::softmax": "softmax",
    "aten::scaled_dot_product_attention": "sdpa", "aten::layer_norm": "norm", "aten::rms_norm": "norm",
    "aten::mean": "reduce", "aten::sum": "reduce",
    **{f"aten::{op}": "elementwise" for op in ("add", "add_", "mul", "mul_", "relu", "relu_", "gelu", "sigmoid",
                                                "reciprocal", "sub", "div")},
}
# SDPA's unfused math path is a composite: the kernels it launches are its children
TRANSPARENT = {"aten::scaled_dot_product_attention", "aten::_scaled_dot_product_attention_math", "aten::_safe_softmax"}
FUSED_SDPA = "aten::_scaled_dot_product_flash_attention_for_cpu"
COUNTED = [k for k in KINDS if k != "copy"]

_rng = np.random.default_rng(7)
SPECS = {**presets(32, 3, 10, SEARCH_SCALE, SEARCH_SCALE),
         **{f"sample{i}": sample(_rng, SearchSpace(), 16, 3, 10) for i in range(20)}}


def called_from_python(event) -> bool:
    parent = event.cpu_parent
    while parent is not None and parent.name in TRANSPARENT:
        parent = parent.cpu_parent
    return parent is None or not parent.name.startswith("aten::")


def profiled_calls(model: torch.nn.Module, x: torch.Tensor) -> dict[str, int]:
    """Operators called from the model's Python code (not from inside other operators), by kind."""
    with torch.no_grad():
        model(x)
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            model(x)
    calls: collections.Counter = collections.Counter()
    for e in prof.events():
        if not called_from_python(e):
            continue
        if e.name == "aten::scaled_dot_product_attention":
            calls["sdpa"] += any(c.name == FUSED_SDPA for c in e.cpu_children)
        elif e.name in ("aten::conv2d", "aten::conv1d"):
            groups = e.concrete_inputs[-1] if e.concrete_inputs else 1
            calls["dwconv" if isinstance(groups, int) and groups > 1 else "conv"] += 1
        elif e.name in KIND_OF:
            calls[KIND_OF[e.name]] += 1
    return calls


@pytest.mark.parametrize("name", list(SPECS))
def test_feature_call_counts_equal_the_profiled_launches(name):
    spec = SPECS[name]
    model = deploy(build_model(spec).eval())
    seen = profiled_calls(model, torch.randn(1, spec.in_chans, spec.img_size, spec.img_size))
    t = tally(spec)
    predicted = {k: t.calls[KINDS.index(k)] for k in COUNTED}
    assert predicted == {k: seen.get(k, 0) for k in COUNTED}, spec.short()


ORT_KIND_OF = {"MatMul": "matmul", "FusedMatMul": "matmul", "Gemm": "matmul", "Softmax": "softmax",
               "Conv": "conv", "LayerNormalization": "norm", "Reshape": "reshape"}


@pytest.mark.parametrize("name", ["deit-tiny", "slab-deit", "efficientvit-m0", "pre-rmsnorm", "sample3"])
def test_onnxruntime_tally_counts_the_nodes_onnxruntime_runs(tmp_path, name):
    """Matrix products, softmaxes, convs, LayerNorms and reshapes of onnxruntime's own optimized graph,
    against the onnxruntime tally (torch's differs: fused SDPA where key and value dims agree)."""
    import onnx
    import onnxruntime as ort

    from latency_models.features import KIND_INDEX
    from search_space.export import export_onnx

    spec = SPECS[name]
    export_onnx(deploy(build_model(spec).eval()), tmp_path / "m.onnx")
    opts = ort.SessionOptions()
    opts.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(tmp_path / "m.onnx"), opts, providers=["CPUExecutionProvider"])
    ran = collections.Counter(ORT_KIND_OF.get(n.op_type) for n in onnx.load(tmp_path / "optimized.onnx").graph.node)
    t = tally(spec, "onnxruntime")
    calls = {k: t.calls[KIND_INDEX[k]] for k in KINDS}
    assert ran["matmul"] == calls["linear"] + calls["matmul"] and calls["sdpa"] == 0
    assert ran["softmax"] == calls["softmax"]
    assert ran["conv"] == calls["conv"] + calls["dwconv"]
    assert ran["norm"] == calls["norm"]
    assert ran["reshape"] == calls["reshape"]


INT8_KIND_OF = {"QLinearMatMul": "linear", "QGemm": "linear", "MatMul": "matmul", "FusedMatMul": "matmul",
                "QLinearSoftmax": "softmax", "Softmax": "softmax", "QLinearConv": "conv", "Conv": "conv"}


@pytest.mark.slow  # an export and a quantization each
@pytest.mark.parametrize("name", ["slab-deit", "efficientvit-m0", "skipat-tiny", "sample0", "sample4"])
def test_int8_tally_splits_the_products_as_onnxruntime_runs_them(tmp_path, name):
    """In the int8 file, the products onnxruntime runs on int8 tensors (QLinearMatMul, QGemm) and
    those it leaves in float (a Linear a norm was folded into, SLA's second product, CGA's cascade),
    against the int8 tally's linear and matmul kinds (SLA, CGA with heads, SkipAt, a one-token
    stage after EfficientViT downsampling, PRepBN)."""
    import onnx
    import onnxruntime as ort

    from latency_models.features import KIND_INDEX
    from latency_models.measure import export_timed

    spec = SPECS[name]
    int8 = export_timed(deploy(build_model(spec).eval()), tmp_path / "m.onnx", "int8")
    opts = ort.SessionOptions()
    opts.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(int8), opts, providers=["CPUExecutionProvider"])
    graph = onnx.load(tmp_path / "optimized.onnx").graph
    ran = collections.Counter(INT8_KIND_OF.get(n.op_type) for n in graph.node)
    t = tally(spec, "onnxruntime", "int8")
    calls = {k: t.calls[KIND_INDEX[k]] for k in KINDS}
    assert (ran["linear"], ran["matmul"]) == (calls["linear"], calls["matmul"]), spec.short()
    assert ran["softmax"] == calls["softmax"] and ran["conv"] == calls["conv"] + calls["dwconv"]
    weights = {i.name for i in graph.initializer}
    dequantized = {n.output[0] for n in graph.node if n.op_type == "DequantizeLinear" and n.input[0] in weights}
    float_linears = sum(n.op_type == "MatMul" and n.input[1] in dequantized for n in graph.node)
    assert t.dequantized_weights[0] == float_linears

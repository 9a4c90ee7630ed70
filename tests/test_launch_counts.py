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

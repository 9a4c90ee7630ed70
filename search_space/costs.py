"""FLOPs and parameter counts. FLOPs come from fvcore (one multiply-add = one FLOP), with handles
registered for every operator our models trace to: fvcore counts unknown operators as zero
(`aten::scaled_dot_product_attention` included), which would make softmax attention look free."""
from __future__ import annotations

import math
import warnings

import torch
import torch.nn as nn

# fvcore is imported where FLOPs are counted, not here: the measuring path (on an edge board or a
# GPU server) builds models through this package and needs only torch.


def _sdpa_flops(inputs, outputs) -> int:
    """QK^T and AV matmuls plus one op per attention logit for the softmax."""
    from fvcore.nn.jit_handles import get_shape

    q, k, v = (get_shape(t) for t in inputs[:3])
    batch_heads = math.prod(q[:-2])
    n, m = q[-2], k[-2]
    return batch_heads * n * m * (q[-1] + v[-1] + 1)


def _elementwise(use_input: bool):
    """One FLOP per element of the output (or input, for reductions). Tensors only: tracing also
    records scalar arithmetic on shapes (`h * d`), which is not model work."""

    def handle(inputs, outputs) -> int:
        from fvcore.nn.jit_handles import get_shape

        shape = get_shape(inputs[0] if use_input else outputs[0])
        return math.prod(shape) if shape else 0

    return handle


_per_output, _per_input = _elementwise(False), _elementwise(True)


def flop_analysis(model: nn.Module, inputs: torch.Tensor | tuple):
    """fvcore's FlopCountAnalysis with our handles registered."""
    from fvcore.nn import FlopCountAnalysis
    from fvcore.nn.jit_handles import norm_flop_counter

    handles = {
        "aten::scaled_dot_product_attention": _sdpa_flops,
        "aten::rms_norm": norm_flop_counter(2),
        "aten::softmax": _per_output,
        **{op: _per_output for op in ("aten::add", "aten::add_", "aten::sub", "aten::mul", "aten::mul_",
                                      "aten::div", "aten::reciprocal", "aten::gelu", "aten::sigmoid",
                                      "aten::rsqrt", "aten::sqrt", "aten::pow")},
        **{op: _per_input for op in ("aten::mean", "aten::sum")},
    }
    fa = FlopCountAnalysis(model, inputs).set_op_handle(**handles)
    fa.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings("none")
    return fa


def count_flops(model: nn.Module, img_size: int | None = None, in_chans: int | None = None) -> int:
    """FLOPs of one image's forward pass (take the deployed model to count what ships)."""
    spec = getattr(model, "spec", None)
    img_size = img_size or spec.img_size
    in_chans = in_chans or spec.in_chans
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return int(flop_analysis(model.eval(), torch.zeros(1, in_chans, img_size, img_size)).total())


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())

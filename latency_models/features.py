"""The deployed model as the runtime executes it, computed from the spec alone (no model built):
a list of kernels (kind, FLOPs, bytes moved), aggregated into a fixed feature vector.

Per runtime: torch eager runs the modules' kernels; onnxruntime runs the exported graph, where
(read from its optimized graphs) a Linear is MatMul plus a bias Add, GELU five elementwise nodes,
RMSNorm six or seven, attention always the unfused path with its head transposes as copies,
every conv is wrapped in NCHWc reorders, and each view (tokens to a map, heads apart) is a
Reshape node. In int8 (the QDQ file `export --int8` writes), most Linears, the convs, softmaxes,
MHSA's attention products, CGA's q k^T and its last head's A V and SLA's first product run as
QLinear ops on int8 tensors; everything else stays in float between Dequantize- and QuantizeLinear
nodes (counted approximately: one of each per input and output), and a Linear a BN-family norm
was folded into (or SkipAt's first, or CGA's cascade projections) stays a float MatMul whose
weight is dequantized at every call (`benchmarks/quantized_graphs.py`; BENCHMARKS.md, "int8 in
onnxruntime on CPU").

FLOPs follow the conventions of `search_space.costs` (fvcore, one multiply-add = one FLOP; one
per element for elementwise ops), so the total equals `count_flops(deploy(build_model(spec)))`.
Computing this takes microseconds, which is what lets the predictor score 10k+ specs a second.
"""
from __future__ import annotations

import functools
from typing import Callable

import numpy as np

from search_space.attentions import CGA_KERNEL, ECA_KERNEL, PHI_HIDDEN_RATIO, PHI_KERNEL, SLA_KERNEL, window_for
from search_space.blocks import (CONV_FFN_RATIO, DOWNSAMPLE_DW_KERNEL, DOWNSAMPLE_EXPANSION, DW_RESIDUAL_KERNEL,
                                 FFN_DW_KERNEL, STEM_KERNEL, conv_stem_widths)
from search_space.deployment import deployed_norm
from search_space.operators import ATTENTIONS, resolve
from search_space.spec import ArchSpec, StageSpec

KINDS = ("linear", "conv", "dwconv", "matmul", "sdpa", "softmax", "norm", "elementwise", "reduce", "copy", "reshape")
F32 = 4
FEW_TOKENS = 4  # a stage this small is launch-bound (see `KernelTally.few_token_calls`)


KIND_INDEX = {k: i for i, k in enumerate(KINDS)}


class KernelTally:
    """Per kind: number of kernel launches, FLOPs and bytes moved (flat lists: this is a hot path).
    `few_token_calls`: the launches in stages of at most FEW_TOKENS tokens. They cost less than a
    typical launch, which the learned correction picks up from this count (without it, 3-stage
    patch-8 models were over-predicted by 7% on a Xeon)."""

    __slots__ = ("calls", "flops", "bytes", "module_calls", "few_token_calls", "dequantized_weights", "onnx", "int8",
                 "next_linear_float")

    def __init__(self, runtime: str = "torch", precision: str = "fp32"):
        self.onnx = runtime == "onnxruntime"
        self.int8 = self.onnx and precision == "int8"
        self.next_linear_float = False  # int8: the next Linear stays in float (see `linear`)
        self.calls = [0] * len(KINDS)
        self.flops = [0.0] * len(KINDS)
        self.bytes = [0.0] * len(KINDS)
        self.module_calls = 0
        self.few_token_calls = 0
        self.dequantized_weights = [0, 0.0]  # int8: weights dequantized at every call (nodes, elements)

    @property
    def element_bytes(self) -> int:
        """Bytes per element of the tensors the quantized ops move (int8: one)."""
        return 1 if self.int8 else F32

    def add(self, kind: str, flops: float, nbytes: float, calls: int = 1) -> None:
        i = KIND_INDEX[kind]
        self.calls[i] += calls
        self.flops[i] += flops
        self.bytes[i] += nbytes

    def merge(self, other: KernelTally, times: int) -> None:
        """Add `times` copies of another tally (identical blocks are tallied once)."""
        for i in range(len(KINDS)):
            self.calls[i] += times * other.calls[i]
            self.flops[i] += times * other.flops[i]
            self.bytes[i] += times * other.bytes[i]
        self.module_calls += times * other.module_calls
        self.dequantized_weights = [a + times * b for a, b in zip(self.dequantized_weights, other.dequantized_weights)]


def linear(t: KernelTally, m: int, k: int, n: int, calls: int = 1) -> None:
    """int8 (read from onnxruntime's optimized graphs): a Linear is a QLinearMatMul on int8 operands,
    except where `next_linear_float` is set (a BN-family norm folded into it, CGA's cascade
    projections, SkipAt's first): a float MatMul whose weight is dequantized at every call."""
    in_float, t.next_linear_float = t.next_linear_float, False
    if t.int8 and not in_float:
        t.add("linear", calls * m * k * n, calls * (m * k + k * n + m * n), calls)
    elif t.int8:
        t.add("matmul", calls * m * k * n, calls * F32 * (m * k + k * n + m * n), calls)
        quantize(t, calls * m * k, calls)
        quantize(t, calls * m * n, calls)
        t.dequantized_weights[0] += calls
        t.dequantized_weights[1] += calls * k * n
    else:
        t.add("linear", calls * m * k * n, calls * F32 * (m * k + k * n + m * n + n), calls)
    t.module_calls += calls
    if t.onnx:  # the bias Add
        elementwise(t, m * n, calls, flops=False)


def quantize(t: KernelTally, numel: int, calls: int) -> None:
    """int8: `calls` Quantize/DequantizeLinear nodes, converting `numel` elements in all between int8
    and float."""
    t.add("elementwise", 0, (1 + F32) * numel, calls)


def activation_matmul(t: KernelTally, flops: float, numel: int, calls: int = 1) -> None:
    """A product of two activations, as onnxruntime quantizes it in int8 (a QLinearMatMul; callers
    tally the products it leaves in float as matmuls); `numel`: the elements it reads and writes."""
    if t.int8:
        t.add("linear", flops, numel, calls)
    else:
        t.add("matmul", flops, F32 * numel, calls)


def conv(t: KernelTally, out_pixels: int, cin: int, cout: int, k: int, groups: int = 1, calls: int = 1) -> None:
    kind = "dwconv" if groups > 1 else "conv"
    t.next_linear_float = False  # a norm before a conv folds into the conv (int8: a QLinearConv)
    flops = out_pixels * cout * (cin // groups) * k * k
    weights = cout * (cin // groups) * k * k
    t.add(kind, calls * flops, calls * t.element_bytes * (out_pixels * (cin + cout) + weights), calls)
    t.module_calls += calls
    if t.onnx:  # reorders to and from the NCHWc layout (int8: transposes to and from NHWC)
        copy(t, out_pixels * cin, calls)
        copy(t, out_pixels * cout, calls)


def elementwise(t: KernelTally, numel: int, calls: int = 1, flops: bool = True) -> None:
    """int8: the op stays in float, between a DequantizeLinear of its input and a QuantizeLinear of
    its output."""
    t.add("elementwise", calls * numel if flops else 0, calls * 2 * F32 * numel, calls)
    if t.int8:
        quantize(t, 3 * calls * numel, 3 * calls)


def copy(t: KernelTally, numel: int, calls: int = 1) -> None:
    """int8: layout changes move the int8 tensors."""
    t.add("copy", 0, calls * 2 * t.element_bytes * numel, calls)


def softmax(t: KernelTally, numel: int, calls: int = 1) -> None:
    """`calls` softmaxes over `numel` elements in all (int8: QLinearSoftmax)."""
    t.add("softmax", numel, 2 * t.element_bytes * numel, calls)


def reduce(t: KernelTally, numel: int) -> None:
    """A sum or mean over tokens or channels (int8: in float, between Dequantize and QuantizeLinear)."""
    t.add("reduce", numel, F32 * numel)
    if t.int8:
        quantize(t, numel, 2)


def reshape(t: KernelTally, calls: int = 1) -> None:
    """onnxruntime's Reshape nodes: a view of their input, a node to run all the same (torch's
    views launch nothing)."""
    if t.onnx:
        t.add("reshape", 0, 0, calls)


def gelu(t: KernelTally, numel: int, calls: int = 1) -> None:
    elementwise(t, numel, calls)
    if t.onnx:  # Div, Erf, Add, Mul, Mul
        elementwise(t, numel, 4 * calls, flops=False)


def norm(t: KernelTally, kind: str | None, numel: int, tokens: int = 0) -> None:
    """`tokens`: the rows normalised (for onnxruntime's per-token RMSNorm nodes)."""
    if kind is None:
        t.next_linear_float = t.int8
        return
    t.module_calls += 1
    flops = numel * (4 if kind == "rms" else 5)
    if t.onnx and kind != "layernorm":  # Pow, ReduceMean, Add, Sqrt, Reciprocal, Mul (, Mul by the weight)
        t.add("elementwise", flops, 2 * F32 * numel)
        t.add("reduce", 0, F32 * numel)
        elementwise(t, tokens, calls=3, flops=False)
        elementwise(t, numel, calls=1 if kind == "rms" else 2, flops=False)
    else:
        t.add("norm", flops, 2 * F32 * numel)
    if t.int8:  # in float: its input dequantized, its output quantized
        quantize(t, 2 * numel, 2)


def ffn(t: KernelTally, s: StageSpec, n: int) -> None:
    c, hidden = s.width, int(s.width * s.mlp_ratio)
    linear(t, n, c, hidden)
    gelu(t, n * hidden)
    t.module_calls += 2
    if s.dwconv:  # tokens to a map and back
        copy(t, n * hidden, calls=2 if t.onnx else 1)
        reshape(t, 2)
        conv(t, n, hidden, hidden, FFN_DW_KERNEL, groups=hidden)
        elementwise(t, n * hidden)
    linear(t, n, hidden, c)


def mhsa(t: KernelTally, s: StageSpec, n: int, grid: int, folded: bool) -> None:
    """PyTorch's scaled_dot_product_attention runs a fused kernel when q, k and v have one head
    dim; otherwise its unfused math path, about twice as slow here (`benchmarks/sdpa_paths.py`)."""
    h, kd, dv = s.heads, s.key_dim, s.value_ratio * s.width // s.heads
    linear(t, n, s.width, h * (2 * kd + dv))
    if t.onnx:  # q, k, v split and their heads transposed (copies), shape arithmetic, scaled QK^T, softmax, AV
        copy(t, h * n * (2 * kd + dv), calls=4)
        reshape(t, 6)
        t.add("elementwise", 0, 0, calls=7)
        activation_matmul(t, h * n * n * kd, h * (2 * n * kd + n * n))
        softmax(t, h * n * n)
        copy(t, h * n * dv)
        activation_matmul(t, h * n * n * dv, h * (n * n + 2 * n * dv))
    elif kd == dv:
        t.add("sdpa", h * n * n * (kd + dv + 1), F32 * h * (n * (2 * kd + 2 * dv) + n * n))
    else:  # scale q and k, QK^T, softmax, AV
        elementwise(t, h * n * kd, calls=2, flops=False)
        t.add("matmul", h * n * n * kd, F32 * h * (2 * n * kd + n * n))
        softmax(t, h * n * n)
        t.add("matmul", h * n * n * dv, F32 * h * (n * n + 2 * n * dv))
    copy(t, n * h * dv)
    linear(t, n, h * dv, s.width)


def sla(t: KernelTally, s: StageSpec, n: int, grid: int, folded: bool) -> None:
    h, kd, dv = s.heads, s.key_dim, s.value_ratio * s.width // s.heads
    linear(t, n, s.width, h * (2 * kd + dv))
    if t.onnx:  # q, k, v split and their heads transposed
        copy(t, h * n * (2 * kd + dv), calls=5)
        reshape(t, 8)
    elementwise(t, h * n * kd)  # k + pos
    elementwise(t, h * n * kd, calls=2, flops=False)  # ReLUs (fvcore: free)
    reduce(t, h * n * kd)  # sum_j k_j
    t.add("matmul", h * n * kd, F32 * h * (n * kd + kd + n))
    elementwise(t, h * n, calls=2)  # + 1e-6, reciprocal
    if n * n * (kd + dv) < 2 * n * kd * dv:  # (q k^T) v
        first, second = (h * n * n * kd, h * (2 * n * kd + n * n)), (h * n * n * dv, h * (n * n + 2 * n * dv))
    else:  # q (k^T v)
        first = second = (h * n * kd * dv, h * (n * kd + kd * dv + n * dv))
    activation_matmul(t, *first)  # int8: onnxruntime quantizes the first of the two products
    t.add("matmul", second[0], F32 * second[1])
    elementwise(t, h * n * dv)  # * z
    copy(t, h * n * dv)  # V to a map
    conv(t, h * n, dv, dv, SLA_KERNEL, groups=dv)
    elementwise(t, h * n * dv)  # + DWC(V)
    copy(t, n * h * dv)
    linear(t, n, h * dv, s.width)


def cga(t: KernelTally, s: StageSpec, n: int, grid: int, folded: bool) -> None:
    """`folded`: a norm was folded in, so the cascade input has its own projection."""
    h, kd, c = s.heads, s.key_dim, s.width
    d, w = c // h, window_for(grid)
    nw = w * w  # tokens per window; n // nw windows
    copy(t, n * c)  # to windows
    t.next_linear_float = False  # int8: the heads' projections are quantized, the cascade's are not
    linear(t, n, d, 2 * kd + d, calls=h)
    if folded:
        t.next_linear_float = t.int8
        linear(t, n, d, 2 * kd + d, calls=h - 1)
        elementwise(t, n * (2 * kd + d), calls=h - 1)
    else:
        elementwise(t, n * d, calls=h - 1)
    copy(t, n * kd, calls=2 * h)  # q to a map and back
    conv(t, n, kd, kd, CGA_KERNEL, groups=kd, calls=h)
    activation_matmul(t, h * n * nw * kd, h * (2 * n * kd + n * nw), calls=h)  # q k^T
    activation_matmul(t, n * nw * d, n * nw + n * d)  # A V: the last head's in int8, the others' in float
    t.add("matmul", (h - 1) * n * nw * d, F32 * (h - 1) * (n * nw + n * d), calls=h - 1)
    elementwise(t, n * nw, calls=2 * h)  # * scale, + bias
    softmax(t, h * n * nw, calls=h)
    copy(t, n * c, calls=2)  # concat, back from windows
    reshape(t, 4 + 2 * h)
    elementwise(t, n * c, flops=False)  # ReLU
    linear(t, n, c, c)


def skip_phi(t: KernelTally, s: StageSpec, n: int) -> None:
    c, hidden = s.width, PHI_HIDDEN_RATIO * s.width
    t.next_linear_float = t.int8  # int8: onnxruntime leaves this one in float too
    linear(t, n, c, hidden)
    gelu(t, n * hidden, calls=2)
    copy(t, n * hidden, calls=2)  # tokens to a map and back
    reshape(t, 2)
    conv(t, n, hidden, hidden, PHI_KERNEL, groups=hidden)
    linear(t, n, hidden, c)
    reduce(t, n * c)
    t.add("conv", ECA_KERNEL * c, F32 * 2 * c)
    elementwise(t, c)  # sigmoid
    elementwise(t, n * c)  # gate


@functools.cache
def attention_tally(name: str) -> Callable[[KernelTally, StageSpec, int, int, bool], None]:
    """The registered tally of an attention (`search_space.operators`)."""
    return resolve(ATTENTIONS[name].tally)


def stem(t: KernelTally, spec: ArchSpec, grid: int) -> None:
    c0 = spec.stages[0].width
    if spec.stem == "patch":
        conv(t, grid * grid, spec.in_chans, c0, spec.patch)
    else:  # 3x3 convs, GELU between them
        widths = conv_stem_widths(spec.in_chans, c0, spec.patch)
        side = spec.img_size
        for i in range(len(widths) - 1):
            side = side // 2 if spec.patch > 1 else side
            conv(t, side * side, widths[i], widths[i + 1], STEM_KERNEL)
            if i < len(widths) - 2:
                gelu(t, side * side * widths[i + 1])
    copy(t, grid * grid * c0)  # to a contiguous token stream
    reshape(t)
    elementwise(t, grid * grid * c0)  # + pos_embed


def downsample(t: KernelTally, spec: ArchSpec, i: int, grid_in: int, grid_out: int) -> None:
    prev, c_out = spec.stages[i - 1].width, spec.stages[i].width
    n_in, n_out = grid_in * grid_in, grid_out * grid_out
    if spec.downsample == "conv2x2":
        norm(t, deployed_norm(spec, i - 1), n_in * prev, n_in)
        reshape(t, 2)  # tokens to a map and back
        conv(t, n_out, prev, c_out, 2)
        return
    hidden = DOWNSAMPLE_EXPANSION * prev
    copy(t, n_in * prev)  # tokens to a map
    reshape(t, 2)  # and back, below
    conv_residuals(t, n_in, prev)
    conv(t, n_in, prev, hidden, 1)
    elementwise(t, n_in * hidden, flops=False)  # ReLU
    conv(t, n_out, hidden, hidden, DOWNSAMPLE_DW_KERNEL, groups=hidden)
    elementwise(t, n_out * hidden, flops=False)  # ReLU
    squeeze_excite(t, n_out, hidden, hidden // DOWNSAMPLE_EXPANSION)
    conv(t, n_out, hidden, c_out, 1)
    conv_residuals(t, n_out, c_out)
    copy(t, n_out * c_out)  # back to a contiguous token stream


def conv_residuals(t: KernelTally, n: int, c: int) -> None:
    """EfficientViT's residual 3x3 DW conv, then its residual FFN (1x1 to 2C, ReLU, 1x1 back)."""
    conv(t, n, c, c, DW_RESIDUAL_KERNEL, groups=c)
    elementwise(t, n * c)
    conv(t, n, c, CONV_FFN_RATIO * c, 1)
    elementwise(t, n * CONV_FFN_RATIO * c, flops=False)
    conv(t, n, CONV_FFN_RATIO * c, c, 1)
    elementwise(t, n * c)


def squeeze_excite(t: KernelTally, n: int, c: int, reduced: int) -> None:
    reduce(t, n * c)
    conv(t, 1, c, reduced, 1)
    elementwise(t, reduced, flops=False)  # ReLU
    conv(t, 1, reduced, c, 1)
    elementwise(t, c)  # sigmoid
    elementwise(t, n * c)  # gate


def tally(spec: ArchSpec, runtime: str = "torch", precision: str = "fp32") -> KernelTally:
    """Every kernel the deployed model of `spec` launches in `runtime` (and `precision`: int8 in
    onnxruntime) for one batch-1 forward."""
    t = KernelTally(runtime, precision)
    grids = spec.grids()
    stem(t, spec, grids[0])
    for i, (s, g) in enumerate(zip(spec.stages, grids)):
        n, nk = g * g, deployed_norm(spec, i)
        if i:
            downsample(t, spec, i, grids[i - 1], g)
        attention_block, skip_block = KernelTally(runtime, precision), KernelTally(runtime, precision)
        for block, is_skip in ((attention_block, False), (skip_block, True)):
            for _ in range(s.ffns):
                norm(block, nk, n * s.width, n)
                ffn(block, s, n)
                elementwise(block, n * s.width)  # residual add
            if is_skip:
                skip_phi(block, s, n)
            else:
                norm(block, nk, n * s.width, n)
                attention_tally(s.attention)(block, s, n, g, nk in (None, "rms"))
            elementwise(block, n * s.width)  # residual add
            block.module_calls += 2 * s.ffns + 2
        for block, times in ((attention_block, s.depth - len(s.skip)), (skip_block, len(s.skip))):
            t.merge(block, times)
            if n <= FEW_TOKENS:
                t.few_token_calls += times * sum(block.calls)
    last = spec.stages[-1]
    norm(t, deployed_norm(spec, len(spec.stages) - 1), grids[-1] ** 2 * last.width, grids[-1] ** 2)
    reduce(t, grids[-1] ** 2 * last.width)
    t.next_linear_float = False  # int8: the head reads the pooled features, a QGemm
    linear(t, 1, last.width, spec.num_classes)
    return t


FEATURE_NAMES = ([f"{k}_{q}" for k in KINDS for q in ("calls", "flops", "bytes")]
                 + ["module_calls", "flops", "tokens", "blocks", "few_token_calls",
                    "dequantized_weight_calls", "dequantized_weight_elements"])


def features(spec: ArchSpec, runtime: str = "torch", precision: str = "fp32") -> np.ndarray:
    """Fixed-length feature vector (FEATURE_NAMES) of one spec in `runtime` and `precision`."""
    t = tally(spec, runtime, precision)
    row = [v for i in range(len(KINDS)) for v in (t.calls[i], t.flops[i], t.bytes[i])]
    total = sum(t.flops)
    tokens = sum(g * g * s.depth for s, g in zip(spec.stages, spec.grids()))
    return np.array(row + [t.module_calls, total, tokens, sum(s.depth for s in spec.stages), t.few_token_calls,
                           *t.dequantized_weights],
                    dtype=np.float64)


def feature_matrix(specs: list[ArchSpec], runtime: str = "torch", precision: str = "fp32") -> np.ndarray:
    return np.stack([features(s, runtime, precision) for s in specs]) if specs else np.zeros((0, len(FEATURE_NAMES)))


def total_flops(spec: ArchSpec) -> int:
    return int(round(sum(tally(spec).flops)))

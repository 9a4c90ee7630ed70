"""Benchmark: what onnxruntime runs for the fp32 and the int8 file of a preset: the node types of each
optimized graph, counted. This is where int8's time goes at batch 1 (its Quantize/DequantizeLinear
nodes), and what a tally of the quantized graph would have to count.

    .venv/bin/python benchmarks/quantized_graphs.py [PRESET ...] \
        [--out benchmarks/results/latency_int8_1205/graphs.json]
"""
import argparse
import collections
import json
import tempfile
from pathlib import Path

import onnx
import onnxruntime as ort

from latency_models.measure import deployed_model, export_timed
from search_space.presets import PRESETS, SEARCH_SCALE, presets
from search_space.quantize import PRECISIONS


def optimized_node_counts(path: Path) -> dict[str, int]:
    """Node types of the graph onnxruntime runs (after its optimizations, as `measure` times it)."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.optimized_model_filepath = str(path.with_suffix(".optimized.onnx"))
    ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    counts = collections.Counter(n.op_type for n in onnx.load(opts.optimized_model_filepath).graph.node)
    return dict(counts.most_common())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("presets", nargs="*", help=f"presets to count (default: all of {', '.join(PRESETS)})")
    ap.add_argument("--out", default="benchmarks/results/latency_int8_1205/graphs.json")
    args = ap.parse_args()
    ort.set_default_logger_severity(3)  # its notice on saving an optimized graph, once per file
    specs = presets(32, 3, 10, SEARCH_SCALE, SEARCH_SCALE)
    unknown = set(args.presets) - set(specs)
    if unknown:
        ap.error(f"unknown presets {', '.join(sorted(unknown))}; choose from {', '.join(PRESETS)}")
    result = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.presets or PRESETS:
            model = deployed_model(specs[name])
            result[name] = {"short": specs[name].short()}
            for precision in PRECISIONS:
                counts = optimized_node_counts(export_timed(model, Path(tmp) / f"{name}.{precision}.onnx", precision))
                result[name][precision] = {"nodes": sum(counts.values()), "by_type": counts}
                print(f"{name:16s} {precision}: {sum(counts.values()):4d} nodes  {counts}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

"""Benchmark: `export_onnx` (the exporter without the passes that would not change this space's
graphs) against `torch.onnx.export(..., dynamo=True)` itself, per architecture in one process, 1
thread: wall seconds of each, whether the two graphs have the same ops in the same order, and the
largest difference of their outputs in onnxruntime.

    .venv/bin/python benchmarks/onnx_export_direct.py [--n 6] [--seed 1] [--out benchmarks/results/onnx_export_direct.json]
"""
import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

from latency_models.measure import cpu_model, deployed_model
from search_space import SearchSpace, presets, sample
from search_space.export import OPSET, _batch_dim, _example, _quiet, export_onnx
from search_space.presets import SEARCH_SCALE


def exporters_own(model: torch.nn.Module, path: Path) -> None:
    with _quiet():
        torch.onnx.export(model, (_example(model),), dynamo=True, opset_version=OPSET,
                          dynamic_shapes=({0: _batch_dim()},), input_names=["images"],
                          output_names=["logits"]).save(str(path))


def outputs(path: Path, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"images": x})[0]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=6)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", default="benchmarks/results/onnx_export_direct.json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    rng = np.random.default_rng(args.seed)
    specs = [*presets(32, 3, 10, SEARCH_SCALE, SEARCH_SCALE).values()]
    specs += [sample(rng, SearchSpace(), 32, 3, 10) for _ in range(args.n)]
    tmp = Path(tempfile.mkdtemp())
    export_onnx(deployed_model(specs[0]), tmp / "warm.onnx")  # imports and the cached table, once
    rows = []
    for spec in specs:
        model, row = deployed_model(spec), {"short": spec.short()}
        for name, write in (("exporter", exporters_own), ("export_onnx", export_onnx)):
            t0 = time.perf_counter()
            write(model, tmp / f"{name}.onnx")
            row[f"{name}_s"] = time.perf_counter() - t0
        a, b = (onnx.load(tmp / f"{name}.onnx").graph for name in ("exporter", "export_onnx"))
        x = torch.randn(3, 3, 32, 32).numpy()
        row.update(nodes=len(b.node), same_ops=[n.op_type for n in a.node] == [n.op_type for n in b.node],
                   max_abs_diff=float(np.abs(outputs(tmp / "exporter.onnx", x) - outputs(tmp / "export_onnx.onnx", x)).max()))
        rows.append(row)
        print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
    summary = {"architectures": len(rows), "same_ops": sum(r["same_ops"] for r in rows),
               "max_abs_diff": max(r["max_abs_diff"] for r in rows),
               "exporter_s_total": sum(r["exporter_s"] for r in rows),
               "export_onnx_s_total": sum(r["export_onnx_s"] for r in rows),
               "speedup_median": float(np.median([r["exporter_s"] / r["export_onnx_s"] for r in rows]))}
    print(json.dumps(summary, indent=1))
    Path(args.out).write_text(json.dumps({"machine": cpu_model(), "date": time.strftime("%Y-%m-%d"),
                                          "summary": summary, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()

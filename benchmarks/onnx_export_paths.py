"""Benchmark: where the onnxruntime calibration's time goes, and which cheaper ONNX graphs time
the same as the file `export` ships. Per architecture, in one process, 1 thread: the exporter's
stages (translation table, torch.export, decomposition, the rest) and three graphs timed
interleaved in onnxruntime: the shipped one (dynamic batch, optimized), static batch 1
optimized, and static batch 1 unoptimized.

    .venv/bin/python benchmarks/onnx_export_paths.py [--n 10] [--seed 5] [--out benchmarks/results/onnx_export_paths.json]
"""
import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import torch
from torch.onnx._internal.exporter import _fx_passes, _registration

from latency_models.measure import cpu_model, deployed_model, onnx_runner, time_interleaved
from search_space import SearchSpace, presets, sample
from search_space.export import OPSET, _batch_dim, _example, _quiet, export_onnx
from search_space.presets import SEARCH_SCALE


def static(model: torch.nn.Module, path: Path, optimize: bool) -> None:
    with _quiet():
        torch.onnx.export(model, (_example(model, 1),), dynamo=True, opset_version=OPSET, optimize=optimize,
                          input_names=["images"], output_names=["logits"]).save(str(path))


def stages(model: torch.nn.Module) -> dict:
    """Seconds of the exporter's stages: a new translation table, torch.export, the decomposition."""
    t0 = time.perf_counter()
    registry = _registration.ONNXRegistry.from_torchlib(opset_version=OPSET)
    t1 = time.perf_counter()
    with _quiet():
        program = torch.export.export(model, (_example(model),), dynamic_shapes=({0: _batch_dim()},))
        t2 = time.perf_counter()
        with torch.fx.experimental._config.patch(backed_size_oblivious=True):
            _fx_passes.decompose_with_registry(program, registry)
    return {"registry_s": t1 - t0, "torch_export_s": t2 - t1, "decompose_s": time.perf_counter() - t2}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=10)
    ap.add_argument("--seed", type=int, default=5)
    ap.add_argument("--sweeps", type=int, default=60)
    ap.add_argument("--out", default="benchmarks/results/onnx_export_paths.json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    rng = np.random.default_rng(args.seed)
    specs = [sample(rng, SearchSpace(), 32, 3, 10) for _ in range(args.n)]
    specs += presets(32, 3, 10, SEARCH_SCALE, SEARCH_SCALE).values()
    tmp = Path(tempfile.mkdtemp())
    export_onnx(deployed_model(specs[0]), tmp / "warm.onnx")  # imports and the cached table, once
    graphs = {"shipped": export_onnx, "static_optimized": lambda m, p: static(m, p, True),
              "static_unoptimized": lambda m, p: static(m, p, False)}
    rows = []
    for spec in specs:
        model = deployed_model(spec)
        runners, row = {}, {"short": spec.short(), **stages(model)}
        for name, write in graphs.items():
            path = tmp / f"{spec.arch_id}-{name}.onnx"
            t0 = time.perf_counter()
            write(model, path)
            row[f"{name}_export_s"] = time.perf_counter() - t0
            row[f"{name}_nodes"] = len(onnx.load(path).graph.node)
            runners[name] = onnx_runner(model, torch.randn(1, 3, 32, 32), 1, "cpu", path)
        stats = time_interleaved(runners, args.sweeps)
        row.update({f"{name}_ms": stats[name]["median_ms"] for name in graphs})
        rows.append(row)
        print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
    summary = {f"{name}_vs_shipped_median": float(np.median([r[f"{name}_ms"] / r["shipped_ms"] for r in rows]))
               for name in graphs if name != "shipped"}
    summary.update({f"{k}_median": float(np.median([r[k] for r in rows]))
                    for k in ("registry_s", "torch_export_s", "decompose_s", "shipped_export_s",
                              "static_optimized_export_s", "static_unoptimized_export_s")})
    print(json.dumps(summary, indent=1))
    Path(args.out).write_text(json.dumps({"machine": cpu_model(), "date": time.strftime("%Y-%m-%d"),
                                          "summary": summary, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()

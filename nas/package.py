"""The export directory: the deployed model as ONNX and torch.export files, each verified by
running it against PyTorch, plus arch.json and a model card."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from search_space import count_params, deploy
from search_space.export import export_onnx, export_pt2, verify_onnx

from .config import target_name
from .final import load_trained, target_runtime, time_on_target
from .rundir import final_report, run_config
from . import SearchError

FORMATS = ("onnx", "pt2")
TOLERANCE = 1e-4


def verify_pt2(path: Path, reference: torch.nn.Module, x: torch.Tensor) -> float:
    program = torch.export.load(str(path)).module()
    with torch.no_grad():
        return float((program(x) - reference(x)).abs().max())


def export_trial(run_dir: Path, number: int, out: Path, formats: tuple[str, ...] = FORMATS) -> dict:
    """Deploy the trained model of a trial, export it, verify each file, write the card."""
    unknown = set(formats) - set(FORMATS)
    if unknown:
        raise SearchError(f"unknown export format(s) {sorted(unknown)}; choose from {', '.join(FORMATS)}")
    model, normalize = load_trained(run_dir, number)
    final = final_report(run_dir, number)
    deployed = deploy(model)
    spec = model.spec
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    x = torch.randn(3, spec.in_chans, spec.img_size, spec.img_size, generator=torch.Generator().manual_seed(0))
    exporters = {"onnx": (export_onnx, verify_onnx, "model.onnx"), "pt2": (export_pt2, verify_pt2, "model.pt2")}
    diffs = {}
    for fmt in formats:
        export, verify, name = exporters[fmt]
        export(deployed, out / name)
        diffs[fmt] = verify(out / name, deployed, x)
        if diffs[fmt] > TOLERANCE:
            raise SearchError(f"exported {name} differs from the PyTorch model by {diffs[fmt]:.2e} "
                              f"(> {TOLERANCE}); please report this architecture: {spec.short()}")
    (out / "arch.json").write_text(json.dumps({**json.loads(spec.to_json()), "short": spec.short(),
                                               "arch_id": spec.arch_id, "normalize": normalize}, indent=1))
    cfg, shipped = run_config(run_dir), None
    if "onnx" in formats:  # the file users ship, timed in its runtime
        shipped = time_on_target(deployed, cfg, "onnxruntime", exported=out / "model.onnx")
        (out / "latency.json").write_text(json.dumps(shipped, indent=1))
    card = model_card(spec, final, count_params(deployed), diffs, normalize, shipped, cfg)
    (out / "MODEL_CARD.md").write_text(card)
    return {"out": str(out), "max_abs_diff": diffs, "shipped_ms": shipped and shipped["measured_ms"],
            "files": sorted(p.name for p in out.iterdir())}


def latency_rows(final: dict, shipped: dict | None, cfg: dict) -> str:
    """The card's latency rows: the shipped file timed in onnxruntime, the final training's timing in
    the run's target runtime, and the search's prediction beside the one in its runtime."""
    rows = [f"| search target | {target_name(cfg.get('latency_target') or final['device'])} |"]
    if shipped:
        on = "on the predictor's scale" if shipped["on_predictor_scale"] else "at this session's speed"
        rows.append(f"| model.onnx latency | {shipped['measured_ms']:.3f} ms median (p10-p90 {shipped['p10_ms']:.3f}-"
                    f"{shipped['p90_ms']:.3f}), timed here: {target_name(shipped['device'])}, {on} |")
    pred = f"{final['pred_ms']:.3f} ms"
    if shipped and target_runtime(cfg) == "onnxruntime":
        pred += f" ({(final['pred_ms'] - shipped['measured_ms']) / shipped['measured_ms']:+.1%} vs model.onnx)"
    rows += [f"| predicted latency | {pred} |",
             f"| measured after training | {final['measured_ms']:.3f} ms median (p10 {final['p10_ms']:.3f}, p90 "
             f"{final['p90_ms']:.3f}; {final['pred_rel_err']:+.1%} predicted vs this), "
             f"{target_name(final['device'])} |"]
    return "\n".join(rows)


def model_card(spec, final: dict, params: int, diffs: dict, normalize: dict, shipped: dict | None, cfg: dict) -> str:
    c, h = spec.in_chans, spec.img_size
    return f"""# {spec.short()}

Architecture `{spec.arch_id}` found by etnas (hardware-aware NAS for efficient vision transformers).

| figure | value |
|---|---|
| test accuracy | {final['test_acc']:.4f} ({final['dataset']}, {final['epochs']:g} epochs) |
{latency_rows(final, shipped, cfg)}
| FLOPs (multiply-adds) | {final['flops']:,} |
| parameters (deployed) | {params:,} |
| export check | max abs diff vs PyTorch: {', '.join(f'{k} {v:.1e}' for k, v in diffs.items())} |

Input: float32 `[batch, {c}, {h}, {h}]`: pixels scaled to [0, 1], then per channel
`(x - mean) / std` with mean {[round(m, 4) for m in normalize['mean']]} and std
{[round(s, 4) for s in normalize['std']]}. Output: logits `[batch, {spec.num_classes}]`. Norms are folded into the adjacent layers
(deploy-time re-parameterization), so the files hold inference-only graphs. The full spec is in
`arch.json`.

## Load it (no etnas needed)

```python
import onnxruntime as ort, numpy as np
session = ort.InferenceSession("model.onnx")
logits = session.run(None, {{"images": np.zeros((1, {c}, {h}, {h}), np.float32)}})[0]

import torch
program = torch.export.load("model.pt2").module()
logits = program(torch.zeros(1, {c}, {h}, {h}))
```
"""

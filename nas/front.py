"""Browsing a run: the front as rows (with measured latency where a final training exists) and an
interactive plotly page of every trial. Reads only files the search rewrites after each trial, so
it works while the search is still running."""
from __future__ import annotations

import warnings
from pathlib import Path

import pandas as pd

from .rundir import final_report, run_config, run_records
from . import SearchError


def load_view(run_dir: Path) -> tuple[pd.DataFrame, list[dict], float]:
    """(all trials, the front with measured ms where known, target ms)."""
    run_dir = Path(run_dir)
    cfg = run_config(run_dir)
    rows, front = run_records(run_dir)
    if not rows:
        raise SearchError(f"run {run_dir} has no trials yet; wait for the search to finish its first trial")
    for f in front:
        try:
            report = final_report(run_dir, f["trial"])
        except SearchError as e:  # one unreadable final training does not hide the front
            warnings.warn(str(e), stacklevel=2)
            report = None
        f["measured_ms"] = report["measured_ms"] if report else None
    return pd.DataFrame(rows), front, float(cfg["target_ms"])


def write_html(run_dir: Path, trials: pd.DataFrame, front: list[dict], target_ms: float) -> Path:
    import plotly.graph_objects as go

    fig = go.Figure()
    shown = trials[trials["pred_ms"].notna()].copy()
    shown["y"] = shown["val_acc"].fillna(0.0)
    for state, color, label in (("COMPLETE", "#1f77b4", "trained (feasible or preset)"),
                                ("INFEASIBLE", "#bbbbbb", "infeasible (predicted over target, not trained)"),
                                ("FAIL", "#d62728", "failed"), ("PRUNED", "#ff7f0e", "pruned")):
        part = shown[shown["state"] == state]
        if len(part):
            fig.add_scatter(x=part["pred_ms"], y=part["y"], mode="markers", name=label, marker={"color": color},
                            text=[f"trial {n}<br>{s}" for n, s in zip(part["number"], part["short"])],
                            hovertemplate="%{text}<br>%{x:.3f} ms, acc %{y:.4f}<extra></extra>")
    presets = shown[shown["preset"].notna() & shown["val_acc"].notna()]
    fig.add_scatter(x=presets["pred_ms"], y=presets["val_acc"], mode="markers+text", text=presets["preset"],
                    textposition="top center", name="seed presets", marker={"symbol": "diamond", "size": 11,
                                                                            "color": "#2ca02c"})
    if front:
        fig.add_scatter(x=[f["pred_ms"] for f in front], y=[f["val_acc"] for f in front], mode="lines+markers",
                        line={"shape": "hv", "color": "#9467bd"}, name="Pareto front",
                        text=[f"trial {f['trial']}<br>{f['short']}" for f in front],
                        hovertemplate="%{text}<br>%{x:.3f} ms, acc %{y:.4f}<extra></extra>")
    fig.add_vline(x=target_ms, line_dash="dash", annotation_text=f"target {target_ms:g} ms")
    fig.update_layout(title=f"{run_dir.name}: validation accuracy vs predicted latency",
                      xaxis_title="predicted latency (ms)", yaxis_title="proxy validation accuracy")
    out = Path(run_dir) / "front.html"
    fig.write_html(out, include_plotlyjs=True)
    return out

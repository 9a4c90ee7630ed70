"""Browsing a run: the front as rows (with measured latency where a final training exists) and an
interactive plotly page of every trial. Reads only files the search rewrites after each trial, so
it works while the search is still running."""
from __future__ import annotations

import html
import json
from pathlib import Path
from typing import NamedTuple

import pandas as pd

from . import SearchError
from .config import target_name
from .records import FINAL_FIGURES, atomic_write, with_finals
from .rundir import final_reports, run_config, run_records
from .rungs import Rungs
from .schema import TrialState
from .targets import OTHER_TARGETS, front_on_target, recorded, recorded_targets


def load_view(run_dir: Path) -> tuple[pd.DataFrame, list[dict], float, dict[int, dict]]:
    """(all trials, the front with its final trainings' figures, target ms, final reports by trial)."""
    run_dir = Path(run_dir)
    cfg = run_config(run_dir)
    rows, front = run_records(run_dir)
    if not rows:
        raise SearchError(f"run {run_dir} has no trials yet; wait for the search to finish its first trial")
    finals = final_reports(run_dir)
    return pd.DataFrame(rows), with_finals(front, finals), float(cfg["target_ms"]), finals


class Failures(NamedTuple):
    """A run's failed trials beside the ones it trained and the ones still to finish."""

    failed: list[dict]
    trained: int
    unfinished: int

    def all_failed(self) -> bool:
        return bool(self.failed) and not self.trained and not self.unfinished

    def first_failure(self, run_dir: Path) -> str:
        first = self.failed[0]
        return (f"trial {int(first['number'])}: {first['failure']} (every trial's reason is in the failure column "
                f"of {Path(run_dir) / 'trials.csv'})")


def failures(rows: list[dict]) -> Failures:
    """The failures among a run's trials.csv rows."""
    states = [r["state"] for r in rows]
    return Failures([r for r in rows if r["state"] == TrialState.FAIL],
                    trained=sum(s in (TrialState.COMPLETE, TrialState.PRUNED) for s in states),
                    unfinished=sum(s in (TrialState.RUNNING, TrialState.WAITING) for s in states))


def refuse_a_search_that_trained_nothing(run_dir: Path) -> None:
    """A search whose every training failed ends in an error naming why, not in an empty front."""
    found = failures(run_records(Path(run_dir))[0])
    if found.all_failed():
        raise SearchError(f"every trial of {run_dir} sent to training failed ({len(found.failed)}); "
                          f"{found.first_failure(run_dir)}. Fix the cause, then start a new run with another "
                          f"--name: this one does not train a failed architecture again")


def preset_trials(trials: pd.DataFrame) -> pd.DataFrame:
    """The seed presets' trials; one interrupted by a kill was queued and trained again."""
    return trials[trials["preset"].notna() & (trials["state"] != TrialState.INTERRUPTED)]


def front_summary(run_dir: Path) -> dict:
    """Everything `front` shows, as data: the target (milliseconds and device), the rungs' epochs,
    the front and the seed presets, each with its final training's figures where one exists."""
    trials, front, target_ms, finals = load_view(run_dir)
    cfg = run_config(run_dir)
    rungs = Rungs(min(cfg["base_epochs"], cfg["epochs"]), cfg["epochs"], cfg["eta"]) if "eta" in cfg else None
    presets = preset_trials(trials)
    preset_rows = [{"preset": r["preset"], "trial": int(r["number"]), "state": r["state"],
                    "rung": None if pd.isna(r["rung"]) else int(r["rung"]),
                    "rung_acc": None if pd.isna(r["rung_acc"]) else float(r["rung_acc"]),
                    "pred_ms": float(r["pred_ms"]),
                    **{k: finals[r["number"]][k] if r["number"] in finals else None for k in FINAL_FIGURES}}
                   for _, r in presets.iterrows()]
    return {"run": str(run_dir), "target_ms": target_ms, "target": cfg.get("latency_target"),
            "target_name": run_target(run_dir), "rung_epochs": rungs.budgets if rungs else None,
            "front": front, "presets": preset_rows,
            "failed": [{"trial": int(r["number"]), "failure": r["failure"]}
                       for r in failures(trials.to_dict("records")).failed]}


def last_accuracy(row: pd.Series) -> float | None:
    """The last validation accuracy a trial measured: at its highest rung (or, in a run from before
    rungs, its final or last epoch's)."""
    for column in ("rung_acc", "val_acc"):
        if pd.notna(row.get(column)):
            return float(row[column])
    history = json.loads(row["history"]) if isinstance(row.get("history"), str) else []
    return float(history[-1]) if history else None


def measured_groups(shown: pd.DataFrame) -> list[tuple[pd.DataFrame, str]]:
    """The trained trials by the rung they stopped at, the top rung last (a run from before rungs:
    its trained and pruned trials)."""
    trained = shown[shown["state"].isin([TrialState.COMPLETE, TrialState.PRUNED]) & shown["acc"].notna()]
    rungs = sorted(trained["rung"].dropna().unique()) if "rung" in trained else []
    if not rungs:
        return [(trained[trained["state"] == s], label) for s, label in
                ((TrialState.COMPLETE, "trained"), (TrialState.PRUNED, "pruned (last epoch)"))]
    top = rungs[-1]
    return [(trained[trained["rung"] == k], f"rung {int(k)}" + (" (top: the front's)" if k == top else ""))
            for k in rungs]


def place_labels(points: list[tuple[float, float]], x_span: float, y_span: float,
                 height: float = 0.05, width: float = 0.12) -> list[float]:
    """Vertical offsets (data units) that keep label boxes of `width` x `height` (shares of the axes'
    spans) from overlapping: each label moves up until it clears the ones already placed."""
    placed: list[tuple[float, float]] = []
    offsets = []
    for x, y in points:
        nx, ny = x / x_span, y / y_span
        while any(abs(nx - px) < width and abs(ny - py) < height for px, py in placed):
            ny += height
        placed.append((nx, ny))
        offsets.append(ny * y_span - y)
    return offsets


def front_figure(trials: pd.DataFrame, front: list[dict], target_ms: float | None, finals: dict[int, dict]):
    """Every trial where it was measured: trained trials at their accuracy at the rung they reached,
    never-trained ones (infeasible, failed) in a marker row below, final trainings at their test
    accuracy and measured latency; the latency target as a line, where there is one."""
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, row_heights=[0.85, 0.15], vertical_spacing=0.03)
    shown = trials[trials["pred_ms"].notna()].copy()
    shown["acc"] = [last_accuracy(r) for _, r in shown.iterrows()]
    hover = "%{text}<br>%{x:.3f} ms, acc %{y:.4f}<extra></extra>"
    groups = measured_groups(shown)
    for i, (part, label) in enumerate(groups):
        top = i == len(groups) - 1
        fig.add_scatter(x=part["pred_ms"], y=part["acc"], mode="markers", name=label,
                        marker={"color": "#1f77b4" if top else "#ff7f0e", "opacity": 1.0 if top else min(0.9, 0.35 + 0.2 * i)},
                        text=[f"trial {n}<br>{s}" for n, s in zip(part["number"], part["short"])],
                        hovertemplate=hover, row=1, col=1)
    over = "target" if target_ms is not None else "the search's target"  # another target's figure has none
    for state, color, label in ((TrialState.INFEASIBLE, "#bbbbbb", f"infeasible: predicted over {over}, not trained"),
                                (TrialState.FAIL, "#d62728", "failed")):
        part = shown[shown["state"] == state]
        fig.add_scatter(x=part["pred_ms"], y=[label.split(":")[0]] * len(part), mode="markers", name=label,
                        marker={"color": color, "symbol": "x"}, hovertemplate="%{text}<extra></extra>",
                        text=[f"trial {n}<br>{s}<br>{f if isinstance(f, str) else ''}"
                              for n, s, f in zip(part["number"], part["short"], part["failure"])], row=2, col=1)
    presets = shown[shown["preset"].notna() & shown["acc"].notna()].sort_values(["acc", "pred_ms"])
    fig.add_scatter(x=presets["pred_ms"], y=presets["acc"], mode="markers", name="seed presets",
                    marker={"symbol": "diamond", "size": 11, "color": "#2ca02c"}, row=1, col=1,
                    text=list(presets["preset"]), hovertemplate=hover)
    x_span = max(float(shown["pred_ms"].max()), target_ms or 0.0) or 1.0
    y_span = max(float(shown["acc"].max() or 0), 1e-3)
    gap = 0.06 * y_span  # a label sits above its marker, a thin arrow back to it
    for (x, y, name), dy in zip(zip(presets["pred_ms"], presets["acc"], presets["preset"]),
                                place_labels(list(zip(presets["pred_ms"], presets["acc"])), x_span, y_span)):
        fig.add_annotation(x=x, y=y, ax=x, ay=y + dy + gap, axref="x", ayref="y", text=name, showarrow=True,
                           arrowhead=0, arrowwidth=1, arrowcolor="#999999", standoff=7, row=1, col=1)
    if front:
        fig.add_scatter(x=[f["pred_ms"] for f in front], y=[f["val_acc"] for f in front], mode="lines+markers",
                        line={"shape": "hv", "color": "#9467bd"}, name="Pareto front",
                        text=[f"trial {f['trial']}<br>{f['short']}" for f in front], hovertemplate=hover, row=1, col=1)
    if finals:
        fig.add_scatter(x=[r["measured_ms"] for r in finals.values()], y=[r["test_acc"] for r in finals.values()],
                        mode="markers", name="final training (test acc, measured ms)",
                        marker={"symbol": "star", "size": 13, "color": "#e377c2"}, hovertemplate=hover,
                        text=[f"trial {n} final, {r['epochs']:g} epochs" for n, r in finals.items()], row=1, col=1)
    if target_ms is not None:
        fig.add_vline(x=target_ms, line_dash="dash", annotation_text=f"target {target_ms:g} ms")
    fig.update_layout(xaxis2_title="predicted latency (ms)", yaxis_title="validation accuracy", height=650)
    return fig


def run_target(run_dir: Path) -> str:
    """The deployment target a run's latencies are predicted for, in words."""
    target = run_config(run_dir).get("latency_target")
    return target_name(target) if target else "the device of its latency model (a run from before targets were named)"


def target_figures(run_dir: Path, trials: pd.DataFrame) -> list:
    """One figure per other target the run recorded: every trial at its latency there and the front
    re-specialized to it (no latency target and no final training: those are the constraint's)."""
    rows = trials.to_dict("records")
    fingerprints = {label: t["fingerprint"] for label, t in run_config(run_dir).get(OTHER_TARGETS, {}).items()}
    figures = []
    for label in sorted(recorded_targets(rows)):
        front, _ = front_on_target(rows, label)
        on_target = trials.assign(pred_ms=[recorded(r).get(label, float("nan")) for r in rows])
        fig = front_figure(on_target, front, None, {})
        device = target_name(fingerprints[label]) if label in fingerprints else "its latency model's device"
        fig.update_layout(title=f"the same trials on target {label}: accuracy vs predicted latency<br><sup>{device}"
                                f"</sup>", xaxis2_title=f"predicted latency on {label} (ms)")
        figures.append(fig)
    return figures


def write_html(run_dir: Path, trials: pd.DataFrame, front: list[dict], target_ms: float,
               finals: dict[int, dict]) -> Path:
    """front.html: the search's view (its constraint's target), then one figure for each other target."""
    fig = front_figure(trials, front, target_ms, finals)
    fig.update_layout(title=f"{Path(run_dir).name}: accuracy vs predicted latency<br><sup>{run_target(run_dir)}</sup>")
    figures = [fig, *target_figures(run_dir, trials)]
    body = "\n".join(f.to_html(full_html=False, include_plotlyjs=i == 0) for i, f in enumerate(figures))
    title = html.escape(f"{Path(run_dir).name}: front")
    page = f"<html>\n<head><meta charset=\"utf-8\" /><title>{title}</title></head>\n<body>\n{body}\n</body>\n</html>"
    out = Path(run_dir) / "front.html"
    atomic_write(out, page)  # two final trainings may redraw it at once
    return out

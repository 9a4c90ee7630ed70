"""What a run records besides its study, built from the study alone: the rows of trials.csv (every
trial, with the highest rung it reached) and the entries of front.json (the Pareto-optimal feasible
trials of the top rung, each carrying the run's rung-to-rung Kendall tau)."""
from __future__ import annotations

import io
import json
import math
import os
from pathlib import Path

import optuna
import pandas as pd

from .schema import Attr, TrialState

TRIAL_COLUMNS = ["number", "state", "rung", "rung_acc", "val_acc", "arch_id", "short", "pred_ms", "flops", "params",
                 "train_s", "failure", "preset", "cached_from", "rung_accs", "history", "spec", "pred_ms_targets"]
WHOLE_NUMBER_COLUMNS = ("rung", "flops", "params", "cached_from")  # written as 2, not 2.0, beside blanks


def trial_state(t: optuna.trial.FrozenTrial) -> TrialState:
    """Optuna's state, refined: an infeasible candidate or a duplicate is COMPLETE to the sampler
    but was never trained."""
    a = t.user_attrs
    if a.get(Attr.INFEASIBLE):
        return TrialState.INFEASIBLE
    if a.get(Attr.CACHED_FROM) is not None:
        return TrialState.DUPLICATE
    if a.get(Attr.INTERRUPTED):
        return TrialState.INTERRUPTED
    return TrialState(t.state.name)


def trial_row(t: optuna.trial.FrozenTrial) -> dict:
    """One trial: `rung` is the highest it reached and `rung_acc` its validation accuracy there;
    `val_acc` is set only at the top rung, where accuracies are comparable across trials."""
    a = t.user_attrs
    state = trial_state(t)
    trained = state == TrialState.COMPLETE
    accs = a.get(Attr.RUNG_ACCS) or []
    return {"number": t.number, "state": state, "rung": len(accs) - 1 if accs else None,
            "rung_acc": accs[-1] if accs else None, "val_acc": a.get(Attr.VAL_ACC) if trained else None,
            "arch_id": a.get(Attr.ARCH_ID), "short": a.get(Attr.SHORT), "pred_ms": a.get(Attr.PRED_MS),
            "flops": a.get(Attr.FLOPS), "params": a.get(Attr.PARAMS), "train_s": a.get(Attr.TRAIN_S),
            "failure": a.get(Attr.FAILURE), "preset": a.get(Attr.PRESET), "cached_from": a.get(Attr.CACHED_FROM),
            "rung_accs": json.dumps(accs) if accs else None,
            "history": json.dumps(a[Attr.HISTORY]) if Attr.HISTORY in a else None, "spec": a.get(Attr.SPEC),
            "pred_ms_targets": json.dumps(a[Attr.PRED_MS_TARGETS]) if a.get(Attr.PRED_MS_TARGETS) else None}


def trial_rows(trials: list[optuna.trial.FrozenTrial]) -> list[dict]:
    """Every trial's row; a trial queued again in place of an interrupted one and not yet begun is
    described as the architecture it is (its own attributes are set when it begins)."""
    rows = [trial_row(t) for t in trials]
    for row, t in zip(rows, trials):
        before = t.user_attrs.get(Attr.REQUEUED_FROM)
        if row["arch_id"] is None and isinstance(before, int) and 0 <= before < len(rows):
            row.update({k: rows[before][k] for k in DESCRIPTION})
    return rows


DESCRIPTION = ("arch_id", "short", "pred_ms", "flops", "params", "preset", "spec", "pred_ms_targets")


def rung_agreement(rows: list[dict]) -> list[dict]:
    """How far the run's own ranking moved between rungs: Kendall tau between the accuracies at rung
    k and at rung k+1, over the architectures (duplicates aside, and an interrupted trial's copy
    queued again counted once, with the rungs it reached) trained at both."""
    from scipy.stats import kendalltau  # here, not at the top: scipy.stats takes most of a second to import

    by_architecture = {}
    for r in rows:
        if isinstance(r.get("rung_accs"), str) and r["state"] != TrialState.DUPLICATE:
            accs = json.loads(r["rung_accs"])
            key = r.get("arch_id") if isinstance(r.get("arch_id"), str) else id(r)
            if len(accs) >= len(by_architecture.get(key, [])):
                by_architecture[key] = accs
    accs = list(by_architecture.values())
    out = []
    for k in range(max((len(a) for a in accs), default=0) - 1):
        pairs = [(a[k], a[k + 1]) for a in accs if len(a) > k + 1]
        tau = kendalltau(*zip(*pairs))[0] if len(pairs) >= 3 else math.nan
        out.append({"rungs": f"{k}->{k + 1}", "trials": len(pairs),
                    "kendall_tau": None if math.isnan(tau) else round(float(tau), 4)})
    return out


def pareto_front(rows: list[dict], target_ms: float) -> list[dict]:
    """Trained, feasible rows not dominated on (val_acc up, pred_ms down); ties keep the earliest."""
    cand = [r for r in rows
            if r["state"] == TrialState.COMPLETE and r["val_acc"] is not None and r["pred_ms"] <= target_ms]
    cand.sort(key=lambda r: (r["pred_ms"], -r["val_acc"], r["number"]))
    front, best = [], -math.inf
    for r in cand:
        if r["val_acc"] > best:
            front.append(r)
            best = r["val_acc"]
    return front


def front_entry(r: dict, agreement: list[dict]) -> dict:
    """A front point; front.json stays a list of points, so the run-level rung agreement rides along."""
    return {"trial": r["number"], "arch_id": r["arch_id"], "short": r["short"], "spec": json.loads(r["spec"]),
            "val_acc": r["val_acc"], "rung": r["rung"], "pred_ms": r["pred_ms"], "flops": r["flops"],
            "params": r["params"], "preset": r["preset"], "rung_tau": agreement}


def with_finals(front: list[dict], finals: dict[int, dict]) -> list[dict]:
    """Front points with their final training's test accuracy and measured latency (None until
    `train` made them)."""
    return [{**f, **{k: finals[f["trial"]][k] if f["trial"] in finals else None for k in FINAL_FIGURES}}
            for f in front]


FINAL_FIGURES = ("test_acc", "measured_ms")


def atomic_write(path: Path, text: str) -> None:
    """Write the whole file or nothing: a reader (or a kill) never sees it half written."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full or read-only disk leaves no stray .tmp behind
        raise


def read_trials(path: Path) -> list[dict] | None:
    """trials.csv as rows (NaN where a value is absent), or None where it is missing, truncated or
    corrupt (rebuild it). It is written whole, ending in a newline: a file that does not is cut."""
    try:
        text = Path(path).read_text()
        if not text.endswith("\n"):
            return None
        df = pd.read_csv(io.StringIO(text))
    except (OSError, ValueError):
        return None
    if list(df.columns) != TRIAL_COLUMNS:
        return None
    return df.to_dict("records")

"""Honest validation: held-out accuracy of the predictor beside FLOPs and params baselines and the
measurement's own noise floor. scipy and sklearn are imported on use: a search whose latency model
is cached never fits one, and would pay a second for them at every start."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from search_space import ArchSpec

from .predictor import LatencyModel
from .table import FITTED, TableError, reference_of, select_fingerprint

MIN_FITTED = 10  # architectures a fit learns from, the held-out ones aside


def metrics(pred: np.ndarray, meas: np.ndarray) -> dict:
    from scipy.stats import kendalltau

    rel = np.abs(pred - meas) / meas
    return {"within_5": float(np.mean(rel <= 0.05)), "within_10": float(np.mean(rel <= 0.10)),
            "mape": float(np.mean(rel)), "rmse_ms": float(np.sqrt(np.mean((pred - meas) ** 2))),
            "kendall_tau": float(kendalltau(pred, meas)[0])}


def per_architecture(df: pd.DataFrame) -> pd.DataFrame:
    """One row per architecture: the mean of its measurements' medians."""
    return df.groupby("arch_id", sort=True).agg(spec_json=("spec_json", "first"), median_ms=("median_ms", "mean"),
                                                 flops=("flops", "first"), params=("params", "first"),
                                                 n=("median_ms", "size")).reset_index()


def baselines(archs: pd.DataFrame, y: np.ndarray, tr: np.ndarray, te: np.ndarray) -> dict:
    """Held-out figures of a linear regression on FLOPs, and on params."""
    from sklearn.linear_model import LinearRegression

    out = {}
    for name in ("flops", "params"):
        col = archs[name].to_numpy(float)[:, None]
        out[name] = metrics(np.maximum(LinearRegression().fit(col[tr], y[tr]).predict(col[te]), 1e-6), y[te])
    return out


def noise_floor(df: pd.DataFrame) -> dict:
    """Relative difference between the first two measurements of re-measured architectures."""
    pairs = df.groupby("arch_id")["median_ms"].apply(list)
    pairs = [p[:2] for p in pairs if len(p) >= 2]
    if not pairs:  # no figure (NaN is no JSON)
        return {"noise_pairs": 0}
    rel = np.array([abs(b - a) / a for a, b in pairs])
    return {"noise_floor": float(np.median(rel)), "noise_pairs": len(pairs), "noise_within_10": float(np.mean(rel <= 0.10))}


def fit_and_report(df: pd.DataFrame, test_fraction: float = 0.25, seed: int = 0, fingerprint: str | None = None,
                   source: Path | str = "being fitted") -> tuple[LatencyModel, dict]:
    """Fit on a seeded split of architectures, report held-out figures, then refit on all rows.

    The figures compare predictions with `median_ms`, the timings at the table's reference speed
    (see `measure.measure_all`); where the table has them, `raw` repeats them against the timings
    as taken (`raw_median_ms`, at whatever speed the machine had then), with their noise floor."""
    missing = [c for c in FITTED if c not in df.columns]
    if missing:
        raise TableError(f"timing table {source} lacks columns {missing} that a fit needs (it was measured by an "
                         f"older etnas); measure into a new file")
    rows, fp = select_fingerprint(df, fingerprint)
    reference = reference_of(rows, source)
    archs = per_architecture(rows)
    fitted_on = len(archs) - max(1, int(round(test_fraction * len(archs))))
    if fitted_on < MIN_FITTED:
        raise TableError(f"{len(archs)} architectures measured, {fitted_on} left to fit on after holding out "
                         f"{test_fraction:g} of them; a fit needs at least {MIN_FITTED} (more than 400 for accuracy): "
                         f"measure more (measure --n, run --calibrate-n), or hold out fewer (fit-latency "
                         f"--test-fraction)")
    specs = [ArchSpec.from_json(s) for s in archs["spec_json"]]
    y = archs["median_ms"].to_numpy(float)
    rng = np.random.default_rng(seed)
    test = np.zeros(len(y), dtype=bool)
    test[rng.permutation(len(y))[: len(y) - fitted_on]] = True
    tr, te = ~test, test
    model = LatencyModel(fingerprint=fp, reference_ms=reference).fit([s for s, t in zip(specs, tr) if t], y[tr], seed=seed)
    pred = model.predict_features(model.feature_matrix(specs)[te])
    report = {"n_train": int(tr.sum()), "n_test": int(te.sum()), **metrics(pred, y[te]),
              "baselines": baselines(archs, y, tr, te)}
    report.update(noise_floor(rows))
    if "raw_median_ms" in rows:
        raw_rows = rows.assign(median_ms=rows["raw_median_ms"])
        raw = per_architecture(raw_rows)["median_ms"].to_numpy(float)
        report["raw"] = {**metrics(pred, raw[te]), **noise_floor(raw_rows)}
    report["reference_ms"] = reference
    report["fingerprint"] = fp
    report["saved_model"] = f"refit on all {len(y)} architectures after this held-out report"
    final = LatencyModel(fingerprint=fp, reference_ms=reference).fit(specs, y, seed=seed)
    report["correction"] = {"kept": final.residual is not None, **final.residual_check}
    return final, report

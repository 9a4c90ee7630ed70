"""Benchmark: how robust a latency fit is on one timing table.

1. Held-out figures over several train/test splits (`fit_and_report` with seeds 0..4).
2. Out-of-fold errors (5 folds, the kernel sum alone) grouped by architecture properties: a group
   the predictor systematically misses shows up as a mean error away from 0.
3. Ablations: the same fit with MHSA always tallied as PyTorch's fused SDPA kernel (the tally before
   the fused and math paths were told apart), and without the few-token launch count (splits 0..4).

    .venv/bin/python benchmarks/latency_fit_checks.py TABLE.csv [--json]
"""
import argparse
import json
import warnings
from unittest import mock

import numpy as np
import pandas as pd

from latency_models import LatencyModel, read_table
from latency_models import features
from latency_models.table import select_fingerprint
from latency_models.validate import fit_and_report, per_architecture
from search_space import ArchSpec

FIGURES = ("within_5", "within_10", "mape", "kendall_tau")


def splits(df: pd.DataFrame, seeds: range) -> list[dict]:
    out = []
    for seed in seeds:
        _, r = fit_and_report(df, seed=seed)
        out.append({"seed": seed, **{k: r[k] for k in FIGURES}, "flops_within_10": r["baselines"]["flops"]["within_10"],
                    "correction_kept": r["correction"]["kept"]})
    return out


def groups(df: pd.DataFrame, folds: int = 5) -> dict:
    rows, fp = select_fingerprint(df, None)
    archs = per_architecture(rows)
    specs = [ArchSpec.from_json(s) for s in archs["spec_json"]]
    y = archs["median_ms"].to_numpy(float)
    x = LatencyModel(fingerprint=fp).feature_matrix(specs)
    fold = np.random.default_rng(0).permutation(len(y)) % folds
    pred = np.zeros(len(y))
    for f in range(folds):
        model = LatencyModel(fingerprint=fp).fit([s for s, k in zip(specs, fold) if k != f], y[fold != f],
                                                 residual=False)
        pred[fold == f] = model.predict_features(x[fold == f])
    err = pd.Series(pred / y - 1)
    props = pd.DataFrame([{"patch": s.patch, "stages": len(s.stages), "attention": s.stages[0].attention,
                           "norm": s.stages[0].norm, "width": s.stages[0].width, "ffns": s.stages[0].ffns,
                           "dwconv": s.stages[0].dwconv, "skip": any(st.skip for st in s.stages)} for s in specs])
    props["latency quintile"] = pd.qcut(y, 5, labels=False)
    out = {"within_10": float((err.abs() <= 0.1).mean()), "by": {}}
    for col in props:
        g = err.groupby(props[col]).agg(["count", "mean"])
        out["by"][col] = {str(k): {"n": int(v["count"]), "mean_error": float(v["mean"])} for k, v in g.iterrows()}
    out["worst_group_mean_error"] = max(abs(v["mean_error"]) for by in out["by"].values() for v in by.values())
    return out


def fused_sdpa_only(t, s, n, grid, folded):
    """The MHSA tally before the two SDPA paths were told apart."""
    h, kd, dv = s.heads, s.key_dim, s.value_ratio * s.width // s.heads
    features.linear(t, n, s.width, h * (2 * kd + dv))
    t.add("sdpa", h * n * n * (kd + dv + 1), features.F32 * h * (n * (2 * kd + 2 * dv) + n * n))
    features.copy(t, n * h * dv)
    features.linear(t, n, h * dv, s.width)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("table")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    df = read_table(args.table)
    out = {"splits": splits(df, range(5)), "groups": groups(df)}
    registered = features.attention_tally
    with mock.patch.object(features, "attention_tally", lambda name: fused_sdpa_only if name == "mhsa" else registered(name)):
        out["ablation_fused_sdpa_only"] = splits(df, range(1))[0]
    with mock.patch.object(features, "FEW_TOKENS", 0):  # no stage has 0 tokens: the count is always 0
        out["ablation_no_few_token_calls"] = splits(df, range(5))
    if args.json:
        print(json.dumps(out))
        return
    for r in out["splits"]:
        print(f"split seed {r['seed']}: within ±10% {r['within_10']:.1%}, ±5% {r['within_5']:.1%}, MAPE {r['mape']:.2%}, "
              f"tau {r['kendall_tau']:.3f} (FLOPs baseline {r['flops_within_10']:.1%}; correction kept: {r['correction_kept']})")
    g = out["groups"]
    print(f"5-fold out-of-fold, kernel sum alone: within ±10% {g['within_10']:.1%}; largest group mean error "
          f"{g['worst_group_mean_error']:+.2%}")
    for col, by in g["by"].items():
        print(f"  {col}: " + ", ".join(f"{k} {v['mean_error']:+.1%} (n={v['n']})" for k, v in by.items()))
    a = out["ablation_fused_sdpa_only"]
    print(f"ablation, MHSA always as fused SDPA (split seed 0): within ±10% {a['within_10']:.1%}, tau {a['kendall_tau']:.3f}")
    print("ablation, no few-token launch count (split seeds 0..4): within ±10% "
          + ", ".join(f"{r['within_10']:.1%}" for r in out["ablation_no_few_token_calls"]))


if __name__ == "__main__":
    main()

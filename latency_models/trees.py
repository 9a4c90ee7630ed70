"""The predictor's boosted trees as plain arrays: saved without pickle, predicted with numpy.

Exported from a fitted scikit-learn HistGradientBoostingRegressor (numeric features, squared
error), whose prediction is its baseline plus the sum of one leaf value per tree (shrinkage is
already in the leaves). `predict` gives the regressor's numbers (to rounding in the sum's order) at about its speed."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FIELDS = ("feature", "threshold", "left", "right", "is_leaf", "missing_left", "value")


@dataclass
class TreeEnsemble:
    feature: np.ndarray  # per node, all trees concatenated; children indices are global
    threshold: np.ndarray
    left: np.ndarray
    right: np.ndarray
    is_leaf: np.ndarray
    missing_left: np.ndarray
    value: np.ndarray
    roots: np.ndarray  # the root node of each tree
    baseline: float

    @classmethod
    def from_sklearn(cls, model) -> TreeEnsemble:
        nodes = [predictors[0].nodes for predictors in model._predictors]
        offsets = np.cumsum([0] + [len(n) for n in nodes[:-1]])
        cat = np.concatenate(nodes)
        if cat["is_categorical"].any():
            raise ValueError("categorical splits are not supported")
        shift = np.repeat(offsets, [len(n) for n in nodes])
        return cls(feature=cat["feature_idx"].astype(np.int64), threshold=cat["num_threshold"].astype(np.float64),
                   left=cat["left"].astype(np.int64) + shift, right=cat["right"].astype(np.int64) + shift,
                   is_leaf=cat["is_leaf"].astype(bool), missing_left=cat["missing_go_to_left"].astype(bool),
                   value=cat["value"].astype(np.float64), roots=offsets.astype(np.int64),
                   baseline=float(np.ravel(model._baseline_prediction)[0]))

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Every (sample, tree) pair descends one level per step; pairs at a leaf drop out."""
        n, n_trees = len(x), len(self.roots)
        node = np.tile(self.roots, n)
        sample = np.repeat(np.arange(n), n_trees)
        flat, width = np.ascontiguousarray(x, dtype=np.float64).ravel(), x.shape[1]
        active = np.flatnonzero(~self.is_leaf[node])
        while active.size:
            at = node[active]
            v = flat[sample[active] * width + self.feature[at]]
            go_left = np.where(np.isnan(v), self.missing_left[at], v <= self.threshold[at])
            at = np.where(go_left, self.left[at], self.right[at])
            node[active] = at
            active = active[~self.is_leaf[at]]
        return self.baseline + self.value[node].reshape(n, n_trees).sum(1)

    def arrays(self, prefix: str) -> dict[str, np.ndarray]:
        out = {f"{prefix}{k}": getattr(self, k) for k in (*FIELDS, "roots")}
        out[f"{prefix}baseline"] = np.array(self.baseline)
        return out

    @classmethod
    def from_arrays(cls, arrays, prefix: str) -> TreeEnsemble:
        return cls(**{k: np.asarray(arrays[f"{prefix}{k}"]) for k in (*FIELDS, "roots")},
                   baseline=float(arrays[f"{prefix}baseline"]))

"""LatencyModel: an additive kernel-cost model of the deployed network, corrected by a learned residual.

Stage 1 (the decomposition): latency = sum over kernel kinds of (launch overhead x calls +
cost per FLOP x FLOPs + cost per byte x bytes), plus a per-module dispatch cost and a constant,
fitted by non-negative least squares on relative error. Every coefficient is a physical cost, so
it extrapolates sanely. Stage 2 (the correction): gradient-boosted trees on the log ratio of
measured to stage-1 latency, from the same features, capture what adding up kernels misses
(cache effects between kernels, GEMM shape efficiency). On a noisy table the trees learn the
noise instead, so `fit` keeps them only where they beat stage 1 on an inner validation split.
"""
from __future__ import annotations

import json
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from search_space import ArchSpec

from .features import FEATURE_NAMES, feature_matrix
from .trees import TreeEnsemble

FORMAT_VERSION = 6  # 2: reference speed, MHSA's two SDPA paths; 3: few-token calls; 4: arrays, no pickle;
#                     5: onnxruntime's own kernel tally; 6: its Reshape nodes
PICKLE_MAGIC = b"\x80"
RANGE_FEATURES = ("flops", "tokens", "blocks")


def _mape(pred: np.ndarray, meas: np.ndarray) -> float:
    return float(np.mean(np.abs(pred - meas) / meas))


class ModelFileError(ValueError):
    """A latency-model file that cannot be used."""


@dataclass
class LatencyModel:
    fingerprint: dict = field(default_factory=dict)
    reference_ms: float | None = None  # the anchor latency its table's timings are scaled to
    coef: np.ndarray | None = None
    scale: np.ndarray | None = None
    residual: TreeEnsemble | None = None  # the boosted trees, or None where they did not help
    residual_check: dict = field(default_factory=dict)  # inner-validation MAPE with and without it
    ranges: dict = field(default_factory=dict)
    n_train: int = 0
    n_features: int = len(FEATURE_NAMES)  # the leading FEATURE_NAMES it was fitted on (2 fewer: a file from
    #                                       before the int8 tally's dequantized weights)

    @property
    def runtime(self) -> str:
        """The runtime whose kernels the features tally: the fingerprint's."""
        return self.fingerprint.get("runtime", "torch")

    @property
    def precision(self) -> str:
        return self.fingerprint.get("precision", "fp32")

    def feature_matrix(self, specs: list[ArchSpec]) -> np.ndarray:
        """The specs' features as this model's runtime and precision execute them (those it knows)."""
        return feature_matrix(list(specs), self.runtime, self.precision)[:, :self.n_features]

    # --- fitting ------------------------------------------------------------------------------
    @staticmethod
    def _design(x: np.ndarray) -> np.ndarray:
        return np.hstack([x, np.ones((len(x), 1))])

    def fit(self, specs: list[ArchSpec], ms: np.ndarray, residual: bool = True, seed: int = 0) -> LatencyModel:
        x = self.feature_matrix(specs)
        y = np.asarray(ms, dtype=float)
        self.residual, self.residual_check = None, {}
        if residual and len(y) >= 40:
            inner = np.random.default_rng(seed).permutation(len(y)) < len(y) // 5
            probe = LatencyModel(fingerprint=self.fingerprint)._fit_stages(x[~inner], y[~inner], seed)
            with_trees = probe.predict_features(x[inner])
            probe.residual = None
            self.residual_check = {"mape_stage1": _mape(probe.predict_features(x[inner]), y[inner]),
                                   "mape_with_trees": _mape(with_trees, y[inner])}
            residual = self.residual_check["mape_with_trees"] < self.residual_check["mape_stage1"]
        self._fit_stages(x, y, seed, residual=residual and len(y) >= 20)
        names = FEATURE_NAMES[:self.n_features]
        self.ranges = {f: (float(x[:, names.index(f)].min()), float(x[:, names.index(f)].max()))
                       for f in RANGE_FEATURES}
        self.n_train = len(y)
        return self

    def _fit_stages(self, x: np.ndarray, y: np.ndarray, seed: int, residual: bool = True) -> LatencyModel:
        # imported here so that measuring (which imports this package) needs neither scipy nor sklearn
        from scipy.optimize import nnls
        from sklearn.ensemble import HistGradientBoostingRegressor

        a = self._design(x)
        self.scale = np.maximum(a.max(0), 1e-12)
        coef, _ = nnls((a / self.scale) / y[:, None], np.ones(len(y)), maxiter=50 * a.shape[1])
        self.coef = coef / self.scale
        if residual:
            base = self._linear(a)
            trees = HistGradientBoostingRegressor(
                max_iter=300, learning_rate=0.05, max_leaf_nodes=15, min_samples_leaf=8,
                l2_regularization=1.0, random_state=seed)
            trees.fit(self._residual_inputs(x, base), np.log(y / np.maximum(base, 1e-9)))
            self.residual = TreeEnsemble.from_sklearn(trees)
        return self

    def _linear(self, design: np.ndarray) -> np.ndarray:
        """Stage 1, row by row: a matrix product's rounding depends on how many rows it is given, and a
        spec predicted alone must get the figure it gets among others (a run's record and a front)."""
        return (design * self.coef).sum(axis=1)

    @staticmethod
    def _residual_inputs(x: np.ndarray, base: np.ndarray) -> np.ndarray:
        return np.hstack([np.log1p(x), np.log(np.maximum(base, 1e-9))[:, None]])

    # --- predicting ---------------------------------------------------------------------------
    def predict_features(self, x: np.ndarray) -> np.ndarray:
        if self.coef is None:
            raise ModelFileError("latency model is not fitted")
        base = np.maximum(self._linear(self._design(x)), 1e-6)
        if self.residual is not None:
            base = base * np.exp(self.residual.predict(self._residual_inputs(x, base)))
        return base

    def predict(self, specs: list[ArchSpec]) -> np.ndarray:
        """Predicted latency in milliseconds of each spec's deployed model."""
        x = self.feature_matrix(specs)
        out = self.out_of_range(x)
        if out:
            warnings.warn(f"{out} of {len(x)} specs lie outside the measured range "
                          f"({', '.join(f'{k} {lo:.3g}..{hi:.3g}' for k, (lo, hi) in self.ranges.items())}); "
                          f"predictions there are extrapolated", stacklevel=2)
        return self.predict_features(x)

    def out_of_range(self, x: np.ndarray) -> int:
        names = FEATURE_NAMES[:self.n_features]
        bad = np.zeros(len(x), dtype=bool)
        for f, (lo, hi) in self.ranges.items():
            col = x[:, names.index(f)]
            bad |= (col < lo) | (col > hi)
        return int(bad.sum())

    def terms(self, spec: ArchSpec) -> dict[str, float]:
        """Stage-1 milliseconds per feature for one spec: where the time goes."""
        x = self._design(self.feature_matrix([spec]))[0]
        return {n: float(v) for n, v in zip([*FEATURE_NAMES[:self.n_features], "constant"], x * self.coef) if v > 0}

    # --- persistence --------------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        """One .npz of plain arrays and a JSON header: loading it runs no code (no pickle)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {"version": FORMAT_VERSION, "fingerprint": self.fingerprint, "reference_ms": self.reference_ms,
                "residual_check": self.residual_check, "ranges": self.ranges, "n_train": self.n_train,
                "feature_names": FEATURE_NAMES[:self.n_features]}
        arrays = {k: v for k, v in (("coef", self.coef), ("scale", self.scale)) if v is not None}
        arrays.update(self.residual.arrays("trees_") if self.residual else {})
        with open(path, "wb") as f:
            np.savez(f, meta=np.array(json.dumps(meta)), **arrays)

    @staticmethod
    def written_as_one(path: str | Path) -> bool:
        """Whether the file was written as a latency model, by any etnas version (this one may not
        load it): re-fitting replaces it."""
        with open(path, "rb") as f:
            if f.read(1) == PICKLE_MAGIC:
                return True
        try:
            with zipfile.ZipFile(path) as z:
                return "meta.npy" in z.namelist()
        except (zipfile.BadZipFile, OSError):
            return False

    @classmethod
    def load(cls, path: str | Path) -> LatencyModel:
        path = Path(path)
        if not path.is_file():
            raise ModelFileError(f"latency model {path} does not exist; fit one with `etnas fit-latency`")
        with open(path, "rb") as f:
            if f.read(1) == PICKLE_MAGIC:
                raise ModelFileError(f"latency model {path} is in the old pickle format, which etnas no longer "
                                     f"loads (unpickling can run code); re-fit it from its timing CSV with "
                                     f"`etnas fit-latency`")
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(str(z["meta"]))
                names = meta.get("feature_names")
                if meta.get("version") != FORMAT_VERSION or names not in (FEATURE_NAMES, FEATURE_NAMES[:-2]):
                    raise ValueError("another format version")
                if meta["fingerprint"].get("precision") == "int8" and names != FEATURE_NAMES:
                    raise ModelFileError(f"latency model {path} was fitted before int8 had a kernel tally of its "
                                         f"own; re-fit it from its timing CSV with `etnas fit-latency`")
                residual = TreeEnsemble.from_arrays(z, "trees_") if "trees_roots" in z.files else None
                return cls(fingerprint=meta["fingerprint"], reference_ms=meta["reference_ms"],
                           coef=z["coef"] if "coef" in z.files else None,
                           scale=z["scale"] if "scale" in z.files else None, residual=residual,
                           residual_check=meta["residual_check"],
                           ranges={k: tuple(v) for k, v in meta["ranges"].items()}, n_train=meta["n_train"],
                           n_features=len(names))
        except ModelFileError:
            raise
        except Exception as e:  # any unreadable file gets the same actionable message
            raise ModelFileError(f"latency model {path} is unreadable ({type(e).__name__}); "
                                 f"re-fit it with `etnas fit-latency`") from None

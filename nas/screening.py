"""A proposal before any training: its spec and predicted latency recorded on the trial, whether it
meets the target, and whether its architecture was trained before or is in training now."""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import optuna

from latency_models import LatencyModel
from latency_models.features import total_flops
from search_space import ArchSpec, SearchSpace, build_model, count_params, sample

from .schema import Attr
from .study_view import set_latency_constraint
from .targets import predictions

INFEASIBLE, DUPLICATE, WAIT, RESUME, TRAIN = "infeasible", "duplicate", "wait", "resume", "train"


@dataclass
class Screening:
    space: SearchSpace
    shape: tuple[int, int, int]
    model: LatencyModel
    target_ms: float
    preset_of: dict[str, str]  # arch_id -> preset name
    others: dict[str, LatencyModel] = field(default_factory=dict)  # more targets, by label

    def describe(self, trial: optuna.trial.Trial) -> ArchSpec:
        """Sample the trial's spec and record it, its predicted latency, cost and latency constraint."""
        spec = sample(trial, self.space, *self.shape)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pred = float(self.model.predict([spec])[0])
        attrs = {Attr.SPEC: spec.to_json(), Attr.ARCH_ID: spec.arch_id, Attr.SHORT: spec.short(), Attr.PRED_MS: pred,
                 Attr.FLOPS: total_flops(spec), Attr.PARAMS: count_params(build_model(spec))}
        if spec.arch_id in self.preset_of:
            attrs[Attr.PRESET] = self.preset_of[spec.arch_id]
        if self.others:
            attrs[Attr.PRED_MS_TARGETS] = predictions(self.others, spec)
        for k, v in attrs.items():
            trial.set_user_attr(k, v)
        set_latency_constraint(trial, pred - self.target_ms)
        return spec

    def verdict(self, trial: optuna.trial.Trial, spec: ArchSpec, finished: set[str], in_training: set[str]) -> str:
        """What to do with a described trial. Presets are reference points: trained even over target.
        A trial re-queued after a killed run carries its rung results and resumes from them."""
        if trial.user_attrs[Attr.PRED_MS] > self.target_ms and spec.arch_id not in self.preset_of:
            return INFEASIBLE
        if spec.arch_id in finished:
            return DUPLICATE
        if spec.arch_id in in_training:
            return WAIT
        return RESUME if trial.user_attrs.get(Attr.RUNG_ACCS) else TRAIN

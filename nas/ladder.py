"""The rung results of a running search, by architecture, and the promotion decision after each:
does this candidate train on to the next rung, or is its accuracy here the one Optuna is told?"""
from __future__ import annotations

import math

import optuna

from .rungs import RungResult, Rungs, promoted
from .schema import Attr
from .study_view import report_rungs


def rung_end_steps(attrs: dict) -> list[int]:
    """The optimizer step each recorded rung ended on: where its training started plus what it trained."""
    return [start + steps for start, steps in zip(attrs[Attr.STARTED_AT], attrs[Attr.TRAINED_STEPS])]


class Ladder:
    def __init__(self, study: optuna.Study, rungs: Rungs, rule: str, band_edges: list[float],
                 target_ms: float = math.inf):
        self.rungs, self.rule, self.band_edges, self.target_ms = rungs, rule, band_edges, target_ms
        self.accs: dict[str, list[float]] = {}
        self.latency: dict[str, float] = {}
        for t in study.get_trials(deepcopy=False):
            a = t.user_attrs
            if a.get(Attr.RUNG_ACCS) and Attr.ARCH_ID in a and a.get(Attr.CACHED_FROM) is None:  # asked, not copied
                self.note(a[Attr.ARCH_ID], a[Attr.PRED_MS], a[Attr.RUNG_ACCS])

    def note(self, arch_id: str, pred_ms: float, accs: list[float]) -> None:
        if len(accs) >= len(self.accs.get(arch_id, [])):
            self.accs[arch_id], self.latency[arch_id] = list(accs), pred_ms

    def record(self, trial: optuna.trial.Trial, rung: int, res: dict) -> list[float]:
        """Keep a finished rung on the trial (so a killed run resumes from it) and here."""
        accs = list(trial.user_attrs.get(Attr.RUNG_ACCS) or [])[:rung] + [res["val_acc"]]
        per_rung = {k: list(trial.user_attrs.get(k) or [])[:rung] + [res[key]]
                    for k, key in ((Attr.TRAINED_STEPS, "trained_steps"), (Attr.STARTED_AT, "start_step"),
                                   (Attr.TRAINED_ON, "node"))}
        for k, v in ((Attr.RUNG_ACCS, accs), *per_rung.items(), (Attr.STEPS, res["steps"]),
                     (Attr.HISTORY, res["history"]), (Attr.TRAIN_S, res["train_s"])):
            trial.set_user_attr(k, v)
        report_rungs(trial, rung_end_steps(per_rung), accs)
        self.note(trial.user_attrs[Attr.ARCH_ID], trial.user_attrs[Attr.PRED_MS], accs)
        return accs

    def goes_on(self, arch_id: str) -> bool:
        """Whether the architecture earns the rung above its highest one, against every result at
        that rung so far within the target: one over it (a preset, trained as a baseline) can never
        be on the front, so it neither goes on nor takes a promotion from one that can."""
        rung = len(self.accs[arch_id]) - 1
        if rung + 1 >= self.rungs.count or self.latency[arch_id] > self.target_ms:
            return False
        results = [RungResult(a, accs[rung], self.latency[a]) for a, accs in self.accs.items()
                   if len(accs) > rung and self.latency[a] <= self.target_ms]
        return arch_id in promoted(results, self.rule, self.rungs.eta, band_edges=self.band_edges)

    def epochs_trained(self) -> float:
        """Training epochs the rungs reached so far took, over all candidates."""
        return sum(self.rungs.budgets[len(accs) - 1] for accs in self.accs.values())

    def at_rung(self) -> list[int]:
        """How many architectures reached each rung."""
        return [sum(len(a) > k for a in self.accs.values()) for k in range(self.rungs.count)]

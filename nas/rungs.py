"""Multi-fidelity allocation: the rungs' training budgets, and the promotion rules that choose which
candidates of a rung train on to the next. Pure functions, shared by the search and the benchmark
that measures the rules on the long-training reference pool."""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Rungs:
    """Budgets growing `eta`-fold: rung k trains base * (1 + eta + ... + eta^k) epochs in all, each
    continuing the previous rung's training. The top budget is kept exactly; the base is the
    nearest that fits a whole number of rungs."""

    base_epochs: float
    top_epochs: float
    eta: int = 3

    def __post_init__(self):
        if not 0 < self.base_epochs <= self.top_epochs:
            raise ValueError(f"rung budgets need 0 < base ({self.base_epochs:g}) <= top ({self.top_epochs:g}) epochs")
        if self.eta < 2:
            raise ValueError(f"eta must be at least 2 (got {self.eta})")

    @property
    def count(self) -> int:
        return max(1, round(math.log(1 + self.top_epochs * (self.eta - 1) / self.base_epochs, self.eta)))

    @property
    def first(self) -> float:
        """The first rung's budget in epochs: the first cosine cycle of the trainings."""
        return self.top_epochs * (self.eta - 1) / (self.eta ** self.count - 1)

    @property
    def budgets(self) -> list[float]:
        return [self.first * (self.eta ** k - 1) / (self.eta - 1) for k in range(1, self.count + 1)]

    def said(self) -> str:
        """The rungs in words, and the base epochs they settled on where that is not the one asked."""
        if self.count == 1:
            return f"one rung of {self.top_epochs:g} epochs (no promotions)"
        moved = "" if math.isclose(self.first, self.base_epochs) else (
            f" (--base-epochs {self.base_epochs:g} moved to {self.first:.3g}: the nearest base whose rungs, "
            f"each adding {self.eta} times the epochs of the one before, end at --epochs {self.top_epochs:g})")
        return f"rungs at {', '.join(f'{b:.3g}' for b in self.budgets)} epochs{moved}"

    def epochs_of(self, rung: int) -> float:
        """The epochs rung `rung` trains on top of the rungs below it."""
        return self.first * self.eta ** rung


def expected_epochs(rungs: Rungs, from_rung: int = 0) -> float:
    """The epochs a candidate starting rung `from_rung` trains on average when each rung promotes
    1/eta of its results: all of its rung's, 1/eta of the next one's, 1/eta^2 of the one after."""
    return sum(rungs.epochs_of(k) / rungs.eta ** (k - from_rung) for k in range(from_rung, rungs.count))


@dataclass(frozen=True)
class RungResult:
    key: str
    accuracy: float
    latency_ms: float


Share = Callable[[int], int]  # how many of n results a rung promotes

SEARCH_BANDS = 4  # the search's latency bands under its target


def search_band_edges(fastest_ms: float, target_ms: float, count: int = SEARCH_BANDS) -> list[float]:
    """Inner edges of `count` bands of equal width in log latency, from the space's fastest
    architecture to the target. A front spreads along latency ratios, so each ratio range gets
    promotions of its own, the fast end included; bands of equal count over the space put most
    of the range's fast end in one band with the space's crowded middle."""
    if not 0 < fastest_ms < target_ms:
        return []
    return [float(edge) for edge in np.geomspace(fastest_ms, target_ms, count + 1)[1:-1]]


def by_accuracy(results: list[RungResult], share: Share, band_edges: list[float] | None) -> set[str]:
    """The best by accuracy alone."""
    return _best(results, share(len(results)), key=lambda r: -r.accuracy)


def by_latency_bands(results: list[RungResult], share: Share, band_edges: list[float] | None) -> set[str]:
    """The best within each band of similar predicted latency (between `band_edges`, default three
    quantile bands of the results), so that slow candidates compete with slow ones."""
    out: set[str] = set()
    for band in latency_bands(results, band_edges):
        out |= _best(band, share(len(band)), key=lambda r: -r.accuracy)
    return out


def by_pareto_order(results: list[RungResult], share: Share, band_edges: list[float] | None) -> set[str]:
    """The first by non-dominated front on (accuracy up, latency down), spread along the last front."""
    return {r.key for r in pareto_order(results)[: share(len(results))]}


PROMOTION_RULES: dict[str, Callable[[list[RungResult], Share, list[float] | None], set[str]]] = {
    "pareto": by_pareto_order, "bands": by_latency_bands, "accuracy": by_accuracy}


def promoted(results: list[RungResult], rule: str, eta: int, band_edges: list[float] | None = None,
             settled: bool = False) -> set[str]:
    """The candidates of one rung that earn the next: the best 1/eta of them by `rule` (one of
    PROMOTION_RULES). Once the rung is `settled` (a fixed pool), the share is rounded up. While more
    results may still arrive (the search), it is rounded down but never below one, so the best so
    far goes on (ASHA, as Optuna's SuccessiveHalvingPruner does it), unless it is clearly beaten
    (`clearly_beaten`): else a latency band's first arrivals go on whatever they scored, and the
    slowest band's are the longest trainings of all."""
    if rule not in PROMOTION_RULES:
        raise ValueError(f"unknown promotion rule '{rule}'; choose one of {', '.join(PROMOTION_RULES)}")
    if settled:
        return PROMOTION_RULES[rule](results, lambda n: math.ceil(n / eta), band_edges)
    return PROMOTION_RULES[rule](results, lambda n: max(1, n // eta), band_edges) - clearly_beaten(results)


def clearly_beaten(results: list[RungResult]) -> set[str]:
    """Candidates that a faster result at their rung out-scores by more than the standard deviation
    of the rung's accuracies (once it has three). In the README example's runs, the isotropic
    presets trailed EfficientViT-M0 by about two such deviations or more after half an epoch,
    while no run's best final model had trailed a faster candidate by more than one (BENCHMARKS.md)."""
    if len(results) < 3:
        return set()
    spread = float(np.std([r.accuracy for r in results]))
    return {r.key for r in results
            if any(o.latency_ms < r.latency_ms and o.accuracy > r.accuracy + spread for o in results)}


def _best(results: list[RungResult], n: int, key) -> set[str]:
    return {r.key for r in sorted(results, key=lambda r: (key(r), r.key))[:n]}


def latency_bands(results: list[RungResult], edges: list[float] | None = None) -> list[list[RungResult]]:
    """The results grouped by predicted latency between `edges` (inner boundaries, ascending); by
    default three groups of about equal size, from the fastest to the slowest."""
    ordered = sorted(results, key=lambda r: (r.latency_ms, r.key))
    if edges is None:
        return [list(part) for part in np.array_split(np.array(ordered, dtype=object), 3) if len(part)]
    index = np.searchsorted(edges, [r.latency_ms for r in ordered], side="right")
    return [[r for r, i in zip(ordered, index) if i == band] for band in range(len(edges) + 1)
            if any(i == band for i in index)]


def pareto_order(results: list[RungResult]) -> list[RungResult]:
    """NSGA-II's order: successive non-dominated fronts on (accuracy up, latency down), each front
    by crowding distance (its two ends first), so a cut through a front keeps it spread."""
    left, order = list(results), []
    while left:
        front = [r for r in left if not any(_dominates(o, r) for o in left)]
        crowding = _crowding(front)
        order += sorted(front, key=lambda r: (-crowding[r.key], -r.accuracy, r.latency_ms, r.key))
        left = [r for r in left if r not in front]
    return order


def _dominates(a: RungResult, b: RungResult) -> bool:
    return (a.accuracy >= b.accuracy and a.latency_ms <= b.latency_ms
            and (a.accuracy > b.accuracy or a.latency_ms < b.latency_ms))


def _crowding(front: list[RungResult]) -> dict[str, float]:
    dist = {r.key: 0.0 for r in front}
    for value in (lambda r: r.accuracy, lambda r: r.latency_ms):
        ordered = sorted(front, key=value)
        span = value(ordered[-1]) - value(ordered[0]) or 1.0
        dist[ordered[0].key] = dist[ordered[-1].key] = math.inf
        for before, r, after in zip(ordered, ordered[1:], ordered[2:]):
            dist[r.key] += (value(after) - value(before)) / span
    return dist


def successive_halving(latency: dict[str, float], accuracy_at, rungs: Rungs, rule: str) -> dict[str, list[float]]:
    """Synchronous successive halving over a fixed set of candidates (key -> predicted latency):
    all train the first rung, the promoted share of each rung the next. `accuracy_at(key, k)`
    trains (or looks up) candidate `key` to rung k. Returns each candidate's accuracy at every rung
    it reached."""
    reached: dict[str, list[float]] = {key: [] for key in latency}
    current = list(latency)
    for k in range(rungs.count):
        for key in current:
            reached[key].append(accuracy_at(key, k))
        results = [RungResult(key, reached[key][-1], latency[key]) for key in current]
        current = sorted(promoted(results, rule, rungs.eta, settled=True))
    return reached


def rung_score(accuracies: list[float]) -> float:
    """One number that orders candidates as the search's front does: the highest rung reached first,
    then the accuracy there."""
    return len(accuracies) - 1 + accuracies[-1]

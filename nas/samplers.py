"""The Optuna samplers a search may use, by name. NSGA-II and TPE read each trial's latency
constraint (`Trial.set_constraint`; feasible when pred_ms - target <= 0) and steer away from
violators; random search ignores it. Optuna is imported on use, so the command line can list
the names without it."""
from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from . import SearchError

if TYPE_CHECKING:
    import optuna

NSGA2_POPULATION = 10  # small: a search proposes tens of candidates, not thousands
TPE_STARTUP_TRIALS = 8


def nsga2(seed: int) -> optuna.samplers.BaseSampler:
    import optuna
    return optuna.samplers.NSGAIISampler(seed=seed, population_size=NSGA2_POPULATION)


def tpe(seed: int) -> optuna.samplers.BaseSampler:
    import optuna
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=TPE_STARTUP_TRIALS)


def random_search(seed: int) -> optuna.samplers.BaseSampler:
    import optuna
    return optuna.samplers.RandomSampler(seed=seed)


SAMPLERS: dict[str, Callable[[int], optuna.samplers.BaseSampler]] = {"nsga2": nsga2, "tpe": tpe,
                                                                      "random": random_search}


def make_sampler(name: str, seed: int, trials_so_far: int = 0) -> optuna.samplers.BaseSampler:
    """The sampler `name`, seeded by the run's seed and, for a resumed study, its trial count: seeded
    as at the start, it would propose the first architectures again (all of them while TPE samples
    at random), each a duplicate that uses up a trial."""
    if name not in SAMPLERS:
        raise SearchError(f"unknown sampler '{name}'; choose one of {', '.join(SAMPLERS)}")
    return SAMPLERS[name](seed + trials_so_far)

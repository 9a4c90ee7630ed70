"""The search loop: Optuna asks for a candidate, the latency predictor screens it against the target,
a Ray worker trains the feasible ones, Optuna is told the result. State lives in the SQLite study,
so a re-run of the same command resumes where the last one stopped."""
from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import optuna

from evaluators.data import load_dataset
from evaluators.train import TrainConfig
from latency_models import LatencyModel
from latency_models.features import total_flops
from search_space import SearchSpace, build_model, count_params, presets, sample
from search_space.presets import SEARCH_SCALE
from search_space.sampling import FixedSuggester, params_of

from . import SearchError
from .config import SearchConfig, parse_target
from .records import trial_state, write_records
from .rundir import CONFIG_ATTR, load_run_study, run_config, study_storage, write_config


def make_sampler(name: str, seed: int) -> optuna.samplers.BaseSampler:
    """NSGA-II and TPE read each trial's latency constraint (`Trial.set_constraint`; feasible when
    pred_ms - target <= 0) and steer away from violators; random search ignores it."""
    samplers = {
        "nsga2": lambda: optuna.samplers.NSGAIISampler(seed=seed, population_size=10),
        "tpe": lambda: optuna.samplers.TPESampler(seed=seed, n_startup_trials=8),
        "random": lambda: optuna.samplers.RandomSampler(seed=seed),
    }
    if name not in samplers:
        raise SearchError(f"unknown sampler '{name}'; choose one of {', '.join(samplers)}")
    return samplers[name]()


def open_study(cfg: SearchConfig, latency_model: LatencyModel) -> optuna.Study:
    """The run's study, created with its config.json (the settings, and the device and reference
    speed its predicted latencies are on, which `train` measures at; the study keeps a copy) or
    resumed if the settings match."""
    try:
        cfg.run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SearchError(f"cannot create the run directory {cfg.run_dir} ({e.strerror}); choose another "
                          f"--runs-dir") from None
    if (cfg.run_dir / "config.json").exists() or (cfg.run_dir / "study.db").exists():
        before = run_config(cfg.run_dir)
        changed = {k: (before.get(k), v) for k, v in cfg.identity().items() if before.get(k) != v}
        if changed:
            raise SearchError(f"run {cfg.name} already exists with other settings "
                              f"({', '.join(f'{k}: {a} -> {b}' for k, (a, b) in changed.items())}); "
                              f"re-run with the original settings to resume, or choose a new --name")
        return _study(cfg, before)
    saved = {**cfg.identity(), "latency_fingerprint": latency_model.fingerprint.get("id"),
             "latency_reference_ms": latency_model.reference_ms}
    write_config(cfg.run_dir, saved)
    return _study(cfg, saved)


def _study(cfg: SearchConfig, saved: dict) -> optuna.Study:
    """Create or load the study with the run's sampler; it keeps a copy of config.json."""
    if (cfg.run_dir / "study.db").exists():
        load_run_study(cfg.run_dir)  # a corrupt database is one line, before anything else
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    study = optuna.create_study(study_name=cfg.name, storage=study_storage(cfg.run_dir),
                                directions=["maximize", "minimize"], sampler=make_sampler(cfg.sampler, cfg.seed),
                                load_if_exists=True)
    if CONFIG_ATTR not in study.user_attrs:
        study.set_user_attr(CONFIG_ATTR, saved)
    return study


def recover_interrupted(study: optuna.Study) -> int:
    """Trials left RUNNING by a killed driver are closed as interrupted and queued to run again."""
    n = 0
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        optuna.trial.Trial(study, t._trial_id).set_user_attr("interrupted", True)
        study.tell(t.number, state=optuna.trial.TrialState.FAIL)
        study.enqueue_trial(t.params, user_attrs={"requeued_from": t.number}, skip_if_exists=False)
        n += 1
    return n


def counts(study: optuna.Study) -> dict[str, int]:
    out: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        state = trial_state(t)
        out[state] = out.get(state, 0) + 1
    return out


@dataclass
class SearchProgress:
    """What the live view shows after every event."""

    done: int = 0
    running: int = 0
    failed: int = 0
    infeasible: int = 0
    best_acc: float | None = None
    front_size: int = 0
    mean_train_s: float | None = None
    total: int = 0
    last: str = ""


def search_space_for(cfg: SearchConfig, shape: tuple[int, int, int]) -> tuple[SearchSpace, dict]:
    """The run's space (defaults or the user's file) widened to express every seed preset, and the
    presets' trial parameters by name."""
    space = SearchSpace.load(cfg.space)
    refs = presets(*shape, width_mult=SEARCH_SCALE, depth_mult=SEARCH_SCALE)
    params = {name: params_of(spec, space) for name, spec in refs.items()}
    for p in params.values():
        space = space.including(p)
    return space, params


def space_latencies(model: LatencyModel, space: SearchSpace, shape: tuple[int, int, int], seed: int = 0,
                    n: int = 2000) -> np.ndarray:
    """Predicted latency of n architectures sampled from the space: where the space sits on the device."""
    rng = np.random.default_rng(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return model.predict([sample(rng, space, *shape) for _ in range(n)])


def resolve_target(target: str, latencies: np.ndarray) -> float:
    """`--target-ms` is milliseconds, or `pN`: the N-th percentile of the space's predicted latencies
    (so `p50` is a target that half the space meets, on whatever machine the model was fitted)."""
    try:
        kind, value = parse_target(target)
    except ValueError as e:
        raise SearchError(f"--target-ms {e}") from None
    return round(float(np.percentile(latencies, value)), 4) if kind == "percentile" else value


def check_target(target_ms: float, latencies: np.ndarray) -> None:
    """Refuse a target no architecture of the space can meet, and say what would work."""
    fastest, q10, median = np.min(latencies), np.quantile(latencies, 0.1), np.median(latencies)
    if target_ms < fastest:
        raise SearchError(f"target {target_ms:g} ms is below the fastest architecture of the space "
                          f"({fastest:.3f} ms predicted, of {len(latencies)} sampled); try --target-ms {median:.2f} "
                          f"(half the space meets it) or at least {q10:.2f} (a tenth does)")


def run_search(cfg: SearchConfig, on_progress: Callable[[SearchProgress], None] | None = None) -> list[dict]:
    """Run (or resume) a search; returns the Pareto front. Infeasible candidates are never trained."""
    import ray

    from .workers import remote_evaluate

    data = load_dataset(cfg.dataset)
    shape = (data.img_size, data.in_chans, data.num_classes)
    space, preset_params = search_space_for(cfg, shape)
    preset_of = {sample(FixedSuggester(p), space, *shape).arch_id: name for name, p in preset_params.items()}
    model = LatencyModel.load(cfg.latency_model)
    check_target(cfg.target_ms, space_latencies(model, space, shape, cfg.seed))

    study = open_study(cfg, model)
    if not study.trials:
        for p in preset_params.values():
            study.enqueue_trial(p)
    recover_interrupted(study)

    tr, val = data.split(0.1, seed=cfg.seed)
    mean, std = data.channel_stats()
    train_cfg = TrainConfig(epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, subset=cfg.subset,
                            resolution=cfg.resolution, seed=cfg.seed, threads=1)
    if not ray.is_initialized():
        ray.init(address=cfg.ray_address, num_cpus=None if cfg.ray_address else cfg.workers,
                 include_dashboard=False, log_to_driver=False, configure_logging=False)
    data_ref = ray.put((data.x_train[tr], data.y_train[tr], data.x_train[val], data.y_train[val], mean, std))

    def finished() -> int:  # trials that count towards --trials (interrupted ones are re-run)
        c = counts(study)
        return sum(v for k, v in c.items() if k not in ("RUNNING", "INTERRUPTED", "WAITING"))

    evaluated: dict[str, optuna.trial.FrozenTrial] = {
        t.user_attrs["arch_id"]: t for t in study.get_trials(deepcopy=False)
        if trial_state(t) == "COMPLETE"}
    pending: dict = {}  # ray ref -> (trial, arch_id)
    waiting_dupes: dict[str, list] = {}
    prog = SearchProgress(total=cfg.trials)
    front: list[dict] = write_records(study, cfg.run_dir, cfg.target_ms)

    def report(last: str = "") -> None:
        nonlocal front
        front = write_records(study, cfg.run_dir, cfg.target_ms)
        c = counts(study)
        trained = [t for t in evaluated.values() if "train_s" in t.user_attrs]
        prog.done, prog.running = finished(), len(pending)
        prog.failed, prog.infeasible = c.get("FAIL", 0), c.get("INFEASIBLE", 0)
        prog.best_acc = max((f["val_acc"] for f in front), default=None)
        prog.front_size = len(front)
        prog.mean_train_s = float(np.mean([t.user_attrs["train_s"] for t in trained])) if trained else None
        prog.last = last or prog.last
        if on_progress:
            on_progress(prog)

    def tell_result(trial: optuna.trial.Trial, res: dict) -> str:
        if "failure" in res:
            trial.set_user_attr("failure", res["failure"])
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            return f"trial {trial.number} failed: {res['failure']}"
        for k in ("val_acc", "history", "train_s"):
            trial.set_user_attr(k, res[k])
        if res.get("pruned"):
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            return f"trial {trial.number} pruned at {res['val_acc']:.3f}"
        study.tell(trial, [res["val_acc"], trial.user_attrs["pred_ms"]])
        return f"trial {trial.number}: {res['val_acc']:.3f} at {trial.user_attrs['pred_ms']:.2f} ms"

    def tell_duplicate(trial: optuna.trial.Trial, original: optuna.trial.FrozenTrial) -> None:
        trial.set_user_attr("cached_from", original.number)
        trial.set_user_attr("val_acc", original.user_attrs["val_acc"])
        study.tell(trial, original.values)

    report()
    try:
        while True:
            capacity = cfg.workers - len(pending)
            asked = finished() + len(pending) + sum(map(len, waiting_dupes.values()))
            while capacity > 0 and asked < cfg.trials:
                trial = study.ask()
                spec = sample(trial, space, *shape)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    pred = float(model.predict([spec])[0])
                name = preset_of.get(spec.arch_id)
                attrs = {"spec": spec.to_json(), "arch_id": spec.arch_id, "short": spec.short(), "pred_ms": pred,
                         "flops": total_flops(spec), "params": count_params(build_model(spec))}
                if name:
                    attrs["preset"] = name
                for k, v in attrs.items():
                    trial.set_user_attr(k, v)
                trial.set_constraint("latency_over_target_ms", pred - cfg.target_ms)
                asked += 1
                if pred > cfg.target_ms and not name:
                    trial.set_user_attr("infeasible", True)
                    study.tell(trial, [0.0, pred])  # constraint-violating: ranked behind every feasible trial
                    report(f"trial {trial.number} infeasible: predicted {pred:.2f} ms > {cfg.target_ms} ms")
                elif spec.arch_id in evaluated:
                    tell_duplicate(trial, evaluated[spec.arch_id])
                    report(f"trial {trial.number} duplicates trial {evaluated[spec.arch_id].number}")
                elif any(a == spec.arch_id for _, a in pending.values()):
                    waiting_dupes.setdefault(spec.arch_id, []).append(trial)
                else:
                    curves = [t.user_attrs["history"] for t in evaluated.values() if "history" in t.user_attrs]
                    prunable = cfg.prune and not name  # presets are reference points: always trained in full
                    ref = remote_evaluate.remote(spec.to_json(), data_ref, train_cfg, curves if prunable else None)
                    pending[ref] = (trial, spec.arch_id)
                    capacity -= 1
                    report(f"trial {trial.number} training {spec.short()[:60]}")
            if not pending:
                break
            ready, _ = ray.wait(list(pending), num_returns=1)
            trial, arch_id = pending.pop(ready[0])
            res = ray.get(ready[0])
            msg = tell_result(trial, res)
            frozen = study.get_trials(deepcopy=False)[trial.number]
            if trial_state(frozen) == "COMPLETE":
                evaluated[arch_id] = frozen
            for dup in waiting_dupes.pop(arch_id, []):
                if arch_id in evaluated:
                    tell_duplicate(dup, evaluated[arch_id])
                else:  # the original failed or was pruned: the duplicate shares its fate
                    dup.set_user_attr("cached_from", trial.number)
                    study.tell(dup, state=frozen.state)
            report(msg)
    except KeyboardInterrupt:
        for ref in pending:
            ray.cancel(ref, force=True)
        raise
    return front

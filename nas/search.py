"""The search: Optuna asks for a candidate, the latency predictor screens it against the target, Ray
workers train the feasible ones rung by rung (the promoted share of each rung continues from its
checkpoint), and Optuna is told each candidate's accuracy at its highest rung. State lives in the
SQLite study and the checkpoints, so a re-run of the same command resumes where the last stopped."""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import optuna

from evaluators.data import Dataset
from latency_models import LatencyModel
from search_space import ArchSpec, sample
from search_space.operators import PLUGINS_VARIABLE
from search_space.sampling import FixedSuggester

from . import SearchError
from .config import SearchConfig, refuse_other_settings, target_name
from .dispatch import Dispatcher, rung_train_config
from .front import refuse_a_search_that_trained_nothing
from .inputs import SearchInputs, check_target, load_inputs
from .ladder import Ladder
from .records import trial_state
from .rungs import expected_epochs, search_band_edges
from .rundir import (load_run_study, refuse_a_lost_study, run_begun, run_config, searching, study_storage,
                     write_config, write_records)
from .samplers import make_sampler
from .schema import RESUMABLE_ATTRS, SETTLED_STATES, UNCOUNTED_STATES, Attr, TrialState
from .screening import DUPLICATE, INFEASIBLE, RESUME, WAIT, Screening
from .targets import OTHER_TARGETS, remember_targets, target_records
from .storage import StorageError, check_writable, one_line, storage_error, storage_problem
from .study_view import describe_study


MAX_REPEATS = 200  # proposals of known architectures in a row before the space counts as exhausted
MAX_RELAUNCHES = 2  # per trial: a worker or node lost under its training more often fails it


def open_study(cfg: SearchConfig, latency_model: LatencyModel,
               others: dict[str, LatencyModel] | None = None) -> optuna.Study:
    """The run's study, created with its config.json (the settings, and the device and reference
    speed its predicted latencies are on, which `train` measures at; the study keeps a copy) or
    resumed if the settings match."""
    try:
        cfg.run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SearchError(f"cannot create the run directory {cfg.run_dir} ({e.strerror}); choose another "
                          f"--runs-dir") from None
    check_writable(cfg.run_dir)
    if run_begun(cfg.run_dir):
        refuse_a_lost_study(cfg.run_dir)
        before = run_config(cfg.run_dir)
        refuse_other_settings(cfg, before)
        study = _study(cfg, remember_targets(before, others or {}))
        refuse_other_ids(study, cfg.name)
        return study
    saved = {**cfg.identity(), "latency_fingerprint": latency_model.fingerprint.get("id"),
             "latency_reference_ms": latency_model.reference_ms, "latency_target": latency_model.fingerprint,
             **({OTHER_TARGETS: target_records(others)} if others else {})}
    write_config(cfg.run_dir, saved)
    return _study(cfg, saved)


def refuse_other_ids(study: optuna.Study, name: str) -> None:
    """A run whose trials' ids are not their specs' ids now (an earlier etnas kept a float field's
    whole numbers, from a space file's choices, apart): resumed, it would train them again as new
    architectures, and miss their checkpoints."""
    for t in study.get_trials(deepcopy=False):
        spec, arch_id = t.user_attrs.get(Attr.SPEC), t.user_attrs.get(Attr.ARCH_ID)
        if spec and arch_id and ArchSpec.from_json(spec).arch_id != arch_id:
            raise SearchError(f"run {name} was searched by an earlier etnas, which named some architectures by other "
                              f"ids (whole numbers in its space file's float choices, such as mlp_ratios); resumed, "
                              f"it would train them again: choose a new --name (its front, train and export still "
                              f"work)")


def _study(cfg: SearchConfig, saved: dict) -> optuna.Study:
    """Create or load the study with the run's sampler; it keeps a copy of config.json."""
    name = cfg.name
    if (cfg.run_dir / "study.db").exists():  # a corrupt database is one line, before anything else
        name = load_run_study(cfg.run_dir).study_name  # the run's, though its folder was renamed since
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    study = optuna.create_study(study_name=name, storage=study_storage(cfg.run_dir),
                                directions=["maximize", "minimize"], sampler=make_sampler(cfg.sampler, cfg.seed),
                                load_if_exists=True)
    trials_so_far = len(study.get_trials(deepcopy=False))
    if trials_so_far:
        study.sampler = make_sampler(cfg.sampler, cfg.seed, trials_so_far)
    if study.user_attrs.get(Attr.CONFIG) != saved:  # new, or a target added on resuming: the record, then its copy
        study.set_user_attr(Attr.CONFIG, saved)
        write_config(cfg.run_dir, saved)
    fingerprint = saved.get("latency_target")
    describe_study(study, target_ms=cfg.target_ms, top_epochs=cfg.epochs,
                   target=target_name(fingerprint) if fingerprint else "the latency model's device")
    return study


def recover_interrupted(study: optuna.Study) -> int:
    """Trials left RUNNING by a killed driver or the time limit are closed as interrupted and queued
    to run again, carrying the rungs they finished (their checkpoint holds the training)."""
    n = 0
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        carried = {k: t.user_attrs[k] for k in RESUMABLE_ATTRS if k in t.user_attrs}
        # a queued trial (a preset) stopped before all its parameters were written keeps the ones it was queued with
        params = {**t.params, **t.system_attrs.get("fixed_params", {})}
        # queued again first: a kill between the two loses no trial
        study.enqueue_trial(params, user_attrs={Attr.REQUEUED_FROM: t.number, **carried}, skip_if_exists=False)
        optuna.trial.Trial(study, t._trial_id).set_user_attr(Attr.INTERRUPTED, True)
        study.tell(t.number, state=optuna.trial.TrialState.FAIL)
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
    duplicates: int = 0
    best_acc: float | None = None
    front_size: int = 0
    queued: int = 0  # rung trainings waiting for a free worker
    at_rung: list[int] = field(default_factory=list)
    training_s_left: float | None = None  # a guess of the time, on the clock, its trainings still take
    total: int = 0
    minutes_left: float | None = None  # of --minutes
    last: str = ""


@dataclass
class SearchRun:
    """A search's moving parts, set up once: the study, the screening of proposals, the rung ladder,
    the trainings in flight, and the run's records and live view."""

    cfg: SearchConfig
    study: optuna.Study
    screening: Screening
    ladder: Ladder
    dispatcher: Dispatcher
    on_progress: Callable[[SearchProgress], None] | None = None
    deadline: float | None = None  # time.monotonic() at which --minutes ends
    waiting: dict = field(default_factory=dict)  # arch_id -> duplicates waiting for its training
    held: list = field(default_factory=list)  # presets whose promotion waits for the other presets
    front: list = field(default_factory=list)
    proposals_in_a_row_seen: int = 0
    budget_said: bool = False
    worker_s: float = 0.0  # the pace of training: seconds on the workers for the rungs finished here,
    worker_epochs: float = 0.0  # and the epochs they trained
    set_aside: dict = field(default_factory=dict)  # checkpoints set aside as corrupt and known: name -> ctime

    def note_set_aside(self, arch_id: str) -> None:
        """The checkpoint of `arch_id` set aside as corrupt is known to the user (said, or there before)."""
        aside = self.dispatcher.checkpoints / f"{arch_id}.pt.corrupt"
        with contextlib.suppress(OSError):
            self.set_aside[aside.name] = aside.stat().st_ctime_ns

    def finished(self) -> set[str]:
        """Architectures whose trial is over: trained to their last rung, or failed."""
        return {t.user_attrs[Attr.ARCH_ID] for t in self.study.get_trials(deepcopy=False)
                if Attr.ARCH_ID in t.user_attrs and trial_state(t) in SETTLED_STATES}

    def in_training(self) -> set[str]:
        """Architectures whose trial is under way: training, or a preset held for the presets'
        decision. A proposal of one waits for its result."""
        return self.dispatcher.in_training() | {t.user_attrs[Attr.ARCH_ID] for t in self.held}

    def presets_in_play(self) -> bool:
        """Whether a preset is still to train, or training: until then the presets' promotions wait,
        so that they are decided over the presets' results together. Queued first, the presets
        would otherwise each be the first result of its latency band, which ASHA always promotes."""
        decided = self.finished() | {t.user_attrs[Attr.ARCH_ID] for t in self.held}
        return any(arch_id not in decided for arch_id in self.screening.preset_of)

    def counted(self) -> int:
        """Trials that count towards --trials: finished ones, duplicates and interrupted ones aside."""
        c = counts(self.study)
        return sum(v for k, v in c.items() if k not in UNCOUNTED_STATES)

    def seconds_left(self) -> float | None:
        """Of the run's time limit (`--minutes`), if it has one."""
        return None if self.deadline is None else max(0.0, self.deadline - time.monotonic())

    def time_up(self) -> bool:
        return self.seconds_left() == 0

    def train(self, trial: optuna.trial.Trial, rung: int) -> bool:
        """Start a rung's training, unless the time limit is up: the trial then stays running, to be
        queued again with the rungs it finished. Whether it started."""
        if self.time_up():
            return False
        self.dispatcher.submit(trial, rung)
        return True

    def budget_spent(self) -> bool:
        """Whether the trainings finished and under way reach --budget-epochs: the sampler proposes
        nothing more then, while queued trials (the presets, trainings re-queued after a kill) and
        the promotions earned still train."""
        if self.cfg.budget_epochs is None:
            return False
        if self.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,)):
            return False  # queued trials first
        return self.ladder.epochs_trained() + self.epochs_under_way() >= self.cfg.budget_epochs

    def epochs_under_way(self) -> float:
        """The epochs the trainings in flight or queued train, each its whole rung."""
        return sum(self.cfg.rungs.epochs_of(rung) for _, rung in self.dispatcher.pending.values())

    def timed(self, rung: int, res: dict) -> None:
        """Keep a finished rung's seconds on its worker and the epochs it trained, for the ETA."""
        if res.get("worker_s") and res.get("steps"):
            self.worker_s += res["worker_s"]
            self.worker_epochs += res["trained_steps"] / res["steps"] * self.cfg.rungs.budgets[rung]

    def training_s_left(self) -> float | None:
        """A guess at the time the trainings still owed take, at this search's pace (the seconds its
        workers took per epoch, each rung's overheads included, shared by the workers): the
        trainings in flight (those running counted half done) or queued, and the trials still to
        propose at the share of proposals trained so far (within --budget-epochs), each to the rungs
        it reaches on average (`expected_epochs`)."""
        if self.worker_epochs <= 0:
            return None
        rungs, pending = self.cfg.rungs, [rung for _, rung in self.dispatcher.pending.values()]
        half_done = sum(rungs.epochs_of(rung) for rung in pending[:self.cfg.workers]) / 2  # the queued: not begun
        c = counts(self.study)
        tried = c.get(TrialState.COMPLETE, 0) + c.get(TrialState.FAIL, 0)
        trained_share = tried / (tried + c.get(TrialState.INFEASIBLE, 0)) if tried else 1.0
        to_propose = max(self.cfg.trials - self.counted() - len(pending), 0)
        new = to_propose * trained_share * expected_epochs(rungs)
        if self.cfg.budget_epochs is not None:  # proposals stop there; what is under way goes on
            new = min(new, max(self.cfg.budget_epochs - self.ladder.epochs_trained() - self.epochs_under_way(), 0.0))
        owed = new + sum(expected_epochs(rungs, rung) for rung in pending) - half_done
        return owed * self.worker_s / self.worker_epochs / max(self.cfg.workers, 1)

    def report(self, last: str = "") -> None:
        self.front = write_records(self.study, self.cfg.run_dir, self.cfg.target_ms)
        if not self.on_progress:
            return
        c, in_flight = counts(self.study), len(self.dispatcher.pending)
        self.on_progress(SearchProgress(
            done=self.counted(), running=min(in_flight, self.cfg.workers),
            queued=max(in_flight - self.cfg.workers, 0), failed=c.get(TrialState.FAIL, 0),
            infeasible=c.get(TrialState.INFEASIBLE, 0), duplicates=c.get(TrialState.DUPLICATE, 0),
            best_acc=max((f["val_acc"] for f in self.front), default=None), front_size=len(self.front),
            at_rung=self.ladder.at_rung(), training_s_left=self.training_s_left(), total=self.cfg.trials, last=last,
            minutes_left=None if self.deadline is None else self.seconds_left() / 60))


def run_search(cfg: SearchConfig, on_progress: Callable[[SearchProgress], None] | None = None,
               inputs: SearchInputs | None = None, started: float | None = None) -> list[dict]:
    """Run (or resume) a search; returns the Pareto front of the top rung. Infeasible candidates are
    never trained; every feasible one trains the first rung, and the promoted ones continue. A
    search whose every training failed is an error naming the first failure (its records kept).
    `started`: the time.monotonic() the run began (before its calibration), which `cfg.minutes`
    counts from; default now."""
    started = time.monotonic() if started is None else started
    inputs = inputs or load_inputs(cfg)
    run = None
    try:
        with searching(cfg.run_dir):  # until the workers are cancelled too
            try:
                run = start_run(cfg, on_progress, inputs)
                run.deadline = None if cfg.minutes is None else started + cfg.minutes * 60
                if run.counted() < cfg.trials:
                    connect_workers(run, inputs.data)
                    search_until_done(run)
                else:
                    run.report(nothing_left_to_search(run))
                refuse_a_search_that_trained_nothing(cfg.run_dir)
            except KeyboardInterrupt:
                if run is not None:
                    requeue_on_interrupt(run)
                    run.dispatcher.abandon()
                raise
            except Exception:
                if run is not None:
                    run.dispatcher.cancel()
                raise
            finally:
                if run is not None:
                    with contextlib.suppress(Exception):  # never in place of the error that ended the search
                        warn_of_checkpoints_set_aside(run)
    except (KeyboardInterrupt, Exception) as e:
        problem = storage_problem(e)
        if problem is not None and not isinstance(e, StorageError):
            raise storage_error(cfg.run_dir, problem, where=one_line(e)) from None
        raise
    return run.front


def nothing_left_to_search(run: SearchRun) -> str:
    """What a run whose --trials are done already says, with the trainings it leaves queued."""
    queued = len(run.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,)))
    also = f"; {queued} interrupted training(s) stay queued for it" if queued else ""
    return (f"{run.counted()} trials done already, --trials {run.cfg.trials}: nothing left to search (a higher "
            f"--trials searches on{also})")


def requeue_on_interrupt(run: SearchRun) -> None:
    """Ctrl-C or SIGTERM: the trainings stopped are closed as interrupted and queued to go on from
    their checkpoints, as at the time limit, so that the records show nothing as running."""
    with contextlib.suppress(Exception):  # a write the interrupt cut short: the resume requeues them instead
        recover_interrupted(run.study)
        write_records(run.study, run.cfg.run_dir, run.cfg.target_ms)


def checkpoints_set_aside(folder: Path) -> dict[str, int]:
    """The checkpoints in `folder` a training set aside as unreadable, by file name, each with when
    it was (its ctime: a second one of the same architecture replaces the first)."""
    return {path.name: path.stat().st_ctime_ns for path in sorted(folder.glob("*.pt.corrupt"))}


def warn_of_checkpoints_set_aside(run: SearchRun) -> None:
    """Checkpoints a worker found unreadable and set aside in trainings whose result never came back
    to say so (stopped by the time limit or an interruption): each named with its trial."""
    for name, ctime in checkpoints_set_aside(run.dispatcher.checkpoints).items():
        if run.set_aside.get(name) == ctime:
            continue
        arch_id = name.removesuffix(".pt.corrupt")
        trials = [t.number for t in run.study.get_trials(deepcopy=False)  # the trained one, not a duplicate
                  if t.user_attrs.get(Attr.ARCH_ID) == arch_id and t.user_attrs.get(Attr.CACHED_FROM) is None]
        warnings.warn(f"trial {trials[-1] if trials else '?'}: checkpoint {arch_id}.pt was unreadable; moved to "
                      f"{name}, its training started over", stacklevel=2)
        run.set_aside[name] = ctime


def search_until_done(run: SearchRun) -> None:
    """Propose and settle trials until none is pending or the time limit is up."""
    while True:
        propose(run)
        if run.time_up():
            run.report(stop_at_time_limit(run))
            return
        if not run.dispatcher.pending:
            return
        result = run.dispatcher.next_result(timeout=run.seconds_left())
        if result is not None:
            run.report(settle(run, *result))


def start_run(cfg: SearchConfig, on_progress: Callable[[SearchProgress], None] | None,
              inputs: SearchInputs) -> SearchRun:
    """Check the target and open (or resume) the study; the Ray workers start later, only where
    trials are owed (`connect_workers`)."""
    check_target(cfg.target_ms, inputs.latencies)
    study = open_study(cfg, inputs.model, inputs.others)
    if not study.trials:
        for name in cfg.presets:
            study.enqueue_trial(inputs.preset_params[name])
    recover_interrupted(study)
    train_cfg = rung_train_config(cfg.rungs, cfg.gpus_per_trial, batch_size=cfg.batch_size, lr=cfg.lr,
                                  subset=cfg.subset, resolution=cfg.resolution, seed=cfg.seed, threads=1)
    band_edges = search_band_edges(float(np.min(inputs.latencies)), cfg.target_ms)
    preset_of = {sample(FixedSuggester(inputs.preset_params[name]), inputs.space, *inputs.shape).arch_id: name
                 for name in cfg.presets}
    screening = Screening(inputs.space, inputs.shape, inputs.model, cfg.target_ms, preset_of, inputs.others)
    return SearchRun(cfg, study, screening,
                     Ladder(study, cfg.rungs, cfg.promotion, band_edges, cfg.target_ms),
                     Dispatcher(cfg.workers, None, train_cfg, cfg.rungs, cfg.run_dir / "checkpoints",
                                cfg.gpus_per_trial),
                     on_progress, set_aside=checkpoints_set_aside(cfg.run_dir / "checkpoints"))


def connect_workers(run: SearchRun, data: Dataset) -> None:
    """Start (or join) Ray and hand it the training data once, for every worker to read."""
    run.report("starting Ray workers")
    ray = start_ray(run.cfg)
    gpus = ray.cluster_resources().get("GPU", 0)
    if run.cfg.gpus_per_trial > gpus:
        raise SearchError(f"--gpus-per-trial {run.cfg.gpus_per_trial:g} asks for more GPUs than Ray has "
                          f"({gpus:g}); no trial could ever start")
    mean, std = data.channel_stats()
    run.dispatcher.data_ref = ray.put((*data.holdout(seed=run.cfg.seed), mean, std))


def keep_ray_local() -> None:
    """Make the local Ray this process starts listen on loopback only. Ray treats a node whose
    address is loopback as local-only (its gRPC servers bind 127.0.0.1); on Linux it takes the
    machine's outward address unless clusters are switched off, which its
    RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 does, read when Ray is first imported. Its token
    authentication, Ray's default for a local cluster, is asked for by name, since Ray otherwise
    prints a notice about that default at every start. Both are read when Ray is first imported:
    where the caller imported it already, they are left as Ray read them (a token mode set after
    would reach the processes it starts but not itself, and its GCS would refuse it)."""
    if "ray" in sys.modules:
        return
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "token")


def start_ray(cfg: SearchConfig):
    """Join `--ray-address`, or start a local Ray whose every service listens on loopback only
    (`keep_ray_local`), with no dashboard."""
    if not cfg.ray_address:
        keep_ray_local()
    import ray

    if ray.is_initialized():
        refuse_another_cluster(ray.get_runtime_context().gcs_address, cfg.ray_address)
    else:
        if cfg.ray_address:
            check_cluster_answers(cfg.ray_address)
        plugins = os.environ.get(PLUGINS_VARIABLE)  # a cluster's workers do not inherit the driver's environment
        with callers_sigterm_kept():
            ray.init(address=cfg.ray_address, num_cpus=None if cfg.ray_address else cfg.workers,
                     include_dashboard=False, log_to_driver=False, configure_logging=False,
                     runtime_env={"env_vars": {PLUGINS_VARIABLE: plugins}} if plugins else None)
    node_ip = ray.util.get_node_ip_address()
    if not cfg.ray_address and node_ip not in ("127.0.0.1", "::1"):
        warnings.warn(f"the local Ray node took address {node_ip}, so its services listen beyond loopback "
                      f"(Ray was imported before etnas could keep it local)", stacklevel=2)
    return ray


def check_cluster_answers(address: str, timeout_s: float = 5.0) -> None:
    """A HOST:PORT address nothing listens at is one line at once: Ray's own connect retries for
    minutes, deaf to Ctrl-C. Other forms (auto, ray://...) are left to Ray."""
    host, _, port = address.rpartition(":")
    if not host or "/" in host or not port.isdigit():
        return
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as e:
        raise SearchError(f"no Ray cluster answers at --ray-address {address} ({e.strerror or 'timed out'}); "
                          f"start one there with `ray start --head`, or leave the option out to train on this "
                          f"machine") from None


@contextlib.contextmanager
def callers_sigterm_kept():
    """Ray's init takes over SIGTERM, and its core worker then aborts the process with a stack dump;
    the caller's handling (the command line stops a search on it as on Ctrl-C) is put back."""
    main = threading.current_thread() is threading.main_thread()
    before = signal.getsignal(signal.SIGTERM) if main else None
    try:
        yield
    finally:
        if main and before is not None:
            signal.signal(signal.SIGTERM, before)


def refuse_another_cluster(joined: str, asked: str | None) -> None:
    """A process that has joined a Ray already searches on it; SearchError if `--ray-address` names
    another (`auto`, or no address, takes the one joined)."""
    if not asked or asked == "auto" or asked.startswith("ray://"):
        return
    host, _, port = asked.rpartition(":")
    try:
        same = f"{socket.gethostbyname(host)}:{port}" == joined or asked == joined
    except OSError:
        same = False
    if not same:
        raise SearchError(f"this process has joined the Ray at {joined} already, so --ray-address {asked} cannot "
                          f"be joined; call ray.shutdown() first, or leave the address out to search on it")


def stop_at_time_limit(run: SearchRun) -> str:
    """`--minutes` is over: the results already in are kept, the trainings in flight stop, and their
    trials (with any promoted now) are queued again to go on from their checkpoints when the run
    is resumed."""
    while (result := run.dispatcher.next_result(timeout=0)) is not None:
        run.report(settle(run, *result))
    in_flight = len(run.dispatcher.pending)
    run.dispatcher.cancel()
    run.waiting.clear()  # their duplicates are queued again with them
    queued = recover_interrupted(run.study)
    return (f"the time limit of {run.cfg.minutes:g} min is reached after {run.counted()} trials: "
            f"{in_flight} training(s) in flight stopped; {queued} trial(s) queued to go on from their "
            f"checkpoints when the run resumes")


def propose(run: SearchRun) -> None:
    """Ask Optuna for candidates while a worker is free, the user's count is not reached and time
    is left; a duplicate costs neither a trial from the count nor a training."""
    while run.dispatcher.free > 0 and run.counted() + len(run.dispatcher.pending) < run.cfg.trials:
        if run.time_up():
            return
        if run.budget_spent():
            if not run.budget_said:
                run.budget_said = True
                run.report(f"the training budget of {run.cfg.budget_epochs:g} epochs is reached: no new "
                           f"candidates after {run.counted()} trials")
            return
        if run.proposals_in_a_row_seen == MAX_REPEATS:
            run.proposals_in_a_row_seen += 1  # said once
            run.report(f"the sampler proposed {MAX_REPEATS} known architectures in a row: the space looks "
                       f"exhausted; no new trials after {run.counted()}")
        if run.proposals_in_a_row_seen > MAX_REPEATS:
            return
        trial = run.study.ask()
        spec = run.screening.describe(trial)
        verdict = run.screening.verdict(trial, spec, run.finished(), run.in_training())
        run.proposals_in_a_row_seen = run.proposals_in_a_row_seen + 1 if verdict in (DUPLICATE, WAIT) else 0
        if verdict == INFEASIBLE:
            trial.set_user_attr(Attr.INFEASIBLE, True)
            run.study.tell(trial, [0.0, trial.user_attrs[Attr.PRED_MS]])  # constraint-violating: behind every feasible
            run.report(f"trial {trial.number} infeasible: predicted {trial.user_attrs[Attr.PRED_MS]:.2f} ms > "
                       f"{run.cfg.target_ms} ms")
        elif verdict == DUPLICATE:
            tell_duplicate(run, trial, original_of(run.study, spec.arch_id))
        elif verdict == WAIT:
            run.waiting.setdefault(spec.arch_id, []).append(trial)
        elif verdict == RESUME:
            run.ladder.note(spec.arch_id, trial.user_attrs[Attr.PRED_MS], trial.user_attrs[Attr.RUNG_ACCS])
            run.report(conclude(run, trial))
        else:
            started = run.train(trial, rung=0)
            run.report(f"trial {trial.number} {'training' if started else 'waits for a resume (time is up)'} "
                       f"{spec.short()[:60]}")


def settle(run: SearchRun, trial: optuna.trial.Trial, rung: int, res: dict) -> str:
    """A training reached its rung: fail it, or record the rung and promote or conclude."""
    for note in res.get("notes", ()):  # what the worker would have warned of
        warnings.warn(f"trial {trial.number}: {note}", stacklevel=2)
        run.note_set_aside(trial.user_attrs[Attr.ARCH_ID])
    if "storage" in res:  # the trial stays running: the next run re-queues it from its checkpoint
        raise storage_error(run.cfg.run_dir, res["storage"], where=f"a worker writing {res['path']}")
    if "lost" in res:
        return relaunch(run, trial, rung, res["lost"])
    if "failure" in res:
        trial.set_user_attr(Attr.FAILURE, res["failure"])
        run.study.tell(trial, state=optuna.trial.TrialState.FAIL)
        run.dispatcher.checkpoint(trial.user_attrs[Attr.ARCH_ID]).unlink(missing_ok=True)
        share_fate(run, trial)
        failed = f"trial {trial.number} failed at rung {rung}: {res['failure']}"
        return "; ".join(filter(None, (failed, release_presets(run))))
    run.ladder.record(trial, rung, res)
    run.timed(rung, res)
    return conclude(run, trial)


def relaunch(run: SearchRun, trial: optuna.trial.Trial, rung: int, why: str) -> str:
    """A training whose worker or node was lost starts again on another worker, from the checkpoint
    its last finished epoch left; a candidate that keeps killing its worker fails instead."""
    relaunches = trial.user_attrs.get(Attr.RELAUNCHES, 0)
    if relaunches >= MAX_RELAUNCHES:
        return settle(run, trial, rung, {"failure": f"its worker was lost {relaunches + 1} times, last: {why}"})
    trial.set_user_attr(Attr.RELAUNCHES, relaunches + 1)
    run.train(trial, rung)
    said = f"trial {trial.number} lost its worker at rung {rung} ({why}): started again from its checkpoint"
    warnings.warn(said, stacklevel=2)  # kept in the log, where the live view's last line scrolls away
    return said


def conclude(run: SearchRun, trial: optuna.trial.Trial) -> str:
    """Decide the trial's next rung, or hold it while it is a preset and other presets still train
    (`SearchRun.presets_in_play`); the last preset to arrive releases them all."""
    accs = trial.user_attrs[Attr.RUNG_ACCS]
    if promoted_before_a_kill(trial) or Attr.PRESET not in trial.user_attrs or len(accs) == run.cfg.rungs.count:
        return decide(run, trial)
    run.held.append(trial)
    return release_presets(run) or (f"trial {trial.number} ({trial.user_attrs[Attr.PRESET]}): {accs[-1]:.3f} at "
                                    f"rung {len(accs) - 1}, its promotion decided with the other presets'")


def promoted_before_a_kill(trial: optuna.trial.Trial) -> bool:
    """Whether the trial was sent on to the rung above its last before the run stopped: it trains it."""
    return trial.user_attrs.get(Attr.PROMOTED_TO) == len(trial.user_attrs[Attr.RUNG_ACCS])


def release_presets(run: SearchRun) -> str:
    """Decide the held presets once no other preset trains or waits to; what was decided, or ""."""
    if not run.held or run.presets_in_play():
        return ""
    held, run.held = run.held, []
    return "; ".join(decide(run, t) for t in held)


def decide(run: SearchRun, trial: optuna.trial.Trial) -> str:
    """Continue the trial at the next rung if it earns it; otherwise tell Optuna its accuracy at its
    highest rung (at the top rung, its `val_acc`, comparable across trials)."""
    arch_id, accs = trial.user_attrs[Attr.ARCH_ID], trial.user_attrs[Attr.RUNG_ACCS]
    if promoted_before_a_kill(trial) or run.ladder.goes_on(arch_id):
        trial.set_user_attr(Attr.PROMOTED_TO, len(accs))
        run.train(trial, rung=len(accs))
        return f"trial {trial.number} promoted to rung {len(accs)} ({accs[-1]:.3f} at rung {len(accs) - 1})"
    if len(accs) == run.cfg.rungs.count:
        trial.set_user_attr(Attr.VAL_ACC, accs[-1])
    run.study.tell(trial, [accs[-1], trial.user_attrs[Attr.PRED_MS]])
    run.dispatcher.checkpoint(arch_id).unlink(missing_ok=True)
    share_fate(run, trial)
    return f"trial {trial.number}: {accs[-1]:.3f} at rung {len(accs) - 1}, {trial.user_attrs[Attr.PRED_MS]:.2f} ms"


def share_fate(run: SearchRun, trial: optuna.trial.Trial) -> None:
    """Duplicates that waited for this trial's training get its result (or its failure)."""
    original = run.study.get_trials(deepcopy=False)[trial.number]
    for dup in run.waiting.pop(trial.user_attrs[Attr.ARCH_ID], []):
        tell_duplicate(run, dup, original)


def original_of(study: optuna.Study, arch_id: str) -> optuna.trial.FrozenTrial:
    return next(t for t in study.get_trials(deepcopy=False)
                if t.user_attrs.get(Attr.ARCH_ID) == arch_id and t.user_attrs.get(Attr.CACHED_FROM) is None
                and trial_state(t) in SETTLED_STATES)


def tell_duplicate(run: SearchRun, trial: optuna.trial.Trial, original: optuna.trial.FrozenTrial) -> None:
    trial.set_user_attr(Attr.CACHED_FROM, original.number)
    for k in (Attr.RUNG_ACCS, Attr.VAL_ACC):
        if k in original.user_attrs:
            trial.set_user_attr(k, original.user_attrs[k])
    if original.state == optuna.trial.TrialState.COMPLETE:
        run.study.tell(trial, original.values)
    else:
        run.study.tell(trial, state=original.state)
    run.report(f"trial {trial.number} duplicates trial {original.number}")

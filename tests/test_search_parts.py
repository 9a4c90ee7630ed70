"""The search's parts on their own: screening a proposal, the rung ladder's promotion decisions,
and the dispatcher's bookkeeping of trainings in flight (Ray replaced by a recorder)."""
import dataclasses

import optuna
import pytest

from latency_models import LatencyModel
from latency_models.features import total_flops
from nas.dispatch import Dispatcher, rung_train_config
from nas.ladder import Ladder
from nas.rungs import Rungs
from nas.screening import DUPLICATE, INFEASIBLE, RESUME, TRAIN, WAIT, Screening
from search_space import SearchSpace, presets
from search_space.presets import PRESETS
from search_space.sampling import params_of

from .helpers import synthetic_model, synthetic_ms

SHAPE = (8, 1, 10)
RUNGS = Rungs(0.5, 6.5, 3)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return LatencyModel.load(synthetic_model(tmp_path_factory.mktemp("lat") / "m.model"))


@pytest.fixture
def study():
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study(directions=["maximize", "minimize"], sampler=optuna.samplers.RandomSampler(seed=0))


def ask_preset(study, name="deit-tiny"):
    spec = presets(*SHAPE)[name]
    space = SearchSpace().including(params_of(spec, SearchSpace()))
    study.enqueue_trial(params_of(spec, space))
    return study.ask(), space


def test_screening_records_the_candidate_and_sorts_it(study, model):
    trial, space = ask_preset(study)
    screening = Screening(space, SHAPE, model, target_ms=1e-3, preset_of={})
    spec = screening.describe(trial)
    attrs = trial.user_attrs
    assert attrs["arch_id"] == spec.arch_id and attrs["params"] > 0
    # the latency model's prediction: it was fitted to synthetic_ms, which it recovers closely
    assert attrs["pred_ms"] == pytest.approx(synthetic_ms(spec), rel=0.05) and attrs["flops"] == total_flops(spec)
    assert screening.verdict(trial, spec, set(), set()) == INFEASIBLE
    screening.target_ms = 1e3
    assert screening.verdict(trial, spec, {spec.arch_id}, set()) == DUPLICATE
    assert screening.verdict(trial, spec, set(), {spec.arch_id}) == WAIT
    assert screening.verdict(trial, spec, set(), set()) == TRAIN
    trial.set_user_attr("rung_accs", [0.3])  # re-queued after a kill, one rung done
    assert screening.verdict(trial, spec, set(), set()) == RESUME


def test_presets_are_trained_even_over_target(study, model):
    trial, space = ask_preset(study)
    spec = Screening(space, SHAPE, model, 1e-3, {}).describe(trial)
    assert Screening(space, SHAPE, model, 1e-3, {spec.arch_id: "deit-tiny"}).verdict(trial, spec, set(), set()) == TRAIN


def test_ladder_promotes_the_best_so_far_and_stops_at_the_top(study):
    ladder = Ladder(study, RUNGS, "accuracy", band_edges=[])
    ladder.note("a", 1.0, [0.5])
    assert ladder.goes_on("a")  # alone at rung 0: the best so far goes on
    ladder.note("b", 1.0, [0.2])
    ladder.note("c", 1.0, [0.3])
    assert not ladder.goes_on("b") and ladder.goes_on("a")  # 1 of 3 promoted
    ladder.note("a", 1.0, [0.5, 0.6, 0.7])
    assert not ladder.goes_on("a") and ladder.at_rung() == [3, 1, 1]
    assert ladder.epochs_trained() == pytest.approx(RUNGS.budgets[2] + 2 * RUNGS.budgets[0])


def test_ladder_promotes_within_the_runs_latency_bands(study):
    ladder = Ladder(study, RUNGS, "bands", band_edges=[2.0])  # the run's edges: fast below 2 ms, slow above
    for arch, ms, acc in (("a", 1.0, 0.5), ("b", 1.5, 0.6), ("c", 5.0, 0.2)):
        ladder.note(arch, ms, [acc])
    assert not ladder.goes_on("c")  # alone in the slow band, but b, faster, out-scores it by more than the rung's spread
    assert ladder.goes_on("b") and not ladder.goes_on("a")  # the fast band promotes one of its two
    ladder.note("d", 4.0, [0.61])
    assert ladder.goes_on("d") and not ladder.goes_on("c")  # the slow band's best, and no faster result out-scores it


def test_a_result_over_the_target_neither_goes_on_nor_takes_a_promotion(study):
    ladder = Ladder(study, RUNGS, "accuracy", band_edges=[], target_ms=2.0)
    ladder.note("slow-preset", 3.0, [0.9])  # a preset over the target, the best of its rung
    ladder.note("a", 1.0, [0.5])
    ladder.note("b", 1.5, [0.4])
    assert not ladder.goes_on("slow-preset") and ladder.goes_on("a") and not ladder.goes_on("b")


def test_ladder_rebuilds_from_the_study_ignoring_duplicates(study):
    for arch, accs, cached in (("a", [0.5, 0.6], None), ("a", [0.5, 0.6], 0), ("b", [0.1], None)):
        t = study.ask()
        for k, v in {"arch_id": arch, "pred_ms": 1.0, "rung_accs": accs, "cached_from": cached}.items():
            t.set_user_attr(k, v)
        study.tell(t, [accs[-1], 1.0])
    assert Ladder(study, RUNGS, "pareto", []).at_rung() == [2, 1, 0]


def test_ladder_records_a_rung_on_the_trial(study):
    ladder = Ladder(study, RUNGS, "pareto", [])
    trial = study.ask()
    trial.set_user_attr("arch_id", "a")
    trial.set_user_attr("pred_ms", 2.0)
    res = {"val_acc": 0.4, "trained_steps": 10, "start_step": 0, "steps": 10, "history": [], "train_s": 1.0,
           "node": "10.0.0.1"}
    ladder.record(trial, 0, res)
    ladder.record(trial, 1, {**res, "val_acc": 0.5, "trained_steps": 22, "start_step": 18, "steps": 40,
                             "node": "10.0.0.2"})
    assert trial.user_attrs["rung_accs"] == [0.4, 0.5] and trial.user_attrs["trained_steps"] == [10, 22]
    assert trial.user_attrs["started_at"] == [0, 18] and trial.user_attrs["trained_on"] == ["10.0.0.1", "10.0.0.2"]
    assert ladder.accs["a"] == [0.4, 0.5]


def test_dispatcher_continues_each_architecture_from_its_checkpoint(tmp_path, study, monkeypatch):
    calls = []

    class Remote:
        @staticmethod
        def remote(*args):
            calls.append(args)
            return f"ref{len(calls)}"

        @staticmethod
        def options(**resources):
            calls.append(resources)
            return Remote

    monkeypatch.setattr("nas.workers.remote_evaluate", Remote)
    cfg = rung_train_config(RUNGS, batch_size=32, lr=1e-3)
    assert (cfg.epochs, cfg.cycle_epochs, cfg.cycle_mul) == (6.5, 0.5, 3)
    assert rung_train_config(Rungs(2, 2)).cycle_epochs is None  # one rung: the plain schedule
    dispatcher = Dispatcher(2, "data", cfg, RUNGS, tmp_path / "ckpt")
    trial = study.ask()
    trial.set_user_attr("arch_id", "abc")
    trial.set_user_attr("spec", "{}")
    dispatcher.submit(trial, rung=1)
    assert dispatcher.free == 1 and dispatcher.in_training() == {"abc"}
    spec_json, data, train_cfg, checkpoint, until = calls[0]
    assert data == ["data"]  # wrapped, so Ray hands the worker the ref to fetch once
    assert checkpoint == str(tmp_path / "ckpt" / "abc.pt") and until == pytest.approx(2.0)
    assert train_cfg.device == "cpu"

    gpu = Dispatcher(8, "data", rung_train_config(RUNGS, gpus_per_trial=0.25), RUNGS, tmp_path, gpus_per_trial=0.25)
    gpu.submit(trial, rung=0)
    assert calls[1] == {"num_gpus": 0.25} and calls[2][2].device == "cuda"  # four proxies share a GPU


def test_a_worker_fetches_the_data_once_and_keeps_it_on_its_device(monkeypatch):
    import torch

    import nas.workers as workers

    fetched = []

    class Ref:
        def hex(self):
            return "abc"

    def get(ref):
        fetched.append(ref)
        return torch.zeros(4, 1, 8, 8, dtype=torch.uint8), torch.zeros(4), torch.zeros(2, 1, 8, 8), torch.zeros(2), [0.5], [0.2]

    monkeypatch.setattr(workers.ray, "get", get)
    monkeypatch.setattr(workers, "_ON_DEVICE", {})
    first = workers.data_on_device([Ref()], "cpu")
    again = workers.data_on_device([Ref()], "cpu")
    assert len(fetched) == 1 and first[0] is again[0] and first[0].device.type == "cpu"


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_gpus_per_trial_without_a_gpu_is_one_line(tmp_path):
    from .helpers import run_cli

    res = run_cli("run", "--name", "g", "--target-ms", "1", "--gpus-per-trial", "0.5", "--runs-dir", tmp_path,
                  check=False, own_process=False)
    assert res.returncode == 2 and "--gpus-per-trial asked for, but torch sees no CUDA device" in res.stderr
    assert "Traceback" not in res.stderr and not (tmp_path / "g").exists()


def test_a_lost_worker_is_a_result_not_a_crash(tmp_path, study, monkeypatch):
    import ray

    def lost(ref):
        raise ray.exceptions.WorkerCrashedError()

    monkeypatch.setattr(ray, "wait", lambda refs, num_returns, timeout: (refs[:1], refs[1:]))
    monkeypatch.setattr(ray, "get", lost)
    dispatcher = Dispatcher(1, "data", rung_train_config(RUNGS), RUNGS, tmp_path)
    trial = study.ask()
    dispatcher.pending["ref"] = (trial, 2)
    got, rung, res = dispatcher.next_result()
    assert got is trial and rung == 2 and res["lost"].startswith("WorkerCrashedError: ")
    assert not dispatcher.pending


def test_waiting_past_the_time_limit_returns_nothing_and_keeps_the_training_pending(tmp_path, study, monkeypatch):
    import ray

    waited = []
    monkeypatch.setattr(ray, "wait", lambda refs, num_returns, timeout: waited.append(timeout) or ([], refs))
    dispatcher = Dispatcher(1, "data", rung_train_config(RUNGS), RUNGS, tmp_path)
    dispatcher.pending["ref"] = (study.ask(), 0)
    assert dispatcher.next_result(timeout=1.5) is None and waited == [1.5]
    assert list(dispatcher.pending) == ["ref"]  # for the run to stop and queue again


def test_a_queued_trial_stopped_before_its_parameters_were_written_is_queued_again_whole(study):
    from nas.search import recover_interrupted

    study.enqueue_trial({"depth": 3, "width": 64})
    stopped = study.ask()  # the preset popped from the queue; the driver died before it suggested anything
    assert stopped.params == {}
    assert recover_interrupted(study) == 1
    (queued,) = [t for t in study.trials if t.state == optuna.trial.TrialState.WAITING]
    assert queued.system_attrs["fixed_params"] == {"depth": 3, "width": 64}
    assert queued.user_attrs["requeued_from"] == stopped.number


def test_a_run_from_before_presets_resumes_as_all_of_them_and_one_missing_older_settings_does_not():
    from nas.config import SearchConfig, changed_settings

    cfg = SearchConfig(name="old", target_ms=2.0, latency_model="m")
    saved = {k: v for k, v in cfg.identity().items() if k != "presets"}  # config.json of a run older than --presets
    assert changed_settings(saved, cfg) == {}
    fewer = SearchConfig(name="old", target_ms=2.0, latency_model="m", presets=("deit-tiny",))
    assert changed_settings(saved, fewer) == {"presets": (list(cfg.presets), ["deit-tiny"])}
    assert changed_settings({**saved, "presets": ["deit-tiny"]}, fewer) == {}  # as config.json stores it
    before_rungs = {k: v for k, v in saved.items() if k not in ("base_epochs", "eta", "promotion")}
    assert set(changed_settings(before_rungs, cfg)) == {"base_epochs", "eta", "promotion"}


def test_a_run_whose_proxies_were_read_another_way_refuses_to_resume_and_says_why():
    from nas import SearchError
    from nas.config import SearchConfig, refuse_other_settings

    cfg = SearchConfig(name="old", target_ms=2.0, latency_model="m")
    refuse_other_settings(cfg, cfg.identity())  # this version's own run resumes
    before_the_reestimate = {k: v for k, v in cfg.identity().items() if k != "proxy_evaluation"}
    with pytest.raises(SearchError, match="proxies read with BatchNorm running averages where this version reads "
                                          "them with BatchNorm statistics re-estimated.*choose a new --name"):
        refuse_other_settings(cfg, before_the_reestimate)


def test_presets_are_one_spelling_whichever_way_they_are_named():
    from nas import SearchError
    from nas.config import SearchConfig

    def presets(chosen):
        return SearchConfig(name="x", target_ms=1.0, latency_model="m", presets=chosen).presets

    assert presets("slab-deit, deit-tiny") == presets(["deit-tiny", "slab-deit", "deit-tiny"]) == ("deit-tiny",
                                                                                                  "slab-deit")
    assert presets("all") == tuple(PRESETS) and presets("none") == presets([]) == ()
    with pytest.raises(SearchError, match="unknown preset 'vit'; use all, none"):
        presets(["deit-tiny", "vit"])
    with pytest.raises(SearchError, match="--trials: 2 is below the minimum, 3"):
        SearchConfig(name="x", target_ms=1.0, latency_model="m", trials=2, presets="deit-tiny,slab-deit")


class OfflineDispatcher:
    """Trainings in flight without Ray: the `ready` results come back at once, the rest stay pending."""

    def __init__(self, tmp_path, ready=()):
        self.ready, self.pending, self.started, self.stopped = list(ready), {}, [], []
        self.checkpoints, self.workers = tmp_path, 2

    @property
    def free(self):
        return self.workers - len(self.pending)

    def checkpoint(self, arch_id):
        return self.checkpoints / f"{arch_id}.pt"

    def submit(self, trial, rung):
        self.started.append((trial.number, rung))

    def in_training(self):
        return {trial.user_attrs["arch_id"] for trial, _ in self.pending.values()}

    def next_result(self, timeout=None):
        if not self.ready:
            return None
        result = self.ready.pop(0)
        del self.pending[result[0].number]
        return result

    def cancel(self):
        self.stopped = sorted(self.pending)
        self.pending.clear()


def test_at_the_time_limit_results_in_are_kept_and_trainings_in_flight_are_queued_again(tmp_path, study):
    import time

    from nas.config import SearchConfig
    from nas.search import SearchRun, propose, stop_at_time_limit

    done, in_flight = study.ask(), study.ask()
    for trial, arch_id in ((done, "done"), (in_flight, "flying")):
        trial.set_user_attr("arch_id", arch_id)
        trial.set_user_attr("pred_ms", 0.5)
    rung0 = {"val_acc": 0.6, "trained_steps": 10, "start_step": 0, "node": "n", "steps": 100, "history": [],
             "train_s": 1.0}
    dispatcher = OfflineDispatcher(tmp_path, ready=[(done, 0, rung0)])
    dispatcher.pending = {done.number: (done, 0), in_flight.number: (in_flight, 0)}
    cfg = SearchConfig(name="r", target_ms=1.0, latency_model="", runs_dir=str(tmp_path), minutes=1, trials=30)
    (tmp_path / "r").mkdir()
    run = SearchRun(cfg, study, None, Ladder(study, RUNGS, "bands", []), dispatcher,
                    deadline=time.monotonic() - 1)
    propose(run)  # a free worker, trials left, but no time: nothing is asked
    assert len(study.trials) == 2
    assert run.train(in_flight, 1) is False and dispatcher.started == []  # a proposal the limit overtook: not started
    said = stop_at_time_limit(run)
    assert "1 training(s) in flight stopped; 2 trial(s) queued" in said
    assert dispatcher.started == [] and dispatcher.stopped == [in_flight.number]  # the promotion earned waits too
    queued = {t.user_attrs["requeued_from"]: t for t in study.trials if t.state == optuna.trial.TrialState.WAITING}
    assert sorted(queued) == [done.number, in_flight.number]
    assert queued[done.number].user_attrs["rung_accs"] == [0.6]  # its finished rung is kept
    assert queued[done.number].user_attrs["promoted_to"] == 1  # and the promotion it earned
    assert "rung_accs" not in queued[in_flight.number].user_attrs


def test_the_training_time_left_counts_the_rungs_each_trial_still_owes_at_the_searchs_pace(tmp_path, study):
    from nas.config import SearchConfig
    from nas.search import SearchRun

    cfg = SearchConfig(name="r", target_ms=1.0, latency_model="", runs_dir=str(tmp_path), trials=10, workers=2,
                       epochs=6.5, base_epochs=0.5, eta=3)  # rungs of 0.5, 1.5 and 4.5 epochs more
    dispatcher = OfflineDispatcher(tmp_path)
    run = SearchRun(cfg, study, None, Ladder(study, cfg.rungs, "bands", []), dispatcher)
    assert run.training_s_left() is None  # no rung finished: no pace yet
    trained, infeasible, in_flight = study.ask(), study.ask(), study.ask()
    for key, value in (("arch_id", "a"), ("pred_ms", 0.4), ("rung_accs", [0.5])):
        trained.set_user_attr(key, value)
    study.tell(trained, [0.5, 0.4])
    run.ladder.note("a", 0.4, [0.5])
    run.timed(0, {"worker_s": 4.0, "trained_steps": 13, "steps": 13})  # rung 0: 0.5 epochs (26 steps each) in 4 s
    infeasible.set_user_attr("infeasible", True)
    study.tell(infeasible, [0.0, 9.0])
    dispatcher.pending = {in_flight.number: (in_flight, 1)}
    # 8 s an epoch on a worker, 4 s on the clock with 2 workers. Owed: 7 trials to propose, half of them trained
    # (1 of 2 so far), 0.5 + 1.5/3 + 4.5/9 epochs each on average, and the one in flight the rest of rung 1
    # (half done) and a third of rung 2
    assert run.training_s_left() == pytest.approx((7 * 0.5 * 1.5 + 0.75 + 4.5 / 3) * 4.0)
    run.cfg = dataclasses.replace(cfg, budget_epochs=3.0)  # 0.5 trained, 1.5 under way: 1 epoch left to propose
    assert run.training_s_left() == pytest.approx((1.0 + 0.75 + 4.5 / 3) * 4.0)
    run.cfg = dataclasses.replace(cfg, budget_epochs=1.0)  # spent: what is under way still trains on
    assert run.training_s_left() == pytest.approx((0.75 + 4.5 / 3) * 4.0)
    queued = study.ask()
    dispatcher.pending[queued.number] = (queued, 2)  # a promotion waiting for the one worker: not begun
    run.cfg = dataclasses.replace(cfg, workers=1)
    owed = (7 - 1) * 0.5 * 1.5 + 0.75 + 4.5 / 3 + 4.5  # one proposal fewer; the queued rung 2 owed whole
    assert run.training_s_left() == pytest.approx(owed * 8.0)  # one worker: 8 s an epoch on the clock
    run.timed(1, {"worker_s": 6.0, "trained_steps": 13, "steps": 52})  # a third of rung 1 (resumed): 0.5 epochs
    assert run.training_s_left() == pytest.approx(owed * 10.0)  # 10 s for 1 epoch


def test_a_run_whose_ids_an_earlier_etnas_gave_otherwise_is_not_resumed(study):
    import hashlib

    from nas import SearchError
    from nas.search import refuse_other_ids
    from search_space import ArchSpec, StageSpec

    spec = ArchSpec((StageSpec(width=32, depth=1, mlp_ratio=4.0),), img_size=8, in_chans=1)
    for spec_json in (spec.to_json(), spec.to_json().replace('"mlp_ratio":4.0', '"mlp_ratio":4')):
        trial = study.ask()
        trial.set_user_attr("spec", spec_json)
        trial.set_user_attr("arch_id", hashlib.sha1(spec_json.encode()).hexdigest()[:12])  # as it was named then
        if spec_json == spec.to_json():
            refuse_other_ids(study, "r")  # ids as they are now: resumed
    with pytest.raises(SearchError, match="run r was searched by an earlier etnas, which named some architectures by "
                                          "other ids"):
        refuse_other_ids(study, "r")


@pytest.mark.parametrize("setting, said", [
    ({"promotion": "best"}, "promotion: 'best'; choose one of pareto, bands, accuracy"),
    ({"sampler": "cmaes"}, "sampler: 'cmaes'; choose one of"),
    ({"eta": 1}, r"eta: 1 is not an integer in \[2, inf\)"),
    ({"workers": 0}, r"workers: 0 is not an integer in \[1, inf\)"),
    ({"minutes": 0}, r"minutes: 0 is not a number in \(0, 100000\]"),
    ({"budget_epochs": -1}, "budget_epochs: -1 is not a number"),
    ({"subset": 0}, r"subset: 0 is not a number in \(0, 1\]"),
    ({"lr": float("inf")}, "lr: inf is not a number"),
])
def test_the_python_api_checks_a_runs_settings_before_it_writes_anything(tmp_path, setting, said):
    """As the command line's options do: a run that started with a setting no search can use could
    never be resumed (its settings would differ) nor finished."""
    import etnas
    from nas import SearchError

    with pytest.raises(SearchError, match=said):
        etnas.search("digits", 1.0, name="x", runs_dir=tmp_path, latency_model="none.model", **setting)
    assert list(tmp_path.iterdir()) == []


def preset_run(tmp_path, study, names=("deit-tiny", "slab-deit")):
    """A run whose presets `names` were asked and are training at rung 0 (nothing else in the study)."""
    from types import SimpleNamespace

    from nas.config import SearchConfig
    from nas.search import SearchRun

    trials = {}
    for name in names:
        trial = study.ask()
        for key, value in (("arch_id", name), ("pred_ms", 0.5), ("preset", name)):
            trial.set_user_attr(key, value)
        trials[name] = trial
    cfg = SearchConfig(name="r", target_ms=1.0, latency_model="", runs_dir=str(tmp_path), trials=30)
    (tmp_path / "r").mkdir()
    run = SearchRun(cfg, study, SimpleNamespace(preset_of={n: n for n in names}),
                    Ladder(study, RUNGS, "bands", []), OfflineDispatcher(tmp_path))
    return run, trials


def rung_result(val_acc):
    return {"val_acc": val_acc, "trained_steps": 10, "start_step": 0, "node": "n", "steps": 100, "history": [],
            "train_s": 1.0}


def test_presets_are_promoted_together_not_first_come_first_promoted(tmp_path, study):
    from nas.search import settle

    run, presets = preset_run(tmp_path, study)
    said = settle(run, presets["deit-tiny"], 0, rung_result(0.30))
    assert "decided with the other presets'" in said and run.dispatcher.started == []  # alone, ASHA would promote it
    assert presets["deit-tiny"].number not in [t.number for t in study.trials if t.state.is_finished()]
    assert run.in_training() == {"deit-tiny"}  # a proposal of its design waits for it, not trains it again
    settle(run, presets["slab-deit"], 0, rung_result(0.40))  # the last preset in: both decided, over both results
    assert run.dispatcher.started == [(presets["slab-deit"].number, 1)] and run.held == []
    told = {t.number: t.values for t in study.trials if t.state.is_finished()}
    assert told == {presets["deit-tiny"].number: [0.30, 0.5]}  # its accuracy at rung 0 goes to Optuna


def test_a_preset_that_fails_releases_the_ones_waiting_for_it(tmp_path, study):
    from nas.search import settle

    run, presets = preset_run(tmp_path, study)
    settle(run, presets["deit-tiny"], 0, rung_result(0.30))
    said = settle(run, presets["slab-deit"], 0, {"failure": "out of memory"})
    assert said.startswith(f"trial {presets['slab-deit'].number} failed at rung 0") and "promoted to rung 1" in said
    assert run.dispatcher.started == [(presets["deit-tiny"].number, 1)]


def test_a_resumed_study_does_not_propose_its_first_architectures_again(tmp_path):
    """Seeded as at the start, a resumed sampler replays its first proposals (TPE's random start-up
    whole), each a duplicate that uses up a trial of the resume."""
    from nas.config import SearchConfig
    from nas.search import _study

    cfg = SearchConfig(name="s", target_ms=1.0, latency_model="", runs_dir=str(tmp_path), sampler="tpe")
    cfg.run_dir.mkdir()

    def proposals(study: optuna.Study, n: int) -> list[int]:
        trials = [study.ask() for _ in range(n)]
        drawn = [t.suggest_int("x", 0, 10 ** 9) for t in trials]
        for t in trials:
            study.tell(t, [0.5, 1.0])
        return drawn

    first = proposals(_study(cfg, {}), 3)
    resumed = proposals(_study(cfg, {}), 3)
    assert not set(first) & set(resumed)
    assert proposals(_study(cfg, {}), 1) != proposals(_study(cfg, {}), 1)  # each resume from where the study is


def test_a_trial_queued_again_is_shown_as_the_architecture_it_is_before_it_begins(study, model):
    """After a time limit or a kill, the queued copy's row names the interrupted trial's preset and
    architecture (it lost its preset in the presets table, and trials.csv had it blank)."""
    from nas.records import trial_rows
    from nas.search import recover_interrupted

    trial, space = ask_preset(study, "slab-deit")
    Screening(space, SHAPE, model, 1e3, {}).describe(trial)
    trial.set_user_attr("preset", "slab-deit")
    trial.set_user_attr("rung_accs", [0.4])  # stopped in its second rung
    assert recover_interrupted(study) == 1
    interrupted, queued = trial_rows(study.get_trials(deepcopy=False))
    assert queued["state"] == "WAITING" and interrupted["arch_id"] is not None
    assert {k: queued[k] for k in ("arch_id", "short", "pred_ms", "preset")} == \
        {k: interrupted[k] for k in ("arch_id", "short", "pred_ms", "preset")}


def test_a_checkpoint_set_aside_in_a_training_the_time_limit_stopped_is_still_said(tmp_path, study):
    """The worker's warning comes back with its result; a training stopped at the time limit has
    none, so the driver names the checkpoints set aside that no result reported."""
    import types
    import warnings

    from nas.search import SearchRun, warn_of_checkpoints_set_aside

    trial = study.ask()
    trial.set_user_attr("arch_id", "abc")
    (tmp_path / "old.pt.corrupt").write_text("set aside by an earlier search, and said then")
    run = SearchRun(None, study, None, None, types.SimpleNamespace(checkpoints=tmp_path),
                    set_aside={"old.pt.corrupt": (tmp_path / "old.pt.corrupt").stat().st_ctime_ns})
    (tmp_path / "abc.pt.corrupt").write_text("set aside by a worker whose result never came")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warn_of_checkpoints_set_aside(run)
        warn_of_checkpoints_set_aside(run)  # said once
    assert [str(w.message) for w in caught] == [
        "trial 0: checkpoint abc.pt was unreadable; moved to abc.pt.corrupt, its training started over"]


def test_a_run_with_its_trials_done_says_so_and_names_the_trainings_it_leaves_queued(tmp_path, study):
    from nas.config import SearchConfig
    from nas.search import SearchRun, nothing_left_to_search

    for value in (0.5, 0.6):
        trial = study.ask()
        study.tell(trial, [value, 1.0])
    cfg = SearchConfig(name="r", target_ms=1.0, latency_model="", runs_dir=str(tmp_path), trials=2, presets=())
    run = SearchRun(cfg, study, None, Ladder(study, RUNGS, "bands", []), OfflineDispatcher(tmp_path))
    assert nothing_left_to_search(run) == ("2 trials done already, --trials 2: nothing left to search (a higher "
                                           "--trials searches on)")
    study.enqueue_trial({})  # an interrupted training queued again
    assert "; 1 interrupted training(s) stay queued for it)" in nothing_left_to_search(run)


def test_cancelling_nothing_leaves_ray_unimported(tmp_path):
    """Ray reads its settings (loopback only) at its first import: a search stopped before its
    workers started must not import it on the way out, for a later search in the same process."""
    import subprocess
    import sys

    from .helpers import ROOT

    code = ("import sys; from nas.dispatch import Dispatcher; "
            "Dispatcher(1, None, None, None, None).cancel(); print('ray' in sys.modules)")
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.stdout.strip() == "False", res.stderr[-2000:]


def test_an_interrupted_search_leaves_ray_rather_than_cancel_its_trainings_one_by_one(monkeypatch, tmp_path):
    import ray

    left = []
    monkeypatch.setattr(ray, "shutdown", lambda: left.append(True))
    monkeypatch.setattr(ray, "cancel", lambda *a, **k: pytest.fail("cancelled one by one"))
    dispatcher = Dispatcher(2, "data", rung_train_config(RUNGS), RUNGS, tmp_path)
    dispatcher.abandon()  # nothing in flight: Ray stays as it is
    assert left == []
    dispatcher.pending = {"ref": ("trial", 0)}
    dispatcher.abandon()
    assert left == [True] and dispatcher.pending == {}


def test_ray_imported_before_etnas_keeps_the_settings_it_read():
    """A token mode set after Ray's import would reach the processes it starts but not Ray itself,
    whose GCS then refuses it (InvalidAuthToken, 'Failed to start GCS')."""
    import subprocess
    import sys

    from .helpers import ROOT

    code = ("import os; [os.environ.pop(k) for k in list(os.environ) if k.startswith('RAY_')]; import ray; "
            "from nas.search import keep_ray_local; keep_ray_local(); "
            "print(os.environ.get('RAY_AUTH_MODE'), os.environ.get('RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER'))")
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.stdout.strip() == "None None", res.stderr[-2000:]

"""The study as optuna-dashboard shows it: named objectives, the latency constraint in the form the
dashboard reads, each rung's accuracy as an intermediate value (a learning curve per trial), and a
note saying where etnas's records differ from Optuna's own view."""
from __future__ import annotations

import optuna

METRIC_NAMES = ["val_acc", "pred_ms"]  # the study's directions: maximize, minimize
CONSTRAINTS_KEY = "constraints"  # the list form Optuna's constraints_func samplers write; the dashboard
                                 # (0.21) reads this one, not Trial.set_constraint's per-name keys


def set_latency_constraint(trial: optuna.trial.Trial, over_target_ms: float) -> None:
    """Feasible when predicted latency minus target <= 0; every sampler and the dashboard read it."""
    trial.storage.set_trial_system_attr(trial._trial_id, CONSTRAINTS_KEY, [float(over_target_ms)])


def report_rungs(trial: optuna.trial.Trial, reached_at: list[int], accs: list[float]) -> None:
    """Each rung's validation accuracy at the optimizer step it was reached. Trial.report refuses
    multi-objective studies, so the values go to the storage directly, as report would write them."""
    for step, acc in zip(reached_at, accs):
        trial.storage.set_trial_intermediate_value(trial._trial_id, int(step), float(acc))


def describe_study(study: optuna.Study, *, target_ms: float, target: str, top_epochs: float) -> None:
    """Name the objectives and write the dashboard's note, once per study."""
    if study.metric_names is not None:
        return
    from optuna_dashboard import save_note  # here: it takes two seconds to import

    study.set_metric_names(METRIC_NAMES)
    save_note(study, f"""# etnas search `{study.study_name}`

Objectives: **val_acc** (maximize): validation accuracy at the highest rung the trial reached;
**pred_ms** (minimize): predicted latency on {target}.

* **Constraint**: predicted latency minus the target ({target_ms:g} ms); feasible when <= 0.
  Infeasible candidates are never trained: they are COMPLETE with val_acc 0 so that the sampler
  learns from them (user attribute `infeasible`), and the Pareto plot greys them out.
* **Intermediate values**: each rung's validation accuracy, at the optimizer step it was reached.
* **etnas's front** (`front.json`, `etnas front`) holds the feasible trials of the top rung
  ({top_epochs:g} epochs) only. Optuna's best trials also count trials stopped at a lower rung
  (their accuracy after fewer epochs) and duplicates (user attribute `cached_from`: a copy of an
  earlier trial's result), so they can differ.
""")

"""The run schema: the states a trial is reported in and the attribute names a run keeps on its
study and trials. A run directory is read back by later commands and later versions, so these
names are its file format; every module reads them from here."""
from __future__ import annotations

from enum import StrEnum


class TrialState(StrEnum):
    """Optuna's trial states, refined by what the search did with the candidate: an infeasible one
    or a duplicate is COMPLETE to the sampler but was never trained, and an interrupted one was
    queued again after a kill."""

    COMPLETE = "COMPLETE"
    PRUNED = "PRUNED"
    FAIL = "FAIL"
    RUNNING = "RUNNING"
    WAITING = "WAITING"
    INFEASIBLE = "INFEASIBLE"
    DUPLICATE = "DUPLICATE"
    INTERRUPTED = "INTERRUPTED"


# Not trials of the user's count: still to run, re-queued, or copied from an earlier trial.
UNCOUNTED_STATES = frozenset({TrialState.RUNNING, TrialState.INTERRUPTED, TrialState.WAITING, TrialState.DUPLICATE})
# Their architecture's result is known: a later proposal of it is a duplicate.
SETTLED_STATES = frozenset({TrialState.COMPLETE, TrialState.FAIL})


class Attr:
    """User-attribute names: the study's copy of the config, and what each trial records."""

    CONFIG = "etnas_config"  # on the study: config.json as the run started
    SPEC = "spec"  # the sampled ArchSpec, as JSON
    ARCH_ID = "arch_id"
    SHORT = "short"  # ArchSpec.short()
    PRED_MS = "pred_ms"  # predicted latency on the constraint's target
    PRED_MS_TARGETS = "pred_ms_targets"  # predicted latency on every other target, by label
    FLOPS = "flops"
    PARAMS = "params"
    PRESET = "preset"  # the preset's name, when the spec is one
    RUNG_ACCS = "rung_accs"  # validation accuracy at each rung reached
    TRAINED_STEPS = "trained_steps"  # optimizer steps each rung's training trained (from STARTED_AT on)
    STARTED_AT = "started_at"  # the step each rung's training started from (past the rung's start: a checkpoint)
    TRAINED_ON = "trained_on"  # the Ray node (IP) that trained each rung
    RELAUNCHES = "relaunches"  # rung trainings started again after their worker or its node was lost
    STEPS = "steps"  # the optimizer step its last rung ended on (the top rung's: the whole schedule's)
    HISTORY = "history"  # per-epoch curves of the last rung
    TRAIN_S = "train_s"
    VAL_ACC = "val_acc"  # set at the top rung only, where accuracies compare across trials
    PROMOTED_TO = "promoted_to"  # the rung it was sent on to (so a kill does not lose the promotion)
    FAILURE = "failure"  # why the training failed
    INFEASIBLE = "infeasible"  # predicted over the target: never trained
    CACHED_FROM = "cached_from"  # the trial number whose result a duplicate copies
    INTERRUPTED = "interrupted"  # running when the run was killed; queued again
    REQUEUED_FROM = "requeued_from"  # the interrupted trial a queued one replaces


# Carried from an interrupted trial to its re-queued copy.
RESUMABLE_ATTRS = (Attr.RUNG_ACCS, Attr.TRAINED_STEPS, Attr.STARTED_AT, Attr.TRAINED_ON, Attr.STEPS, Attr.PROMOTED_TO)

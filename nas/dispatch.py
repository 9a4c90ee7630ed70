"""The trainings in flight on Ray workers: which trial, at which rung; each continues its
architecture's checkpoint in the run directory, so a promoted or resumed candidate never trains a
rung twice."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import optuna

from evaluators.train import TrainConfig

from .rungs import Rungs
from .schema import Attr


@dataclass
class Dispatcher:
    workers: int
    data_ref: object  # the Ray object holding the training and validation arrays
    train_cfg: TrainConfig
    rungs: Rungs
    checkpoints: Path
    gpus_per_trial: float = 0.0
    pending: dict = field(default_factory=dict)  # ray ref -> (trial, rung)

    @property
    def free(self) -> int:
        return self.workers - len(self.pending)

    def in_training(self) -> set[str]:
        return {trial.user_attrs[Attr.ARCH_ID] for trial, _ in self.pending.values()}

    def checkpoint(self, arch_id: str) -> Path:
        return self.checkpoints / f"{arch_id}.pt"

    def submit(self, trial: optuna.trial.Trial, rung: int) -> None:
        from .workers import remote_evaluate

        self.checkpoints.mkdir(parents=True, exist_ok=True)
        arch_id = trial.user_attrs[Attr.ARCH_ID]
        task = remote_evaluate.options(num_gpus=self.gpus_per_trial) if self.gpus_per_trial else remote_evaluate
        ref = task.remote(trial.user_attrs[Attr.SPEC], [self.data_ref], self.train_cfg, str(self.checkpoint(arch_id)),
                          self.rungs.budgets[rung])
        self.pending[ref] = (trial, rung)

    def next_result(self, timeout: float | None = None) -> tuple[optuna.trial.Trial, int, dict] | None:
        """Wait for any training in flight to reach its rung (or fail); None after `timeout` seconds."""
        import ray

        ready, _ = ray.wait(list(self.pending), num_returns=1, timeout=timeout)
        if not ready:
            return None
        trial, rung = self.pending.pop(ready[0])
        try:
            return trial, rung, ray.get(ready[0])
        except ray.exceptions.RayError as e:  # the worker died (memory, a crash in native code) or its node
            return trial, rung, {"lost": lost_because(e)}

    def abandon(self) -> None:
        """Stop every training at once on Ctrl-C or SIGTERM by leaving Ray: the workers of a local
        Ray end with it, and a cluster's trainings end with their owner. Cancelling them one by one
        instead can crash Ray's core worker when a cancel crosses a task's start (a failed check in
        its task manager, a C++ stack dump, exit 1)."""
        if not self.pending:
            return
        import ray

        self.pending.clear()
        ray.shutdown()

    def cancel(self) -> None:
        if not self.pending:  # nothing to stop: Ray is not imported (its first import fixes its settings)
            return
        import ray

        refs = list(self.pending)
        for ref in refs:
            ray.cancel(ref, force=True)
        ray.wait(refs, num_returns=len(refs), timeout=5)  # the kills land before anything reads their checkpoints
        self.pending.clear()


def lost_because(e: Exception) -> str:
    """Why Ray lost a training, in a few words: the error's kind and its first sentence, with the
    node's address when a node died."""
    node = re.search(r"Node IP: ([^,\s]+)", str(e))
    first = str(e).strip().split(". ")[0].splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}{f' on node {node.group(1)}' if node else ''}: {first[:160]}"


def rung_train_config(rungs: Rungs, gpus_per_trial: float = 0.0, **settings) -> TrainConfig:
    """The proxy trainings' config: the top rung's schedule, restarting its cosine at every rung, on
    the GPU share Ray gives the worker (Ray sets its CUDA_VISIBLE_DEVICES) or one CPU thread."""
    cycles = {"cycle_epochs": rungs.first, "cycle_mul": rungs.eta} if rungs.count > 1 else {}
    device = "cuda" if gpus_per_trial > 0 else "cpu"
    return TrainConfig(epochs=rungs.top_epochs, device=device, **cycles, **settings)

"""The proxy evaluation of one candidate at one rung: its training continued from its checkpoint up
to the rung's budget, returning the validation accuracy there, or the reason it failed. Plain data
in, plain data out, so a Ray worker (or a test) can run it."""
from __future__ import annotations

import traceback
from pathlib import Path

from search_space import ArchSpec

from .train import TrainConfig, TrainingFailed, train


def evaluate_rung(spec_json: str, data: tuple, cfg: TrainConfig, checkpoint: str | None,
                  until_epochs: float | None = None) -> dict:
    """Train a candidate up to `until_epochs` of the `cfg.epochs` schedule (all of it by default).
    A failure is a result with its reason; only the machine's errors (OSError) raise."""
    x_tr, y_tr, x_val, y_val, mean, std = data
    spec = ArchSpec.from_json(spec_json)
    try:
        res = train(spec, x_tr, y_tr, x_val, y_val, cfg, mean=mean, std=std,
                    checkpoint=Path(checkpoint) if checkpoint else None, until_epochs=until_epochs)
    except TrainingFailed as e:
        return {"failure": str(e)}
    except OSError:  # the checkpoint's disk, not the candidate: the caller decides
        raise
    except Exception as e:  # a crashing operator ends this trial only
        where = traceback.extract_tb(e.__traceback__)[-1]
        return {"failure": f"{type(e).__name__}: {e} (at {where.filename.split('/')[-1]}:{where.lineno})"}
    return {"val_acc": res.val_acc, "history": res.history, "train_s": res.train_s, "steps": res.steps,
            "trained_steps": res.steps - res.start_step, "start_step": res.start_step}

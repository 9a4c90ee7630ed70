"""The proxy evaluation of one candidate: a short training from scratch, returning validation
accuracy per epoch, or the reason it failed. Plain data in, plain data out, so a Ray worker (or a
test) can run it."""
from __future__ import annotations

import traceback

import numpy as np

from search_space import ArchSpec

from .train import TrainConfig, TrainingFailed, train


def median_stop(curves: list[list[float]], min_curves: int = 3, grace_epochs: int = 1):
    """Median stopping rule: stop after epoch e when accuracy is below the median of completed
    trials' accuracies at epoch e (Optuna's MedianPruner, applied inside the worker)."""

    def should_stop(epoch: int, acc: float) -> bool:
        at = [c[epoch] for c in curves if len(c) > epoch]
        return epoch >= grace_epochs and len(at) >= min_curves and acc < float(np.median(at))

    return should_stop


def evaluate_proxy(spec_json: str, data: tuple, cfg: TrainConfig, curves: list[list[float]] | None = None) -> dict:
    """Train a candidate for the proxy budget. Never raises: a failure is a result with its reason."""
    x_tr, y_tr, x_val, y_val, mean, std = data
    spec = ArchSpec.from_json(spec_json)
    try:
        res = train(spec, x_tr, y_tr, x_val, y_val, cfg, mean, std,
                    on_epoch=median_stop(curves) if curves else None)
    except TrainingFailed as e:
        return {"failure": str(e)}
    except Exception as e:  # a crashing operator ends this trial only
        where = traceback.extract_tb(e.__traceback__)[-1]
        return {"failure": f"{type(e).__name__}: {e} (at {where.filename.split('/')[-1]}:{where.lineno})"}
    return {"val_acc": res.val_acc, "history": res.history, "train_s": res.train_s, "pruned": res.stopped_early}

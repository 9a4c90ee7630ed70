"""Ray workers: one CPU (and `--gpus-per-trial` of a GPU) each, training a candidate up to a rung.
A worker process fetches the run's data once and keeps it on its device for every later task."""
import time
import warnings

import ray

from evaluators.proxy import evaluate_rung
from evaluators.train import CheckpointSetAside, TrainConfig

from .storage import storage_problem

_ON_DEVICE: dict = {}  # (data object id, device) -> the arrays there; one entry per worker process


def data_on_device(data_holder: list, device: str) -> tuple:
    """The run's (x_train, y_train, x_val, y_val, mean, std), fetched from the object store on the
    first task of this process and moved to `device` once. The ref comes wrapped in a list so that
    Ray passes it unresolved."""
    (ref,) = data_holder
    key = (ref.hex(), device)
    if key not in _ON_DEVICE:
        _ON_DEVICE.clear()
        x_tr, y_tr, x_val, y_val, mean, std = ray.get(ref)
        _ON_DEVICE[key] = (x_tr.to(device), y_tr.to(device), x_val.to(device), y_val, mean, std)
    return _ON_DEVICE[key]


def evaluate_on_worker(spec_json: str, data_holder: list, cfg: TrainConfig, checkpoint: str | None,
                       until_epochs: float | None) -> dict:
    try:
        data = data_on_device(data_holder, cfg.device)
    except Exception as e:  # the data could not be fetched or placed: this trial fails, the search goes on
        return {"failure": f"data not available on the worker ({type(e).__name__}: {e})"}
    started = time.perf_counter()  # the process's start and the data's transfer aside: paid once
    with warnings.catch_warnings(record=True) as caught:  # a worker's own warnings reach no one
        warnings.simplefilter("always", CheckpointSetAside)
        try:
            res = evaluate_rung(spec_json, data, cfg, checkpoint, until_epochs)
        except OSError as e:  # the machine's, not the candidate's: a full disk stops the search
            problem = storage_problem(e)
            res = {"storage": problem, "path": e.filename or checkpoint} if problem else {"failure": f"OSError: {e}"}
    notes = [str(w.message) for w in caught if issubclass(w.category, CheckpointSetAside)]
    return {**res, "node": ray.util.get_node_ip_address(), "worker_s": time.perf_counter() - started,
            **({"notes": notes} if notes else {})}


remote_evaluate = ray.remote(num_cpus=1, max_retries=0)(evaluate_on_worker)

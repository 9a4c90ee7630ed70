"""Timing the deployed model on the target device: fingerprint, runners, a careful timer, and the
resumable measuring loop that appends one CSV row per architecture.

Needs only torch (and onnxruntime for that runtime) and this project, so it runs on an edge board
or a GPU server as well as here.
"""
from __future__ import annotations

import gc
import hashlib
import json
import os
import platform
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch

from search_space import ArchSpec, build_model, count_params, deploy, preset
from search_space.presets import SEARCH_SCALE

from .features import total_flops
from .table import append_row, measured_counts


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def fingerprint(device: str, runtime: str, threads: int, batch: int, img_size: int) -> dict:
    """What a timing depends on. Tables and predictors refuse to mix fingerprints."""
    try:
        import onnxruntime
        ort_version = onnxruntime.__version__
    except ImportError:
        ort_version = None
    return {
        "cpu": cpu_model(), "cores": os.cpu_count(), "threads": threads,
        "torch": torch.__version__.split("+")[0], "onnxruntime": ort_version if runtime == "onnxruntime" else None,
        "gpu": torch.cuda.get_device_name() if device == "cuda" else None,
        "device": device, "runtime": runtime, "batch": batch, "img_size": img_size,
    }


def fingerprint_id(fp: dict) -> str:
    return hashlib.sha1(json.dumps(fp, sort_keys=True).encode()).hexdigest()[:10]


def torch_runner(model: torch.nn.Module, x: torch.Tensor) -> Callable[[], None]:
    def run():
        with torch.inference_mode():
            model(x)
    return run


def onnx_runner(model: torch.nn.Module, x: torch.Tensor, threads: int, device: str) -> Callable[[], None]:
    import onnxruntime as ort

    from search_space.export import export_onnx

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        export_onnx(model.cpu(), path)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
        providers = ["CUDAExecutionProvider"] if device == "cuda" else ["CPUExecutionProvider"]
        session = ort.InferenceSession(str(path), opts, providers=providers)
    feed = {session.get_inputs()[0].name: x.cpu().numpy()}
    return lambda: session.run(None, feed)


def sample_times(run: Callable[[], None], device: str = "cpu", min_repeats: int = 30,
                 min_seconds: float = 0.4, max_repeats: int = 2000, warmup_seconds: float = 0.25) -> np.ndarray:
    """Milliseconds of repeated calls after a warm-up, enough of them to be stable. On CUDA: events
    after a sync.

    The warm-up is long on purpose: on this class of VM the first few hundred ms run up to 40%
    slower (caches, page faults, clock ramp), which moves the median of short runs."""
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    start = time.perf_counter()
    for i in range(1000):  # warm-up: allocator, caches, lazy init
        run()
        if i >= 2 and time.perf_counter() - start > warmup_seconds:
            break
    sync()
    times: list[float] = []
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        begin = time.perf_counter()
        while len(times) < max_repeats and (len(times) < min_repeats or time.perf_counter() - begin < min_seconds):
            if device == "cuda":
                a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                a.record()
                run()
                b.record()
                b.synchronize()
                times.append(a.elapsed_time(b))
            else:
                t0 = time.perf_counter_ns()
                run()
                times.append((time.perf_counter_ns() - t0) / 1e6)
    finally:
        if gc_was_enabled:
            gc.enable()
    return np.asarray(times)


def summarize(rounds: list[np.ndarray]) -> dict:
    """median_ms: the median of the rounds' medians (robust to a slow round); p10/p90 over all repeats."""
    pooled = np.concatenate(rounds)
    return {"median_ms": float(np.median([np.median(r) for r in rounds])),
            "p10_ms": float(np.percentile(pooled, 10)), "p90_ms": float(np.percentile(pooled, 90)),
            "repeats": len(pooled), "rounds": len(rounds)}


def time_callable(run: Callable[[], None], device: str = "cpu", **timer) -> dict:
    """Median, p10 and p90 in ms of one timing window (`timer` goes to `sample_times`)."""
    return summarize([sample_times(run, device, **timer)])


# one round of several: shorter, since the rounds together give the repeats
ROUND_TIMER = {"min_repeats": 10, "min_seconds": 0.15, "warmup_seconds": 0.1}


def time_rounds(runners: dict, rounds: int, device: str = "cpu", **timer) -> dict[object, dict]:
    """Statistics per runner (see `summarize`), the runners timed in turn each round (A, B, C, A, B,
    C, ...): a slow spell of a shared machine hits all of them alike, and each runner's repeats are
    spread over the whole session instead of one window. `timer` goes to `sample_times`."""
    timer = timer or ROUND_TIMER
    times: dict = {k: [] for k in runners}
    for _ in range(rounds):
        for k, run in runners.items():
            times[k].append(sample_times(run, device, **timer))
    return {k: summarize(v) for k, v in times.items()}


def deployed_runner(spec: ArchSpec, runtime: str = "torch", device: str = "cpu", threads: int = 1,
                    batch: int = 1, seed: int = 0) -> tuple[Callable[[], None], int]:
    """Build and deploy one architecture: a callable running one batch, and the deployed parameters."""
    torch.manual_seed(seed)
    model = deploy(build_model(spec)).to(device)
    x = torch.randn(batch, spec.in_chans, spec.img_size, spec.img_size, device=device)
    run = torch_runner(model, x) if runtime == "torch" else onnx_runner(model, x, threads, device)
    return run, count_params(model)


def remeasured(arch_id: str, fraction: float) -> bool:
    """Deterministic choice of the architectures measured twice (for the noise floor)."""
    return int(arch_id[:8], 16) / 16 ** 8 < fraction


def timings_to_take(specs: Iterable[ArchSpec], out: Path, fid: str, remeasure: float) -> list[list[ArchSpec]]:
    """[first timings, second timings]: the specs not yet in `out` for fingerprint `fid`, and the
    `remeasure` share due a second, independent timing (taken after all the first ones)."""
    specs = list({s.arch_id: s for s in specs}.values())
    done = measured_counts(out, fid)
    return [[s for s in specs if done.get(s.arch_id, 0) == 0],
            [s for s in specs if remeasured(s.arch_id, remeasure) and done.get(s.arch_id, 0) < 2]]


def anchor_spec(like: ArchSpec) -> ArchSpec:
    """The architecture timed beside every chunk (DeiT-tiny at search scale, for this input): its
    latency tracks the machine's speed at the time, so tables can be compared across slow spells."""
    return preset("deit-tiny", like.img_size, like.in_chans, like.num_classes, SEARCH_SCALE, SEARCH_SCALE)


ANCHOR = "anchor"


def measure_all(specs: Iterable[ArchSpec], out: Path, runtime: str, device: str, threads: int,
                batch: int, remeasure: float = 0.1, rounds: int = 5, chunk: int = 16,
                on_row: Callable[[dict], None] | None = None) -> int:
    """Measure every spec not yet in `out` for this fingerprint, appending a row per architecture.

    Architectures are timed `chunk` at a time, with the anchor architecture, in `rounds`
    interleaved rounds (see `time_rounds`), so one slow spell cannot move a single architecture;
    each row records the anchor's latency in its chunk (`anchor_ms`). Each chunk's rows are written
    as soon as it ends (an interruption loses at most the chunk in progress). Returns the rows
    written."""
    specs = list(specs)
    if not specs:
        return 0
    torch.set_num_threads(threads)
    fp = fingerprint(device, runtime, threads, batch, specs[0].img_size)
    fid = fingerprint_id(fp)
    anchor = None
    written = 0
    for todo in timings_to_take(specs, out, fid, remeasure):
        for i in range(0, len(todo), chunk):
            part = todo[i:i + chunk]
            anchor = anchor or deployed_runner(anchor_spec(part[0]), runtime, device, threads, batch)[0]
            built = {s.arch_id: deployed_runner(s, runtime, device, threads, batch) for s in part}
            stats = time_rounds({ANCHOR: anchor, **{a: run for a, (run, _) in built.items()}}, rounds, device)
            for spec in part:
                row = {"arch_id": spec.arch_id, "short": spec.short(), "spec_json": spec.to_json(),
                       **stats[spec.arch_id], "anchor_ms": stats[ANCHOR]["median_ms"],
                       "flops": total_flops(spec), "params": built[spec.arch_id][1],
                       "fingerprint": fid, "fingerprint_json": json.dumps(fp, sort_keys=True),
                       "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
                append_row(out, row)
                written += 1
                if on_row:
                    on_row(row)
            del built
    return written

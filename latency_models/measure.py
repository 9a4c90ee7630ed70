"""Timing the deployed model on the target device: fingerprint, runners, a careful timer, and the
resumable measuring loop that appends one CSV row per architecture.

Needs only torch (and onnxruntime for that runtime) and this project, so it runs on an edge board
or a GPU server as well as here.
"""
from __future__ import annotations

import contextlib
import functools
import gc
import hashlib
import multiprocessing as mp
import json
import os
import platform
import tempfile
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch

from search_space import ArchSpec, SearchSpace, build_model, count_params, deploy, preset, presets, sample
from search_space.presets import SEARCH_SCALE

from .features import tally, total_flops
from .settings import REMEASURE_SHARE, SWEEPS, WARM_CALLS
from .table import append_row, drop_cut_row, measured_counts, table_reference


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def fingerprint(device: str, runtime: str, threads: int, batch: int, img_size: int, precision: str = "fp32") -> dict:
    """What a timing depends on, the way it is taken included. Tables and predictors refuse to mix
    fingerprints. The precision and warm calls are named only where they are not the first
    default (fp32, none), so that fingerprints keep the ids they had before either existed."""
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
        **({"precision": precision} if precision != "fp32" else {}),
        **({"warm_calls": WARM_CALLS} if WARM_CALLS else {}),
    }


def fingerprint_id(fp: dict) -> str:
    return hashlib.sha1(json.dumps(fp, sort_keys=True).encode()).hexdigest()[:10]


def torch_runner(model: torch.nn.Module, x: torch.Tensor) -> Callable[[], None]:
    def run():
        with torch.inference_mode():
            model(x)
    return run


def deployed_model(spec: ArchSpec, seed: int = 0) -> torch.nn.Module:
    """The deployed (re-parameterized) model of a spec, with seeded weights."""
    torch.manual_seed(seed)
    return deploy(build_model(spec))


def export_deployed(spec_json: str, path: str, seed: int = 0, precision: str = "fp32") -> str:
    """Export one spec's deployed model to ONNX, as `export` ships it (run in worker processes:
    an export takes 1-10 s an architecture here, the timing well under one)."""
    torch.set_num_threads(1)
    export_timed(deployed_model(ArchSpec.from_json(spec_json), seed), Path(path), precision)
    return path


def export_timed(model: torch.nn.Module, path: Path, precision: str) -> Path:
    """The ONNX file a latency of `model` is timed on: as `export` writes it, and for int8
    quantized as `export --int8` does, calibrated on seeded noise (a latency depends on the graph,
    not on the values)."""
    from search_space.export import export_onnx
    from search_space.quantize import quantize_int8

    if precision == "fp32":
        return export_onnx(model, path)
    fp32 = export_onnx(model, path.with_suffix(".fp32.onnx"))
    spec = model.spec
    noise = np.random.default_rng(0).standard_normal((8, spec.in_chans, spec.img_size, spec.img_size))
    quantize_int8(fp32, path, noise.astype(np.float32))
    fp32.unlink()
    return path


def onnx_runner(model: torch.nn.Module, x: torch.Tensor, threads: int, device: str,
                exported: Path | None = None, precision: str = "fp32") -> Callable[[], None]:
    """An onnxruntime session of `model`, from its `exported` file or exported here."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    providers = ["CUDAExecutionProvider"] if device == "cuda" else ["CPUExecutionProvider"]
    if exported is None:
        with tempfile.TemporaryDirectory() as tmp:
            path = export_timed(model.cpu(), Path(tmp) / "model.onnx", precision)
            session = ort.InferenceSession(str(path), opts, providers=providers)
    else:
        session = ort.InferenceSession(str(exported), opts, providers=providers)
    feed = {session.get_inputs()[0].name: x.cpu().numpy()}
    return lambda: session.run(None, feed)


def runtime_runner(model: torch.nn.Module, x: torch.Tensor, runtime: str, threads: int = 1, device: str = "cpu",
                   exported: Path | None = None, precision: str = "fp32") -> Callable[[], None]:
    """One call of `model` on `x` in `runtime` (for onnxruntime: its `exported` file, or the graph
    `export` writes, in `precision`)."""
    if runtime == "torch":
        return torch_runner(model, x)
    return onnx_runner(model, x, threads, device, exported, precision)


def timed_call(run: Callable[[], None], device: str) -> float:
    """ms of one call (on CUDA, between two events, read once the second has completed)."""
    if device != "cuda":
        t0 = time.perf_counter_ns()
        run()
        return (time.perf_counter_ns() - t0) / 1e6
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record()
    run()
    b.record()
    b.synchronize()
    return a.elapsed_time(b)


def call_times(runners: dict, sweeps: int, device: str = "cpu", warmup_calls: int = 5,
               warmup_sweeps: int = 2, seed: int = 0, shuffle: bool = True,
               warm_calls: int = WARM_CALLS) -> tuple[list, np.ndarray]:
    """Call the runners in turn, each once per sweep, for `sweeps` sweeps after a warm-up (each
    runner alone, then untimed sweeps): the keys in call order and each call's ms.

    Each turn is `warm_calls` untimed calls and then the timed one. With none, a model is timed on
    its first call after others ran, as a latency table times it; with two, warm, as when it is
    served alone (see `latency_models.settings.WARM_CALLS`). The order is shuffled every sweep,
    since a model runs slower after some models than after others; a fixed order moved latencies
    by 2-6% between chunks (`benchmarks/timing_noise.py`)."""
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    for run in runners.values():  # allocator, caches, lazy init
        for _ in range(warmup_calls):
            run()
    sync()
    order, times = [], []
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        keys, rng = list(runners), np.random.default_rng(seed)
        for sweep in range(warmup_sweeps + sweeps):
            for key in (keys[i] for i in (rng.permutation(len(keys)) if shuffle else range(len(keys)))):
                for _ in range(warm_calls):
                    runners[key]()
                ms = timed_call(runners[key], device)
                if sweep >= warmup_sweeps:
                    order.append(key)
                    times.append(ms)
    finally:
        if gc_was_enabled:
            gc.enable()
    return order, np.asarray(times)


def remove_common_slowdown(who: np.ndarray, ms: np.ndarray, neighbours: int = 2, iters: int = 4) -> np.ndarray:
    """Each call's latency with the machine's momentary slowdown taken out, at the session's median speed.

    On a shared machine, slow spells hit every model alike and last a few calls (measured on this
    project's VM: adjacent calls of different models slow down together, r = 0.65-0.9, fading
    within a second). So a call's slowdown is estimated from its `neighbours` calls on either
    side, as their log latency over their model's typical one, alternating with re-estimating the
    typical ones (medians). `who` gives each call's model (integer codes), in call order."""
    log_ms = np.log(np.maximum(ms, 1e-6))  # a clock too coarse for a call reads 0
    models = np.unique(who)
    if len(models) < 2:
        return ms.copy()  # a lone model's slowdown cannot be told from its own latency
    slow = np.zeros_like(log_ms)
    for _ in range(iters):
        typical = np.zeros(models.max() + 1)
        for m in models:
            typical[m] = np.median(log_ms[who == m] - slow[who == m])
        resid = log_ms - typical[who]
        total, count = np.zeros_like(resid), np.zeros_like(resid)
        for k in range(1, neighbours + 1):
            total[k:] += resid[:-k]
            count[k:] += 1
            total[:-k] += resid[k:]
            count[:-k] += 1
        slow = total / count
    return np.exp(log_ms - (slow - np.median(slow)))


def interleaved_stats(order: list, ms: np.ndarray) -> dict[object, dict]:
    """Statistics per key of calls in turn (`call_times`' output): `median_ms`, `p10_ms`, `p90_ms`
    of its calls with the machine's momentary slowdown removed (see `remove_common_slowdown`; the
    spread of the model itself, not of the machine), `raw_median_ms` of the calls as timed, and
    `repeats`."""
    keys = list(dict.fromkeys(order))
    who = np.array([keys.index(k) for k in order])
    steady = remove_common_slowdown(who, ms)
    return {k: {"median_ms": float(np.median(steady[who == i])), "p10_ms": float(np.percentile(steady[who == i], 10)),
                "p90_ms": float(np.percentile(steady[who == i], 90)), "raw_median_ms": float(np.median(ms[who == i])),
                "repeats": int(np.sum(who == i))}
            for i, k in enumerate(keys)}


def time_interleaved(runners: dict, sweeps: int = SWEEPS, device: str = "cpu") -> dict[object, dict]:
    """Call the runners in turn (see `call_times`); statistics per runner (see `interleaved_stats`)."""
    return interleaved_stats(*call_times(runners, sweeps, device))


def deployed_runner(spec: ArchSpec, runtime: str = "torch", device: str = "cpu", threads: int = 1,
                    batch: int = 1, seed: int = 0, exported: Path | None = None,
                    precision: str = "fp32") -> tuple[Callable[[], None], int]:
    """Build and deploy one architecture: a callable running one batch, and the deployed
    parameters. For onnxruntime, `exported` is its ONNX file if already exported."""
    model = deployed_model(spec, seed).to(device)
    x = torch.randn(batch, spec.in_chans, spec.img_size, spec.img_size, device=device)
    return runtime_runner(model, x, runtime, threads, device, exported, precision), count_params(model)


def specs_to_time(img_size: int, in_chans: int, num_classes: int, space: SearchSpace, *, n: int, seed: int,
                  preset_scales: tuple[float, ...] = (SEARCH_SCALE,)) -> list[ArchSpec]:
    """What a calibration times: n architectures sampled from the space, then the seed presets at
    each scale (the scale a search widens its space to, and others a user asks for), each once."""
    rng = np.random.default_rng(seed)
    specs = [sample(rng, space, img_size, in_chans, num_classes) for _ in range(n)]
    for scale in preset_scales:
        specs += presets(img_size, in_chans, num_classes, width_mult=scale, depth_mult=scale).values()
    return list({s.arch_id: s for s in specs}.values())


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


def time_at_reference(runners: dict, anchor: Callable[[], None], reference_ms: float | None, sweeps: int = SWEEPS,
                      device: str = "cpu") -> tuple[dict[object, dict], float, float]:
    """Time `runners` in turn with the anchor (see `time_interleaved`) and scale their
    statistics to the reference speed: the speed at which the anchor takes `reference_ms` (None:
    this session's). Returns the scaled statistics, the anchor's ms now, and the reference used."""
    stats = time_interleaved({ANCHOR: anchor, **runners}, sweeps, device)
    anchor_ms = stats.pop(ANCHOR)["median_ms"]
    reference_ms = reference_ms or anchor_ms
    scale = reference_ms / anchor_ms
    return ({k: {**st, **{q: st[q] * scale for q in ("median_ms", "p10_ms", "p90_ms")}} for k, st in stats.items()},
            anchor_ms, reference_ms)


def exported_files(exporter: ProcessPoolExecutor, part: list[ArchSpec], folder: Path,
                   precision: str = "fp32") -> dict[str, str]:
    """arch_id: ONNX file of each spec, exported in the worker processes unless already in `folder`
    (an architecture timed twice is exported once). The largest graphs go first, so that no
    worker is left with a long export while the others wait."""
    paths = {s.arch_id: folder / f"{s.arch_id}.onnx" for s in part}
    todo = sorted((s for s in part if not paths[s.arch_id].exists()),
                  key=lambda s: sum(tally(s, "onnxruntime").calls), reverse=True)
    export = functools.partial(export_deployed, precision=precision)
    list(exporter.map(export, [s.to_json() for s in todo], [str(paths[s.arch_id]) for s in todo]))
    return {a: str(p) for a, p in paths.items()}


def equal_chunks(todo: list, chunk: int) -> list[list]:
    """`todo` cut into the fewest pieces of at most `chunk`, their sizes differing by one at most, so
    that the last piece is not left with one architecture (no company but the anchor)."""
    n = -(-len(todo) // chunk)
    return [todo[i * len(todo) // n:(i + 1) * len(todo) // n] for i in range(n)]


def table_row(spec: ArchSpec, stats: dict, *, params: int, device_fingerprint: dict) -> dict:
    """A timing table's row for `spec` (all but the anchor's and reference's figures)."""
    return {"arch_id": spec.arch_id, "short": spec.short(), "spec_json": spec.to_json(),
            **{k: stats[k] for k in ("median_ms", "p10_ms", "p90_ms", "raw_median_ms", "repeats")},
            "flops": total_flops(spec), "params": params,
            "fingerprint": fingerprint_id(device_fingerprint),
            "fingerprint_json": json.dumps(device_fingerprint, sort_keys=True),
            "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S")}


def measure_all(specs: Iterable[ArchSpec], out: Path, *, runtime: str, device: str, threads: int,
                batch: int, remeasure: float = REMEASURE_SHARE, sweeps: int = SWEEPS, chunk: int = 16,
                reference_ms: float | None = None, on_row: Callable[[dict, int], None] | None = None,
                precision: str = "fp32") -> int:
    """Measure every spec not yet in `out` for this fingerprint, appending a row per architecture.

    Architectures are timed up to `chunk` at a time with the anchor architecture, called in turn
    (see `time_interleaved`). A row's `median_ms` is its latency relative to the anchor's in the
    same chunk, times the reference: the anchor's latency when the table was started (its first
    chunk), or `reference_ms` (another table's or model's, so that both are on one scale). So every
    row of a table is at one machine speed, however the machine's speed drifts; `raw_median_ms`
    and `anchor_ms` keep the timings as taken. For onnxruntime, a chunk's ONNX exports run first,
    in worker processes on every core (int8: quantized there too). Each chunk's rows are written
    as soon as it ends (an interruption loses at most the chunk in progress), then handed to
    `on_row` with the number of timings this call takes in all, for a progress bar's total.
    Returns the rows written."""
    specs = list(specs)
    if not specs:
        return 0
    torch.set_num_threads(threads)
    if precision != "fp32" and runtime != "onnxruntime":
        raise ValueError(f"precision {precision} is timed in onnxruntime only, not {runtime}")
    fp = fingerprint(device, runtime, threads, batch, specs[0].img_size, precision)
    fid = fingerprint_id(fp)
    drop_cut_row(out)
    reference_ms = table_reference(out, fid, reference_ms)
    anchor = None
    written = 0
    with contextlib.ExitStack() as stack:
        exporter = None  # ONNX exports in worker processes, all cores, never while timing
        if runtime == "onnxruntime":
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
            exporter = stack.enter_context(ProcessPoolExecutor(os.cpu_count(), mp_context=mp.get_context("spawn")))
        passes = timings_to_take(specs, out, fid, remeasure)
        timed_again = {s.arch_id for s in passes[1]}
        timings = len(passes[0]) + len(passes[1])
        for todo in passes:
            for part in equal_chunks(todo, chunk):
                files = exported_files(exporter, part, tmp, precision) if exporter else {}
                anchor = anchor or deployed_runner(anchor_spec(part[0]), runtime, device, threads, batch,
                                                   precision=precision)[0]
                built = {s.arch_id: deployed_runner(s, runtime, device, threads, batch, exported=files.get(s.arch_id),
                                                    precision=precision) for s in part}
                stats, anchor_ms, reference_ms = time_at_reference({a: run for a, (run, _) in built.items()}, anchor,
                                                                   reference_ms, sweeps, device)
                for spec in part:
                    row = {**table_row(spec, stats[spec.arch_id], params=built[spec.arch_id][1], device_fingerprint=fp),
                           "anchor_ms": anchor_ms, "reference_ms": reference_ms}
                    append_row(out, row)
                    written += 1
                    if on_row:
                        on_row(row, timings)
                del built  # the sessions hold the models
                for arch_id, f in files.items():
                    if arch_id not in timed_again or todo is passes[1]:
                        Path(f).unlink()
    return written

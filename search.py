#!/usr/bin/env python
"""etnas command line: parse, call, print. Every subcommand's work lives in a package module."""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import errno
import json
import math
import os
import select
import signal
import socket
import sys
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Column, Table

from evaluators.recipes import FINAL_RECIPE
from evaluators.sources import KINDS, DataError, check_dataset_name
from latency_models.settings import REMEASURE_SHARE, SWEEPS
from nas import SearchError
from nas.config import (CALIBRATION_ARCHS, DEFAULT_RUNTIME, EXPORT_FORMATS, MAX_MINUTES, RUNTIMES, export_formats,
                        interval_text, preset_names, parse_target)
from search_space.presets import PRESETS
from search_space.quantize import PRECISIONS
from search_space.spec import MIN_IMG_SIZE

# Results: tables, reports, paths written (a long path stays one line). Piped into a file or a pager,
# tables are laid out 200 columns wide instead of rich's 80, so architectures are not cut.
out = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 200)
console = Console(stderr=True, soft_wrap=True)  # progress, status, warnings and errors: a line each in a log
warnings.filterwarnings("ignore", message=".*torch.jit.script.*deprecated", category=FutureWarning)


def architecture_column() -> Column:
    """A table column for architecture names: folded onto more lines in a narrow terminal, never cut."""
    return Column("architecture", overflow="fold")


class UserError(Exception):
    """Bad input: reported as one line, exit code 2."""


def require_device(device: str, option: str = "--device cuda", instead: str = "--device cpu") -> None:
    if device == "cuda":
        import torch
        if not torch.cuda.is_available():
            raise UserError(f"{option} asked for, but torch sees no CUDA device; use {instead}")


# --- space ------------------------------------------------------------------------------------
def cmd_space_sample(args) -> None:
    import numpy as np

    from search_space import SearchSpace, sample

    refuse_to_replace(args.out, args.force, spec_file, "spec file (JSONL)")
    space = SearchSpace.load(args.space, args.img_size)
    rng = np.random.default_rng(args.seed)
    specs = [sample(rng, space, args.img_size, args.in_chans, args.num_classes) for _ in range(args.n)]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("".join(s.to_json() + "\n" for s in specs))
    out.print(f"wrote {len(specs)} specs ({len({s.arch_id for s in specs})} distinct) to {args.out}", markup=False)


def refuse_to_replace(out: str, force: bool, written_here: Callable[[Path], bool], kind: str) -> None:
    """An --out that exists is replaced when it is a file of the kind the command writes (a re-run),
    or with --force: another file there (a timing table, say) may hold hours of work."""
    if Path(out).is_file() and Path(out).stat().st_size and not force and not written_here(Path(out)):
        raise UserError(f"--out {out} exists and is not a {kind}; pass --force to replace it, or choose another path")


def spec_file(path: Path) -> bool:
    """Whether the file is a JSONL of specs (`space sample` replaces one without --force)."""
    from search_space import SpecError, load_specs

    try:
        load_specs(path)
    except (SpecError, UnicodeDecodeError):
        return False
    return True


def cmd_space_check(args) -> None:
    import numpy as np
    from rich.progress import Progress

    from search_space import SearchSpace, presets, sample
    from search_space.check import check_space

    space = SearchSpace.load(args.space, args.img_size)
    rng = np.random.default_rng(args.seed)
    named = list(presets(args.img_size, args.in_chans, args.num_classes).items())
    named += [(f"sample-{i}", sample(rng, space, args.img_size, args.in_chans, args.num_classes))
              for i in range(args.n)]
    with Progress(console=console, transient=True) as bar:
        task = bar.add_task("checking", total=len(named))
        report = check_space(named, progress=lambda row: bar.advance(task))
    if args.json:
        print(json.dumps(report))
    else:
        table = Table("name", "ok", "max rel err", "MFLOPs", "params", architecture_column())
        for r in report["archs"]:
            table.add_row(r["name"], "yes" if r["ok"] else "[red]NO", f"{r['max_rel_err']:.1e}",
                          f"{r['flops'] / 1e6:.1f}", f"{r['params']:,}", escape(r["short"]))
        out.print(table)
        out.print({k: v for k, v in report["coverage"].items() if k in ("norm", "attention")})
        for f in report["failures"]:
            out.print(f"[red]failure:[/] {f}")
    if report["failures"]:
        sys.exit(1)


# --- latency ----------------------------------------------------------------------------------
LOG_EVERY_S = 30  # a progress bar's line in a log (rich draws a bar on a terminal only, at the end elsewhere)


def progress_bar():
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    class LoggedProgress(Progress):
        """rich's Progress, which also prints its line to a log every LOG_EVERY_S seconds."""

        logged = time.monotonic()
        ended = False  # its last line is printed: when its tasks are done, or when it stops

        def update(self, task_id, **fields) -> None:
            super().update(task_id, **fields)
            self.log_line()

        def advance(self, task_id, advance: float = 1) -> None:
            super().advance(task_id, advance)
            self.log_line()

        def stop(self) -> None:
            super().stop()
            self.log_line(last=True)

        def log_line(self, last: bool = False) -> None:
            done = all(t.total is not None and t.completed >= t.total for t in self.tasks)
            due = last or done or time.monotonic() - self.logged >= LOG_EVERY_S
            if self.console.is_interactive or self.ended or not due:
                return
            self.logged, self.ended = time.monotonic(), last or done
            for task in self.tasks:
                done = f"{task.completed:g}" + (f"/{task.total:g}" if task.total else "")
                self.console.print(f"{task.description}: {done} in {task.elapsed or 0:.0f} s "
                                   f"{task.fields.get('info', '')}".rstrip(), markup=False, soft_wrap=True)

    return LoggedProgress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                          TextColumn("ETA"), TimeRemainingColumn(), TextColumn("{task.fields[info]}"), console=console,
                          disable=not console.is_interactive)  # a log gets log_line's lines, not a bar cut to 80 columns


def cmd_measure(args) -> None:
    from latency_models.measure import fingerprint, fingerprint_id, measure_all, specs_to_time, timings_to_take
    from latency_models.table import drop_cut_row, reference_speed
    from search_space import SearchSpace, load_specs
    from search_space.presets import SEARCH_SCALE

    require_device(args.device)
    require_runtime_for(args.precision, args.runtime)
    warn_of_more_threads_than_cores(args.threads)
    given = load_specs(args.specs) if args.specs else []
    refuse_other_inputs(given, args)
    sampled = specs_to_time(args.img_size, args.in_chans, args.num_classes, SearchSpace.load(args.space, args.img_size),
                            n=args.n, seed=args.seed, preset_scales=(1.0, SEARCH_SCALE))
    unique = {s.arch_id: s for s in [*given, *sampled]}
    fid = fingerprint_id(fingerprint(args.device, args.runtime, args.threads, args.batch, args.img_size,
                                     args.precision))
    reference = reference_speed(Path(args.reference), fid, force=args.force) if args.reference else None
    drop_cut_row(Path(args.out))  # before it is read for what is measured already
    first, second = timings_to_take(unique.values(), Path(args.out), fid, args.remeasure)
    total = len(first) + len(second)
    console.print(f"{len(unique)} architectures, {total} timings to take, {args.sweeps} interleaved calls each "
                  f"({len(unique) - len(first)} already measured for fingerprint {fid})")
    with progress_bar() as bar:
        task = bar.add_task("measuring", total=total, info="")
        measure_all(unique.values(), Path(args.out), runtime=args.runtime, device=args.device, threads=args.threads,
                    batch=args.batch, remeasure=args.remeasure, sweeps=args.sweeps, reference_ms=reference,
                    precision=args.precision,
                    on_row=lambda r, _: bar.update(task, advance=1, info=f"{r['median_ms']:.2f} ms {r['short'][:40]}"))
    out.print(f"timings in {args.out}", markup=False)


def warn_of_more_threads_than_cores(threads: int) -> None:
    """Threads beyond the cores time a setting no deployment runs: they take turns on the cores."""
    if threads > (os.cpu_count() or 1):
        warnings.warn(f"--threads {threads} is above this machine's {os.cpu_count()} cores: the threads share them, "
                      f"so the timings are of no setting a deployment would use", stacklevel=2)


def refuse_other_inputs(specs: list, args: argparse.Namespace) -> None:
    """A table's rows share one input shape, the one its fingerprint names (--img-size, --in-chans)."""
    for number, spec in enumerate(specs, start=1):
        if (spec.img_size, spec.in_chans) != (args.img_size, args.in_chans):
            raise UserError(f"spec {number} of {args.specs} takes {spec.img_size}-px images of {spec.in_chans} "
                            f"channel(s), not the --img-size {args.img_size} --in-chans {args.in_chans} timed here; "
                            f"give those options, or time it into a table of its own")


def require_runtime_for(precision: str, runtime: str) -> None:
    if precision != "fp32" and runtime != "onnxruntime":
        raise UserError(f"--precision {precision} is timed in onnxruntime only; add --runtime onnxruntime")


def cmd_fit_latency(args) -> None:
    from latency_models import LatencyModel, read_table
    from latency_models.validate import fit_and_report

    if Path(args.out).resolve() == Path(args.csv).resolve():
        raise UserError(f"--out {args.out} is the timing table being fitted; give the model a path of its own")
    refuse_to_replace(args.out, args.force, LatencyModel.written_as_one, "latency model")
    model, report = fit_and_report(read_table(Path(args.csv)), args.test_fraction, args.seed, args.fingerprint,
                                   source=args.csv)
    model.save(args.out)
    if args.json:
        print(json.dumps(report))
        return
    fp = report["fingerprint"]
    title = (f"{report['n_test']} held-out of {report['n_train'] + report['n_test']} architectures "
             f"({fp.get('runtime')}, {fp.get('device')}, {fp.get('threads')} thread(s))")
    table = Table("held-out", "predictor", "FLOPs linear", "params linear", title=title)
    base = report["baselines"]
    for key, fmt in (("within_5", "{:.1%}"), ("within_10", "{:.1%}"), ("mape", "{:.2%}"), ("rmse_ms", "{:.3f}"),
                     ("kendall_tau", "{:.3f}")):
        table.add_row(key, fmt.format(report[key]), fmt.format(base["flops"][key]), fmt.format(base["params"][key]))
    out.print(table)
    if report["noise_pairs"]:
        out.print(f"noise floor (median relative difference of {report['noise_pairs']} re-measured "
                  f"architectures): {report['noise_floor']:.2%}; within ±10% of each other: "
                  f"{report['noise_within_10']:.1%}")
    else:
        out.print("noise floor: none measured (no architecture was timed twice: `measure --remeasure` above 0)")
    if "raw" in report:
        raw = report["raw"]
        floor = f"; their noise floor {raw['noise_floor']:.2%}" if raw["noise_pairs"] else ""
        out.print(f"against the raw timings (the machine's speed at the time, not the reference's): within "
                  f"±10% {raw['within_10']:.1%}, Kendall tau {raw['kendall_tau']:.3f}{floor}")
    out.print(f"Model saved to {args.out} ({report['saved_model']}).", markup=False)


# --- search -----------------------------------------------------------------------------------


def cmd_run(args) -> None:
    from nas.rundir import command_path

    started = time.monotonic()  # --minutes counts the calibration too
    cfg, inputs = prepare_search(args)
    front = watch_search(cfg, inputs, started)
    print_front(cfg.run_dir, as_json=False)
    architectures = "architecture" if len(front) == 1 else "architectures"
    out.print(f"{len(front)} {architectures} on the front; browse: etnas front {command_path(cfg.run_dir)}",
              markup=False)
    if not front:
        console.print("[yellow]warning:[/] no trial finished the top rung within the target: give more --trials "
                      "or --minutes (the same command resumes the run), or a looser --target-ms under a new --name",
                      highlight=False)


def warn_of_failures(run_dir: Path, rows: list[dict]) -> None:
    from nas.front import failures

    found = failures(rows)
    if found.failed:
        console.print(f"[yellow]warning:[/] {len(found.failed)} of the {len(found.failed) + found.trained} trials "
                      f"sent to training failed; {escape(found.first_failure(run_dir))}", highlight=False,
                      soft_wrap=True)


def prepare_search(args):
    """The run's settings (SearchConfig's fields by name from the options) and its inputs, loaded
    once; a calibration shows its progress."""
    from nas.config import SearchConfig

    settings = {f.name: getattr(args, f.name) for f in dataclasses.fields(SearchConfig)
                if f.name not in ("target_ms", "latency_model", "other_latency_models")}
    cfg = SearchConfig(**settings, target_ms=0.0, latency_model="")  # its own checks, before the heavy imports
    if args.gpus_per_trial and not args.ray_address:
        require_device("cuda", option="--gpus-per-trial", instead="0 (CPU workers), or --ray-address of a cluster with GPUs")
    require_runtime_for(args.precision, args.runtime)

    from nas.inputs import prepare_search
    from nas.targets import constraint_and_others

    constraint, others = constraint_and_others(args.latency_model or [], args.constraint)
    cfg = dataclasses.replace(cfg, latency_model=constraint, other_latency_models=others)
    with lazy_progress("calibrating latency model") as update:  # no bar where a cached model is reused
        return prepare_search(cfg, args.target_ms, runtime=args.runtime, precision=args.precision,
                              calibrate_n=args.calibrate_n, force=args.force,
                              on_calibration_row=lambda row, timings: update(advance=1, total=timings,
                                                                        info=f"{row['median_ms']:.2f} ms"),
                              on_note=lambda note: console.print(note, markup=False, soft_wrap=True))


@contextlib.contextmanager
def lazy_progress(description: str):
    """A bar drawn from its first update (`update(**Progress.update's fields)`), so that what fails
    or has nothing to do before it prints no bar above its message."""
    bar, task = progress_bar(), None

    def update(**fields) -> None:
        nonlocal task
        if task is None:
            bar.start()
            task = bar.add_task(description, total=None, info="")
        bar.update(task, **fields)
    try:
        yield update
    finally:
        if task is not None:  # stopping a bar never drawn prints an empty line
            bar.stop()


def progress_text(p, cfg) -> str:
    """The search's live line: counts, rungs, best accuracy, front size and ETA, then the last event."""
    minutes = None if p.training_s_left is None else p.training_s_left / 60
    if p.minutes_left is not None and (minutes is None or p.minutes_left < minutes):
        minutes = p.minutes_left  # the time limit ends it first
    eta = "" if minutes is None else f", ETA ~{minutes * 60:.0f} s" if minutes < 1 else f", ETA ~{minutes:.1f} min"
    best = f"{p.best_acc:.4f}" if p.best_acc is not None else "-"
    rungs = "/".join(map(str, p.at_rung))
    queued = f" ({p.queued} more queued)" if p.queued else ""
    return (f"{p.done}/{p.total} done, {p.running} training{queued}, {p.failed} failed, {p.infeasible} infeasible, "
            f"{p.duplicates} duplicates | at rungs 0..: {rungs} | best top-rung acc under {cfg.target_ms:g} ms: "
            f"{best} | front {p.front_size}{eta}\n  {escape(p.last)}")


def watch_search(cfg, inputs, started: float) -> list[dict]:
    """Run the search under a live line (`progress_text`); `started`: when the command began."""
    from rich.live import Live

    from nas.search import run_search

    if not console.is_interactive:  # a log: a line per event, where rich would print the live line only at the end
        def log(p) -> None:
            if p.last:
                console.print(f"{escape(cfg.name)} {progress_text(p, cfg)}".replace("\n ", " |"), soft_wrap=True)
        return run_search(cfg, log, inputs, started)
    title = f"[bold]{cfg.name}[/] "
    with Live(title + "opening the study", console=console, refresh_per_second=4) as live:
        return run_search(cfg, lambda p: live.update(title + progress_text(p, cfg)), inputs, started)


def print_front(run_dir: Path, as_json: bool) -> None:
    import pandas as pd

    from nas.front import front_summary, load_view, preset_trials, run_target, write_html

    if as_json:  # data only: nothing is written
        print(json.dumps(front_summary(Path(run_dir))))
        return
    trials, front, target, finals = load_view(Path(run_dir))
    table = Table("trial", "rung", "val acc", "pred ms", "measured ms", "MFLOPs", "params", architecture_column(),
                  title=f"Pareto front of {run_dir} (target {target:g} ms on {run_target(run_dir)}; top-rung trials)")
    for f in front:
        measured = f"{f['measured_ms']:.3f}" if f.get("measured_ms") else "-"
        name = f" [green](preset {f['preset']})" if f.get("preset") else ""
        table.add_row(str(f["trial"]), rung_text(f.get("rung")), f"{f['val_acc']:.4f}", f"{f['pred_ms']:.3f}",
                      measured, f"{f['flops'] / 1e6:.1f}", f"{int(f['params']):,}", escape(f["short"]) + name)
    out.print(table)
    refs = preset_trials(trials)
    if len(refs):
        ref = Table("preset", "trial", "rung", "acc at rung", "pred ms", "state", title="seed presets (reference points)")
        for _, r in refs.iterrows():
            acc = f"{r['rung_acc']:.4f}" if pd.notna(r.get("rung_acc")) else "-"
            ref.add_row(str(r["preset"]), str(r["number"]), rung_text(r.get("rung")), acc, f"{r['pred_ms']:.3f}",
                        str(r["state"]))
        out.print(ref)
    for a in (front[0].get("rung_tau") or []) if front else []:
        tau = f"{a['kendall_tau']:.2f}" if a["kendall_tau"] is not None else "n/a (fewer than 3)"
        out.print(f"ranking from rung {a['rungs'].replace('->', ' to ')}: Kendall tau {tau} over "
                  f"{a['trials']} promoted trials")
    warn_of_failures(run_dir, trials.to_dict("records"))
    try:
        out.print(f"plot: {write_html(Path(run_dir), trials, front, target, finals)}", markup=False)
    except OSError as e:  # a read-only run folder still shows its front
        console.print(f"[yellow]warning:[/] {escape(str(Path(run_dir) / 'front.html'))} was not written "
                      f"({escape(e.strerror or str(e))}); the tables above are complete", highlight=False,
                      soft_wrap=True)


def rung_text(rung) -> str:
    return "-" if rung is None or rung != rung else str(int(rung))


def cmd_front(args) -> None:
    from nas.rundir import run_config

    run_config(Path(args.run))  # a bad run directory is one line before pandas and plotly load
    if args.target_ms is not None and args.target is None:
        raise UserError("--target-ms goes with --target (the run's own target is the one it searched under)")
    if args.target:
        print_front_on_target(Path(args.run), args.target, args.target_ms, args.json)
    else:
        print_front(Path(args.run), args.json)


def print_front_on_target(run_dir: Path, target: str, target_ms: float | None, as_json: bool) -> None:
    from nas.rundir import run_records
    from nas.targets import front_on_target

    front, source = front_on_target(run_records(run_dir)[0], target, target_ms)
    if as_json:
        print(json.dumps({"target": source, "target_ms": target_ms, "front": front}))
        return
    within = f", within {target_ms:g} ms" if target_ms is not None else ""
    table = Table("trial", "val acc", "pred ms", "MFLOPs", architecture_column(),
                  title=f"Pareto front of {run_dir} on {source}{within} (top-rung trials)")
    for f in front:
        table.add_row(str(f["trial"]), f"{f['val_acc']:.4f}", f"{f['pred_ms']:.3f}", f"{f['flops'] / 1e6:.1f}",
                      escape(str(f["short"])))
    out.print(table)


def cmd_dashboard(args) -> None:
    db = Path(args.run) / "study.db"
    if not db.is_file():
        raise UserError(f"{db} not found: give the directory of a run made by `etnas run`")
    from nas.rundir import load_run_study, study_storage

    load_run_study(Path(args.run))  # a damaged study is one line, not the dashboard's traceback
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", args.port))
        except OSError as e:
            raise UserError(f"port {args.port} cannot be used here ({e.strerror}); choose another --port") from None
    from optuna_dashboard import run_server

    console.print(f"optuna-dashboard for {args.run} at http://127.0.0.1:{args.port} (this machine only; Ctrl-C "
                  f"stops it)", markup=False)
    run_server(study_storage(Path(args.run)), host="127.0.0.1", port=args.port)


def cmd_train(args) -> None:
    from nas.rundir import load_trial, resolve_trial

    require_device(args.device)  # imports torch only for cuda
    number = resolve_trial(Path(args.run), args.trial)
    load_trial(Path(args.run), number)  # a bad run or trial is reported before torch is imported
    from nas.final import train_final

    recipe = {k: getattr(args, k) for k in ("batch_size", "lr", "mixup", "cutmix", "randaugment", "holdout")}
    with lazy_progress(f"training trial {number}") as update:  # none for a finished checkpoint
        report = train_final(Path(args.run), number, args.epochs, args.device,
                             on_step=lambda step, total, loss: update(completed=step, total=total,
                                                                      info=f"loss {loss:.3f}"), **recipe)
    if report["resumed_at_step"] == report["steps"]:
        out.print(f"trial {number} was trained already ({report['epochs']:g} epochs): evaluated and timed again",
                  markup=False)
    table = Table("figure", "value", title=f"final training of trial {report['trial']}")
    # train_s: the training loop's seconds; wall_s: the command's, evaluation, quantizing and timing included
    figures = {**report, "held_out_val_acc": (report["val_curve"] or [None])[-1]}
    for k in ("short", "test_acc", "held_out_val_acc", "test_acc_int8", "int8_top1_agreement", "pred_ms", "measured_ms",
              "pred_rel_err", "epochs", "train_s", "wall_s", "params"):
        if figures.get(k) is None:  # int8 figures of a model onnxruntime could not quantize; no holdout
            continue
        v = figures[k]
        label = "params (deployed)" if k == "params" else k  # the front counts the trained model's, BN unfolded
        table.add_row(label, f"{v:.4f}" if isinstance(v, float) else escape(str(v)))
    out.print(table)
    from nas.front import load_view, write_html

    out.print(f"plot: {write_html(Path(args.run), *load_view(Path(args.run)))}", markup=False)  # now with this training


def cmd_export(args) -> None:
    from nas.rundir import load_trial, resolve_trial

    number = resolve_trial(Path(args.run), args.trial)
    load_trial(Path(args.run), number)  # a bad run or trial is reported before torch is imported
    from nas.package import export_trial

    with lazy_progress(f"exporting trial {number}") as update:
        res = export_trial(Path(args.run), number, Path(args.out), args.format, force=args.force, int8=args.int8,
                           on_stage=lambda what, done, total: update(completed=done, total=total, info=what))
    out.print(f"exported to {res['out']}: {', '.join(res['files'])}; max abs diff vs PyTorch "
              f"{', '.join(f'{k} {v:.1e}' for k, v in res['max_abs_diff'].items())}", markup=False)


def version() -> str:
    from importlib.metadata import PackageNotFoundError, version as installed

    try:
        return installed("etnas")
    except PackageNotFoundError:
        return "unknown (not installed: run `make setup`)"


class Parser(argparse.ArgumentParser):
    """Bad options are one line on stderr and exit status 2, like every other bad input."""

    def error(self, message: str):
        console.print(f"[red]error:[/] {escape(message)} (see `{self.prog} --help`)", highlight=False, soft_wrap=True)
        sys.exit(2)


def integer(minimum: int, maximum: int | None = None) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} is below the minimum, {minimum}")
        if maximum is not None and value > maximum:
            raise argparse.ArgumentTypeError(f"{value} is above the maximum, {maximum}")
        return value
    return parse


def run_name(text: str) -> str:
    """A run's folder name under --runs-dir: one plain name, so a run never lands outside it."""
    if not text.strip() or text in (".", "..") or "/" in text or "\\" in text:
        raise argparse.ArgumentTypeError(f"{text!r}: give one folder name, without '/' (the run goes to RUNS_DIR/NAME)")
    if not text.isprintable():  # a tab or newline makes a folder no listing shows as it is
        raise argparse.ArgumentTypeError(f"{text!r} holds a control character (tab, newline); give a printable name")
    if len(os.fsencode(text)) > 255:  # the file system's limit for one name
        raise argparse.ArgumentTypeError(f"a name of {len(os.fsencode(text))} bytes; give one of at most 255")
    return text


def number(low: float, high: float = float("inf"), low_open: bool = True) -> Callable[[str], float]:
    """A finite float in (low, high] (or [low, high] with low_open=False)."""
    interval = interval_text(low, high, low_allowed=not low_open)

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
        if not (low < value <= high if low_open else low <= value <= high):
            raise argparse.ArgumentTypeError(f"{value:g} is outside {interval}")
        return value
    return parse


def given_path(text: str) -> str:
    """A path option's value; an empty one (`--out ""`) would mean the current directory."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty path; give a file or folder name")
    return text


def checked_randaugment_config(text: str) -> str:
    """A RandAugment config timm takes, or "" for `off`."""
    if text == "off":
        return ""
    from evaluators.train import checked_randaugment  # torch and timm, only where the option is given

    return checked_randaugment(text)


def parsed_by(convert: Callable[[str], object], error: type[Exception]) -> Callable[[str], object]:
    """An option type whose value is `convert(text)`; what `convert` raises is the option's error."""
    def parse(text: str) -> object:
        try:
            return convert(text)
        except error as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    return parse


def checked_by(check: Callable[[str], object], error: type[Exception]) -> Callable[[str], object]:
    """An option type keeping the text that `check` accepts; what `check` raises is the option's error."""
    def kept(text: str) -> str:
        check(text)
        return text
    return parsed_by(kept, error)


def export_format_list(text: str) -> tuple[str, ...]:
    try:
        return export_formats(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def gpu_share(text: str) -> float:
    """0 (CPU workers), a share of one GPU in (0, 1], or a whole number of GPUs."""
    value = number(0, low_open=False)(text)
    if value > 1 and value != int(value):
        raise argparse.ArgumentTypeError(f"{value:g} GPUs: give a share in (0, 1] or a whole number")
    return value


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default, except where it has none to show."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None or action.default is False or action.required:
            return action.help
        return super()._get_help_string(action)


def _shape_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--img-size", type=integer(MIN_IMG_SIZE), default=32, help="input side in pixels")
    p.add_argument("--in-chans", type=integer(1), default=3, help="input channels")
    p.add_argument("--num-classes", type=integer(2), default=10, help="classes of the head")
    p.add_argument("--space", help="JSON file overriding the search space's choices")


def _space_parsers(sub) -> None:
    space = sub.add_parser("space", help="sample and self-check the search space", formatter_class=HelpFormatter)
    space_sub = space.add_subparsers(dest="space_command", required=True)
    for name, fn, help_ in (("sample", cmd_space_sample, "write N sampled specs as JSONL"),
                            ("check", cmd_space_check, "build, train a step and deploy presets + N samples")):
        sp = space_sub.add_parser(name, help=help_, description=help_, formatter_class=HelpFormatter)
        sp.add_argument("--n", type=integer(0), default=20, help="specs to sample")
        sp.add_argument("--seed", type=integer(0), default=0, help="sampling seed")
        _shape_options(sp)
        sp.set_defaults(fn=fn)
    space_sub.choices["sample"].add_argument("--out", required=True, type=given_path, help="JSONL file to write")
    space_sub.choices["sample"].add_argument("--force", action="store_true",
                                             help="replace an --out that is not a spec file")
    space_sub.choices["check"].add_argument("--json", action="store_true", help="print the report as JSON")


def _latency_parsers(sub) -> None:
    m = sub.add_parser("measure", help="time deployed architectures on this device into a CSV",
                       formatter_class=HelpFormatter)
    m.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="device to time on")
    m.add_argument("--runtime", choices=RUNTIMES, default=DEFAULT_RUNTIME,
                   help="runtime to time (onnxruntime: each architecture exported as `export` ships it)")
    m.add_argument("--precision", choices=PRECISIONS, default=PRECISIONS[0],
                   help="int8: each exported model statically quantized (QDQ, per-channel weights) as "
                        "`export --int8` does; onnxruntime only")
    m.add_argument("--threads", type=integer(1), default=1, help="intra-op threads")
    m.add_argument("--batch", type=integer(1), default=1, help="batch size of the timed calls")
    m.add_argument("--n", type=integer(0), default=400, help="sampled architectures (the presets are always added)")
    m.add_argument("--seed", type=integer(0), default=0, help="sampling seed")
    m.add_argument("--specs", help="JSONL of specs to measure instead of sampling (from `space sample`)")
    _shape_options(m)
    m.add_argument("--remeasure", type=number(0, 1, low_open=False), default=REMEASURE_SHARE, help="share measured twice, for the noise floor")
    m.add_argument("--sweeps", type=integer(1), default=SWEEPS,
                   help="timed calls per architecture, interleaved with the others of its chunk (more: steadier)")
    m.add_argument("--reference", help="timing CSV or latency model whose reference speed to measure at "
                                       "(to check a fitted model on new architectures)")
    m.add_argument("--force", action="store_true", help="accept a --reference measured on another device")
    m.add_argument("--out", required=True, type=given_path, help="timing CSV to write or append to")
    m.set_defaults(fn=cmd_measure)

    f = sub.add_parser("fit-latency", help="fit and validate a latency predictor on a timing CSV",
                       formatter_class=HelpFormatter)
    f.add_argument("csv", help="timing CSV from `measure`")
    f.add_argument("--out", required=True, type=given_path, help="latency model file to write")
    f.add_argument("--force", action="store_true", help="replace an --out that is not a latency model")
    f.add_argument("--json", action="store_true", help="print the fit report as JSON")
    f.add_argument("--test-fraction", type=number(0, 0.9), default=0.25, help="share of architectures held out")
    f.add_argument("--seed", type=integer(0), default=0, help="seed of the held-out split")
    f.add_argument("--fingerprint", help="device fingerprint id to fit, when the CSV holds several")
    f.set_defaults(fn=cmd_fit_latency)


def _run_parser(sub) -> None:
    from nas.config import SearchConfig
    from nas.samplers import SAMPLERS

    d = SearchConfig.defaults()
    r = sub.add_parser("run", help="search for the best architectures under a latency target",
                       formatter_class=HelpFormatter)
    r.add_argument("--name", required=True, type=run_name, help="run name: results go to RUNS_DIR/NAME")
    r.add_argument("--target-ms", required=True, type=checked_by(parse_target, ValueError),
                   help="latency target in ms, or pN: the N-th percentile of the space's predicted latencies "
                        "(p50: half the space meets it)")
    r.add_argument("--latency-model", action="append",
                   help="fitted predictor of the deployment target (default: calibrate this machine, cached in "
                        "runs/latency); repeat it for more targets: each trial's latency is recorded on every one "
                        "(`front --target`), the first is the constraint")
    r.add_argument("--constraint", help="the target whose latency model sets the constraint, by its file stem "
                                        "(default: the first --latency-model)")
    r.add_argument("--dataset", type=checked_by(check_dataset_name, DataError), default=d.dataset, help=KINDS)
    r.add_argument("--trials", type=integer(1), default=d.trials,
                   help="trials in all, the seed presets included (at least one more than --presets names)")
    r.add_argument("--presets", type=parsed_by(preset_names, SearchError), default="all",
                   help=f"seed presets trained first, as reference points the front is read against and as the "
                        f"sampler's first points: all, none, or names separated by commas from "
                        f"{', '.join(PRESETS)}; the space keeps every preset's design either way")
    r.add_argument("--budget-epochs", type=number(0), default=d.budget_epochs,
                   help="a total training budget: epochs over all candidates' rungs; once the trainings done and "
                        "under way reach it, no new candidate starts (promotions earned still train; "
                        "default: --trials alone limits the search)")
    r.add_argument("--minutes", type=number(0, MAX_MINUTES), default=d.minutes,
                   help="a time limit for the run, its calibration included: no training starts after it, the ones "
                        "in flight stop there and go on from their checkpoints when the run is resumed (default: "
                        "none)")
    r.add_argument("--workers", type=integer(1), default=d.workers, help="Ray workers training proxies at once")
    _proxy_options(r, d)
    r.add_argument("--sampler", choices=SAMPLERS, default=d.sampler, help="Optuna sampler")
    r.add_argument("--seed", type=integer(0), default=d.seed, help="seed of the sampler, the split and the trainings")
    r.add_argument("--space", help="JSON file overriding the search space's choices")
    r.add_argument("--ray-address", help="join an existing Ray cluster (default: local workers)")
    r.add_argument("--gpus-per-trial", type=gpu_share, default=d.gpus_per_trial,
                   help="GPU share each proxy training asks Ray for (0.25: four share a GPU; 0: CPU workers); "
                        "latency stays predicted for the target device")
    r.add_argument("--calibrate-n", type=integer(8), default=CALIBRATION_ARCHS,
                   help="architectures timed when calibrating (the presets are added)")
    r.add_argument("--runtime", choices=RUNTIMES, default=DEFAULT_RUNTIME,
                   help="runtime the calibration times (onnxruntime: the runtime of the file `export` ships; "
                        "torch: eager PyTorch)")
    r.add_argument("--precision", choices=PRECISIONS, default=PRECISIONS[0],
                   help="precision the calibration times (int8: quantized as `export --int8` ships it; "
                        "onnxruntime only)")
    r.add_argument("--force", action="store_true", help="use a latency model measured on another device")
    r.add_argument("--runs-dir", default=d.runs_dir, help="directory holding the runs")
    r.set_defaults(fn=cmd_run)


def _proxy_options(r: argparse.ArgumentParser, d) -> None:
    """`run`'s options for the proxy trainings and their rungs; `d`: the SearchConfig defaults."""
    from nas.rungs import PROMOTION_RULES, SEARCH_BANDS

    r.add_argument("--epochs", type=number(0), default=d.epochs,
                   help="the top rung's training budget in epochs (--base-epochs equal to it: one rung, no promotion)")
    r.add_argument("--base-epochs", type=number(0), default=d.base_epochs,
                   help="the first rung's budget, which every feasible candidate trains")
    r.add_argument("--eta", type=integer(2), default=d.eta,
                   help="each rung trains eta times longer than the last, and the best 1/eta of a rung go on")
    r.add_argument("--promotion", choices=PROMOTION_RULES, default=d.promotion,
                   help=f"who goes on: bands (the best of each of {SEARCH_BANDS} bands of predicted latency, from the "
                        "fastest to the target), pareto (non-dominated on accuracy and latency) or accuracy "
                        "(latency-blind)")
    r.add_argument("--subset", type=number(0, 1), help="share of the training split the proxy trains on (default: all)")
    r.add_argument("--resolution", type=integer(MIN_IMG_SIZE), help="proxy input side (default: the data's)")
    r.add_argument("--batch-size", type=integer(2), default=d.batch_size, help="proxy batch size")
    r.add_argument("--lr", type=number(0), default=d.lr, help="proxy peak AdamW learning rate")


def _run_dir_parsers(sub) -> None:
    fr = sub.add_parser("front", help="show a run's Pareto front and write front.html", formatter_class=HelpFormatter)
    fr.add_argument("run", help="run directory (runs/NAME)")
    fr.add_argument("--json", action="store_true", help="print the front, the presets, the failed trials, the target "
                                                        "and the rungs' epochs as JSON (writes nothing)")
    fr.add_argument("--target", help="the front on another target: one the run recorded (a --latency-model's "
                                     "file stem) or any latency model file, even one fitted after the search "
                                     "(trained trials only; writes nothing)")
    fr.add_argument("--target-ms", type=number(0), help="with --target: its latency target in ms (default: none)")
    fr.set_defaults(fn=cmd_front)

    d = sub.add_parser("dashboard", help="open a run's study in optuna-dashboard, on localhost",
                       formatter_class=HelpFormatter)
    d.add_argument("run", help="run directory (runs/NAME)")
    d.add_argument("--port", type=integer(1, 65535), default=8080, help="port on 127.0.0.1")
    d.set_defaults(fn=cmd_dashboard)

    t = sub.add_parser("train", help="fully train one trial's architecture and measure it", formatter_class=HelpFormatter)
    t.add_argument("run", help="run directory (runs/NAME)")
    t.add_argument("--trial", required=True, help="trial number, or 'best': the most accurate front point")
    # An option left out keeps the value the trial's earlier final training was made with, so that a
    # re-run goes on with that training (or, finished, evaluates and times it again) instead of starting over
    def default(value: str) -> str:
        return f"(default: as the trial's earlier final training, else {value})"

    t.add_argument("--epochs", type=number(0), help=f"training epochs {default('4x the proxy epochs, at least 10')}")
    t.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                   help="where to train (the latency is always measured on this CPU)")
    t.add_argument("--batch-size", type=integer(2), help=f"batch size {default(FINAL_RECIPE['batch_size'])}")
    t.add_argument("--lr", type=number(0), help=f"peak AdamW learning rate {default(FINAL_RECIPE['lr'])}")
    t.add_argument("--mixup", type=number(0, low_open=False), help=f"mixup alpha, 0 = off (timm Mixup) {default(0)}")
    t.add_argument("--cutmix", type=number(0, low_open=False), help=f"cutmix alpha, 0 = off {default(0)}")
    t.add_argument("--randaugment", type=parsed_by(checked_randaugment_config, ValueError),
                   help=f"timm RandAugment config, e.g. rand-m9-mstd0.5, or off {default('off')}")
    t.add_argument("--holdout", action=argparse.BooleanOptionalAction,
                   help="train on the search's training part only and record the held-out validation accuracy "
                        f"after every epoch (the long-training reference's protocol) {default('the whole split')}")
    t.set_defaults(fn=cmd_train)

    e = sub.add_parser("export", help="export a trained trial to ONNX and torch.export files",
                       formatter_class=HelpFormatter)
    e.add_argument("run", help="run directory (runs/NAME)")
    e.add_argument("--trial", required=True, help="trial number, or 'best': the most accurate front point")
    e.add_argument("--out", required=True, type=given_path, help="directory to write the model files to")
    e.add_argument("--format", type=export_format_list, default=",".join(EXPORT_FORMATS),
                   help="comma-separated deployed formats (the fine-tunable model.safetensors and config.json are "
                        "always written)")
    e.add_argument("--force", action="store_true", help="replace the model files of a non-empty --out")
    e.add_argument("--int8", action="store_true", help="also model.int8.onnx: onnxruntime static quantization "
                                                       "(QDQ, per-channel weights) calibrated on training images, "
                                                       "verified on the test images and timed")
    e.set_defaults(fn=cmd_export)


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="etnas", description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--version", action="version", version=f"etnas {version()}")
    sub = p.add_subparsers(dest="command", required=True)
    _space_parsers(sub)
    _latency_parsers(sub)
    _run_parser(sub)
    _run_dir_parsers(sub)
    return p


def show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """A warning is one line on stderr, like an error, not Python's two lines pointing at our source."""
    console.print(f"[yellow]warning:[/] {escape(str(message))}", highlight=False, soft_wrap=True)


# The errors that report bad input, by module: looked up only in modules a command imported, since
# only those can have raised them (importing them all would cost every command torch and timm).
INPUT_ERRORS = {"search_space.spec": "SpecError", "search_space.operators": "OperatorError",
                "latency_models.table": "TableError", "latency_models.predictor": "ModelFileError",
                "evaluators.sources": "DataError", "nas": "SearchError", "evaluators.train": "TrainingFailed"}


def is_input_error(e: Exception) -> bool:
    return isinstance(e, UserError) or any(
        isinstance(e, getattr(sys.modules[module], name, ())) for module, name in INPUT_ERRORS.items()
        if module in sys.modules)


# What to do about a file the command could not read or write, where "choose another path" is not all:
# the path may be a run directory to resume, or a model's own folder.
NOT_PERMITTED = "give this user the right to read or write it (or, for an output, choose another path)"
FULL = "free space, then re-run the same command: what was already saved is kept"
OS_ERROR_ADVICE = {errno.EACCES: NOT_PERMITTED, errno.EPERM: NOT_PERMITTED, errno.ENOSPC: FULL, errno.EDQUOT: FULL,
                   errno.EROFS: "its file system is read-only: remount it writable (or, for an output, choose a path "
                                "on another one)"}

SIGTERM_RECEIVED = threading.Event()


def interrupt_on_sigterm(signum: int, frame: object) -> None:
    """SIGTERM (a scheduler's stop, `timeout`, `kill`) is handled as Ctrl-C is. It is remembered
    apart, since Ray's waits re-raise whatever a signal handler raised as a plain KeyboardInterrupt."""
    SIGTERM_RECEIVED.set()
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> None:
    warnings.showwarning = show_warning
    SIGTERM_RECEIVED.clear()
    signal.signal(signal.SIGTERM, interrupt_on_sigterm)
    args = build_parser().parse_args(argv)
    try:
        args.fn(args)
    except BrokenPipeError as e:
        if not stdout_closed():  # another pipe (a worker's, say): an error like any other
            console.print(f"[red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
            sys.exit(2)
        # `etnas front RUN | head`: the reader has read what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second failure at exit's flush
        sys.exit(1)  # as rich exits where its console meets a closed pipe
    except OSError as e:  # an output path that is a file, a directory, or not writable
        where = f"{e.filename}: " if e.filename else ""
        advice = OS_ERROR_ADVICE.get(e.errno, "choose another path")
        console.print(f"[red]error:[/] {escape(f'{where}{e.strerror or e}')}; {advice}", highlight=False,
                      soft_wrap=True)
        sys.exit(2)
    except Exception as e:
        if not is_input_error(e):
            raise
        console.print(f"[red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        signal.signal(signal.SIGINT, say_still_stopping)
        stop, status = ("terminated", 143) if SIGTERM_RECEIVED.is_set() else ("interrupted", 130)
        console.print(f"[yellow]{stop}[/]: what was already saved is kept; re-run the same command to resume")
        sys.exit(status)


def stdout_closed() -> bool:
    """Whether standard output is a pipe whose reader has gone (poll reports an error on it)."""
    try:
        poll = select.poll()
        poll.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & (select.POLLERR | select.POLLHUP) for _, events in poll.poll(0))
    except (OSError, ValueError):  # no file descriptor: not a pipe
        return False


def say_still_stopping(signum: int, frame: object) -> None:
    """A second Ctrl-C during the first one's clean-up: let it finish (Ray's shutdown kills are
    bounded by timeouts), since leaving mid-way orphans its agents; a third one interrupts it."""
    console.print("[yellow]still stopping the worker processes[/]: a few seconds (Ctrl-C again to leave now)")
    signal.signal(signal.SIGINT, signal.default_int_handler)


if __name__ == "__main__":
    main()

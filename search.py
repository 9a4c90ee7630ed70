#!/usr/bin/env python
"""etnas command line: parse, call, print. Every subcommand's work lives in a package module."""
from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

from rich.console import Console
from rich.table import Table

console = Console(stderr=True)
warnings.filterwarnings("ignore", message=".*torch.jit.script.*deprecated", category=FutureWarning)


class UserError(Exception):
    """Bad input: reported as one line, exit code 2."""


# --- space ------------------------------------------------------------------------------------
def cmd_space_sample(args) -> None:
    from search_space import SearchSpace, sample

    space = SearchSpace.load(args.space) if args.space else SearchSpace()
    rng = __import__("numpy").random.default_rng(args.seed)
    specs = [sample(rng, space, args.img_size, args.in_chans, args.num_classes) for _ in range(args.n)]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("".join(s.to_json() + "\n" for s in specs))
    console.print(f"wrote {len(specs)} specs ({len({s.arch_id for s in specs})} distinct) to {args.out}")


def cmd_space_check(args) -> None:
    import numpy as np
    from rich.progress import Progress

    from search_space import SearchSpace, presets, sample
    from search_space.check import check_space

    space = SearchSpace.load(args.space) if args.space else SearchSpace()
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
        table = Table("name", "ok", "max rel err", "MFLOPs", "params", "architecture")
        for r in report["archs"]:
            table.add_row(r["name"], "yes" if r["ok"] else "[red]NO", f"{r['max_rel_err']:.1e}",
                          f"{r['flops'] / 1e6:.1f}", f"{r['params']:,}", r["short"])
        Console().print(table)
        Console().print({k: v for k, v in report["coverage"].items() if k in ("norm", "attention")})
        for f in report["failures"]:
            Console().print(f"[red]failure:[/] {f}")
    if report["failures"]:
        sys.exit(1)


# --- latency ----------------------------------------------------------------------------------
def progress_bar():
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TextColumn("ETA"), TimeRemainingColumn(), TextColumn("{task.fields[info]}"), console=console)


def cmd_measure(args) -> None:
    import numpy as np

    from latency_models.measure import fingerprint, fingerprint_id, measure_all, measured_counts, remeasured
    from search_space import SearchSpace, load_specs, presets, sample
    from search_space.presets import SEARCH_SCALE

    if args.device == "cuda":
        import torch
        if not torch.cuda.is_available():
            raise UserError("--device cuda asked for, but torch sees no CUDA device; use --device cpu")
    shape = (args.img_size, args.in_chans, args.num_classes)
    specs = load_specs(args.specs) if args.specs else []
    space = SearchSpace.load(args.space) if args.space else SearchSpace()
    rng = np.random.default_rng(args.seed)
    specs += [sample(rng, space, *shape) for _ in range(args.n)]
    for scale in (1.0, SEARCH_SCALE):
        specs += presets(*shape, width_mult=scale, depth_mult=scale).values()
    unique = {s.arch_id: s for s in specs}
    fid = fingerprint_id(fingerprint(args.device, args.runtime, args.threads, args.batch, args.img_size))
    done = measured_counts(Path(args.out), fid)
    total = sum((done.get(a, 0) == 0) + (remeasured(a, args.remeasure) and done.get(a, 0) < 2) for a in unique)
    console.print(f"{len(unique)} architectures, {total} timings to take "
                  f"({len(unique) - sum(done.get(a, 0) == 0 for a in unique)} already measured for fingerprint {fid})")
    with progress_bar() as bar:
        task = bar.add_task("measuring", total=total, info="")
        measure_all(unique.values(), Path(args.out), args.runtime, args.device, args.threads, args.batch,
                    args.remeasure, on_row=lambda r: bar.update(task, advance=1,
                                                                 info=f"{r['median_ms']:.2f} ms {r['short'][:40]}"))
    console.print(f"timings in {args.out}")


def cmd_fit_latency(args) -> None:
    from latency_models import read_table
    from latency_models.validate import fit_and_report

    model, report = fit_and_report(read_table(Path(args.csv)), args.test_fraction, args.seed, args.fingerprint)
    model.save(args.out)
    if args.json:
        print(json.dumps(report))
        return
    table = Table("held-out", "predictor", "FLOPs linear", "params linear", title=f"{report['n_test']} held-out of "
                  f"{report['n_train'] + report['n_test']} architectures ({report['fingerprint'].get('runtime')}, "
                  f"{report['fingerprint'].get('device')}, {report['fingerprint'].get('threads')} thread(s))")
    base = report["baselines"]
    for key, fmt in (("within_5", "{:.1%}"), ("within_10", "{:.1%}"), ("mape", "{:.2%}"), ("rmse_ms", "{:.3f}"),
                     ("kendall_tau", "{:.3f}")):
        table.add_row(key, fmt.format(report[key]), fmt.format(base["flops"][key]), fmt.format(base["params"][key]))
    Console().print(table)
    Console().print(f"noise floor (median relative difference of {report['noise_pairs']} re-measured "
                    f"architectures): {report['noise_floor']:.2%}; within ±10% of each other: "
                    f"{report['noise_within_10']:.1%}. Model saved to {args.out} ({report['saved_model']}).")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="search.py", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    space = sub.add_parser("space", help="sample and self-check the search space").add_subparsers(
        dest="space_command", required=True)
    for name, fn, help_ in (("sample", cmd_space_sample, "write N sampled specs as JSONL"),
                            ("check", cmd_space_check, "build, train a step and deploy presets + N samples")):
        sp = space.add_parser(name, help=help_)
        sp.add_argument("--n", type=int, default=20)
        sp.add_argument("--seed", type=int, default=0)
        sp.add_argument("--img-size", type=int, default=32)
        sp.add_argument("--in-chans", type=int, default=3)
        sp.add_argument("--num-classes", type=int, default=10)
        sp.add_argument("--space", help="JSON file overriding the search space's choices")
        sp.set_defaults(fn=fn)
    space.choices["sample"].add_argument("--out", required=True)
    space.choices["check"].add_argument("--json", action="store_true")

    m = sub.add_parser("measure", help="time deployed architectures on this device into a CSV")
    m.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    m.add_argument("--runtime", choices=["torch", "onnxruntime"], default="torch")
    m.add_argument("--threads", type=int, default=1)
    m.add_argument("--batch", type=int, default=1)
    m.add_argument("--n", type=int, default=400, help="sampled architectures (the presets are always added)")
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--specs", help="JSONL of specs to measure (from `space sample`)")
    m.add_argument("--img-size", type=int, default=32)
    m.add_argument("--in-chans", type=int, default=3)
    m.add_argument("--num-classes", type=int, default=10)
    m.add_argument("--space", help="JSON file overriding the search space's choices")
    m.add_argument("--remeasure", type=float, default=0.1, help="share measured twice, for the noise floor")
    m.add_argument("--out", required=True)
    m.set_defaults(fn=cmd_measure)

    f = sub.add_parser("fit-latency", help="fit and validate a latency predictor on a timing CSV")
    f.add_argument("csv")
    f.add_argument("--out", required=True)
    f.add_argument("--json", action="store_true")
    f.add_argument("--test-fraction", type=float, default=0.25)
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--fingerprint", help="device fingerprint id to fit, when the CSV holds several")
    f.set_defaults(fn=cmd_fit_latency)
    return p


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    from latency_models import ModelFileError, TableError
    from search_space import SpecError

    try:
        args.fn(args)
    except (UserError, SpecError, TableError, ModelFileError, FileNotFoundError) as e:
        console.print(f"[red]error:[/] {e}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]: what was already saved is kept; re-run the same command to resume")
        sys.exit(130)


if __name__ == "__main__":
    main()

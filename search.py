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
    return p


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    from search_space import SpecError

    try:
        args.fn(args)
    except (UserError, SpecError, FileNotFoundError) as e:
        console.print(f"[red]error:[/] {e}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]: what was already saved is kept; re-run the same command to resume")
        sys.exit(130)


if __name__ == "__main__":
    main()

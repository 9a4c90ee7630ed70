"""The soak (issue 31): a digits search whose driver is killed with SIGKILL at random every 20-60 s
and started again with the same command until it finishes, beside an uninterrupted run of the same
settings. From the study's own records it counts rung trainings lost (a finished trial that
changed or vanished, an interrupted one never finished), duplicated (an architecture trained by two
trials) and retrained (an interrupted rung started again), and compares the two fronts.

    .venv/bin/python benchmarks/soak.py --latency-model runs/latency/MODEL [--trials 300] \
        [--out benchmarks/results/soak]

Re-running the same command resumes both runs where they stopped (the uninterrupted run's time is
then its last start's only); results.json is rewritten at the end.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import optuna

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.jobs import append_jsonl, descendants, proc_stat, read_jsonl  # noqa: E402
from benchmarks.search_engine import hypervolume  # noqa: E402
from nas.ladder import rung_end_steps  # noqa: E402
from nas.records import trial_state  # noqa: E402
from nas.rundir import load_run_study  # noqa: E402
from nas.schema import SETTLED_STATES, UNCOUNTED_STATES, Attr, TrialState  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
# small rungs (6, 18 and 42 optimizer steps on digits): 300 trials take minutes, long enough for tens of kills
SETTINGS = ["--dataset", "digits", "--target-ms", "p50", "--epochs", "2", "--base-epochs", "0.25", "--eta", "2",
            "--workers", "2", "--seed", "1"]


def run_command(name: str, args: argparse.Namespace) -> list[str]:
    return [sys.executable, str(ROOT / "search.py"), "run", "--name", name, "--runs-dir", str(args.out / "runs"),
            "--trials", str(args.trials), "--latency-model", str(args.latency_model), *SETTINGS]


def alive(pids: set[int]) -> dict[int, str]:
    """The processes of `pids` still running (not zombies), with their command names."""
    out = {}
    for pid in pids:
        stat = proc_stat(pid)
        if stat is not None and stat[0] != "Z":
            try:
                out[pid] = Path(f"/proc/{pid}/cmdline").read_text().split("\0")[0]
            except OSError:
                pass
    return out


def is_worker(command: str) -> bool:
    """A Ray worker process (training or idle), as opposed to Ray's agents, which wait a minute or
    two before they notice their raylet is gone, and hold nothing of the run."""
    return command.startswith("ray::") and not command.endswith("Agent")


def kill_driver(proc: subprocess.Popen, grace_s: float = 30.0) -> dict[str, int]:
    """SIGKILL the driver alone, as a crash or the OOM killer would; wait for the Ray workers it
    started to go with it. Returns the processes still there after the grace period, by name:
    workers then are killed, so that no training of the old run writes beside the new one."""
    below = descendants(proc.pid)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.time() + grace_s
    while any(map(is_worker, alive(below).values())) and time.time() < deadline:
        time.sleep(0.5)
    left = alive(below)
    for pid, command in left.items():
        if is_worker(command):
            os.kill(pid, signal.SIGKILL)
    return {name: list(left.values()).count(name) for name in set(left.values())}


def snapshot(run_dir: Path) -> dict[str, object]:
    """The study as the kill left it: the finished trials' values, and the trials in flight."""
    study = load_run_study(run_dir)
    trials = study.get_trials(deepcopy=False)
    return {"complete": {t.number: t.values for t in trials if t.state == optuna.trial.TrialState.COMPLETE},
            "in_flight": [t.number for t in trials if t.state == optuna.trial.TrialState.RUNNING]}


def killed_run(args: argparse.Namespace, log: Path) -> float:
    """Start the search, kill it after a random 20-60 s, start it again, until it exits by itself;
    each kill is appended to kills.jsonl. Returns the seconds the runs took in all."""
    run_dir, logged = args.out / "runs" / "killed", read_jsonl(log)
    done = [k for k in logged if "kill" in k]
    rng = np.random.default_rng(args.seed + len(done))
    spent = sum(k["ran_s"] for k in logged)
    if any(k.get("finished") == 0 for k in logged):
        return spent
    while True:
        start = time.time()
        with (args.out / "killed.log").open("a") as out:
            proc = subprocess.Popen(run_command("killed", args), stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
            try:
                rc = proc.wait(timeout=rng.uniform(args.kill_min, args.kill_max))
            except subprocess.TimeoutExpired:
                rc = None
        if rc is not None:
            append_jsonl(log, {"finished": rc, "ran_s": time.time() - start})
            if rc != 0:
                raise SystemExit(f"the killed run exited with {rc}: see {args.out / 'killed.log'}")
            return spent + time.time() - start
        ran = time.time() - start
        outlived = kill_driver(proc)
        spent += ran
        snap = snapshot(run_dir) if (run_dir / "study.db").exists() else {"complete": {}, "in_flight": []}
        append_jsonl(log, {"kill": len(done) + 1, "ran_s": ran, "outlived": outlived, **snap})
        done.append(snap)
        print(f"kill {len(done)} after {ran:.0f} s: {len(snap['complete'])} trials complete, "
              f"{len(snap['in_flight'])} in flight; still there after the grace period: {outlived or 'nothing'}",
              file=sys.stderr, flush=True)


def plain_run(args: argparse.Namespace) -> float:
    start = time.time()
    with (args.out / "plain.log").open("a") as out:
        subprocess.run(run_command("plain", args), stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, check=True)
    return time.time() - start


def chains(trials: list[optuna.trial.FrozenTrial]) -> list[list[optuna.trial.FrozenTrial]]:
    """Each candidate's trial followed by the copies re-queued after each kill that interrupted it.
    A trial queued twice for one interrupted trial (a kill between the queuing and the closing)
    starts a chain of its own, so that its training counts as a duplicate."""
    copies: dict[int, list[optuna.trial.FrozenTrial]] = {}
    for t in trials:
        if Attr.REQUEUED_FROM in t.user_attrs:
            copies.setdefault(t.user_attrs[Attr.REQUEUED_FROM], []).append(t)
    extra = {t.number for queued in copies.values() for t in queued[1:]}
    out = []
    for head in (t for t in trials if Attr.REQUEUED_FROM not in t.user_attrs or t.number in extra):
        chain = [head]
        while chain[-1].number in copies:
            chain.append(copies[chain[-1].number][0])
        out.append(chain)
    return out


def rung_start(trial: optuna.trial.FrozenTrial, rung: int) -> int:
    """The optimizer step rung `rung` begins at: where the rung below it ended."""
    return rung_end_steps(trial.user_attrs)[rung - 1] if rung else 0


def audit(run_dir: Path, kills: list[dict]) -> dict:
    """Lost, duplicated and retrained rung trainings of a run, from its study and the kills' snapshots."""
    trials = load_run_study(run_dir).get_trials(deepcopy=False)
    by_number = {t.number: t for t in trials}
    finished_then = {int(n): v for k in kills for n, v in k["complete"].items()}
    changed = [n for n, v in finished_then.items() if n not in by_number
               or by_number[n].state != optuna.trial.TrialState.COMPLETE or by_number[n].values != v]
    all_chains = chains(trials)
    unfinished = [c[0].number for c in all_chains if trial_state(c[-1]) not in (*SETTLED_STATES, TrialState.INFEASIBLE,
                                                                               TrialState.DUPLICATE)]
    trained = [c for c in all_chains if trial_state(c[-1]) in SETTLED_STATES and c[-1].user_attrs.get(Attr.RUNG_ACCS)]
    arch_ids = [c[-1].user_attrs[Attr.ARCH_ID] for c in trained]
    duplicated = sum(len(c[-1].user_attrs[Attr.RUNG_ACCS]) for i, c in enumerate(trained)
                     if c[-1].user_attrs[Attr.ARCH_ID] in arch_ids[:i])
    retrained = from_checkpoint = nothing_left = 0
    for chain in trained:
        final = chain[-1]
        for interrupted in chain[:-1]:
            rung = len(interrupted.user_attrs.get(Attr.RUNG_ACCS) or [])
            if rung < len(final.user_attrs[Attr.RUNG_ACCS]):  # the rung in flight was trained again
                retrained += 1
                from_checkpoint += final.user_attrs[Attr.STARTED_AT][rung] > rung_start(final, rung)
                nothing_left += final.user_attrs[Attr.TRAINED_STEPS][rung] == 0  # finished, not yet recorded
    return {"trials_counted": sum(trial_state(t) not in UNCOUNTED_STATES for t in trials),
            "trials_interrupted": sum(trial_state(t) == TrialState.INTERRUPTED for t in trials),
            "rung_trainings": sum(len(c[-1].user_attrs[Attr.RUNG_ACCS]) for c in trained),
            "lost_finished_trials": changed, "lost_interrupted_trials": unfinished,
            "duplicated_rung_trainings": duplicated, "retrained_rung_trainings": retrained,
            "retrained_from_a_checkpoint": int(from_checkpoint), "retrained_with_no_step_left": int(nothing_left),
            "relaunches": sum(t.user_attrs.get(Attr.RELAUNCHES, 0) for t in trials)}


def front_figures(run_dir: Path) -> dict:
    target = json.loads((run_dir / "config.json").read_text())["target_ms"]
    front = json.loads((run_dir / "front.json").read_text())
    return {"target_ms": target, "front_size": len(front), "best_val_acc": max(f["val_acc"] for f in front),
            "hypervolume": round(hypervolume([(f["pred_ms"], f["val_acc"]) for f in front], target), 4),
            "front": [{"trial": f["trial"], "val_acc": f["val_acc"], "pred_ms": round(f["pred_ms"], 4),
                       "preset": f["preset"]} for f in front]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--latency-model", type=Path, required=True, help="latency model file both runs search under")
    p.add_argument("--trials", type=int, default=300)
    p.add_argument("--kill-min", type=float, default=20.0, help="shortest time before a kill, s")
    p.add_argument("--kill-max", type=float, default=60.0, help="longest time before a kill, s")
    p.add_argument("--seed", type=int, default=0, help="seed of the kill times")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/soak")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    log, plain_record = args.out / "kills.jsonl", args.out / "plain.json"
    if not plain_record.exists():  # written once the uninterrupted run finished, with its time
        plain_record.write_text(json.dumps({"wall_s": plain_run(args)}))
    killed_s = killed_run(args, log)
    kills = [k for k in read_jsonl(log) if "kill" in k]
    runs = args.out / "runs"
    results = {
        "command": " ".join(["benchmarks/soak.py", *sys.argv[1:]]), "settings": SETTINGS, "trials": args.trials,
        "plain": {**json.loads(plain_record.read_text()), **audit(runs / "plain", []), **front_figures(runs / "plain")},
        "killed": {"wall_s": killed_s, "kills": len(kills), "in_flight_at_kills": sum(len(k["in_flight"]) for k in kills),
                   "ray_workers_outliving_the_driver": sum(n for k in kills for c, n in k["outlived"].items() if is_worker(c)),
                   **audit(runs / "killed", kills), **front_figures(runs / "killed")}}
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    print(json.dumps({k: {m: v for m, v in r.items() if m != "front"} for k, r in results.items()
                      if k in ("plain", "killed")}, indent=1))


if __name__ == "__main__":
    main()

"""The long-training reference: how well does each cheap accuracy signal predict the ranking that
long training gives? (issue 13)

  pool      draw the pool: the six presets at search scale, plus --n-sampled architectures drawn
            with --seed from the default space at 32x32x3 and spread evenly over log predicted
            latency between the space's 10th and 90th percentile (CPU torch latency model, fitted
            from --latency-table), picking in each latency bin the candidate that adds the most
            patch / stem / downsampling / norm / attention / depth values the pool lacks. Writes
            OUT/pool.jsonl and OUT/pool.json (how it was drawn).
  train     the long recipe (RECIPE) on the search's training part of the split (90%): the accuracy on
            the fixed 10% validation split after every epoch, then on the test split. Every pool
            member with seed 0, then, once all are done, with seed 1 the --reseed architectures
            whose first training took least time per epoch.
            Trainings run --jobs at a time, one thread each, checkpointed every epoch under
            --work; each finished one is appended to OUT/reference.jsonl and never redone.
  fidelity  score every pool member (seed 0) by each method (proxy budgets, params, FLOPs, the long
            curve read at early epochs) into OUT/fidelity.json; proxy trainings are kept in
            OUT/fidelity_runs.jsonl and never redone.
  multifidelity
            the search's multi-fidelity allocation on the pool: successive halving over rungs of
            growing budget (--base-epochs to --top-epochs on the whole training part, eta-fold,
            each rung continuing the last from its checkpoint, the schedule's cosine restarting at
            each rung), for every promotion rule; each (architecture, rung) training is kept in
            OUT/multifidelity_runs.jsonl and never redone, and only what some rule promotes is
            trained. The rules' scores and compute go into OUT/fidelity.json.
  report    (re)write OUT/fidelity.json from the runs so far, then Kendall tau, Spearman rho, top-5
            recall and regret at the pool's 25/50/75th percentile latency of every method, and the
            seed noise floor, as a markdown table.

    .venv/bin/python benchmarks/reference.py pool
    .venv/bin/python benchmarks/reference.py train --jobs 2        # hours of CPU; resumable
    .venv/bin/python benchmarks/reference.py fidelity --jobs 2
    .venv/bin/python benchmarks/reference.py multifidelity --jobs 2
    .venv/bin/python benchmarks/reference.py report
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
from scipy.stats import kendalltau, spearmanr

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.jobs import read_jsonl, run_jobs  # noqa: E402
from evaluators.data import DataError, load_dataset  # noqa: E402
from evaluators.recipes import FINAL_RECIPE, PROXY_RECIPE  # noqa: E402
from evaluators.train import TrainConfig, accuracy, train  # noqa: E402
from latency_models import LatencyModel, read_table  # noqa: E402
from latency_models.features import total_flops  # noqa: E402
from latency_models.measure import cpu_model  # noqa: E402
from latency_models.validate import per_architecture  # noqa: E402
from nas.dispatch import rung_train_config  # noqa: E402
from nas.rungs import PROMOTION_RULES, Rungs, rung_score, successive_halving  # noqa: E402
from search_space import ArchSpec, SearchSpace, build_model, count_params, presets, sample  # noqa: E402
from search_space.presets import SEARCH_SCALE  # noqa: E402

IMG, CHANS, CLASSES = 32, 3, 10
RECIPE = {"epochs": 15, **FINAL_RECIPE}  # the final training's recipe (weight decay 0.05, 10% warm-up, smoothing 0.1)
PROXIES = {  # name -> (epochs, share of the training part): today's proxy first
    "proxy-1ep-10pct": (1, 0.1),
    "proxy-2ep-25pct": (2, 0.25),
    "proxy-4ep-50pct": (4, 0.5),
}
CURVE_EPOCHS = (1, 3, 5, RECIPE["epochs"])  # the long training's validation accuracy read at these epochs
RUNG_RECIPES = {"proxy": PROXY_RECIPE, "final": FINAL_RECIPE}  # batch size and learning rate of rung trainings
DEFAULT_TABLE = ROOT / "benchmarks" / "results" / "latency_cpu_xeon" / "xeon-torch.csv"
OUT = ROOT / "benchmarks" / "results" / "reference"


def latency_model(table: Path) -> LatencyModel:
    """The predictor fitted on every architecture of a timing table (the mean of repeated rows)."""
    archs = per_architecture(read_table(table))
    specs = [ArchSpec.from_json(s) for s in archs["spec_json"]]
    return LatencyModel().fit(specs, archs["median_ms"].to_numpy(float), seed=0)


def traits(spec: ArchSpec) -> set[tuple[str, object]]:
    """The values the pool should cover."""
    blocks = sum(s.depth for s in spec.stages)
    depth_bucket = next(b for b in (1, 3, 6, 9, 12, 99) if blocks <= b)
    out = {("patch", spec.patch), ("stem", spec.stem), ("downsample", spec.downsample),
           ("blocks", depth_bucket), ("stages", len(spec.stages))}
    return out | {("norm", s.norm) for s in spec.stages} | {("attention", a) for a in spec.block_attentions()}


def draw_pool(model: LatencyModel, n_sampled: int, seed: int, candidates: int,
              max_mflops: float) -> tuple[list[dict], dict]:
    rng = np.random.default_rng(seed)
    cands = [sample(rng, SearchSpace(), IMG, CHANS, CLASSES) for _ in range(candidates)]
    ms = model.predict(cands)
    lo, hi = np.percentile(ms, [10, 90])
    edges = np.geomspace(lo, hi, n_sampled + 1)
    pool = [{"origin": name, "spec": s} for name, s in presets(IMG, CHANS, CLASSES, SEARCH_SCALE, SEARCH_SCALE).items()]
    covered = set().union(*(traits(p["spec"]) for p in pool))
    seen = {p["spec"].arch_id for p in pool}
    log_flops = np.log([total_flops(c) for c in cands])
    for b in range(n_sampled):
        inside = [i for i in range(len(cands)) if edges[b] <= ms[i] <= edges[b + 1] and cands[i].arch_id not in seen]
        typical = np.median(log_flops[inside])
        affordable = [i for i in inside if log_flops[i] <= np.log(max_mflops * 1e6)] or inside
        pick = max(affordable, key=lambda i: (len(traits(cands[i]) - covered), -abs(log_flops[i] - typical)))
        covered |= traits(cands[pick])
        seen.add(cands[pick].arch_id)
        pool.append({"origin": f"sampled (bin {b})", "spec": cands[pick]})
    pred = model.predict([p["spec"] for p in pool])
    rows = [{"arch_id": p["spec"].arch_id, "origin": p["origin"], "short": p["spec"].short(),
             "spec": json.loads(p["spec"].to_json()), "pred_ms": round(float(t), 4),
             "mflops": round(total_flops(p["spec"]) / 1e6, 2)} for p, t in zip(pool, pred)]
    how = {"seed": seed, "candidates": candidates, "space": "SearchSpace() defaults at 32x32x3, 10 classes",
           "latency_percentiles_10_90_ms": [round(float(lo), 4), round(float(hi), 4)], "bins": n_sampled,
           "bin_edges_ms": [round(float(e), 4) for e in edges],
           "rule": f"one candidate per log-latency bin, among those of at most {max_mflops} MFLOPs (training "
                   f"cost): the one adding the most uncovered traits, then the one nearest the bin's median "
                   f"log FLOPs (typical of its bin)",
           "traits_covered": sorted(map(str, covered))}
    return rows, how


def cmd_pool(args) -> None:
    model = latency_model(Path(args.latency_table))
    rows, how = draw_pool(model, args.n_sampled, args.seed, args.candidates, args.max_mflops)
    how["latency_table"] = str(Path(args.latency_table).relative_to(ROOT))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "pool.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (args.out / "pool.json").write_text(json.dumps(how, indent=1))
    for r in rows:
        print(f"{r['pred_ms']:8.3f} ms {r['mflops']:8.1f} MFLOPs  {r['origin']:18s} {r['short']}")
    # rough 1-thread cost on this project's 2-core CPU: deit-tiny (48 MFLOPs) 25 min, 5 MFLOPs models ~5 min
    est = sum(4 + 0.45 * r["mflops"] for r in rows)
    print(f"estimated long training: ~{est / 60:.1f} CPU-h for the first seed", file=sys.stderr)


_DATA: dict = {}


def dataset(path: str) -> dict:
    """The training part, validation split and test split, loaded once per worker process."""
    if not _DATA:
        data = load_dataset(f"npz:{path}")
        mean, std = data.channel_stats()
        _DATA.update(zip(("x", "y", "x_val", "y_val"), data.holdout(seed=0)))
        _DATA.update(x_test=data.x_test, y_test=data.y_test, mean=mean, std=std)
    return _DATA


def train_long(row: dict, seed: int, data_path: str, work: str, device: str, epochs: float, threads: int = 1) -> dict:
    """The long recipe on one member; `threads` changes its speed, not its recipe."""
    import torch

    from evaluators.train import Normalizer

    d = dataset(data_path)
    spec = ArchSpec.from_dict(row["spec"])
    cfg = TrainConfig(**{**RECIPE, "epochs": epochs}, seed=seed, threads=threads, device=device)
    ckpt = Path(work) / f"{row['arch_id']}-s{seed}.pt"
    res = train(spec, d["x"], d["y"], d["x_val"], d["y_val"], cfg, mean=d["mean"], std=d["std"], checkpoint=ckpt)
    test = accuracy(res.model, d["x_test"], d["y_test"], Normalizer(d["mean"], d["std"], spec.img_size))
    ckpt.unlink(missing_ok=True)
    return {"arch_id": row["arch_id"], "spec": row["spec"], "short": row["short"], "origin": row["origin"],
            "seed": seed, "epochs": epochs, "recipe": dataclasses.asdict(cfg), "test_acc": round(test, 4),
            "val_curve": [round(v, 4) for v in res.history], "pred_ms": row["pred_ms"],
            "params": count_params(build_model(spec)), "flops": total_flops(spec), "train_s": round(res.train_s, 1),
            "device": device if device != "cpu" else f"cpu ({cpu_model()}), {threads} thread{'s' * (threads > 1)}",
            "torch": torch.__version__}


def reseeded(pool: list[dict], rows: list[dict], n: int) -> list[dict]:
    """The `n` pool members whose first training took least time per epoch: the seed noise needs
    pairs more than it needs costly ones."""
    per_epoch = {a: r["train_s"] / r["epochs"] for a, r in first_seed(rows).items()}
    return sorted((r for r in pool if r["arch_id"] in per_epoch), key=lambda r: per_epoch[r["arch_id"]])[:n]


def cmd_train(args) -> None:
    """Every pool member with seed 0, cheapest first; once all are done, the --reseed quickest
    again with seed 1 (chosen from the finished first trainings, so the pick is fixed)."""
    pool = read_jsonl(args.out / "pool.jsonl")
    if not pool:
        sys.exit(f"no pool in {args.out}; run `benchmarks/reference.py pool` first")
    args.work.mkdir(parents=True, exist_ok=True)
    for seed in (0, 1):
        rows = [r for r in read_jsonl(args.out / "reference.jsonl") if r["epochs"] == args.epochs]
        done = {(r["arch_id"], r["seed"]) for r in rows}
        if seed == 1 and any((r["arch_id"], 0) not in done for r in pool):
            return  # a --limit stopped the first seeds short
        wanted = sorted(pool, key=lambda r: r["mflops"]) if seed == 0 else reseeded(pool, rows, args.reseed)
        jobs = [(r, seed, args.data, str(args.work), args.device, args.epochs) for r in wanted
                if (r["arch_id"], seed) not in done]
        print(f"seed {seed}: {len(wanted) - len(jobs)} of {len(wanted)} trainings already done", file=sys.stderr)
        run_jobs(jobs[: args.limit or None], train_long, args.jobs, args.out / "reference.jsonl",
                 lambda r: f"{r['short']} seed {r['seed']}: test {r['test_acc']:.4f} in {r['train_s']:.0f} s")


def train_proxy(row: dict, method: str, data_path: str) -> dict:
    d = dataset(data_path)
    epochs, subset = PROXIES[method]
    cfg = TrainConfig(epochs=epochs, subset=subset, seed=0, threads=1)  # the search's proxy defaults
    cpu_start = time.process_time()
    res = train(ArchSpec.from_dict(row["spec"]), d["x"], d["y"], d["x_val"], d["y_val"], cfg, mean=d["mean"],
                std=d["std"])
    return {"arch_id": row["arch_id"], "method": method, "val_acc": round(res.val_acc, 4),
            "train_s": round(res.train_s, 1), "cpu_s": round(time.process_time() - cpu_start, 1)}


def first_seed(rows: list[dict]) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for r in rows:
        if r["seed"] == 0:
            out.setdefault(r["arch_id"], r)
    return out


def seed_noise(rows: list[dict]) -> dict:
    by_arch: dict[str, dict[int, float]] = {}
    for r in rows:
        by_arch.setdefault(r["arch_id"], {})[r["seed"]] = r["test_acc"]
    pairs = [(v[0], v[1]) for v in by_arch.values() if 0 in v and 1 in v]
    if len(pairs) < 2:
        return {"pairs": len(pairs)}
    a, b = np.array(pairs).T
    return {"pairs": len(pairs), "kendall_tau": round(float(kendalltau(a, b)[0]), 4),
            "mean_abs_diff": round(float(np.mean(np.abs(a - b))), 4),
            "median_abs_diff": round(float(np.median(np.abs(a - b))), 4)}


def recall_ceiling(test_acc: dict[str, float], n_val: int, n_test: int, seed_sd: float,
                   draws: int = 20000) -> dict:
    """The top-5 recall a perfect ranker can expect on this pool: it knows each architecture's
    expected long-training accuracy (its measured test accuracy, which overstates the pool's true
    spread, so the figure is optimistic), yet, like every method here, sees it through a training
    of its own read on the validation split, while the reference is one training read on the test
    split. The noise of a training is seed_sd, that of a split the binomial of its size."""
    rng = np.random.default_rng(0)
    p = np.array(list(test_acc.values()))

    def top5(n: int) -> set:
        return set(np.argsort(-rng.binomial(n, np.clip(p + rng.normal(0.0, seed_sd, p.size), 0, 1)) / n)[:5])

    hits = np.array([len(top5(n_val) & top5(n_test)) for _ in range(draws)])
    return {"top5_recall_mean": round(float(hits.mean()), 2), "p_at_least_3": round(float((hits >= 3).mean()), 3),
            "seed_sd": round(seed_sd, 4), "n_val": n_val, "n_test": n_test}


def ceilings(long: dict[str, dict], noise: dict, n_val: int, n_test: int) -> dict:
    """recall_ceiling with split noise alone, and with the seed noise of the pairs (`seed_noise`'s
    median absolute difference, robust to the one pair far apart, as a normal's spread per training)."""
    acc = {a: r["test_acc"] for a, r in long.items()}
    seed_sd = noise.get("median_abs_diff", 0.0) / 0.6745 / np.sqrt(2)
    return {"splits_only": recall_ceiling(acc, n_val, n_test, 0.0),
            "splits_and_seeds": recall_ceiling(acc, n_val, n_test, float(seed_sd)),
            "note": "expected top-5 recall of a perfect ranker seen through a validation split of n_val images "
                    "against the reference's n_test test images (optimistic: see benchmarks/reference.py)"}


def cmd_fidelity(args) -> None:
    pool = read_jsonl(args.out / "pool.jsonl")
    runs_path = args.out / "fidelity_runs.jsonl"
    done = {(r["arch_id"], r["method"]) for r in read_jsonl(runs_path)}
    jobs = [(r, m, args.data) for m in PROXIES for r in pool if (r["arch_id"], m) not in done]
    run_jobs(jobs, train_proxy, args.jobs, runs_path,
             lambda r: f"{r['method']} {r['arch_id']}: val {r['val_acc']:.4f} in {r['train_s']:.0f} s")
    write_fidelity(args.out, pool, args.data)


def write_fidelity(out: Path, pool: list[dict], data_path: str) -> dict:
    methods: dict[str, dict] = {}
    proxy_runs = read_jsonl(out / "fidelity_runs.jsonl")
    for name in PROXIES:
        methods[name] = proxy_method([r for r in proxy_runs if r["method"] == name])
    specs = {r["arch_id"]: ArchSpec.from_dict(r["spec"]) for r in pool}
    methods["params"] = {"compute_s": 0.0, "scores": {a: count_params(build_model(s)) for a, s in specs.items()}}
    methods["flops"] = {"compute_s": 0.0, "scores": {a: total_flops(s) for a, s in specs.items()}}
    rows = read_jsonl(out / "reference.jsonl")
    long = first_seed(rows)
    for e in CURVE_EPOCHS:
        methods[f"long-curve-ep{e}"] = {
            "compute_s": sum(r["train_s"] * e / r["epochs"] for r in long.values()), "compute_of": "train_s",
            "scores": {a: r["val_curve"][e - 1] for a, r in long.items()},
            "note": f"the long recipe's validation accuracy after epoch {e} (its LR schedule is the 15-epoch one); "
                    f"compute: that share of the training's wall time"}
    mf_runs = read_jsonl(out / "multifidelity_runs.jsonl")
    for setting in sorted({RungSetting.of_row(r) for r in mf_runs}, key=lambda s: s.tag):
        methods.update(multifidelity_scores(pool, mf_runs, setting)[0])
    for m in methods.values():
        m["compute_s"] = round(m["compute_s"], 1)
    d, noise = dataset(data_path), seed_noise(rows)
    fidelity = {"methods": methods, "seed_noise": noise,
                "recall_ceiling": ceilings(long, noise, len(d["y_val"]), len(d["y_test"])),
                "compute_of": "cpu_s: CPU seconds of the training processes (one thread each); train_s: their "
                              "wall seconds, longer where other jobs shared the cores"}
    (out / "fidelity.json").write_text(json.dumps(fidelity, indent=1))
    return fidelity


# how a setting's field shows where it differs from the search's: in the ladder's tag, in its note
SHOWN = {"resolution": ("-{}px", " at {0}x{0} input"), "recipe": ("-{}", ", batch and learning rate of the {} recipe"),
         "seed": ("-s{}", ", seed {}")}


@dataclasses.dataclass(frozen=True)
class RungSetting:
    """How the pool's rungs train: their budgets, the proxy's input side where reduced, the recipe's
    batch size and learning rate (a RUNG_RECIPES name) and the seed. Rows record only what differs
    from the search's own."""

    rungs: Rungs
    resolution: int | None = None
    recipe: str = "proxy"
    seed: int = 0

    @classmethod
    def of_row(cls, r: dict) -> RungSetting:
        return cls(Rungs(r["first"], r["top_epochs"], r["eta"]), r.get("resolution"), r.get("recipe", "proxy"),
                   r.get("seed", 0))

    def differences(self) -> dict:
        """The fields, rungs aside, in which these trainings differ from the search's own."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if f.name != "rungs" and getattr(self, f.name) != f.default}

    @property
    def tag(self) -> str:
        """The ladder's name: first rung x eta - top rung, then whatever differs from the search's."""
        return (f"{self.rungs.first:.4g}x{self.rungs.eta}-{self.rungs.top_epochs:g}ep"
                + "".join(SHOWN[k][0].format(v) for k, v in self.differences().items()))

    def record(self) -> dict:
        """The setting's fields of a rung training's row (`of_row` reads them back)."""
        r = self.rungs
        return {"rungs": self.tag, "first": r.first, "eta": r.eta, "top_epochs": r.top_epochs, **self.differences()}

    def described(self) -> str:
        return (f"rungs at {', '.join(f'{b:.3g}' for b in self.rungs.budgets)} epochs of the training part"
                + "".join(SHOWN[k][1].format(v) for k, v in self.differences().items()))

    def train_config(self) -> TrainConfig:
        """The search's rung schedule with this setting's recipe, input side and seed."""
        batch_lr = {k: RUNG_RECIPES[self.recipe][k] for k in ("batch_size", "lr")}
        return rung_train_config(self.rungs, seed=self.seed, threads=1, resolution=self.resolution, **batch_lr)


def train_rung(row: dict, rung: int, setting: RungSetting, data_path: str, work: str) -> dict:
    """Train one pool member up to a rung, continuing its previous rung's checkpoint."""
    d = dataset(data_path)
    ckpt = Path(work) / f"{row['arch_id']}-{setting.tag}.pt"
    cpu_start = time.process_time()
    res = train(ArchSpec.from_dict(row["spec"]), d["x"], d["y"], d["x_val"], d["y_val"], setting.train_config(),
                mean=d["mean"], std=d["std"], checkpoint=ckpt, until_epochs=setting.rungs.budgets[rung])
    return {"arch_id": row["arch_id"], **setting.record(), "rung": rung,
            "epochs": round(setting.rungs.budgets[rung], 4), "val_acc": round(res.val_acc, 4),
            "train_s": round(res.train_s, 1), "steps": res.steps, "cpu_s": round(time.process_time() - cpu_start, 1)}


def proxy_method(runs: list[dict]) -> dict:
    """A flat proxy's compute and scores, from each architecture's last run: a re-run (say, to record
    CPU time) supersedes the earlier row, in compute as in score."""
    last = {r["arch_id"]: r for r in runs}
    return {**compute_charged([[r] for r in last.values()]), "scores": {a: r["val_acc"] for a, r in last.items()}}


def compute_charged(trainings: list[list[dict]]) -> dict:
    """What a method's trainings cost, given each candidate's rows (one per training process, rung 0
    to its highest): the sum of every row's CPU seconds where all recorded them (much less sensitive
    than wall time to other jobs sharing the cores), else each candidate's wall seconds at its last
    row (cumulative over its rungs); and which of the two it is."""
    rows = [r for candidate in trainings for r in candidate]
    if rows and all("cpu_s" in r for r in rows):
        return {"compute_s": sum(r["cpu_s"] for r in rows), "compute_of": "cpu_s"}
    return {"compute_s": sum(candidate[-1]["train_s"] for candidate in trainings), "compute_of": "train_s"}


def multifidelity_scores(pool: list[dict], runs: list[dict], setting: RungSetting) -> tuple[dict, set]:
    """Every promotion rule's successive halving over the pool, read from finished rung trainings:
    ({method: {compute_s, scores}}, the (arch_id, rung) trainings still missing, lowest rung only)."""
    rungs, tag = setting.rungs, setting.tag
    done = {(r["arch_id"], r["rung"]): r for r in runs if r["rungs"] == tag}
    latency = {r["arch_id"]: r["pred_ms"] for r in pool}
    methods, missing = {}, set()
    for rule in PROMOTION_RULES:
        needed: set = set()

        def lookup(arch_id: str, rung: int) -> float:
            if (arch_id, rung) not in done:
                needed.add((arch_id, rung))
                return 0.0
            return done[(arch_id, rung)]["val_acc"]

        reached = successive_halving(latency, lookup, rungs, rule)
        if needed:
            lowest = min(k for _, k in needed)
            missing |= {(a, k) for a, k in needed if k == lowest}
            continue
        methods[f"multifidelity-{rule}-{tag}"] = {
            **compute_charged([[done[(a, k)] for k in range(len(accs))] for a, accs in reached.items()]),
            "scores": {a: round(rung_score(accs), 4) for a, accs in reached.items()},
            "rungs_reached": {a: len(accs) - 1 for a, accs in reached.items()},
            "note": f"successive halving, promotion by {rule}, eta {rungs.eta}, {setting.described()}; "
                    "score: highest rung + validation accuracy there"}
    return methods, missing


def cmd_multifidelity(args) -> None:
    pool = read_jsonl(args.out / "pool.jsonl")
    setting = RungSetting(Rungs(args.base_epochs, args.top_epochs, args.eta), args.resolution, args.recipe, args.seed)
    runs_path = args.out / "multifidelity_runs.jsonl"
    rows = {r["arch_id"]: r for r in pool}
    args.work.mkdir(parents=True, exist_ok=True)
    print(setting.described(), file=sys.stderr)
    while True:
        _, missing = multifidelity_scores(pool, read_jsonl(runs_path), setting)
        if not missing:
            break
        # one rung at a time, every rule's needs at once: a rule's next rung depends on this one
        jobs = [(rows[a], k, setting, args.data, str(args.work))
                for a, k in sorted(missing, key=lambda m: m[0])]
        run_jobs(jobs, train_rung, args.jobs, runs_path,
                 lambda r: f"rung {r['rung']} {r['arch_id']}: val {r['val_acc']:.4f} ({r['train_s']:.0f} s in all)")
    write_fidelity(args.out, pool, args.data)


def method_figures(scores: dict[str, float], acc: dict[str, float], lat: dict[str, float]) -> dict:
    ids = [a for a in acc if a in scores]
    s, a = np.array([scores[i] for i in ids]), np.array([acc[i] for i in ids])
    top5 = set(sorted(acc, key=lambda i: -acc[i])[:5])
    picked = set(sorted(ids, key=lambda i: -scores[i])[:5])
    regrets = []
    for t in np.percentile(list(lat.values()), [25, 50, 75]):
        within = [i for i in acc if lat[i] <= t]
        scored = [i for i in within if i in scores]
        pick = max(scored, key=lambda i: scores[i]) if scored else None
        regrets.append(max(acc[i] for i in within) - acc[pick] if pick else float("nan"))
    return {"tau": kendalltau(s, a)[0], "rho": spearmanr(s, a)[0], "top5": len(top5 & picked),
            "regret_pts": [100 * r for r in regrets], "scored": len(ids)}


def cmd_report(args) -> None:
    fid = write_fidelity(args.out, read_jsonl(args.out / "pool.jsonl"), args.data)  # from the runs so far
    rows = read_jsonl(args.out / "reference.jsonl")
    long = first_seed(rows)
    acc = {a: r["test_acc"] for a, r in long.items()}
    lat = {a: r["pred_ms"] for a, r in long.items()}
    print(f"{len(long)} architectures, {sum(r['train_s'] for r in rows) / 3600:.1f} h of long training "
          f"(wall, one thread each); seed noise: {fid['seed_noise']}")
    for name, c in fid["recall_ceiling"].items():
        if name != "note":
            print(f"top-5 recall a perfect ranker can expect ({name.replace('_', ' ')}): {c['top5_recall_mean']}/5, "
                  f"3/5 or more with probability {c['p_at_least_3']}")
    print()
    print("| method | compute (s) | Kendall tau | Spearman rho | top-5 recall | regret p25 / p50 / p75 (pt) |")
    print("|---|---|---|---|---|---|")
    for name, m in fid["methods"].items():
        f = method_figures(m["scores"], acc, lat)
        regret = " / ".join(f"{r:.1f}" for r in f["regret_pts"])
        partial = f" ({f['scored']} of {len(acc)} scored)" if f["scored"] < len(acc) else ""
        print(f"| {name}{partial} | {m['compute_s']:.0f} {m.get('compute_of', '')} | {f['tau']:.3f} | "
              f"{f['rho']:.3f} | {f['top5']}/5 | {regret} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=OUT, help="results directory (committed)")
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "cifar10.npz"), help="npz dataset")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pool", help="draw the pool")
    p.add_argument("--latency-table", default=str(DEFAULT_TABLE), help="CPU torch timing table to fit")
    p.add_argument("--n-sampled", type=int, default=18)
    p.add_argument("--seed", type=int, default=2026)
    p.add_argument("--candidates", type=int, default=4000)
    p.add_argument("--max-mflops", type=float, default=30.0, help="training-cost cap on sampled members")
    t = sub.add_parser("train", help="the long trainings (resumable)")
    t.add_argument("--jobs", type=int, default=2, help="trainings at once, one thread each")
    t.add_argument("--reseed", type=int, default=6,
                   help="architectures trained again with seed 1 (the quickest per epoch)")
    t.add_argument("--work", type=Path, default=ROOT / "runs" / "reference", help="checkpoints (not committed)")
    t.add_argument("--device", default="cpu")
    t.add_argument("--epochs", type=float, default=RECIPE["epochs"], help="default: %(default)s (the reference)")
    t.add_argument("--limit", type=int, default=0, help="stop after this many trainings (0: all)")
    f = sub.add_parser("fidelity", help="score the pool by every cheap method")
    f.add_argument("--jobs", type=int, default=2)
    m = sub.add_parser("multifidelity", help="the search's multi-fidelity allocation on the pool")
    m.add_argument("--jobs", type=int, default=2)
    m.add_argument("--base-epochs", type=float, default=0.1, help="first rung, in epochs of the training part")
    m.add_argument("--top-epochs", type=float, default=4.0, help="top rung")
    m.add_argument("--eta", type=int, default=3, help="budget growth and 1/share promoted per rung")
    m.add_argument("--resolution", type=int, default=None,
                   help="proxy input side (default: the data's); members it does not fit train at theirs")
    m.add_argument("--recipe", choices=sorted(RUNG_RECIPES), default="proxy",
                   help="batch size and learning rate of the rung trainings (default: the search's proxy)")
    m.add_argument("--seed", type=int, default=0, help="the rung trainings' seed")
    m.add_argument("--work", type=Path, default=ROOT / "runs" / "reference-mf", help="checkpoints (not committed)")
    sub.add_parser("report", help="print the figures")
    args = ap.parse_args()
    try:
        {"pool": cmd_pool, "train": cmd_train, "fidelity": cmd_fidelity, "multifidelity": cmd_multifidelity,
         "report": cmd_report}[args.cmd](args)
    except DataError as e:  # every command but `pool` reads --data (`report` for its splits' sizes)
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()

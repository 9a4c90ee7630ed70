"""Self-check of the space: every spec builds, trains a step, and deploys to the same function."""
from __future__ import annotations

import traceback
from collections import Counter, defaultdict

import torch
import torch.nn as nn

from .costs import count_flops, count_params
from .deployment import deploy
from .model import build_model
from .norms import BN_FAMILY, PRepBN
from .spec import ArchSpec


@torch.no_grad()
def randomize_norms(model: nn.Module, generator: torch.Generator) -> None:
    """Give every norm non-trivial affine parameters and running statistics, as after training."""
    for m in model.modules():
        for name in ("weight", "bias", "alpha"):
            p = getattr(m, name, None)
            if isinstance(p, nn.Parameter) and isinstance(m, (*BN_FAMILY, nn.BatchNorm2d, nn.BatchNorm1d,
                                                                nn.LayerNorm, nn.RMSNorm)):
                p.copy_(torch.randn(p.shape, generator=generator) * 0.3 + (1.0 if name != "bias" else 0.0))
        if hasattr(m, "running_var"):
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=generator) * 2 + 0.2)
        if hasattr(m, "running_mean") and m.running_mean is not None:
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=generator) * 0.5)


def deploy_error(model: nn.Module, deployed: nn.Module, x: torch.Tensor) -> float:
    """max |eval - deployed| / max |eval| on x."""
    model.eval()
    with torch.no_grad():
        ref = model(x)
        out = deployed(x)
    return float((ref - out).abs().max() / ref.abs().max().clamp_min(1e-12))


def deployed_check(spec: ArchSpec, seed: int = 0, batch: int = 2) -> tuple[nn.Module, dict]:
    """Build, run forward+backward in training mode, then deploy: the deployed model, and how it
    compares with the eval model (max_rel_err), the norms it kept and the parameters no gradient reached."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = build_model(spec)
    x = torch.randn(batch, spec.in_chans, spec.img_size, spec.img_size, generator=gen)
    model.train()
    for m in model.modules():
        if isinstance(m, PRepBN):
            m.set_progress(1, 4)  # mid-schedule: both branches active and trained
    loss = model(x).logsumexp(-1).mean()
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    randomize_norms(model, gen)
    deployed = deploy(model)
    leftover = [type(m).__name__ for m in deployed.modules() if isinstance(m, (*BN_FAMILY, nn.BatchNorm2d))]
    return deployed, {"max_rel_err": deploy_error(model, deployed, x), "no_grad": missing, "leftover_norms": leftover}


def check_spec(spec: ArchSpec, seed: int = 0, batch: int = 2) -> dict:
    """`deployed_check`'s figures and the deployed model's costs (FLOPs counted by fvcore)."""
    deployed, res = deployed_check(spec, seed, batch)
    return {**res, "flops": count_flops(deployed), "params": count_params(deployed)}


def coverage(specs: list[ArchSpec]) -> dict[str, dict[str, int]]:
    """How often each choice of each axis occurs (attention counted per block, SkipAt as `skip`)."""
    cov: dict[str, Counter] = defaultdict(Counter)
    for spec in specs:
        cov["patch"][str(spec.patch)] += 1
        cov["stages"][str(len(spec.stages))] += 1
        for att in spec.block_attentions():
            cov["attention"][att] += 1
        for s in spec.stages:
            for axis in ("norm", "width", "depth", "heads", "key_dim", "value_ratio", "ffns", "mlp_ratio", "dwconv"):
                cov[axis][str(getattr(s, axis))] += 1
    return {axis: dict(sorted(c.items())) for axis, c in cov.items()}


def check_space(named_specs: list[tuple[str, ArchSpec]], tolerance: float = 1e-4, progress=None) -> dict:
    """The `space check` report: one row per architecture, the worst error, coverage, failures."""
    rows, failures = [], []
    for name, spec in named_specs:
        row = {"name": name, "arch_id": spec.arch_id, "short": spec.short()}
        try:
            res = check_spec(spec)
            problems = []
            if not res["max_rel_err"] <= tolerance:
                problems.append(f"deploy differs from eval by {res['max_rel_err']:.2e} (> {tolerance:g})")
            if res["no_grad"]:
                problems.append(f"no gradient reaches {res['no_grad'][:3]}")
            if res["leftover_norms"]:
                problems.append(f"deploy left BN-family norms {sorted(set(res['leftover_norms']))}")
            row.update(ok=not problems, max_rel_err=res["max_rel_err"], flops=res["flops"], params=res["params"])
            failures += [f"{name}: {p}" for p in problems]
        except Exception as e:  # a crashing spec is a finding, not the end of the check
            row.update(ok=False, max_rel_err=float("nan"), flops=0, params=0)
            failures.append(f"{name}: {type(e).__name__}: {e} ({traceback.extract_tb(e.__traceback__)[-1].name})")
        rows.append(row)
        if progress:
            progress(row)
    errs = [r["max_rel_err"] for r in rows if r["ok"]]
    return {"archs": rows, "max_rel_err": max(errs) if len(errs) == len(rows) and errs else float("inf"),
            "coverage": coverage([s for _, s in named_specs]), "failures": failures}

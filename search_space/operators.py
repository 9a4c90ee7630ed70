"""The operator registry: one entry per norm and attention, the one source of its name, its
constraints, the module that builds it and the kernel tally that prices it.

Entries name their module and tally as "package.module:attribute" and resolve them on use, so
that the spec and the sampler read the registry without importing torch, and the latency model
(which imports the search space) can be named here without a cycle. Adding an operator is one
module holding its class and tally plus one `register` call (README, "Adding an operator"); the
modules named in ETNAS_OPERATORS are imported on the first look at the names, in every process
(Ray workers too), so the command line and resumed runs see the same space.
"""
from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from typing import Any, Literal


def resolve(ref: str) -> Any:
    """The attribute a "package.module:attribute" reference names."""
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)


@dataclass(frozen=True)
class Attention:
    """A token mixer. `module` is built as cls(dim, heads, key_dim, value_ratio, grid) and reads
    its input through `absorb_input_affine(a, b)`, so that deploy can fold the norm before it.
    `tally` is called as tally(kernel_tally, stage, tokens, grid, folded) and adds every kernel
    the deployed operator launches. `needs_grid`: it reshapes tokens to a square map.
    `value_ratio`: the one value it accepts (None: any), with the reason shown when violated."""

    name: str
    module: str
    tally: str
    needs_grid: bool = False
    value_ratio: int | None = None
    value_ratio_reason: str = ""

    def build(self, dim: int, heads: int, key_dim: int, value_ratio: int, grid: int) -> Any:
        return resolve(self.module)(dim, heads, key_dim, value_ratio, grid)

    def problems(self, where: str, value_ratio: int) -> list[str]:
        if self.value_ratio is None or value_ratio == self.value_ratio:
            return []
        return [f"{where}: {self.name} {self.value_ratio_reason}, so value_ratio must be "
                f"{self.value_ratio} (got {value_ratio})"]


@dataclass(frozen=True)
class Norm:
    """A token norm, built as module(dim). `deploys_as` says what deploy leaves of it: "folded"
    (a BN-family norm with `eval_affine()`, folded into the Linear it feeds), "rmsnorm" (kept
    as it is), or "layernorm" (turned into affine-free RMSNorm where the stream allows)."""

    name: str
    module: str
    deploys_as: Literal["folded", "rmsnorm", "layernorm"]

    def build(self, dim: int) -> Any:
        return resolve(self.module)(dim)


ATTENTIONS: dict[str, Attention] = {}
NORMS: dict[str, Norm] = {}


def _table(op: Attention | Norm) -> dict:
    return ATTENTIONS if isinstance(op, Attention) else NORMS


def register(op: Attention | Norm) -> None:
    """Add an operator to the space: specs may name it, and the default search space offers it."""
    table = _table(op)
    if op.name in table:
        raise ValueError(f"operator '{op.name}' is already registered; unregister it first")
    table[op.name] = op


def unregister(op: Attention | Norm) -> None:
    del _table(op)[op.name]


PLUGINS_VARIABLE = "ETNAS_OPERATORS"
_plugins_loaded = False


class OperatorError(ValueError):
    """A module named in ETNAS_OPERATORS that cannot be imported."""


def load_plugins() -> None:
    """Import, once, the comma-separated modules of ETNAS_OPERATORS; each registers its operators."""
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    for module in filter(None, (m.strip() for m in os.environ.get(PLUGINS_VARIABLE, "").split(","))):
        try:
            importlib.import_module(module)
        except Exception as e:
            _plugins_loaded = False
            raise OperatorError(f"{PLUGINS_VARIABLE} names module '{module}', which failed to import "
                                f"({type(e).__name__}: {e}); fix it or take it out of {PLUGINS_VARIABLE}") from None


def attention_names() -> tuple[str, ...]:
    load_plugins()
    return tuple(ATTENTIONS)


def norm_names() -> tuple[str, ...]:
    load_plugins()
    return tuple(NORMS)


for _op in (
    Attention("mhsa", "search_space.attentions:MultiHeadSelfAttention", "latency_models.features:mhsa"),
    Attention("sla", "search_space.attentions:SimplifiedLinearAttention", "latency_models.features:sla",
              needs_grid=True),
    Attention("cga", "search_space.attentions:CascadedGroupAttention", "latency_models.features:cga",
              needs_grid=True, value_ratio=1,
              value_ratio_reason="cascades each head's output into the next head's input chunk"),
    Norm("layernorm", "search_space.norms:layernorm", "layernorm"),
    Norm("rmsnorm", "search_space.norms:rmsnorm", "rmsnorm"),
    Norm("batchnorm", "search_space.norms:TokenBatchNorm", "folded"),
    Norm("prepbn", "search_space.norms:PRepBN", "folded"),
    Norm("unified", "search_space.norms:UnifiedNorm", "folded"),
):
    register(_op)

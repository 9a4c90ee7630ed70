"""Latency models: measure the target device, predict deployed-model latency, validate honestly.

The names below load their modules (and torch) on first use (PEP 562), so that the command line
can read `latency_models.settings` before it has checked its options."""
from __future__ import annotations

import importlib

_MODULE_OF = {"LatencyModel": "predictor", "ModelFileError": "predictor", "TableError": "table",
              "read_table": "table"}

__all__ = list(_MODULE_OF)


def __getattr__(name: str) -> object:
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_MODULE_OF[name]}", __name__), name)

"""Deployed models written to files that load without this project: ONNX and torch.export (.pt2),
both with a dynamic batch dimension."""
from __future__ import annotations

import contextlib
import functools
import io
import logging
import warnings
from pathlib import Path

import torch

OPSET = 18


@contextlib.contextmanager
def _quiet():
    """The exporters narrate every pass on stdout and in warnings; a product prints its own progress."""
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


def _example(model: torch.nn.Module, batch: int = 2) -> torch.Tensor:
    s = model.spec
    return torch.randn(batch, s.in_chans, s.img_size, s.img_size)


def _batch_dim() -> torch.export.Dim:
    return torch.export.Dim("batch", min=1, max=4096)


def export_program(model: torch.nn.Module) -> torch.export.ExportedProgram:
    with _quiet():
        return torch.export.export(model.eval(), (_example(model),), dynamic_shapes=({0: _batch_dim()},))


def export_pt2(model: torch.nn.Module, path: str | Path) -> Path:
    torch.export.save(export_program(model), str(path))
    return Path(path)


@functools.cache
def _onnx_registry():
    """The exporter's table of ATen-to-ONNX translations. `torch.onnx.export` rebuilds it on every
    call (1.2 s here); one per process is enough, as it is never modified."""
    from torch.onnx._internal.exporter import _registration

    return _registration.ONNXRegistry.from_torchlib(opset_version=OPSET)


def export_onnx(model: torch.nn.Module, path: str | Path) -> Path:
    """ONNX (opset 18) through the torch.export-based exporter (TorchScript export is deprecated):
    what `torch.onnx.export(..., dynamo=True)` writes, through the private entry point that call
    wraps, so that the translation table is built once per process."""
    from torch.onnx._internal.exporter import _core

    with _quiet():
        program = _core.export(model.eval(), (_example(model),), registry=_onnx_registry(), opset_version=OPSET,
                               dynamic_shapes=({0: _batch_dim()},), input_names=["images"], output_names=["logits"])
        program.save(str(path))
    return Path(path)

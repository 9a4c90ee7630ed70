"""Deployed models written to files that load without this project: ONNX and torch.export (.pt2),
both with a dynamic batch dimension."""
from __future__ import annotations

import contextlib
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


def export_program(model: torch.nn.Module) -> torch.export.ExportedProgram:
    batch = torch.export.Dim("batch", min=1, max=4096)
    with _quiet():
        return torch.export.export(model.eval(), (_example(model),), dynamic_shapes=({0: batch},))


def export_pt2(model: torch.nn.Module, path: str | Path) -> Path:
    torch.export.save(export_program(model), str(path))
    return Path(path)


def export_onnx(model: torch.nn.Module, path: str | Path) -> Path:
    """ONNX (opset 18) through the torch.export-based exporter (TorchScript export is deprecated)."""
    batch = torch.export.Dim("batch", min=1, max=4096)
    with _quiet():
        program = torch.onnx.export(model.eval(), (_example(model),), dynamo=True, opset_version=OPSET,
                                    dynamic_shapes=({0: batch},), input_names=["images"], output_names=["logits"])
        program.save(str(path))
    return Path(path)

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


@contextlib.contextmanager
def _without_stack_traces():
    """Trace without each node's Python stack: recording it was 15-20% of torch.export here, and
    the file would carry this machine's source paths."""
    saved = torch.fx.config.do_not_emit_stack_traces
    torch.fx.config.do_not_emit_stack_traces = True
    try:
        yield
    finally:
        torch.fx.config.do_not_emit_stack_traces = saved


@contextlib.contextmanager
def _onnx_tracing():
    """Trace as the ONNX exporter does: sizes 0 and 1 oblivious, for the dynamic batch."""
    with _without_stack_traces(), torch.fx.experimental._config.patch(backed_size_oblivious=True):
        yield


def _example(model: torch.nn.Module, batch: int = 2) -> torch.Tensor:
    s = model.spec
    return torch.randn(batch, s.in_chans, s.img_size, s.img_size)


def _batch_dim() -> torch.export.Dim:
    return torch.export.Dim("batch", min=1)


def export_program(model: torch.nn.Module) -> torch.export.ExportedProgram:
    """The traced model with a dynamic batch. Where the trace guards the batch (a model of one
    token with SkipAt's conv on a 1x1 map asks for a batch other than 1), the batch's range is
    left for torch.export to infer instead of being declared."""
    with _quiet():
        try:
            return torch.export.export(model.eval(), (_example(model),), dynamic_shapes=({0: _batch_dim()},))
        except torch._dynamo.exc.UserError:
            return torch.export.export(model.eval(), (_example(model),),
                                       dynamic_shapes=({0: torch.export.Dim.AUTO},))


def onnx_trace(model: torch.nn.Module) -> torch.export.ExportedProgram:
    """The model traced as the ONNX exporter traces it."""
    with _quiet(), _onnx_tracing():
        return export_program(model)


def export_pt2(model: torch.nn.Module, path: str | Path) -> Path:
    """The model's trace saved for torch.export.load. Not the ONNX trace: tracing sizes 0 and 1
    obliviously leaves a runtime check that refuses batch 1 in models with a conv on the token grid."""
    buffer = io.BytesIO()  # written by Python, so that a full or read-only disk is an OSError naming the file
    with _quiet(), _without_stack_traces():
        torch.export.save(export_program(model), buffer)
    Path(path).write_bytes(buffer.getvalue())
    return Path(path)


def _rms_norm(input, normalized_shape, weight=None, eps=None):
    """aten.rms_norm in opset 18 ops (RMSNormalization is opset 23): the ops the exporter's own
    decomposition of it produces, so the graph is the same without that decomposition's retrace."""
    from onnxscript import opset18 as op

    eps = torch.finfo(torch.float).eps if eps is None else eps
    axes = op.Constant(value_ints=list(range(-len(normalized_shape), 0)))
    mean_square = op.ReduceMean(op.Pow(input, op.Constant(value_float=2.0)), axes, keepdims=1)
    x = op.Mul(input, op.Reciprocal(op.Sqrt(op.Add(mean_square, op.Constant(value_float=eps)))))
    return x if weight is None else op.Mul(x, weight)


@functools.cache
def _onnx_registry():
    """The exporter's table of ATen-to-ONNX translations, with aten.rms_norm. `torch.onnx.export`
    rebuilds it on every call (1.2 s here); one per process is enough, as it is never modified."""
    from torch.onnx._internal.exporter import _registration

    registry = _registration.ONNXRegistry.from_torchlib(opset_version=OPSET)
    registry.register_op(torch.ops.aten.rms_norm.default, _rms_norm)
    return registry


def _untranslated_ops(program: torch.export.ExportedProgram) -> set:
    """Ops of the program that the translation table lacks and so must be decomposed: ATen ops
    without a translation and higher-order ops (autocast regions and the like)."""
    from torch.onnx._internal.exporter import _decomp

    translated = set(_decomp.get_onnx_implemented_overloads(_onnx_registry()))
    return {n.target for n in program.graph.nodes if n.op == "call_function"
            and (isinstance(n.target, torch._ops.HigherOrderOperator)
                 or isinstance(n.target, torch._ops.OpOverload) and n.target not in translated)}


# The onnxscript rewrite rules that change this space's graphs: counted over the presets and 24
# sampled architectures, no other of its 46 rules fired. Matching those 42 was a quarter of an export.
REWRITE_RULES = ("MaterializeReshapeShape", "SqueezeReshape1d", "RemoveOptionalBiasFromConv",
                 "RemoveOptionalBiasFromGemm")


def _optimize(model) -> None:
    """onnxscript's optimization as `torch.onnx.export` applies it (fold constants and rewrite
    twice, then clean up and fuse), with the rewrite rules in REWRITE_RULES only."""
    import onnx_ir as ir
    import onnx_ir.passes.common as common
    from onnxscript import rewriter
    from onnxscript.optimizer import _constant_folding
    from onnxscript.rewriter import onnx_fusions

    rules = [r for r in rewriter._DEFAULT_REWRITE_RULES if r.name in REWRITE_RULES]
    fold = _constant_folding.FoldConstantsPass(
        shape_inference=True, input_size_limit=_constant_folding.DEFAULT_CONSTANT_FOLD_INPUT_SIZE_LIMIT,
        output_size_limit=_constant_folding.DEFAULT_CONSTANT_FOLD_OUTPUT_SIZE_LIMIT)
    loop = ir.passes.PassManager([fold, rewriter.RewritePass(rules),
                                  common.RemoveUnusedNodesPass(), common.RemoveUnusedFunctionsPass(),
                                  common.RemoveUnusedOpsetsPass()], steps=2, early_stop=True)
    ir.passes.Sequential(common.InlinePass(), loop, common.RemoveUnusedNodesPass(),
                         common.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0),
                         common.LiftSubgraphInitializersToMainGraphPass(), common.DeduplicateInitializersPass(),
                         common.CommonSubexpressionEliminationPass(), common.OutputFixPass(),
                         common.NameFixPass())(model)
    onnx_fusions.fuse(model)


def _mixes_dtypes(program: torch.export.ExportedProgram) -> bool:
    """Whether an op with a type-promotion rule meets more than one dtype, the only case in which
    the exporter's promotion pass (which re-runs every node) changes the graph."""
    from torch.onnx._internal.fx.passes import type_promotion

    table = type_promotion.TypePromotionTable()
    for node in program.graph.nodes:
        if node.op == "call_function" and type_promotion.get_type_promotion_rule(node, table):
            values = [a.meta.get("val") for a in node.all_input_nodes] + [node.meta.get("val")]
            if len({v.dtype for v in values if isinstance(v, torch.Tensor)}) > 1:
                return True
    return False


def _direct_onnx_program(program: torch.export.ExportedProgram):
    """What `torch.onnx.export(..., dynamo=True)` makes of a program whose every op has a
    translation, less the passes that would not change it: the decomposition (a retrace of the
    whole graph, 40% of an export here), type promotion where no op mixes dtypes, and rewrite
    rules that never fire. Modifies `program`."""
    from torch.onnx._internal.exporter import _core, _fx_passes, _ir_passes

    with torch.fx.experimental._config.patch(backed_size_oblivious=True):
        if _mixes_dtypes(program):
            _fx_passes.insert_type_promotion_nodes(program.graph_module)
        program._graph_module = _fx_passes.remove_assertion_nodes(program.graph_module)
    onnx_program = _core._exported_program_to_onnx_program(program, registry=_onnx_registry())
    _optimize(onnx_program.model)
    _ir_passes.rename_inputs(onnx_program.model, ["images"])
    _ir_passes.rename_outputs(onnx_program.model, ["logits"])
    return onnx_program


def _exporters_onnx_program(program: torch.export.ExportedProgram):
    """`torch.onnx.export(..., dynamo=True)` of a program, decomposition pass included."""
    from torch.onnx._internal.exporter import _core

    return _core.export(program, registry=_onnx_registry(), opset_version=OPSET,
                        input_names=["images"], output_names=["logits"])


def verify_onnx(path: str | Path, reference: torch.nn.Module, x: torch.Tensor) -> float:
    """Largest absolute difference between the ONNX file's output in onnxruntime and the model's."""
    import numpy as np
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        return float(np.abs(out - reference(x).numpy()).max())


def _agrees(path: Path, model: torch.nn.Module) -> bool:
    """Whether the file loads in onnxruntime and computes what the model does, at batch 3."""
    x = _example(model, 3)
    try:
        with torch.no_grad():
            scale = float(model(x).abs().max())
        return verify_onnx(path, model, x) <= 1e-4 * max(1.0, scale)
    except Exception:  # onnxruntime rejects an invalid graph with its own exception types
        return False


def export_onnx(model: torch.nn.Module, path: str | Path,
                program: torch.export.ExportedProgram | None = None) -> Path:
    """ONNX (opset 18) through the torch.export-based exporter (TorchScript export is deprecated),
    without its decomposition pass where that pass has nothing to do and the graph proves equal
    to the model; otherwise with it. `program`: the model's `onnx_trace` where already made; it is
    modified."""
    path = Path(path)
    program = onnx_trace(model) if program is None else program
    with _quiet():
        if not _untranslated_ops(program):
            _batch_named(_direct_onnx_program(program)).save(str(path))
            if _agrees(path, model):
                return path
            with _onnx_tracing():
                program = export_program(model)
        _batch_named(_exporters_onnx_program(program)).save(str(path))
    return path


def _batch_named(onnx_program: torch.onnx.ONNXProgram) -> torch.onnx.ONNXProgram:
    """The program with its dynamic batch axis named `batch` (the trace calls it s77 or the like)."""
    first = onnx_program.model.graph.inputs[0].shape[0]
    if isinstance(getattr(first, "value", None), str):
        onnx_program.rename_axes({first: "batch"})
    return onnx_program


def set_onnx_metadata(path: str | Path, metadata: dict[str, str]) -> None:
    """Write `metadata` into the file's metadata_props (onnxruntime's custom_metadata_map)."""
    import onnx

    model = onnx.load(str(path))
    del model.metadata_props[:]
    for key, value in metadata.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(path))

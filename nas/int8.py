"""The int8 version of a trained model: its deployed graph quantized by onnxruntime (QDQ, per-channel
weights), calibrated on training images only, what quantizing cost (test accuracy, top-1 agreement
with the fp32 model on the test set) and what it gained (its speed against the fp32 file's)."""
from __future__ import annotations

import contextlib
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from evaluators.train import Normalizer
from latency_models.measure import onnx_runner, time_interleaved
from search_space.export import export_onnx, set_onnx_metadata
from search_space.quantize import QuantizationError, quantize_int8

CALIBRATION_IMAGES = 256  # training images that set the activation ranges


def calibration_batch(x_train: torch.Tensor, norm: Normalizer, n: int = CALIBRATION_IMAGES,
                      seed: int = 0) -> np.ndarray:
    """A seeded sample of training images, normalised as the model reads them."""
    pick = np.random.default_rng(seed).permutation(len(x_train))[:n]
    return norm(x_train[torch.from_numpy(pick)]).numpy()


@contextlib.contextmanager
def fp32_onnx(deployed: torch.nn.Module, exported: Path | None = None,
              metadata: dict[str, str] | None = None) -> Iterator[Path]:
    """`deployed` as `export` writes it: `exported` where that file was just written, or else a
    temporary export, with `metadata` (which a file quantized from it keeps), for as long as it is
    used (an export takes seconds: made once, it is both quantized and timed)."""
    if exported is not None:
        yield exported
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = export_onnx(deployed, Path(tmp) / "model.onnx")
        if metadata:
            set_onnx_metadata(path, metadata)
        yield path


@torch.no_grad()
def int8_figures(int8_path: Path, deployed: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, norm: Normalizer,
                 batch: int = 256) -> dict:
    """The int8 file's accuracy on (x, y) and how often its top-1 class is the fp32 model's."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(int8_path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    deployed.eval()
    correct = agree = 0
    for i in range(0, len(x), batch):
        inputs = norm(x[i:i + batch])
        int8_top1 = session.run(None, {name: inputs.numpy()})[0].argmax(1)
        agree += int((int8_top1 == deployed(inputs).argmax(1).numpy()).sum())
        correct += int((int8_top1 == y[i:i + batch].numpy()).sum())
    n = max(len(x), 1)
    return {"test_acc_int8": correct / n, "int8_top1_agreement": agree / n}


def evaluate_int8(fp32: Path, deployed: torch.nn.Module, data, norm: Normalizer, out: Path) -> dict:
    """Quantize `fp32` (the export of `deployed`) on `data`'s training images into `out` and measure
    it on the test set; a model onnxruntime cannot quantize gives its reason (and a warning), not a
    crash."""
    try:
        quantize_int8(fp32, out, calibration_batch(data.x_train, norm))
    except QuantizationError as e:
        warnings.warn(f"{e}; the int8 figures are left out", stacklevel=2)
        return {"int8_failure": str(e)}
    return int8_figures(out, deployed, data.x_test, data.y_test, norm)


def int8_speedup(fp32: Path, int8: Path, deployed: torch.nn.Module, sweeps: int = 200) -> dict:
    """The int8 file against the fp32 one in onnxruntime, 1 thread, batch 1, timed interleaved in
    one session: the ratio of two separate timings would carry the machine's drift between them."""
    spec = deployed.spec
    x = torch.randn(1, spec.in_chans, spec.img_size, spec.img_size)
    runners = {precision: onnx_runner(deployed, x, 1, "cpu", exported=path)
               for precision, path in (("fp32", fp32), ("int8", int8))}
    stats = time_interleaved(runners, sweeps)
    fp32_ms, int8_ms = stats["fp32"]["median_ms"], stats["int8"]["median_ms"]
    return {"fp32_ms": fp32_ms, "int8_ms": int8_ms, "speedup": fp32_ms / int8_ms}

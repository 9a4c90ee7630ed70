"""int8 models: onnxruntime's static quantization (QDQ, per-channel int8 weights, int8 activations
with min-max ranges) of an exported fp32 ONNX file, calibrated on images the caller gives."""
from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from pathlib import Path

import numpy as np

PRECISIONS = ("fp32", "int8")


class QuantizationError(RuntimeError):
    """A model onnxruntime could not quantize; the message says which and why."""


def quantize_int8(fp32_path: Path, int8_path: Path, calibration: np.ndarray, batch: int = 32) -> Path:
    """Write the int8 version of `fp32_path` to `int8_path`; `calibration` is float32 NCHW input
    (normalised as the model expects), fed `batch` images at a time to find activation ranges."""
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType, quant_pre_process,
                                          quantize_static)

    class Batches(CalibrationDataReader):
        def __init__(self, name: str):
            self.feeds = iter([{name: calibration[i:i + batch]} for i in range(0, len(calibration), batch)])

        def get_next(self):
            return next(self.feeds, None)

    calibration = np.ascontiguousarray(calibration, dtype=np.float32)
    try:
        with tempfile.TemporaryDirectory() as tmp, _quiet():
            prepared = Path(tmp) / "prepared.onnx"
            quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
            quantize_static(str(prepared), str(int8_path), Batches(_input_name(prepared)),
                            quant_format=QuantFormat.QDQ, per_channel=True, activation_type=QuantType.QInt8,
                            weight_type=QuantType.QInt8)
    except OSError:  # a full or read-only disk is not the graph's fault
        raise
    except Exception as e:  # onnxruntime raises plain exceptions of many kinds on graphs it cannot take
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise QuantizationError(f"onnxruntime could not quantize {Path(fp32_path).name} to int8 "
                                f"({type(e).__name__}: {first})") from None
    return Path(int8_path)


def _input_name(path: Path) -> str:
    import onnx

    return onnx.load(str(path), load_external_data=False).graph.input[0].name


@contextlib.contextmanager
def _quiet():
    """onnxruntime's quantizer logs every tensor it skips; keep the console for results."""
    logger = logging.getLogger()
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        logger.setLevel(level)

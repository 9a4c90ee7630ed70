"""Latency models: measure the target device, predict deployed-model latency, validate honestly."""
from .predictor import LatencyModel, ModelFileError
from .table import TableError, read_table

__all__ = ["LatencyModel", "ModelFileError", "TableError", "read_table"]

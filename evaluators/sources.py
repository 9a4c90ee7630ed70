"""Dataset names as the command line takes them (digits, npz:PATH, imagefolder:PATH, cifar10:ROOT),
checked without loading anything, so that a mistyped one is reported before any heavy import."""
from __future__ import annotations

from pathlib import Path

KINDS = "digits, npz:PATH, imagefolder:PATH or cifar10:ROOT"


class DataError(ValueError):
    """A dataset that cannot be loaded; the message names it and what to do."""


def check_dataset_name(name: str) -> tuple[str, str]:
    """(kind, path) of a dataset name whose path exists as its kind needs; DataError otherwise."""
    kind, _, arg = name.partition(":")
    if kind == "digits" and not arg:
        return kind, arg
    if kind not in ("npz", "imagefolder", "cifar10") or not arg:
        raise DataError(f"unknown dataset '{name}'; use {KINDS}")
    path = Path(arg)
    if kind == "npz" and not path.is_file():
        raise DataError(f"dataset file {path} does not exist; "
                        f"give npz:PATH to an .npz with x_train, y_train, x_test, y_test")
    if kind == "imagefolder" and not all((path / split).is_dir() for split in ("train", "test")):
        raise DataError(f"image folder {path} needs train/ and test/ subfolders, each with one folder per class")
    if kind == "cifar10" and not (path / "cifar-10-batches-py").is_dir():
        raise DataError(f"no CIFAR-10 in torchvision's format under {path} (cifar-10-batches-py); "
                        f"this tool never downloads: copy it there, or use npz:PATH")
    return kind, arg

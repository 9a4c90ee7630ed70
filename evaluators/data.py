"""Datasets as uint8 NCHW tensors in memory, with a fixed seeded validation split for the search.

`digits` (sklearn, embedded), `npz:PATH` (x_train, y_train, x_test, y_test; NHWC uint8 as in the
shared CIFAR-10 file), `imagefolder:PATH` (PATH/train/<class>/*, PATH/test/<class>/*) and
`cifar10:ROOT` (torchvision's on-disk format, never downloaded).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch


class DataError(ValueError):
    """A dataset that cannot be loaded; the message names it and what to do."""


@dataclass
class Dataset:
    name: str
    x_train: torch.Tensor  # uint8 [N, C, H, W]
    y_train: torch.Tensor  # int64 [N]
    x_test: torch.Tensor
    y_test: torch.Tensor
    classes: list[str]

    @property
    def img_size(self) -> int:
        return int(self.x_train.shape[-1])

    @property
    def in_chans(self) -> int:
        return int(self.x_train.shape[1])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def channel_stats(self) -> tuple[list[float], list[float]]:
        x = self.x_train.float() / 255
        return x.mean((0, 2, 3)).tolist(), x.std((0, 2, 3)).clamp_min(1e-3).tolist()

    def split(self, val_fraction: float = 0.1, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Fixed train/validation indices carved from the training set (stratified, seeded)."""
        rng = np.random.default_rng(seed)
        y = self.y_train.numpy()
        val = []
        for c in np.unique(y):
            idx = rng.permutation(np.flatnonzero(y == c))
            val.extend(idx[: max(1, int(round(val_fraction * len(idx))))])
        val = np.sort(np.array(val))
        return np.setdiff1d(np.arange(len(y)), val), val


def _from_nhwc(x: np.ndarray) -> torch.Tensor:
    x = np.asarray(x)
    if x.ndim == 3:
        x = x[..., None]
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))).to(torch.uint8)


def load_digits() -> Dataset:
    from sklearn.datasets import load_digits as sk_digits

    d = sk_digits()
    x = (d.images * (255 / 16)).round().clip(0, 255).astype(np.uint8)[:, None]  # [N,1,8,8]
    rng = np.random.default_rng(0)
    order = rng.permutation(len(x))
    n_test = len(x) // 5
    te, tr = order[:n_test], order[n_test:]
    xt, yt = torch.from_numpy(x), torch.from_numpy(d.target.astype(np.int64))
    return Dataset("digits", xt[tr], yt[tr], xt[te], yt[te], [str(c) for c in range(10)])


def load_npz(path: str) -> Dataset:
    p = Path(path)
    if not p.exists():
        raise DataError(f"dataset file {p} does not exist; give npz:PATH to an .npz with x_train, y_train, x_test, y_test")
    try:
        z = np.load(p, allow_pickle=False)
        missing = [k for k in ("x_train", "y_train", "x_test", "y_test") if k not in z.files]
    except Exception as e:
        raise DataError(f"dataset file {p} is not a readable .npz ({type(e).__name__})") from None
    if missing:
        raise DataError(f"dataset file {p} lacks arrays {missing}; expected x_train, y_train, x_test, y_test")
    x_tr, x_te = z["x_train"], z["x_test"]
    if x_tr.ndim not in (3, 4) or x_tr.shape[1] != x_tr.shape[2]:
        raise DataError(f"dataset file {p}: x_train has shape {x_tr.shape}; expected square NHWC images")
    y_tr, y_te = z["y_train"].astype(np.int64).ravel(), z["y_test"].astype(np.int64).ravel()
    n_classes = int(max(y_tr.max(), y_te.max())) + 1
    classes = [str(c) for c in z["classes"]] if "classes" in z.files else [str(c) for c in range(n_classes)]
    return Dataset(f"npz:{p}", _from_nhwc(x_tr), torch.from_numpy(y_tr), _from_nhwc(x_te), torch.from_numpy(y_te), classes)


def load_imagefolder(path: str, size: int = 32) -> Dataset:
    from PIL import Image

    root = Path(path)
    splits = {s: root / s for s in ("train", "test") if (root / s).is_dir()}
    if len(splits) < 2:
        raise DataError(f"image folder {root} needs train/ and test/ subfolders, each with one folder per class")
    classes = sorted(d.name for d in splits["train"].iterdir() if d.is_dir())
    if not classes:
        raise DataError(f"image folder {root / 'train'} has no class folders")
    arrays = {}
    for split, folder in splits.items():
        xs, ys = [], []
        for c, name in enumerate(classes):
            for f in sorted((folder / name).glob("*")):
                if f.suffix.lower() in {".png", ".jpg", ".jpeg", ".bmp", ".webp"}:
                    xs.append(np.asarray(Image.open(f).convert("RGB").resize((size, size))))
                    ys.append(c)
        if not xs:
            raise DataError(f"image folder {folder} holds no images")
        arrays[split] = (_from_nhwc(np.stack(xs)), torch.tensor(ys))
    return Dataset(f"imagefolder:{root}", *arrays["train"], *arrays["test"], classes)


def load_cifar10(root: str) -> Dataset:
    from torchvision.datasets import CIFAR10

    try:
        tr, te = CIFAR10(root, train=True, download=False), CIFAR10(root, train=False, download=False)
    except RuntimeError:
        raise DataError(f"no CIFAR-10 in torchvision's format under {root} (cifar-10-batches-py); "
                        f"this tool never downloads: copy it there, or use npz:PATH") from None
    return Dataset(f"cifar10:{root}", _from_nhwc(tr.data), torch.tensor(tr.targets), _from_nhwc(te.data),
                   torch.tensor(te.targets), list(tr.classes))


def load_dataset(name: str) -> Dataset:
    """Load a dataset by its command-line name."""
    kind, _, arg = name.partition(":")
    if kind == "digits" and not arg:
        return load_digits()
    loaders = {"npz": load_npz, "imagefolder": load_imagefolder, "cifar10": load_cifar10}
    if kind not in loaders or not arg:
        raise DataError(f"unknown dataset '{name}'; use digits, npz:PATH, imagefolder:PATH or cifar10:ROOT")
    return loaders[kind](arg)

"""Datasets as uint8 NCHW tensors in memory, with a fixed seeded validation split for the search.

`digits` (scikit-learn's, embedded), `npz:PATH` (x_train, y_train, x_test, y_test; NHWC uint8 as in the
shared CIFAR-10 file), `imagefolder:PATH` (PATH/train/<class>/*, PATH/test/<class>/*) and
`cifar10:ROOT` (torchvision's on-disk format, never downloaded).
"""
from __future__ import annotations

import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from search_space.spec import MIN_IMG_SIZE

from .sources import DataError, check_dataset_name

# How `imagefolder:` brings an image to the model's input: squashed to size x size (aspect ratio
# not kept, nothing cropped) with Pillow's bicubic filter; timm's names, written into exports.
IMAGE_RESIZE = {"interpolation": "bicubic", "crop_mode": "squash", "crop_pct": 1.0}
VAL_FRACTION = 0.1  # of each class, held out of the search's training to rank candidates on


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

    def split(self, val_fraction: float = VAL_FRACTION, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Fixed train/validation indices carved from the training set (stratified, seeded): the search
        trains on the first part and ranks on the second."""
        rng = np.random.default_rng(seed)
        y = self.y_train.numpy()
        val = []
        for c in np.unique(y):
            idx = rng.permutation(np.flatnonzero(y == c))
            val.extend(idx[: max(1, int(round(val_fraction * len(idx))))])
        val = np.sort(np.array(val))
        return np.setdiff1d(np.arange(len(y)), val), val

    def holdout(self, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(x, y, x_val, y_val): the search's training part and its validation split, which the
        search ranks on and the long-training protocol reads its curve on."""
        part, val = self.split(seed=seed)
        return self.x_train[part], self.y_train[part], self.x_train[val], self.y_train[val]


def _from_nhwc(x: np.ndarray) -> torch.Tensor:
    x = np.asarray(x)
    if x.ndim == 3:
        x = x[..., None]
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))).to(torch.uint8)


def check_images(source: str, name: str, x: np.ndarray) -> np.ndarray:
    """Square NHWC (or NHW) images with 1 or 3 channels, as uint8. Integer arrays within 0..255 are
    converted losslessly, with a warning; anything else is refused with one line."""
    where = f"{source}: {name}"
    if x.dtype == object:
        raise DataError(f"{where} is an object array; store images as a uint8 array")
    channels_ok = x.ndim == 3 or (x.ndim == 4 and x.shape[3] in (1, 3))
    if x.ndim in (3, 4) and x.shape[0] == 0:
        raise DataError(f"{where} holds no images")
    if x.ndim not in (3, 4) or x.shape[1] != x.shape[2] or not channels_ok:
        raise DataError(f"{where} has shape {x.shape}; expected N x H x W (grey) or N x H x W x C with C 1 or 3, "
                        f"H = W (NHWC)")
    if x.shape[1] < MIN_IMG_SIZE:
        raise DataError(f"{where} holds {x.shape[1]}-px images; etnas searches images of {MIN_IMG_SIZE} px a side or "
                        f"more (upsample them)")
    if x.dtype == np.uint8:
        return x
    if np.issubdtype(x.dtype, np.integer) and x.size:
        if 0 <= x.min() and x.max() <= 255:
            warnings.warn(f"{where} is {x.dtype}; converted to uint8 (values already lie in 0..255)", stacklevel=2)
            return x.astype(np.uint8)
        raise DataError(f"{where} is {x.dtype} with values {int(x.min())}..{int(x.max())}; expected uint8 pixels "
                        f"0..255")
    raise DataError(f"{where} is {x.dtype}; expected uint8 pixels 0..255 (scale floats in [0, 1] by 255 and "
                    f"round them before saving)")


def check_labels(source: str, name: str, y: np.ndarray, n_images: int, n_classes: int | None = None) -> np.ndarray:
    """Integer labels 0..C-1, one per image."""
    where = f"{source}: {name}"
    if y.dtype == object or not (np.issubdtype(y.dtype, np.integer) or np.issubdtype(y.dtype, np.bool_)):
        raise DataError(f"{where} is {y.dtype}; expected integer class labels 0..C-1")
    y = y.reshape(-1) if y.ndim == 2 and 1 in y.shape else y
    if y.ndim != 1 or len(y) != n_images:
        raise DataError(f"{where} has shape {y.shape}; expected one label per image ({n_images})")
    if len(y) and (y.min() < 0 or (n_classes is not None and y.max() >= n_classes)):
        top = f" (the file names {n_classes} classes)" if n_classes is not None else ""
        raise DataError(f"{where} holds labels {int(y.min())}..{int(y.max())}; expected 0..C-1{top}")
    return y.astype(np.int64)


def checked_arrays(source: str, arrays: dict[str, np.ndarray], classes: list[str] | None) -> Dataset:
    """Validate train/test images and labels together; every class must be present in training."""
    x_tr = check_images(source, "x_train", arrays["x_train"])
    x_te = check_images(source, "x_test", arrays["x_test"])
    if x_tr.shape[1:] != x_te.shape[1:]:
        raise DataError(f"{source}: x_test has images of shape {x_te.shape[1:]}, x_train {x_tr.shape[1:]}; "
                        f"both splits need one size and channel count")
    n_classes = len(classes) if classes else None
    y_tr = check_labels(source, "y_train", arrays["y_train"], len(x_tr), n_classes)
    y_te = check_labels(source, "y_test", arrays["y_test"], len(x_te), n_classes)
    n_classes = n_classes or int(y_tr.max(initial=0)) + 1  # unnamed: the training labels are the classes
    unseen = sorted(set(np.unique(y_te).tolist()) - set(range(n_classes)))
    if unseen:
        raise DataError(f"{source}: y_test holds label(s) {unseen[:10]} that y_train has no images of (its labels "
                        f"run 0..{n_classes - 1}); every test class needs training images")
    if n_classes < 2:
        raise DataError(f"{source}: its labels name one class; a classifier needs at least two")
    names = classes or [str(c) for c in range(n_classes)]
    per_class = np.bincount(y_tr, minlength=n_classes)
    for count, held, needs in ((0, "no images", "training images"),
                               (1, "a single image", "two or more (the search holds one out to rank on)")):
        short = [names[c] if classes else int(c) for c in np.flatnonzero(per_class == count)]
        if short:
            raise DataError(f"{source}: y_train has {held} of class(es) {short[:10]}; every class needs {needs}"
                            + ("" if classes else f" (labels run 0..{n_classes - 1}: each below the largest is "
                                                  f"a class)"))
    return Dataset(source, _from_nhwc(x_tr), torch.from_numpy(y_tr), _from_nhwc(x_te), torch.from_numpy(y_te), names)


def load_digits() -> Dataset:
    pixels, labels = _digits_file()
    x = (pixels.reshape(-1, 1, 8, 8) * (255 / 16)).round().clip(0, 255).astype(np.uint8)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(x))
    n_test = len(x) // 5
    te, tr = order[:n_test], order[n_test:]
    xt, yt = torch.from_numpy(x), torch.from_numpy(labels)
    return Dataset("digits", xt[tr], yt[tr], xt[te], yt[te], [str(c) for c in range(10)])


def _digits_file() -> tuple[np.ndarray, np.ndarray]:
    """The 1,797 digits (pixels 0-16, labels) read from the file scikit-learn ships, as its
    `load_digits` reads it, without importing scikit-learn: a second and a half of every process
    that loads them."""
    import importlib.util

    (package,) = importlib.util.find_spec("sklearn").submodule_search_locations
    rows = np.loadtxt(Path(package) / "datasets" / "data" / "digits.csv.gz", delimiter=",")
    return rows[:, :-1], rows[:, -1].astype(np.int64)


def load_npz(path: str) -> Dataset:
    p = Path(path)
    keys = ("x_train", "y_train", "x_test", "y_test")
    if not zipfile.is_zipfile(p):
        raise DataError(f"dataset file {p} is not an .npz archive, or is cut short (write it with numpy.savez)")
    try:
        with np.load(p, allow_pickle=False) as z:
            missing = [k for k in keys if k not in z.files]
            if missing:
                raise DataError(f"dataset file {p} lacks arrays {missing}; expected x_train, y_train, x_test, y_test")
            arrays = {k: z[k] for k in keys}
            classes = [str(c) for c in z["classes"]] if "classes" in z.files else None
    except DataError:
        raise
    except Exception as e:  # a damaged member, or object arrays (which np.load refuses without pickle)
        why = ("holds object arrays; store images and labels as numeric arrays" if "allow_pickle" in str(e)
               else f"is not a readable .npz ({type(e).__name__}); write it again with numpy.savez")
        raise DataError(f"dataset file {p} {why}") from None
    return checked_arrays(f"npz:{p}", arrays, classes)


def load_imagefolder(path: str, size: int = 32) -> Dataset:
    root = Path(path)
    splits = {s: root / s for s in ("train", "test")}
    classes = sorted(d.name for d in splits["train"].iterdir() if d.is_dir())
    if not classes:
        raise DataError(f"image folder {root / 'train'} has no class folders")
    untrained = sorted(d.name for d in splits["test"].iterdir() if d.is_dir() and d.name not in classes)
    if untrained:
        raise DataError(f"image folder {splits['test']} has class folder(s) {untrained} that {splits['train']} "
                        f"lacks; every test class needs training images (a misspelled folder name?)")
    arrays = {}
    for split, folder in splits.items():
        xs, ys = [], []
        for c, name in enumerate(classes):
            for f in sorted((folder / name).glob("*")):
                if f.suffix.lower() in {".png", ".jpg", ".jpeg", ".bmp", ".webp"}:
                    xs.append(_read_image(f, size))
                    ys.append(c)
        if not xs:
            raise DataError(f"image folder {folder} holds no images")
        arrays[f"x_{split}"], arrays[f"y_{split}"] = np.stack(xs), np.array(ys)
    return checked_arrays(f"imagefolder:{root}", arrays, classes)


def _read_image(path: Path, size: int) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB").resize((size, size), Image.Resampling.BICUBIC))
    except (UnidentifiedImageError, OSError) as e:
        raise DataError(f"image {path} cannot be read ({type(e).__name__}); remove or replace it") from None


def load_cifar10(root: str) -> Dataset:
    from torchvision.datasets import CIFAR10

    try:
        tr, te = CIFAR10(root, train=True, download=False), CIFAR10(root, train=False, download=False)
    except RuntimeError:
        raise DataError(f"no CIFAR-10 in torchvision's format under {root} (cifar-10-batches-py); "
                        f"this tool never downloads: copy it there, or use npz:PATH") from None
    arrays = {"x_train": tr.data, "y_train": np.array(tr.targets), "x_test": te.data, "y_test": np.array(te.targets)}
    return checked_arrays(f"cifar10:{root}", arrays, list(tr.classes))


def pixels_read_as(name: str, size: int) -> str:
    """How the source `name` (as `load_dataset` takes it) made its images the 8-bit pixels a model
    trains on: what a user of the exported model does to an image before scaling it to [0, 1]. The
    source need not be on this machine any more."""
    kind = name.partition(":")[0]
    return {"digits": "scikit-learn's digits (values 0..16) as 8-bit pixels, value x 255/16 rounded",
            "imagefolder": f"each image converted to RGB and squashed to {size}x{size} with Pillow's bicubic filter "
                           f"(aspect ratio not kept, nothing cropped), as 8-bit pixels",
            "npz": "8-bit pixels, as the npz file holds them",
            "cifar10": "CIFAR-10's 8-bit pixels"}.get(kind, "8-bit pixels")


def load_dataset(name: str) -> Dataset:
    """Load a dataset by its command-line name."""
    kind, arg = check_dataset_name(name)
    loaders = {"digits": lambda _: load_digits(), "npz": load_npz, "imagefolder": load_imagefolder,
               "cifar10": load_cifar10}
    return loaders[kind](arg)

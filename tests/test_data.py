"""Datasets are validated before anything runs: each problem is one line naming the file, the
array and what is wrong, for every loader."""
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from evaluators.data import DataError, load_dataset

from .helpers import ROOT, one_line_error, run_cli


def arrays(n=20, side=8, chans=3, classes=4, seed=0):
    rng = np.random.default_rng(seed)
    shape = (n, side, side, chans) if chans else (n, side, side)
    return {"x_train": rng.integers(0, 256, shape, dtype=np.uint8), "y_train": np.arange(n) % classes,
            "x_test": rng.integers(0, 256, shape, dtype=np.uint8)[:8], "y_test": np.arange(8) % classes}


def write(tmp_path, **changes):
    data = {**arrays(), **changes}
    data = {k: v for k, v in data.items() if v is not None}
    path = tmp_path / "data.npz"
    np.savez(path, **data)
    return path


BAD_NPZ = [
    ({"y_train": np.arange(19) % 4}, "y_train has shape (19,); expected one label per image (20)"),
    ({"x_train": np.zeros((20, 8, 8, 3), np.float32) + 0.5}, "x_train is float32; expected uint8"),
    ({"x_train": np.zeros((20, 8, 6, 3), np.uint8)}, "x_train has shape (20, 8, 6, 3)"),
    ({"x_train": np.zeros((20, 8, 8, 4), np.uint8)}, "x_train has shape (20, 8, 8, 4)"),
    ({"x_train": np.zeros((20, 3, 8, 8), np.uint8)}, "x_train has shape (20, 3, 8, 8)"),
    ({"y_train": np.arange(20) % 4 - 1}, "y_train holds labels -1..2"),
    ({"y_train": (np.arange(20) % 4).astype(np.float64)}, "y_train is float64; expected integer class labels"),
    ({"y_train": np.arange(20) % 3, "y_test": np.arange(8) % 4},
     "y_test holds label(s) [3] that y_train has no images of (its labels run 0..2)"),
    ({"y_test": np.r_[np.arange(7) % 4, 12]}, "y_test holds label(s) [12] that y_train has no images of"),
    ({"y_train": np.r_[np.arange(19) % 4, 7], "y_test": np.arange(8) % 4},
     "y_train has no images of class(es) [4, 5, 6]; every class needs training images (labels run 0..7: each below "
     "the largest is a class)"),
    ({"x_train": np.full((20, 8, 8, 3), 300, np.int64)}, "x_train is int64 with values 300..300; expected uint8"),
    ({"x_test": np.zeros((0, 8, 8, 3), np.uint8), "y_test": np.zeros(0, int)}, "x_test holds no images"),
    ({"x_train": np.zeros((20, 7, 7, 3), np.uint8), "x_test": np.zeros((8, 7, 7, 3), np.uint8)},
     "x_train holds 7-px images; etnas searches images of 8 px a side or more"),
    ({"x_test": np.zeros((8, 16, 16, 3), np.uint8)}, "x_test has images of shape (16, 16, 3)"),
    ({"y_test": None}, "lacks arrays ['y_test']"),
    ({"classes": np.array(["a", "b"]), }, "y_train holds labels 0..3; expected 0..C-1 (the file names 2 classes)"),
    ({"y_train": np.zeros(20, int), "y_test": np.zeros(8, int)}, "its labels name one class; a classifier needs"),
    ({"y_train": np.r_[np.arange(19) % 3, 3]}, "y_train has a single image of class(es) [3]; every class needs two"),
]


@pytest.mark.parametrize("changes, message", BAD_NPZ)
def test_bad_npz_is_refused_with_one_line(tmp_path, changes, message):
    with pytest.raises(DataError, match=None) as e:
        load_dataset(f"npz:{write(tmp_path, **changes)}")
    assert message in str(e.value) and "\n" not in str(e.value) and "data.npz" in str(e.value)


def test_object_arrays_are_refused(tmp_path):
    path = tmp_path / "data.npz"
    np.savez(path, **{**arrays(), "x_train": np.array([np.zeros((8, 8, 3))] * 20, dtype=object)})
    with pytest.raises(DataError, match="object arrays"):
        load_dataset(f"npz:{path}")


def test_a_file_that_is_no_npz_or_a_damaged_one_says_so(tmp_path):
    path = tmp_path / "data.npz"
    path.write_bytes(b"not an archive")
    with pytest.raises(DataError, match="is not an .npz archive, or is cut short"):
        load_dataset(f"npz:{path}")
    good = write(tmp_path).read_bytes()
    path.write_bytes(good[: len(good) // 2])  # a download cut short: no zip directory at its end
    with pytest.raises(DataError, match="is not an .npz archive, or is cut short"):
        load_dataset(f"npz:{path}")
    path.write_bytes(good[:200] + bytes(50) + good[250:])  # a member's bytes damaged, the directory intact
    with pytest.raises(DataError, match=re.escape("is not a readable .npz (BadZipFile); write it again")):
        load_dataset(f"npz:{path}")


def test_grey_and_wider_integer_images_load(tmp_path):
    grey = arrays(chans=0)
    data = load_dataset(f"npz:{write(tmp_path, **grey)}")
    assert data.in_chans == 1 and data.img_size == 8 and data.num_classes == 4
    with pytest.warns(UserWarning, match="converted to uint8"):
        data = load_dataset(f"npz:{write(tmp_path, x_train=arrays()['x_train'].astype(np.int64))}")
    assert data.x_train.dtype.is_floating_point is False


def image_folder(root):
    """train/ and test/ of two classes, cat and dog, two images each."""
    for split in ("train", "test"):
        for c in ("cat", "dog"):
            (root / split / c).mkdir(parents=True)
            for name in ("a.png", "c.png"):
                Image.new("RGB", (10, 10)).save(root / split / c / name)


def test_unreadable_image_in_a_folder_is_named(tmp_path):
    image_folder(tmp_path)
    assert load_dataset(f"imagefolder:{tmp_path}").num_classes == 2
    (tmp_path / "train" / "dog" / "b.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match=r"image .*b\.png cannot be read"):
        load_dataset(f"imagefolder:{tmp_path}")


def test_a_folder_class_that_cannot_be_learned_is_named(tmp_path):
    image_folder(tmp_path)
    (tmp_path / "test" / "zebra").mkdir()
    Image.new("RGB", (10, 10)).save(tmp_path / "test" / "zebra" / "z.png")
    with pytest.raises(DataError, match=re.escape(f"image folder {tmp_path / 'test'} has class folder(s) ['zebra'] "
                                                  f"that {tmp_path / 'train'} lacks")):
        load_dataset(f"imagefolder:{tmp_path}")  # its test images were left out, unsaid
    (tmp_path / "train" / "zebra").mkdir()
    with pytest.raises(DataError, match=re.escape("y_train has no images of class(es) ['zebra']; every class needs "
                                                  "training images")):
        load_dataset(f"imagefolder:{tmp_path}")  # by its folder's name, not its index


def test_the_command_line_gives_one_line_and_exit_2(tmp_path):
    res = run_cli("run", "--name", "x", "--target-ms", "5", "--runs-dir", tmp_path / "runs",
                  "--dataset", f"npz:{write(tmp_path, y_train=np.arange(20) % 4 - 1)}", check=False, own_process=False)
    one_line_error(res, "y_train")
    assert not (tmp_path / "runs").exists()


def test_holdout_is_the_seeded_stratified_split_of_the_training_images():
    data = load_dataset("digits")
    x, y, x_val, y_val = data.holdout(seed=0)
    part, val = data.split(seed=0)
    assert np.intersect1d(part, val).size == 0 and len(part) + len(val) == len(data.y_train)
    expected = (data.x_train[part], data.y_train[part], data.x_train[val], data.y_train[val])
    assert all(torch.equal(got, want) for got, want in zip((x, y, x_val, y_val), expected, strict=True))
    per_class = np.bincount(data.y_train.numpy())
    assert np.array_equal(np.bincount(y_val.numpy()), np.round(0.1 * per_class).astype(int))  # 10% of each digit
    assert not torch.equal(data.holdout(seed=1)[3], y_val)  # the seed draws the split


def test_digits_are_scikit_learns_read_without_importing_it():
    from sklearn.datasets import load_digits

    code = "import sys; from evaluators.data import load_dataset; load_dataset('digits'); print('sklearn' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True,
                          timeout=120).stdout.strip() == "False"
    ours, theirs = load_dataset("digits"), load_digits()
    order = np.random.default_rng(0).permutation(len(theirs.target))  # the split: test first, then train
    n_test = len(order) // 5
    drawn = np.concatenate([order[n_test:], order[:n_test]])
    pixels = (theirs.images[drawn] * (255 / 16)).round().astype(np.uint8)[:, None]
    assert torch.equal(torch.cat([ours.x_train, ours.x_test]), torch.from_numpy(pixels))
    assert torch.equal(torch.cat([ours.y_train, ours.y_test]), torch.from_numpy(theirs.target[drawn]))

"""Fine-tunable model files: the trainable (not deployed) weights as safetensors beside a config.json
that rebuilds the model, its preprocessing and its class names, with no run directory needed."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load, save

from .model import NASViT, build_model, class_count
from .spec import ArchSpec, SpecError

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
ARCHITECTURE = "etnas-nasvit"  # config.json's "architecture", as timm's hub configs name theirs


class PretrainedError(ValueError):
    """Model files that cannot be loaded; the message names the file and what to do."""


def save_pretrained(model: NASViT, out: Path, *, pretrained_cfg: dict, label_names: list[str]) -> list[Path]:
    """Write WEIGHTS_FILE and CONFIG_FILE for `model` (trainable, norms unfolded) to `out`.
    `pretrained_cfg` holds timm's preprocessing keys (input_size, interpolation, crop_pct, mean, std).
    config.json keeps the weights' SHA-256: safetensors checks its header, not its data."""
    if len(label_names) != model.spec.num_classes:
        raise ValueError(f"{len(label_names)} label names for a {model.spec.num_classes}-class model")
    out = Path(out)
    weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    data = save(weights, metadata={"format": "pt"})
    (out / WEIGHTS_FILE).write_bytes(data)  # as any file is created (safetensors' save_file makes it private)
    config = {"architecture": ARCHITECTURE, "num_classes": model.spec.num_classes, "label_names": list(label_names),
              "pretrained_cfg": {**pretrained_cfg, "num_classes": model.spec.num_classes},
              "spec": model.spec.to_dict(), "weights_sha256": hashlib.sha256(data).hexdigest()}
    (out / CONFIG_FILE).write_text(json.dumps(config, indent=1))
    return [out / WEIGHTS_FILE, out / CONFIG_FILE]


def read_config(path: Path) -> dict:
    """config.json of an exported model folder (or the file itself), checked enough to build from."""
    path = Path(path)
    config_path = path / CONFIG_FILE if path.is_dir() else path
    try:
        config = json.loads(config_path.read_text())
    except FileNotFoundError:
        raise PretrainedError(f"{config_path} not found: give a folder written by `etnas export`") from None
    except (ValueError, UnicodeDecodeError) as e:
        if config_path.name != CONFIG_FILE:  # model.onnx, say
            raise PretrainedError(f"{config_path} is not an export's {CONFIG_FILE}; give the folder `etnas export` "
                                  f"wrote") from None
        raise PretrainedError(f"{config_path} is not JSON ({e}); export the model again") from None
    except OSError as e:
        raise PretrainedError(f"{config_path} cannot be read ({e.strerror})") from None
    if not isinstance(config, dict) or config.get("architecture") != ARCHITECTURE or "spec" not in config:
        raise PretrainedError(f"{config_path} is not an etnas model config (architecture {ARCHITECTURE!r} "
                              f"with a spec); export the model again with `etnas export`")
    wrong = [key for key, kind in (("pretrained_cfg", dict), ("label_names", list), ("weights_sha256", str))
             if key in config and not isinstance(config[key], kind)]
    if wrong:
        raise PretrainedError(f"{config_path}: {', '.join(wrong)} of the wrong JSON type; export the model again")
    names, classes = config.get("label_names"), config.get("num_classes")
    if names and classes is not None and len(names) != classes:
        raise PretrainedError(f"{config_path}: {len(names)} label names for {classes} classes; export the model again")
    return config


def create_model(path: str | Path, *, num_classes: int | None = None, pretrained: bool = True) -> NASViT:
    """The trainable model of an exported folder, in train mode, with its trained weights unless
    `pretrained` is False; `num_classes` other than the file's gives a fresh classifier (fine-tuning
    on new classes). The model carries `pretrained_cfg` (preprocessing) and `label_names`."""
    if not isinstance(path, (str, os.PathLike)):
        raise PretrainedError(f"path must be a folder written by `etnas export` (a str or Path), got {path!r}")
    try:
        num_classes = None if num_classes is None else class_count(num_classes)
    except SpecError as e:
        raise PretrainedError(str(e)) from None
    path = Path(path)
    config = read_config(path)
    try:
        model = build_model(ArchSpec.from_dict(config["spec"]))
    except SpecError as e:
        raise PretrainedError(f"{path}: its spec does not build ({e})") from None
    if pretrained:
        load_weights(model, (path if path.is_dir() else path.parent) / WEIGHTS_FILE, config.get("weights_sha256"))
    model.pretrained_cfg = {**config.get("pretrained_cfg", {}), "num_classes": model.spec.num_classes}
    model.label_names = [str(name) for name in config.get("label_names") or model.label_names]
    if num_classes is not None and num_classes != model.spec.num_classes:
        model.reset_classifier(num_classes)
    return model.train()


def load_weights(model: NASViT, weights_path: Path, sha256: str | None = None) -> None:
    """Load WEIGHTS_FILE into `model`, first checking it against the `sha256` config.json recorded
    (folders exported before it was recorded have none)."""
    try:
        data = weights_path.read_bytes()
    except FileNotFoundError:
        raise PretrainedError(f"{weights_path} not found; pass pretrained=False for untrained weights") from None
    except OSError as e:
        raise PretrainedError(f"{weights_path} cannot be read ({e.strerror}); make it readable to this user") from None
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
        raise PretrainedError(f"{weights_path} does not match the checksum in {CONFIG_FILE}: the file is damaged "
                              f"or not this model's; copy or export the model again")
    try:
        weights = load(data)
    except SafetensorError as e:
        raise PretrainedError(f"{weights_path} is not a readable safetensors file ({e}); export the model "
                              f"again") from None
    try:
        model.load_state_dict(weights)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[-1].strip()
        raise PretrainedError(f"{weights_path} does not fit the config's architecture ({first}); export the "
                              f"model again") from None

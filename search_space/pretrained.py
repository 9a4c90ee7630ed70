"""Fine-tunable model files: the trainable (not deployed) weights as safetensors beside a config.json
that rebuilds the model, its preprocessing and its class names, with no run directory needed."""
from __future__ import annotations

import json
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .model import NASViT, build_model
from .spec import ArchSpec, SpecError

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
ARCHITECTURE = "etnas-nasvit"  # config.json's "architecture", as timm's hub configs name theirs


class PretrainedError(ValueError):
    """Model files that cannot be loaded; the message names the file and what to do."""


def save_pretrained(model: NASViT, out: Path, *, pretrained_cfg: dict, label_names: list[str]) -> list[Path]:
    """Write WEIGHTS_FILE and CONFIG_FILE for `model` (trainable, norms unfolded) to `out`.
    `pretrained_cfg` holds timm's preprocessing keys (input_size, interpolation, crop_pct, mean, std)."""
    if len(label_names) != model.spec.num_classes:
        raise ValueError(f"{len(label_names)} label names for a {model.spec.num_classes}-class model")
    out = Path(out)
    weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(weights, str(out / WEIGHTS_FILE), metadata={"format": "pt"})
    config = {"architecture": ARCHITECTURE, "num_classes": model.spec.num_classes, "label_names": list(label_names),
              "pretrained_cfg": {**pretrained_cfg, "num_classes": model.spec.num_classes},
              "spec": model.spec.to_dict()}
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
        raise PretrainedError(f"{config_path} is not JSON ({e}); export the model again") from None
    if not isinstance(config, dict) or config.get("architecture") != ARCHITECTURE or "spec" not in config:
        raise PretrainedError(f"{config_path} is not an etnas model config (architecture {ARCHITECTURE!r} "
                              f"with a spec); export the model again with `etnas export`")
    return config


def create_model(path: str | Path, *, num_classes: int | None = None, pretrained: bool = True) -> NASViT:
    """The trainable model of an exported folder, in train mode, with its trained weights unless
    `pretrained` is False; `num_classes` other than the file's gives a fresh classifier (fine-tuning
    on new classes). The model carries `pretrained_cfg` (preprocessing) and `label_names`."""
    path = Path(path)
    config = read_config(path)
    try:
        model = build_model(ArchSpec.from_dict(config["spec"]))
    except SpecError as e:
        raise PretrainedError(f"{path}: its spec does not build ({e})") from None
    if pretrained:
        load_weights(model, (path if path.is_dir() else path.parent) / WEIGHTS_FILE)
    model.pretrained_cfg = dict(config.get("pretrained_cfg", {}))
    model.label_names = list(config.get("label_names") or range(model.spec.num_classes))
    if num_classes is not None and num_classes != model.spec.num_classes:
        model.reset_classifier(num_classes)
        model.pretrained_cfg["num_classes"] = num_classes
        model.label_names = [str(c) for c in range(num_classes)]
    return model.train()


def load_weights(model: NASViT, weights_path: Path) -> None:
    try:
        weights = load_file(str(weights_path))
    except FileNotFoundError:
        raise PretrainedError(f"{weights_path} not found; pass pretrained=False for untrained weights") from None
    except (SafetensorError, OSError) as e:
        raise PretrainedError(f"{weights_path} is not a readable safetensors file ({e}); export the model "
                              f"again") from None
    try:
        model.load_state_dict(weights)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[-1].strip()
        raise PretrainedError(f"{weights_path} does not fit the config's architecture ({first}); export the "
                              f"model again") from None

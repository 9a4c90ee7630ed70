"""Training from scratch: AdamW, linear warm-up then cosine decay, label smoothing, light
augmentation, one plain loop shared by the proxy (search) and the final training."""
from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from search_space import ArchSpec, SpecError, build_model


class TrainingFailed(RuntimeError):
    """A trial's training could not finish (divergence, a crashing operator); the message says why."""


@dataclass(frozen=True)
class TrainConfig:
    epochs: float = 5
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_fraction: float = 0.1
    label_smoothing: float = 0.1
    subset: float | None = None  # share of the training split used by the proxy
    resolution: int | None = None  # proxy input side (lower is cheaper)
    augment: bool = True
    grad_clip: float = 1.0
    seed: int = 0
    threads: int = 1
    device: str = "cpu"  # "cuda" trains on a GPU; the search's Ray workers stay on CPU threads


@dataclass
class TrainResult:
    model: nn.Module
    val_acc: float | None
    history: list[float]
    train_s: float
    steps: int
    stopped_early: bool = False


def proxy_spec(spec: ArchSpec, resolution: int | None) -> ArchSpec:
    """The spec at the proxy's resolution, or unchanged where that resolution does not fit it."""
    if not resolution or resolution == spec.img_size:
        return spec
    lowered = dataclasses.replace(spec, img_size=resolution)
    return spec if lowered.problems() else lowered


def augment(x: torch.Tensor, gen: torch.Generator, flip: bool) -> torch.Tensor:
    """Random translation by up to 1/8 of the side (zero padding), and horizontal flips."""
    pad = max(1, x.shape[-1] // 8)
    side = x.shape[-1]
    padded = F.pad(x, (pad, pad, pad, pad))
    dx, dy = torch.randint(0, 2 * pad + 1, (2,), generator=gen).tolist()
    x = padded[..., dy:dy + side, dx:dx + side]
    if flip:
        mask = (torch.rand(x.shape[0], generator=gen) < 0.5).to(x.device)
        x = torch.where(mask[:, None, None, None], x.flip(-1), x)
    return x


class Normalizer:
    """uint8 images -> normalised float at the model's input size."""

    def __init__(self, mean: list[float], std: list[float], size: int):
        self.mean = torch.tensor(mean).view(1, -1, 1, 1)
        self.std = torch.tensor(std).view(1, -1, 1, 1)
        self.size = size

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = (x.float() / 255 - self.mean.to(x.device)) / self.std.to(x.device)
        if x.shape[-1] != self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", antialias=True, align_corners=False)
        return x


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, norm: Normalizer, batch: int = 256) -> float:
    model.eval()
    device = next(model.parameters()).device
    correct = 0
    for i in range(0, len(x), batch):
        logits = model(norm(x[i:i + batch].to(device)))
        correct += int((logits.argmax(-1).cpu() == y[i:i + batch]).sum())
    return correct / max(len(x), 1)


def lr_at(step: int, total: int, cfg: TrainConfig) -> float:
    warm = max(1, int(cfg.warmup_fraction * total))
    if step < warm:
        return cfg.lr * (step + 1) / warm
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))


def train(spec: ArchSpec, x_train: torch.Tensor, y_train: torch.Tensor, x_val: torch.Tensor | None,
          y_val: torch.Tensor | None,
          cfg: TrainConfig, mean: list[float], std: list[float],
          on_epoch: Callable[[int, float], bool] | None = None, checkpoint: Path | None = None,
          on_step: Callable[[int, int, float], None] | None = None) -> TrainResult:
    """Train `spec` from scratch and report validation accuracy after each epoch.

    Without validation data (final training) nothing is evaluated during training.
    `on_epoch(epoch, val_acc)` may return True to stop early (pruning). With `checkpoint`, state is
    saved after every epoch and a re-run resumes from it. Divergence raises TrainingFailed.
    """
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    try:
        spec = proxy_spec(spec, cfg.resolution)
        model = build_model(spec)
    except SpecError as e:
        raise TrainingFailed(f"spec cannot be built: {e}") from None
    if cfg.subset and cfg.subset < 1:
        keep = torch.randperm(len(x_train), generator=gen)[: max(cfg.batch_size, int(cfg.subset * len(x_train)))]
        x_train, y_train = x_train[keep], y_train[keep]
    device = torch.device(cfg.device)
    model.to(device)
    x_train, y_train = x_train.to(device), y_train.to(device)
    norm = Normalizer(mean, std, spec.img_size)
    decay = [p for n, p in model.named_parameters() if p.ndim > 1 and "pos" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim > 1 and "pos" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)
    steps_per_epoch = max(1, math.ceil(len(x_train) / cfg.batch_size))
    epochs = max(1, math.ceil(cfg.epochs))
    total = max(1, int(round(cfg.epochs * steps_per_epoch)))
    scheduled = [m for m in model.modules() if hasattr(m, "set_progress")]
    history: list[float] = []
    step, start_epoch, elapsed = 0, 0, 0.0
    if checkpoint is not None and Path(checkpoint).exists():
        state = torch.load(checkpoint, weights_only=False, map_location=device)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        step, start_epoch, history, elapsed = state["step"], state["epoch"], state["history"], state["train_s"]
        gen.set_state(state["gen"].cpu())
    flip = x_train.shape[1] == 3
    t0 = time.perf_counter() - elapsed
    for epoch in range(start_epoch, epochs):
        model.train()
        order = torch.randperm(len(x_train), generator=gen)
        for i in range(0, len(order), cfg.batch_size):
            if step >= total:
                break
            idx = order[i:i + cfg.batch_size].to(device)
            x = x_train[idx]
            if cfg.augment:
                x = augment(x, gen, flip)
            for m in scheduled:
                m.set_progress(step, total)
            for group in opt.param_groups:
                group["lr"] = lr_at(step, total, cfg)
            loss = F.cross_entropy(model(norm(x)), y_train[idx], label_smoothing=cfg.label_smoothing)
            if not torch.isfinite(loss):
                raise TrainingFailed(f"loss became {loss.item()} at epoch {epoch + 1}, step {step + 1}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            step += 1
            if on_step:
                on_step(step, total, loss.item())
        if x_val is not None:
            history.append(accuracy(model, x_val, y_val, norm))
        if checkpoint is not None:
            torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step, "epoch": epoch + 1,
                        "history": history, "train_s": time.perf_counter() - t0, "gen": gen.get_state()}, checkpoint)
        if on_epoch and history and on_epoch(epoch, history[-1]):
            return TrainResult(model, history[-1], history, time.perf_counter() - t0, step, stopped_early=True)
    return TrainResult(model, history[-1] if history else None, history, time.perf_counter() - t0, step)

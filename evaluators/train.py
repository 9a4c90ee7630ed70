"""Training from scratch: AdamW with timm's weight-decay groups, timm's warm-up + cosine schedule
per step, label smoothing, per-sample crop and flip (optionally mixup/cutmix and RandAugment for
final training), one plain loop shared by the proxy (search) and the final training."""
from __future__ import annotations

import contextlib
import dataclasses
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.data import Mixup
from timm.loss import SoftTargetCrossEntropy
from timm.optim import param_groups_weight_decay
from timm.scheduler import CosineLRScheduler

from search_space import ArchSpec, SpecError, build_model

from .batch_norms import batch_norms_reestimated, statistics_images
from .recipes import PROXY_RECIPE


GPU_REPORT_EVERY = 50  # steps between progress reports on a GPU (each one waits for the device)


class TrainingFailed(RuntimeError):
    """A trial's training could not finish (divergence, a crashing operator); the message says why."""


@dataclass(frozen=True)
class TrainConfig:
    epochs: float = 5
    batch_size: int = PROXY_RECIPE["batch_size"]
    lr: float = PROXY_RECIPE["lr"]
    weight_decay: float = 0.05
    warmup_fraction: float = 0.1
    label_smoothing: float = 0.1
    subset: float | None = None  # share of the training split used by the proxy
    resolution: int | None = None  # proxy input side (lower is cheaper)
    augment: bool = True  # per-sample random crop (reflect padding) and horizontal flip
    grad_clip: float | None = None
    cycle_epochs: float | None = None  # warm restarts: a first cosine cycle this long, each next one
    cycle_mul: float = PROXY_RECIPE["eta"]  # this many times longer (a multi-fidelity search's rungs end at cycle ends)
    mixup: float = 0.0  # mixup alpha (0: off); final training only, like the two below
    cutmix: float = 0.0  # cutmix alpha (0: off)
    randaugment: str | None = None  # timm RandAugment config, e.g. "rand-m9-mstd0.5"
    seed: int = 0
    threads: int = 1
    device: str = "cpu"  # "cuda" trains on a GPU; the search's Ray workers stay on CPU threads

    def __post_init__(self) -> None:
        if self.batch_size < 2:  # a BatchNorm on a 1x1 token grid would see one value per channel
            raise ValueError(f"batch_size {self.batch_size}: training needs batches of two or more")
        if self.randaugment:
            checked_randaugment(self.randaugment)


def training_curve(recipe: dict) -> dict:
    """The fields of a recorded TrainConfig that decide the training's curve, with today's defaults
    for fields added since it was recorded (they reproduce what it did); threads and device do not
    change it."""
    return {k: v for k, v in {**dataclasses.asdict(TrainConfig()), **recipe}.items() if k not in ("threads", "device")}


@dataclass
class TrainResult:
    model: nn.Module
    val_acc: float | None
    history: list[float]
    train_s: float
    steps: int
    stopped_early: bool = False
    start_step: int = 0  # where this call began: a resumed training trains steps - start_step


def proxy_spec(spec: ArchSpec, resolution: int | None) -> ArchSpec:
    """The spec at the proxy's resolution, or unchanged where that resolution does not fit it."""
    if not resolution or resolution == spec.img_size:
        return spec
    lowered = dataclasses.replace(spec, img_size=resolution)
    return spec if lowered.problems() else lowered


def augment(x: torch.Tensor, gen: torch.Generator, flip: bool) -> torch.Tensor:
    """Per-sample random crop from the image reflect-padded by 1/8 of its side, and per-sample
    horizontal flips: one gather of pixel indices, no loop over samples and no padded copy."""
    B, C, side = x.shape[0], x.shape[1], x.shape[-1]
    pad = max(1, side // 8)
    shifts = torch.randint(-pad, pad + 1, (2, B, 1), generator=gen)
    rows = reflect_index(torch.arange(side) + shifts[0], side)            # [B, side]
    cols = reflect_index(torch.arange(side) + shifts[1], side)
    if flip:
        cols = torch.where(torch.rand(B, 1, generator=gen) < 0.5, cols.flip(-1), cols)
    pixels = (rows[:, :, None] * side + cols[:, None, :]).view(B, 1, side * side).expand(B, C, side * side)
    return x.flatten(2).gather(2, pixels.to(x.device)).view(B, C, side, side)


def reflect_index(i: torch.Tensor, side: int) -> torch.Tensor:
    """Indices outside 0..side-1 mirrored back as reflect padding does (the edge is not repeated)."""
    i = i.abs()
    return torch.where(i > side - 1, 2 * (side - 1) - i, i)


def checked_randaugment(config: str) -> str:
    """`config` where timm's RandAugment takes it; ValueError naming it otherwise."""
    from timm.data.auto_augment import rand_augment_transform

    try:
        rand_augment_transform(config, {"img_mean": (128, 128, 128)})
    except Exception:  # timm asserts on the prefix and fails in its own ways on the rest
        raise ValueError(f"{config!r} is not a timm RandAugment config, e.g. rand-m9-mstd0.5") from None
    return config


def rand_augment(x: torch.Tensor, config: str, seed: int) -> torch.Tensor:
    """timm's RandAugment on each uint8 image (PIL ops, so one call per sample)."""
    import random

    from PIL import Image
    from timm.data.auto_augment import rand_augment_transform

    random.seed(seed)  # timm's ops draw from Python's RNG
    op = rand_augment_transform(config, {"img_mean": (128, 128, 128)})
    grey = x.shape[1] == 1
    images = x.permute(0, 2, 3, 1).cpu().numpy()
    out = [np.asarray(op(Image.fromarray(im[..., 0] if grey else im).convert("RGB"))) for im in images]
    out = torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2)
    return (out[:, :1] if grey else out).to(x.device)


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
        correct += int((logits.argmax(-1).cpu() == y[i:i + batch].cpu()).sum())
    return correct / max(len(x), 1)


def optimizer_and_schedule(model: nn.Module, cfg: TrainConfig, total_steps: int, steps_per_epoch: int = 1):
    """AdamW over timm's weight-decay groups (no decay on biases, norms and `no_weight_decay()`),
    and timm's linear warm-up then cosine schedule, stepped per update: the learning rate is a
    function of the step alone, so a training continued from a checkpoint follows the same curve.

    With `cycle_epochs` the cosine restarts (timm's cycles, each `cycle_mul` times longer than the
    last, warm-up inside the first): every cycle ends annealed, so a training stopped at a cycle's
    end is evaluated as if its budget had been planned, and continuing it is the same run."""
    skip = getattr(model, "no_weight_decay", set)()  # timm's models without position tables have none
    groups = param_groups_weight_decay(model, cfg.weight_decay, no_weight_decay_list=skip)
    opt = torch.optim.AdamW(groups, lr=cfg.lr)
    if cfg.cycle_epochs:
        first = cycle_ends(cfg, steps_per_epoch, total_steps)[0]
        warm = max(1, int(cfg.warmup_fraction * first))
        sched = CosineLRScheduler(opt, t_initial=first, cycle_mul=cfg.cycle_mul, cycle_limit=1000, warmup_t=warm,
                                  warmup_lr_init=cfg.lr / warm, warmup_prefix=False, t_in_epochs=False)
        return opt, sched
    warm = max(1, int(cfg.warmup_fraction * total_steps))
    sched = CosineLRScheduler(opt, t_initial=max(1, total_steps - warm), warmup_t=warm,
                              warmup_lr_init=cfg.lr / warm, warmup_prefix=True, t_in_epochs=False)
    return opt, sched


def batch_slices(n_samples: int, batch_size: int) -> list[slice]:
    """An epoch's batches of `batch_size`, the last one shorter; a last batch of one sample joins
    the batch before it: a BatchNorm on a 1x1 token grid would see one value per channel (an
    error in training mode), and mixup would pair nothing."""
    starts = list(range(0, n_samples, batch_size))
    if len(starts) > 1 and n_samples - starts[-1] == 1:
        starts.pop()
    return [slice(a, b) for a, b in zip(starts, starts[1:] + [n_samples])] or [slice(0, 0)]


def steps_per_epoch(n_samples: int, batch_size: int) -> int:
    return len(batch_slices(n_samples, batch_size))


def cycle_ends(cfg: TrainConfig, per_epoch: int, total_steps: int) -> list[int]:
    """The steps at which the schedule's cosine cycles end (the last one at or past `total_steps`):
    a multi-fidelity search's rungs, in steps."""
    first, mul = max(2, round(cfg.cycle_epochs * per_epoch)), cfg.cycle_mul
    ends = [first]
    while ends[-1] < total_steps:  # timm's cycle k ends after first * (1 + mul + ... + mul^k) steps
        k = len(ends) + 1
        ends.append(round(first * ((mul ** k - 1) / (mul - 1) if mul != 1 else k)))
    return ends


def planned_steps(cfg: TrainConfig, per_epoch: int, epochs: float) -> int:
    """`epochs` in optimizer steps; with cycles, the nearest cycle end, so a rung or a whole training
    always stops annealed."""
    steps = max(1, int(round(epochs * per_epoch)))
    if not cfg.cycle_epochs:
        return steps
    return min(cycle_ends(cfg, per_epoch, steps), key=lambda end: abs(end - steps))


class Batches:
    """Training batches with their targets: augmentation, and mixup/cutmix when configured."""

    def __init__(self, cfg: TrainConfig, x: torch.Tensor, y: torch.Tensor, num_classes: int,
                 norm: Normalizer, gen: torch.Generator):
        self.cfg, self.x, self.y, self.norm, self.gen = cfg, x, y, norm, gen
        self.flip = x.shape[1] == 3
        self.mixup = None
        if cfg.mixup > 0 or cfg.cutmix > 0:
            self.mixup = Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix,
                               label_smoothing=cfg.label_smoothing, num_classes=num_classes)

    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.mixup is not None:
            return SoftTargetCrossEntropy()(logits, target)
        return F.cross_entropy(logits, target, label_smoothing=self.cfg.label_smoothing)

    def epoch(self):
        """Yield (normalised images, targets) for one pass over the data in a seeded order."""
        order = torch.randperm(len(self.x), generator=self.gen)
        for batch in batch_slices(len(order), self.cfg.batch_size):
            idx = order[batch]
            if self.mixup is not None:
                idx = idx[: len(idx) // 2 * 2]  # timm's batch mixup pairs samples
            idx = idx.to(self.x.device)
            x, y = self.x[idx], self.y[idx]
            if self.cfg.randaugment:
                x = rand_augment(x, self.cfg.randaugment, int(torch.randint(2**31, (1,), generator=self.gen)))
            if self.cfg.augment:
                x = augment(x, self.gen, self.flip)
            x = self.norm(x)
            if self.mixup is not None:
                x, y = self.mixup(x, y)
            yield x, y


def train(spec: ArchSpec, x_train: torch.Tensor, y_train: torch.Tensor, x_val: torch.Tensor | None,
          y_val: torch.Tensor | None, cfg: TrainConfig, *, mean: list[float], std: list[float], **hooks) -> TrainResult:
    """Train `spec` from scratch and report validation accuracy after each epoch (see
    `train_model`; the spec at the proxy's resolution where `cfg.resolution` is set)."""
    spec = proxy_spec(spec, cfg.resolution)

    def make() -> nn.Module:
        try:
            return build_model(spec)
        except SpecError as e:
            raise TrainingFailed(f"spec cannot be built: {e}") from None

    return train_model(make, x_train, y_train, x_val, y_val, cfg, img_size=spec.img_size,
                       num_classes=spec.num_classes, mean=mean, std=std, **hooks)


def train_model(make_model: Callable[[], nn.Module], x_train: torch.Tensor, y_train: torch.Tensor,
                x_val: torch.Tensor | None, y_val: torch.Tensor | None, cfg: TrainConfig, *, img_size: int,
                num_classes: int, mean: list[float], std: list[float],
                on_epoch: Callable[[int, float], bool] | None = None, checkpoint: Path | None = None,
                on_step: Callable[[int, int, float], None] | None = None,
                until_epochs: float | None = None) -> TrainResult:
    """Train the model `make_model` builds (after seeding, so its initial weights are the seed's)
    on images resized to `img_size`, and report validation accuracy after each epoch.

    Without validation data (final training) nothing is evaluated during training.
    `on_epoch(epoch, val_acc)` may return True to stop early (pruning). With `checkpoint`, state is
    saved after every epoch and where the training stops, and a re-run resumes from it.
    `until_epochs` stops (and evaluates) after that much of the `cfg.epochs` schedule: a rung of a
    multi-fidelity search, which a later call with a larger value continues. Divergence raises
    TrainingFailed.
    """
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)  # timm's Mixup draws from numpy
    gen = torch.Generator().manual_seed(cfg.seed)
    model = make_model()
    if cfg.subset and cfg.subset < 1:
        keep = torch.randperm(len(x_train), generator=gen)[: max(cfg.batch_size, int(cfg.subset * len(x_train)))]
        x_train, y_train = x_train[keep], y_train[keep]
    device = torch.device(cfg.device)
    model.to(device)
    norm = Normalizer(mean, std, img_size)
    batches = Batches(cfg, x_train.to(device), y_train.to(device), num_classes, norm, gen)
    per_epoch = steps_per_epoch(len(x_train), cfg.batch_size)
    total = planned_steps(cfg, per_epoch, cfg.epochs)
    stop = total if until_epochs is None else min(total, planned_steps(cfg, per_epoch, until_epochs))
    opt, sched = optimizer_and_schedule(model, cfg, total, per_epoch)
    state = {"step": 0, "history": [], "train_s": 0.0, "val_acc": None, "epoch_gen": None}
    if checkpoint is not None and Path(checkpoint).exists():
        state = load_checkpoint(checkpoint, model, opt, gen, device) or state
    loop = _Loop(model, batches, opt, sched, cfg, total, per_epoch, on_step)
    evaluate = validation(model, x_train, x_val, y_val, norm, cfg) if x_val is not None else (lambda: None)
    return loop.run(state, stop, evaluate, on_epoch, checkpoint)


def validation(model: nn.Module, x_train: torch.Tensor, x_val: torch.Tensor, y_val: torch.Tensor,
               norm: Normalizer, cfg: TrainConfig) -> Callable[[], float]:
    """The validation accuracy of the model as it is, read with its BatchNorm statistics re-estimated
    (the model keeps the running statistics it trained with)."""
    images = statistics_images(x_train, cfg.seed)

    def evaluate() -> float:
        with batch_norms_reestimated(model, images, norm, cfg.batch_size):
            return accuracy(model, x_val, y_val, norm)

    return evaluate


@dataclass
class _Loop:
    """Steps from a (possibly resumed) state to `stop`: an epoch at a time, evaluating at each epoch's
    end and at the stop, checkpointing both."""

    model: nn.Module
    batches: Batches
    opt: torch.optim.Optimizer
    sched: CosineLRScheduler
    cfg: TrainConfig
    total: int
    per_epoch: int
    on_step: Callable[[int, int, float], None] | None

    def run(self, state: dict, stop: int, evaluate: Callable[[], float | None],
            on_epoch: Callable[[int, float], bool] | None, checkpoint: Path | None) -> TrainResult:
        start = step = state["step"]
        if step > stop:
            raise TrainingFailed(f"the checkpoint is at step {step}, past the {stop} steps asked for "
                                 f"(a longer training of this model); delete it to retrain")
        history, val_acc = list(state["history"]), state["val_acc"]
        t0 = time.perf_counter() - state["train_s"]
        gen = self.batches.gen
        while step < stop:
            epoch, done_in_epoch = divmod(step, self.per_epoch)
            if done_in_epoch and state["epoch_gen"] is not None:
                gen.set_state(state["epoch_gen"])  # replay this epoch's draws up to the resumed step
            epoch_gen = gen.get_state()
            end = min(stop, (epoch + 1) * self.per_epoch, self.total)
            step = train_epoch(self.model, self.batches, self.opt, self.sched, step, self.total, self.cfg.grad_clip,
                               self.on_step, skip=done_in_epoch, end=end)
            epoch_over = step % self.per_epoch == 0 or step == self.total
            val_acc = evaluate()
            if epoch_over and val_acc is not None:
                history.append(val_acc)
            state = {"step": step, "history": history, "train_s": time.perf_counter() - t0, "val_acc": val_acc,
                     "epoch_gen": None if epoch_over else epoch_gen}
            if checkpoint is not None:
                save_checkpoint(checkpoint, {"model": self.model.state_dict(), "opt": self.opt.state_dict(),
                                             "gen": gen.get_state(), **{k: v for k, v in state.items() if v is not None}})
            if on_epoch and epoch_over and val_acc is not None and on_epoch(epoch, val_acc):
                return TrainResult(self.model, val_acc, history, state["train_s"], step, True, start)
        return TrainResult(self.model, val_acc, history, time.perf_counter() - t0, step, start_step=start)


def save_checkpoint(path: Path, state: dict) -> None:
    """Replace the checkpoint whole: a worker killed mid-write (its node lost, the driver killed)
    leaves the previous epoch's checkpoint, never a truncated one."""
    tmp = Path(path).with_suffix(Path(path).suffix + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


class CheckpointSetAside(UserWarning):
    """A checkpoint that could not be read was moved aside, and its training started over."""


def load_checkpoint(path: Path, model: nn.Module, opt: torch.optim.Optimizer, gen: torch.Generator,
                    device: torch.device) -> dict | None:
    """Restore model, optimizer and sampling state and return the loop's state (step, history,
    train_s, val_acc, and epoch_gen: the sampling state at the start of an epoch left unfinished).
    Tensors and plain data only (`weights_only`): a file that is anything else is set aside as
    PATH.corrupt and the training starts over (None)."""
    try:
        state = torch.load(path, weights_only=True, map_location=device)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        gen.set_state(state["gen"].cpu())
        epoch_gen = state.get("epoch_gen")
        return {"step": state["step"], "history": state["history"], "train_s": state["train_s"],
                "val_acc": state.get("val_acc"), "epoch_gen": None if epoch_gen is None else epoch_gen.cpu()}
    except Exception as e:
        aside = Path(path).with_suffix(Path(path).suffix + ".corrupt")
        Path(path).replace(aside)
        warnings.warn(f"checkpoint {path} is unreadable ({type(e).__name__}); moved to {aside.name}, "
                      f"training from scratch", CheckpointSetAside, stacklevel=2)
        return None


def train_epoch(model: nn.Module, batches: Batches, opt: torch.optim.Optimizer, sched: CosineLRScheduler,
                step: int, total: int, grad_clip: float | None,
                on_step: Callable[[int, int, float], None] | None, skip: int = 0, end: int | None = None) -> int:
    """One pass over the data (its first `skip` batches drawn but not trained on, stopping at step
    `end`, default `total`); returns the step count after it. The learning rate and PRepBN/UN
    progress are set from the global step, so they resume exactly. On a GPU the forward pass runs
    in bf16 autocast and nothing waits on the device per step: divergence is checked once at the
    end, and `on_step` hears every GPU_REPORT_EVERY steps."""
    model.train()
    end = total if end is None else end
    cuda = next(model.parameters()).is_cuda
    finite = torch.ones((), dtype=torch.bool, device="cuda") if cuda else None
    scheduled = [m for m in model.modules() if hasattr(m, "set_progress")]
    first = step
    for i, (x, target) in enumerate(batches.epoch()):
        if i < skip:
            continue
        if step >= end:
            break
        for m in scheduled:
            m.set_progress(step, total)
        sched.step_update(step)
        with torch.autocast("cuda", dtype=torch.bfloat16) if cuda else contextlib.nullcontext():
            loss = batches.loss(model(x), target)
        if cuda:
            finite &= torch.isfinite(loss)
        elif not torch.isfinite(loss):
            raise TrainingFailed(f"loss became {loss.item()} at step {step + 1} of {total}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip:
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        opt.step()
        step += 1
        if on_step and (not cuda or step % GPU_REPORT_EVERY == 0 or step == end):
            on_step(step, total, loss.item())
    if cuda and not bool(finite):
        raise TrainingFailed(f"loss became non-finite between steps {first + 1} and {step} of {total}")
    return step

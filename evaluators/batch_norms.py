"""BatchNorm statistics re-estimated before a proxy training is evaluated (precise BN, as in
"Rethinking Batch in BatchNorm", Sec. 3). During training a BatchNorm's running average mixes its
initial values and the batch statistics of weights many steps old; after a few steps it describes
no model at all. A low rung of a search would then judge the BN family at chance: EfficientViT-M0
after 16 steps on digits scored 0.105 with its running statistics and 0.699 with re-estimated ones,
while the LayerNorm presets, which keep no statistics, were unaffected (BENCHMARKS.md, "Proxy
evaluation of BatchNorm models")."""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
import torch.nn as nn

STATISTICS_IMAGES = 1024  # training images the statistics are averaged over


def statistics_images(x_train: torch.Tensor, seed: int) -> torch.Tensor:
    """The training images to re-estimate on: a seeded draw of its own, so the training's sampling
    is not disturbed and a resumed training re-estimates on the same images."""
    order = torch.randperm(len(x_train), generator=torch.Generator().manual_seed(seed))
    return x_train[order[:STATISTICS_IMAGES].to(x_train.device)]


def tracked_batch_norms(model: nn.Module) -> list[nn.Module]:
    """The model's BatchNorms that keep running statistics."""
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


@torch.no_grad()
def reestimate_batch_norms(model: nn.Module, images: torch.Tensor, prepare: Callable[[torch.Tensor], torch.Tensor],
                           batch_size: int) -> None:
    """Set every BatchNorm's running mean and variance to the plain average of its batch statistics
    over `images` (in batches of at most `batch_size`, each `prepare`d as the model's input on the
    model's device), the weights as they are: PyTorch's
    cumulative average (momentum None). The rest of the model runs in eval mode, so no other
    module's state changes; the training flags, the momenta and the global RNG are restored."""
    norms = tracked_batch_norms(model)
    if not norms:
        return
    training = {m: m.training for m in model.modules()}
    momenta = [m.momentum for m in norms]
    model.eval()
    for m in norms:
        m.train()
        m.reset_running_stats()
        m.momentum = None
    device = next(model.parameters()).device
    with torch.random.fork_rng(devices=[]):
        for batch in torch.tensor_split(images, -(-len(images) // batch_size)):  # equal sizes: no batch of one
            model(prepare(batch.to(device)))
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    for m, was_training in training.items():
        m.training = was_training


@contextlib.contextmanager
def batch_norms_reestimated(model: nn.Module, images: torch.Tensor, prepare: Callable[[torch.Tensor], torch.Tensor],
                            batch_size: int) -> Iterator[None]:
    """Within it, the BatchNorm statistics are re-estimated (`reestimate_batch_norms`); after it, the
    running statistics the training left are back, so that judging a model does not change it: a
    training goes on, and ends, the same whether or not it was evaluated along the way."""
    kept = [(buffer, buffer.clone()) for m in tracked_batch_norms(model)
            for buffer in (m.running_mean, m.running_var, m.num_batches_tracked)]
    try:
        reestimate_batch_norms(model, images, prepare, batch_size)
        yield
    finally:
        with torch.no_grad():
            for buffer, value in kept:
                buffer.copy_(value)

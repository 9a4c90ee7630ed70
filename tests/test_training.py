"""The training loop: per-sample augmentation, timm's weight-decay groups and schedule, exact resume,
and the final-training options (mixup/cutmix, RandAugment)."""
import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from evaluators.batch_norms import reestimate_batch_norms
from evaluators.train import (Batches, Normalizer, TrainConfig, augment, batch_slices, optimizer_and_schedule,
                              rand_augment, steps_per_epoch, train)
from search_space import ArchSpec, StageSpec, build_model
from search_space.norms import PRepBN

SPEC = ArchSpec((StageSpec(width=32, depth=1, norm="prepbn", attention="sla", heads=2, key_dim=8),
                 StageSpec(width=48, depth=1, norm="batchnorm", attention="cga", heads=2, key_dim=8)),
                img_size=16, patch=4)


def images(n=96, side=16, chans=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, chans, side, side), generator=g, dtype=torch.uint8)
    return x, torch.arange(n) % 10


@pytest.mark.parametrize("n, batch_size, sizes", [(130, 64, [64, 64, 2]), (129, 64, [64, 65]), (128, 64, [64, 64]),
                                                    (65, 64, [65]), (10, 64, [10]), (1, 64, [1])])
def test_an_epochs_batches_cover_every_sample_once_and_only_a_lone_sample_is_a_batch_of_one(n, batch_size, sizes):
    slices = batch_slices(n, batch_size)
    assert [s.stop - s.start for s in slices] == sizes and steps_per_epoch(n, batch_size) == len(sizes)
    assert [i for s in slices for i in range(n)[s]] == list(range(n))


def test_a_batch_of_one_is_refused_before_training():
    with pytest.raises(ValueError, match="batch_size 1: training needs batches of two or more"):
        TrainConfig(batch_size=1)


@pytest.mark.parametrize("mixup", [0.0, 0.8])
def test_a_training_set_one_past_a_whole_batch_trains_a_one_token_batchnorm_model(mixup):
    """65 images at batch 64: the last sample would be a batch of one, an error for a BatchNorm on a
    1x1 grid (one value per channel) and an empty batch after mixup's pairing."""
    spec = ArchSpec((StageSpec(width=32, depth=1, norm="batchnorm", heads=2, key_dim=8, dwconv=True),),
                    img_size=8, in_chans=1, patch=8)
    x, y = images(65, side=8, chans=1)
    cfg = TrainConfig(epochs=2, batch_size=64, mixup=mixup, augment=False)
    result = train(spec, x, y, x[:10], y[:10], cfg, mean=[0.5], std=[0.25])
    assert result.steps == 2 and len(result.history) == 2


def test_augment_takes_a_reflect_padded_crop_and_flip_per_sample():
    x, _ = images(64, side=32)
    out = augment(x, torch.Generator().manual_seed(0), flip=True)
    padded = F.pad(x.float(), (4, 4, 4, 4), mode="reflect")
    used = set()
    for b in range(len(x)):
        found = [(dy, dx, f) for dy in range(9) for dx in range(9) for f in (False, True)
                 if torch.equal(padded[b, :, dy:dy + 32, dx:dx + 32].flip(-1) if f else
                                padded[b, :, dy:dy + 32, dx:dx + 32], out[b].float())]
        assert found, f"sample {b} is not a reflect-padded crop of its image"
        used.add(found[0])
    assert len(used) > 20  # drawn per sample, not once per batch


def test_weight_decay_spares_positions_biases_and_norms_only():
    model = build_model(SPEC)
    opt, _ = optimizer_and_schedule(model, TrainConfig(), total_steps=10)
    decayed = {id(p) for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    names = {n for n, p in model.named_parameters() if id(p) not in decayed}
    assert {"pos_embed", "stages.0.blocks.0.attn.fn.pos", "stages.1.blocks.0.attn.fn.attention_biases"} <= names
    assert all(p.ndim <= 1 or n in model.no_weight_decay() for n, p in model.named_parameters() if n in names)
    assert "stages.0.blocks.0.attn.fn.qkv.weight" not in names


def test_a_model_without_no_weight_decay_trains_too():
    """timm's ByobNet models (mobilevit_xxs, a proof baseline) have no `no_weight_decay()`."""
    import timm

    model = timm.create_model("mobilevit_xxs", pretrained=False, num_classes=3)
    assert not hasattr(model, "no_weight_decay")
    opt, _ = optimizer_and_schedule(model, TrainConfig(), total_steps=10)
    decayed = {id(p) for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    assert all((id(p) in decayed) == (p.ndim > 1) for p in model.parameters())  # biases and norms spared


def test_schedule_warms_up_then_decays_to_zero():
    model = build_model(SPEC)
    cfg = TrainConfig(lr=1e-3, warmup_fraction=0.1)
    opt, sched = optimizer_and_schedule(model, cfg, total_steps=100)
    lrs = []
    for step in range(100):
        sched.step_update(step)
        lrs.append(opt.param_groups[0]["lr"])
    assert lrs[0] == pytest.approx(1e-4) and lrs[:11] == sorted(lrs[:11]) and lrs[10] == pytest.approx(1e-3)
    assert max(lrs) == pytest.approx(1e-3) and lrs[-1] < 1e-6 and lrs[10:] == sorted(lrs[10:], reverse=True)


def test_a_resumed_training_ends_where_an_uninterrupted_one_does(tmp_path):
    x, y = images()
    cfg = TrainConfig(epochs=2, batch_size=32, seed=3)
    whole = train(SPEC, x, y, x, y, cfg, mean=[0.5] * 3, std=[0.25] * 3)
    ckpt = tmp_path / "ckpt.pt"
    train(SPEC, x, y, x, y, dataclasses.replace(cfg, epochs=2), mean=[0.5] * 3, std=[0.25] * 3, checkpoint=ckpt,
          on_epoch=lambda epoch, acc: True)  # stops after epoch 1, checkpointed
    trained = []
    resumed = train(SPEC, x, y, x, y, cfg, mean=[0.5] * 3, std=[0.25] * 3, checkpoint=ckpt,
                    on_step=lambda step, total, loss: trained.append(step))
    assert resumed.start_step == 3 and trained == [4, 5, 6]  # only epoch 2 trained: it went on from the checkpoint
    assert resumed.history == whole.history
    for a, b in zip(whole.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-6)
    # the loop drives PRepBN by the global step: LayerNorm phased out by 80% of the 6 steps, in both
    prepbn = [m for r in (whole, resumed) for m in r.model.modules() if isinstance(m, PRepBN)]
    assert prepbn and all(m.lam == 0.0 and int(m.total_step) == 5 for m in prepbn)


def test_cycles_restart_at_each_rung_and_end_annealed():
    cfg = TrainConfig(lr=1e-3, cycle_epochs=10, cycle_mul=3)
    opt, sched = optimizer_and_schedule(build_model(SPEC), cfg, total_steps=130, steps_per_epoch=1)
    lrs = []
    for step in range(130):
        sched.step_update(step)
        lrs.append(opt.param_groups[0]["lr"])
    for end in (10, 40, 130):  # the rungs: 10, 10 + 30, 10 + 30 + 90 steps
        assert lrs[end - 1] < 0.05 * 1e-3
    assert lrs[10] == pytest.approx(1e-3) and lrs[40] == pytest.approx(1e-3)
    assert lrs[10:40] == sorted(lrs[10:40], reverse=True) and lrs[40:] == sorted(lrs[40:], reverse=True)


def test_a_rung_continued_mid_epoch_ends_where_an_uninterrupted_training_does(tmp_path):
    x, y = images(192)  # 6 steps an epoch: cycles end at steps 2 and 8, both inside an epoch
    cfg = TrainConfig(epochs=1.4, batch_size=32, seed=5, cycle_epochs=0.4, cycle_mul=3)
    whole = train(SPEC, x, y, x, y, cfg, mean=[0.5] * 3, std=[0.25] * 3)
    ckpt = tmp_path / "rung.pt"
    first = train(SPEC, x, y, x, y, cfg, mean=[0.5] * 3, std=[0.25] * 3, checkpoint=ckpt, until_epochs=0.4)
    assert first.steps == 2 and first.history == [] and first.val_acc is not None
    trained = []

    def count(step, total, loss):
        trained.append(step)

    again = train(SPEC, x, y, x, y, cfg, mean=[0.5] * 3, std=[0.25] * 3, checkpoint=ckpt, until_epochs=0.4,
                  on_step=count)
    assert again.steps == 2 and again.val_acc == first.val_acc  # a finished rung is not trained twice
    assert again.start_step == 2 and trained == []
    top = train(SPEC, x, y, x, y, cfg, mean=[0.5] * 3, std=[0.25] * 3, checkpoint=ckpt, on_step=count)
    assert top.start_step == 2 and trained == [3, 4, 5, 6, 7, 8]  # continued mid-epoch from step 2
    assert top.steps == whole.steps == 8 and len(whole.history) == 2 and top.history == whole.history and top.val_acc == whole.val_acc
    for a, b in zip(whole.model.state_dict().values(), top.model.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-6)


def test_mixup_cutmix_and_randaugment_give_soft_targets_and_train():
    x, y = images()
    cfg = TrainConfig(batch_size=32, mixup=0.8, cutmix=1.0, randaugment="rand-m9-mstd0.5")
    batches = Batches(cfg, x, y, 10, Normalizer([0.5] * 3, [0.25] * 3, 16), torch.Generator().manual_seed(0))
    xb, target = next(batches.epoch())
    assert xb.shape == (32, 3, 16, 16) and target.shape == (32, 10)
    assert torch.allclose(target.sum(1), torch.ones(32)) and (target.max(1).values < 1).any()
    # label smoothing alone leaves one class above 0.1/10 per sample; mixing gives a second one
    assert ((target > 0.02).sum(1) == 2).any() and ((target > 0.02).sum(1) <= 2).all()
    # RandAugment is applied to the drawn images, with a seed drawn after the batch order
    plain = dataclasses.replace(cfg, mixup=0.0, cutmix=0.0, augment=False)
    norm = Normalizer([0.5] * 3, [0.25] * 3, 16)
    np.random.seed(0)  # timm's RandAugment picks its ops with numpy
    xb, _ = next(Batches(plain, x, y, 10, norm, torch.Generator().manual_seed(0)).epoch())
    np.random.seed(0)
    gen = torch.Generator().manual_seed(0)
    idx = torch.randperm(len(x), generator=gen)[:32]
    seed = int(torch.randint(2**31, (1,), generator=gen))
    assert torch.equal(xb, norm(rand_augment(x[idx], cfg.randaugment, seed)))
    assert not torch.equal(xb, norm(x[idx]))
    res = train(SPEC, x, y, x, y, cfg, mean=[0.5] * 3, std=[0.25] * 3)
    assert res.steps == 3 * 5 and 0 <= res.val_acc <= 1  # odd tail dropped: mixup pairs samples


def test_randaugment_keeps_grey_images_grey():
    x, y = images(chans=1)
    cfg = TrainConfig(batch_size=32, randaugment="rand-m9-mstd0.5")
    batches = Batches(cfg, x, y, 10, Normalizer([0.5], [0.25], 16), torch.Generator().manual_seed(0))
    assert next(batches.epoch())[0].shape == (32, 1, 16, 16)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_the_gpu_path_trains_in_bf16_and_learns_like_the_cpu_path():
    x, y = images(192)
    y = (x.float().mean((1, 2, 3)) > 127.5).long()  # a learnable rule
    cfg = TrainConfig(epochs=4, batch_size=32, seed=0)
    cpu = train(SPEC, x, y, x, y, cfg, mean=[0.5] * 3, std=[0.25] * 3)
    gpu = train(SPEC, x, y, x, y, dataclasses.replace(cfg, device="cuda"), mean=[0.5] * 3, std=[0.25] * 3)
    assert next(gpu.model.parameters()).is_cuda and gpu.steps == cpu.steps
    assert abs(gpu.val_acc - cpu.val_acc) < 0.15


def test_batch_norm_statistics_are_the_plain_average_over_the_images_and_nothing_else_changes():
    # a first stage normalized by UN, whose statistics of its own the re-estimate must leave as they are
    model = build_model(dataclasses.replace(SPEC, stages=(dataclasses.replace(SPEC.stages[0], norm="unified"),
                                                          SPEC.stages[1])))
    un = next(m for m in model.modules() if type(m).__name__ == "UnifiedNorm")
    x, _ = images(40)
    norm = Normalizer([0.5] * 3, [0.25] * 3, 16)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    first = norms[0]  # the patch stem's BatchNorm2d, fed the normalized images through its conv
    seen = []
    first.register_forward_hook(lambda m, inputs, out: seen.append(inputs[0].detach()))
    un_state = {k: v.clone() for k, v in un.state_dict().items()}
    model.train()
    rng = torch.get_rng_state()
    reestimate_batch_norms(model, x, norm, batch_size=16)  # three batches of equal size, 14, 13 and 13
    assert [len(b) for b in seen] == [14, 13, 13] and model.training and all(m.training for m in model.modules())
    means = torch.stack([b.mean(dim=(0, 2, 3)) for b in seen])
    variances = torch.stack([b.var(dim=(0, 2, 3), unbiased=True) for b in seen])
    assert torch.allclose(first.running_mean, means.mean(0), atol=1e-6)  # a plain average of the batches
    assert torch.allclose(first.running_var, variances.mean(0), atol=1e-5)
    assert all(m.momentum == 0.1 for m in norms) and torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(v, un_state[k]) for k, v in un.state_dict().items())


def test_a_batch_norm_model_at_a_low_rung_is_judged_with_its_statistics_reestimated():
    """EfficientViT-M0 after 16 steps on digits: at chance with the running averages it trained with."""
    from evaluators.data import load_dataset
    from nas.dispatch import rung_train_config
    from nas.rungs import Rungs
    from search_space import presets
    from search_space.presets import SEARCH_SCALE

    data = load_dataset("digits")
    x, y, x_val, y_val = data.holdout(seed=0)
    mean, std = data.channel_stats()
    spec = presets(8, 1, 10, SEARCH_SCALE, SEARCH_SCALE)["efficientvit-m0"]
    cfg = rung_train_config(Rungs(0.5, 3, 3), batch_size=64, lr=0.002, seed=0)
    res = train(spec, x, y, x_val, y_val, cfg, mean=mean, std=std, until_epochs=0.75)
    assert res.steps == 16 and res.val_acc > 0.5  # 0.105 (one class) before the re-estimate


def test_judging_a_training_along_the_way_does_not_change_the_model_it_ends_with():
    """A BatchNorm model trained with a validation part (its statistics re-estimated at every
    evaluation) ends with the weights and running statistics of the same training without one, as
    a final training with --holdout and one without, or the long-training reference, must."""
    from evaluators.data import load_dataset
    from search_space import presets
    from search_space.presets import SEARCH_SCALE

    data = load_dataset("digits")
    x, y, x_val, y_val = data.holdout(seed=0)
    mean, std = data.channel_stats()
    spec = presets(8, 1, 10, SEARCH_SCALE, SEARCH_SCALE)["efficientvit-m0"]
    cfg = TrainConfig(epochs=2, batch_size=64, lr=0.002, seed=0)
    judged = train(spec, x[:512], y[:512], x_val, y_val, cfg, mean=mean, std=std)
    unjudged = train(spec, x[:512], y[:512], None, None, cfg, mean=mean, std=std)
    assert len(judged.history) == 2 and unjudged.history == []
    state = unjudged.model.state_dict()
    assert any("running_mean" in k for k in state)
    assert all(torch.equal(v, state[k]) for k, v in judged.model.state_dict().items())

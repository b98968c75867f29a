"""Trainer config (typed YAML / --set overrides), LR schedule, weight-decay groups, losses, checkpoint helpers."""
from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch
import yaml

from pipeline.errors import InputError
from trainer.checkpoint import load_checkpoint, model_state_dict, rng_state, save_checkpoint, set_rng_state
from trainer.model import unwrap_model
from trainer.config import TrainConfig, config_from_dict, dump_yaml, load_config, preset_path
from trainer.configtools import config_to_dict
from trainer.losses import LossConfig, heatmap_cross_entropy, pose_losses
from trainer.train import get_lr, param_groups, segment_end


# ------------------------------------------------------------------------------------------------- config
def test_defaults_are_the_paper_recipe():
    c = TrainConfig()
    assert (c.model.width, c.model.crop_size, c.batch_size, c.epochs, c.epoch_samples) == (48, 256, 96, 70, 300_000)
    assert (c.optim.lr, c.optim.weight_decay, c.optim.warmup_epochs) == (3e-4, 5e-4, 1.0)
    assert (c.optim.decay_factor, c.optim.decay_every_epochs, c.optim.grad_clip) == (0.75, 6.0, 100.0)
    assert (c.loss.uvd_weight, c.loss.scale_weight) == (1.0, 0.5)


def test_paper_preset_equals_defaults_and_demo_is_small():
    assert load_config("paper") == TrainConfig()
    assert load_config(preset_path("trainer/configs/paper.yaml")) == TrainConfig()
    demo = load_config("demo")
    assert demo.model.crop_size <= 128 and demo.model.width <= 16 and demo.batch_size <= 64
    assert demo.model.stage_modules == (1, 1, 1) and demo.model.stage_blocks == 1     # the light layout
    assert demo.total_steps(world_size=2) <= 3000 and demo.loss.heatmap_weight > 0 and demo.augment.p_no_aug == 1.0


def test_set_overrides_are_typed():
    c = load_config("demo", ["optim.lr=1e-3", "batch_size=8", "model.skeletons=[smpl24, coco17]",
                             "compile=true", "epoch_samples=3e5", "precision=fp32"])
    assert c.optim.lr == 1e-3 and isinstance(c.optim.lr, float)
    assert c.batch_size == 8 and c.model.skeletons == ("smpl24", "coco17")
    assert c.compile is True and c.epoch_samples == 300_000 and c.precision == "fp32"


@pytest.mark.parametrize("override, key", [
    ("optim.lrr=1", "optim.lrr"), ("modle.width=4", "modle"), ("batch_size=abc", "batch_size"),
    ("batch_size=1.5", "batch_size"), ("compile=3", "compile"), ("precision=fp16", "precision"),
    ("model.skeletons=smpl24", "model.skeletons"), ("optim=3", "optim"), ("data.train=[{name: a}]", "data.train"),
])
def test_bad_override_names_the_key(override, key):
    with pytest.raises(InputError) as e:
        load_config(None, [override])
    assert key in str(e.value) and "\n" not in str(e.value)


def test_unknown_key_in_yaml_file(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("optim:\n  lr: 1.0e-3\n  momentum: 0.9\n")
    with pytest.raises(InputError, match="optim.momentum"):
        load_config(p)
    p.write_text("- a\n- b\n")
    with pytest.raises(InputError, match="mapping"):
        load_config(p)
    with pytest.raises(InputError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    p.write_text("data:\n  - a\n  - b\n")                  # a list where the data section goes, with --train given
    with pytest.raises(InputError, match=r"c.yaml: config key 'data': expected a mapping .* got list"):
        load_config(p, (), {"train": [{"name": "x", "paths": ["y"]}]})
    with pytest.raises(InputError, match="'data'"):            # and without the CLI's data section
        load_config(p)
    for empty in ("data:\n", "data: []\n", "data: 0\n"):     # the same with and without --train
        p.write_text(empty)
        for section in (None, {"train": [{"name": "x", "paths": ["y"]}]}):
            with pytest.raises(InputError, match="'data'"):
                load_config(p, (), section)


def test_invalid_combination_is_input_error():
    with pytest.raises(InputError, match="crop_size"):
        load_config(None, ["model.crop_size=100"])


def test_yaml_round_trip_of_the_resolved_config():
    c = load_config("demo", ["optim.betas=[0.8, 0.99]"], {"train": [{"name": "a", "paths": ["/x", "/y"]}],
                                                          "val": ["/v"]})
    text = dump_yaml(c)
    back = config_from_dict(yaml.safe_load(text))
    assert back == c and back.data.train[0].paths == ("/x", "/y") and back.optim.betas == (0.8, 0.99)
    assert config_to_dict(back) == yaml.safe_load(text)


# ------------------------------------------------------------------------------------------------- schedule
def test_lr_schedule_is_the_reference_one():
    c = TrainConfig()  # 3125 steps per epoch
    spe = c.steps_per_epoch()
    assert get_lr(0, c) == pytest.approx(3e-4 * 0.01)
    assert get_lr(spe // 2, c) == pytest.approx(3e-4 * (0.5 + 0.01), rel=1e-3)
    assert get_lr(spe, c) == pytest.approx(3e-4)                      # e = 1: warm-up over
    assert get_lr(7 * spe - 1, c) == pytest.approx(3e-4)              # e < 7
    assert get_lr(7 * spe, c) == pytest.approx(3e-4 * 0.75)
    assert get_lr(69 * spe, c) == pytest.approx(3e-4 * 0.75 ** 11)
    # the fractional epoch counts global samples: 2 ranks reach the same epoch in half the steps
    assert get_lr(1000, c, world_size=2) == pytest.approx(get_lr(2000, c))
    assert get_lr(8000, c, world_size=2) == pytest.approx(get_lr(16000, c))


def test_cosine_schedule_runs_from_lr_after_warmup_to_the_floor_at_the_last_step():
    c = load_config("demo", ["optim.schedule=cosine", "optim.min_lr_ratio=0.1", "optim.warmup_epochs=1"])
    spe, last = math.ceil(c.epoch_samples / c.batch_size), c.total_steps() - 1   # spe: the first step at e >= 1
    lr = c.optim.lr
    assert get_lr(0, c) == pytest.approx(lr * 0.01)                   # the warm-up is unchanged
    assert get_lr(spe, c) == pytest.approx(lr, rel=1e-5)              # e = W: the cosine starts at lr
    assert get_lr(last, c) == pytest.approx(lr * 0.1)                 # and ends at lr * min_lr_ratio
    mid = (spe + last) / 2
    assert get_lr(int(mid), c) == pytest.approx(lr * 0.55, rel=2e-3)  # half-way: the mean of the two ends
    steps = [get_lr(i, c) for i in range(spe, last + 1)]
    assert all(a >= b for a, b in zip(steps, steps[1:]))              # monotone
    assert get_lr(last // 2, c, world_size=2) == pytest.approx(get_lr(last // 2 * 2, c), rel=1e-3)
    with pytest.raises(InputError, match="schedule"):
        load_config("demo", ["optim.schedule=linear"])


def test_ema_averages_every_float_entry_and_copies_counters():
    from trainer.ema import ema_decay_at, make_ema, update_ema

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 1), torch.nn.BatchNorm2d(3))
    ema = make_ema(net)
    start = {k: v.clone() for k, v in ema.state_dict().items()}
    assert not any(p.requires_grad for p in ema.parameters())
    net(torch.randn(4, 2, 5, 5))                                      # moves the BN statistics and the counter
    with torch.no_grad():
        net[0].weight.add_(1.0)
    update_ema(ema, net, 0.75)
    now, src = ema.state_dict(), net.state_dict()
    for k, v in now.items():
        if v.is_floating_point():
            assert torch.allclose(v, 0.75 * start[k] + 0.25 * src[k], atol=1e-7), k
        else:
            assert torch.equal(v, src[k]), k                          # num_batches_tracked
    assert ema_decay_at(0, 0.999) == pytest.approx(0.1) and ema_decay_at(10**6, 0.999) == 0.999


def test_segments_end_at_checkpoints_epochs_and_the_last_step():
    c = load_config(None, ["checkpoint_every_steps=4"])
    assert [segment_end(s, c, 10, 25) for s in (0, 3, 4, 8, 9, 10, 20, 24)] == [4, 4, 8, 10, 10, 12, 24, 25]


def test_weight_decay_only_on_weights():
    m = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(),
                            torch.nn.Linear(4, 2))
    decay, no_decay = param_groups(m, 5e-4)
    assert decay["weight_decay"] == 5e-4 and no_decay["weight_decay"] == 0.0
    assert {id(p) for p in decay["params"]} == {id(m[0].weight), id(m[3].weight)}
    assert len(no_decay["params"]) == 4  # conv bias, bn weight, bn bias, linear bias


# ------------------------------------------------------------------------------------------------- losses
def _loss_batch(B=3, J=41, S=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    uvd = torch.cat([torch.rand(B, J, 2, generator=g) * S, torch.randn(B, J, 1, generator=g) * 0.2], -1)
    batch = {"uvd": uvd, "scale": torch.full((B,), 0.02), "mask_uv": torch.zeros(B, J), "mask_d": torch.zeros(B, J),
             "has_3d": torch.tensor([True, True, False])}
    batch["mask_uv"][0, :24] = 1
    batch["mask_d"][0, :24] = 1
    batch["mask_uv"][1, 24:] = 1
    batch["mask_d"][1, 24:] = 1
    batch["mask_uv"][2, :10] = 1   # a 2D-only sample: uv only
    pred = {"uv": uvd[..., :2].clone(), "d": uvd[..., 2].clone(), "scale": batch["scale"].clone()}
    return pred, batch


def test_losses_zero_at_the_target_and_units():
    S = 64
    pred, batch = _loss_batch(S=S)
    cfg = LossConfig()
    t = pose_losses(pred, batch, cfg, S)
    assert all(float(v) == 0 for v in t.values())
    pred["uv"] = pred["uv"] + torch.tensor([1.0, 0.0])      # 1 crop px = 256/64 = 4 reference px
    pred["d"] = pred["d"] + 0.02                              # 2 cm
    pred["scale"] = pred["scale"] + 0.001 * 256 / S           # 1 mm per reference px
    t = pose_losses(pred, batch, cfg, S)
    assert float(t["uv"]) == pytest.approx(4.0, rel=1e-5)
    assert float(t["d"]) == pytest.approx(2.0, rel=1e-4)
    assert float(t["scale"]) == pytest.approx(1.0, rel=1e-4)
    assert float(t["total"]) == pytest.approx(1.0 * (4 + 2) + 0.5 * 1, rel=1e-4)
    e = pose_losses({**pred, "uv": pred["uv"] + torch.tensor([0.0, 1.0])}, batch,
                    LossConfig(uv_distance="euclidean"), S)
    assert float(e["uv"]) == pytest.approx(4 * math.sqrt(2), rel=1e-5)  # |(1, 1)| crop px


def test_masked_targets_never_leak_and_2d_samples_supervise_uv_only():
    S = 64
    pred, batch = _loss_batch(S=S)
    batch["uvd"][0, 30:] = float("nan")                   # outside sample 0's slice: must not matter
    batch["uvd"][2, :, 2] = float("nan")                  # 2D-only depth
    batch["scale"][2] = float("nan")
    pred = {k: v.clone().requires_grad_(True) for k, v in pred.items()}
    t = pose_losses({**pred, "uv": pred["uv"] + 0.5, "d": pred["d"] + 0.1}, batch, LossConfig(), S)
    assert all(torch.isfinite(v) for v in t.values())
    t["total"].backward()
    assert torch.isfinite(pred["d"].grad).all() and torch.isfinite(pred["uv"].grad).all()
    assert float(pred["d"].grad[2].abs().sum()) == 0.0    # no depth gradient from the 2D-only sample
    assert float(pred["uv"].grad[2, :10].abs().sum()) > 0 and float(pred["uv"].grad[2, 10:].abs().sum()) == 0
    assert float(pred["scale"].grad[2]) == 0.0


def test_joints_outside_the_crop_are_not_supervised_in_uv():
    S = 64
    pred, batch = _loss_batch(S=S)
    batch["uvd"][0, 0, 0] = S + 10.0
    pred["uv"] = pred["uv"].clone()
    pred["uv"][0, 0, 0] = S - 2.5                          # the soft-argmax can go no further
    assert float(pose_losses(pred, batch, LossConfig(), S)["uv"]) == 0.0
    assert float(pose_losses(pred, batch, LossConfig(uv_inside_crop_only=False), S)["uv"]) > 0


def test_heatmap_cross_entropy_is_lowest_at_the_target_and_pulls_towards_it():
    """The auxiliary heatmap term: a distribution equal to the target scores its entropy (the minimum); moving
    its mass away costs more; its gradient on the logits lowers the cells far from the GT and raises the GT
    cell; masked joints contribute nothing; pose_losses adds weight x term and asks for the heatmaps."""
    from trainer.model import soft_argmax
    S, B, J = 64, 2, 3
    uv_t = torch.tensor([[[20.3, 33.1], [5.0, 60.0], [40.0, 8.7]]] * B)
    mask = torch.ones(B, J, dtype=torch.bool)
    grid = torch.arange(S // 4) * 4 + 1.5
    gu = torch.exp(-(grid - uv_t[..., 0:1]) ** 2 / 32)
    gv = torch.exp(-(grid - uv_t[..., 1:2]) ** 2 / 32)
    target = gv[..., :, None] * gu[..., None, :]
    target = target / target.sum((-1, -2), keepdim=True)
    at_target = heatmap_cross_entropy(target, uv_t, mask, S, 1.0)
    entropy = -torch.special.xlogy(target, target).sum((-1, -2)).mean()
    assert float(at_target) == pytest.approx(float(entropy), rel=1e-5)
    shifted = torch.roll(target, 3, dims=-1)
    assert float(heatmap_cross_entropy(shifted, uv_t, mask, S, 1.0)) > float(at_target) + 1.0
    logits = torch.zeros(B, J, S // 4, S // 4, requires_grad=True)
    uv, prob = soft_argmax(logits, S)
    heatmap_cross_entropy(prob, uv_t, mask, S, 1.0).backward()
    i, j = int((uv_t[0, 0, 1] - 1.5) / 4 + 0.5), int((uv_t[0, 0, 0] - 1.5) / 4 + 0.5)
    assert float(logits.grad[0, 0, i, j]) < 0 < float(logits.grad[0, 0, 0, 15])      # descent raises the GT cell
    none = torch.zeros_like(mask)
    assert float(heatmap_cross_entropy(prob.detach(), uv_t, none, S, 1.0)) == 0.0
    pred, batch = _loss_batch(S=S)
    with pytest.raises(ValueError, match="heatmaps"):
        pose_losses(pred, batch, LossConfig(heatmap_weight=1.0), S)
    Jall = pred["uv"].shape[1]
    hm = torch.full((pred["uv"].shape[0], Jall, S // 4, S // 4), 1.0 / (S // 4) ** 2)
    t = pose_losses({**pred, "heatmaps": hm}, batch, LossConfig(heatmap_weight=2.0), S)
    assert float(t["heatmap"]) == pytest.approx(math.log((S // 4) ** 2), rel=1e-5)     # uniform: log(cells)
    assert float(t["total"]) == pytest.approx(2.0 * float(t["heatmap"]), rel=1e-5)


# ------------------------------------------------------------------------------------------------- checkpoint
def test_checkpoint_is_unwrapped_atomic_and_weights_only(tmp_path):
    m = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    compiled = torch.compile(m)  # lazy: nothing is compiled until the first call
    assert any(k.startswith("_orig_mod.") for k in compiled.state_dict())
    assert unwrap_model(compiled) is m
    sd = model_state_dict(compiled)
    assert set(sd) == set(m.state_dict())
    with pytest.raises(ValueError, match="prefix"):
        save_checkpoint(tmp_path / "bad.pt", {"model": compiled.state_dict()})
    opt = torch.optim.AdamW(m.parameters())
    m(torch.randn(4, 3)).sum().backward()
    opt.step()
    state = {"model": sd, "optimizer": opt.state_dict(), "step": 3, "rng": rng_state(),
             "config": config_to_dict(TrainConfig())}
    save_checkpoint(tmp_path / "last.pt", state)
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary left behind
    ck = load_checkpoint(tmp_path / "last.pt")
    assert ck["step"] == 3 and torch.equal(ck["model"]["0.weight"], m[0].weight)
    assert config_from_dict(ck["config"]) == TrainConfig()
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="junk.pt"):
        load_checkpoint(tmp_path / "junk.pt")


def test_rng_state_round_trip(tmp_path):
    save_checkpoint(tmp_path / "r.pt", {"rng": rng_state()})
    a = (torch.rand(3), np.random.rand(3), random.random())
    set_rng_state(load_checkpoint(tmp_path / "r.pt")["rng"])
    b = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]


def test_fast_precision_uses_bf16_only_where_the_cpu_has_it(monkeypatch):
    from trainer import precision
    cpu = torch.device("cpu")
    for native in (True, False):
        monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: native)
        with precision.autocast(TrainConfig(precision="fast"), cpu):
            y = torch.ones(2, 2) @ torch.ones(2, 2)
        assert y.dtype == (torch.bfloat16 if native else torch.float32)
        with precision.autocast(TrainConfig(precision="auto"), cpu):
            assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32


def test_cpu_threads_leave_the_loader_workers_their_cores(monkeypatch):
    from trainer import train as T
    monkeypatch.setattr(T.os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    assert T.cpu_threads(TrainConfig(threads=3)) == 3                               # explicit wins
    assert T.cpu_threads(config_from_dict({"data": {"num_workers": 2}})) == 6       # 8 cores - 2 workers
    assert T.cpu_threads(config_from_dict({"data": {"num_workers": 2}}), world_size=4) == 1   # never 0
    with pytest.raises(InputError, match="threads"):
        config_from_dict({"threads": -1})

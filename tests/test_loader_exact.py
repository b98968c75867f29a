"""The training loader gives, for one seed, the same batches bit for bit as its implementation before the speed-up
(tests/_loader_reference.py): every tensor, list and meta dict, over 3D samples with and without SMPL labels
(BEDLAM-style 11 betas, undefined twists), 2D-only samples without intrinsics, shards built for a larger crop,
with the photometric chain on the CPU or left to the device, with jitter and with augmentation off."""
from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

import _loader_reference as ref
from _rows import person_row
from pipeline.codec import npz_bytes, read_npz
from pipeline.shard import (FORMAT_VERSION, BuildOptions, decode_sample, encode_sample, iter_tar, process_row,
                            write_tar)
from trainer.augment import AugmentConfig, augment_sample
from trainer.photometric import uniform
from trainer.data import DataSource, LoaderConfig, MixedStream, make_train_loader

S = 64
W, H = 160, 120
SKELETONS = ("smpl24", "h36m17", "coco17")


def _row(rng, dataset: str, i: int, skeleton: str, smpl: bool) -> tuple[dict, np.ndarray]:
    row, _ = person_row(rng, dataset, i, skeleton, W, H)
    row["joints_vis"] = [int(v) for v in rng.integers(0, 2, len(row["joints_vis"]))]
    if smpl and i % 3:           # some rows of the source without SMPL labels, some without twists
        twist = rng.uniform(-3, 3, 23)
        twist[rng.integers(0, 23, 2)] = np.nan
        row["smpl"] = {"betas": rng.normal(0, 1, 10 + i % 2).tolist(), "pose": rng.normal(0, 0.4, 72).tolist(),
                       "transl": [0.0, 0.0, 4.0], "twist": None if i % 3 == 2 else twist.tolist(),
                       "gender": "neutral"}
    img = np.repeat(np.repeat(rng.integers(0, 256, (H // 4, W // 4, 3), dtype=np.uint8), 4, 0), 4, 1)
    return row, img


def _build(root: Path, dataset: str, n: int, skeleton: str, smpl: bool, crop: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    out = root / dataset
    out.mkdir(parents=True)
    opts = BuildOptions(crop_size=crop)
    enc = [encode_sample(process_row(*_row(rng, dataset, i, skeleton, smpl), opts)) for i in range(n)]
    shards = []
    for k in range(2):
        write_tar(out / f"shard-{k:06d}.tar", enc[k::2])
        shards.append({"file": f"shard-{k:06d}.tar", "samples": len(enc[k::2])})
    (out / "build.json").write_text(json.dumps({"format_version": FORMAT_VERSION, "shards": shards,
                                                "options": {"crop_size": crop}}))
    return out


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("exact")
    return [DataSource("people", (str(_build(root, "people", 18, "smpl24", True, S, 1)),), 2.0),
            DataSource("h36m", (str(_build(root, "h36m", 10, "h36m17", False, S, 2)),), 1.0),
            DataSource("coco", (str(_build(root, "coco", 10, "coco17", False, S, 3)),), 1.0),
            DataSource("large", (str(_build(root, "large", 8, "smpl24", True, 80, 4)),), 1.0)]


def _batches(sources, cfg: LoaderConfig, reference: bool, monkeypatch) -> list[dict]:
    with monkeypatch.context() as m:
        if reference:
            m.setattr(MixedStream, "__iter__", ref.stream_iter)
        return list(make_train_loader(sources, cfg))


def _assert_identical(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b) > 0
    for x, y in zip(a, b):
        assert sorted(x) == sorted(y)
        for k, v in x.items():
            if isinstance(v, torch.Tensor):
                assert v.dtype == y[k].dtype and v.shape == y[k].shape and v.stride() == y[k].stride(), k
                assert v.numpy().tobytes() == y[k].numpy().tobytes(), k       # bits: signed zeros too
            else:
                assert v == y[k], k


AUGS = {"device": replace(AugmentConfig(), photometric_on_device=True),
        "cpu": replace(AugmentConfig(), blur_prob=0.3, noise_prob=0.5, channel_prob=0.3),
        "jitter": replace(AugmentConfig(), jitter_px=1.5, p_no_aug=0.1, zoom_prob=0.5, photometric_on_device=True),
        "off": AugmentConfig(enabled=False)}


@pytest.mark.parametrize("aug", list(AUGS))
def test_batches_equal_the_former_loader_bit_for_bit(sources, monkeypatch, aug):
    cfg = LoaderConfig(crop_size=S, skeletons=SKELETONS, batch_size=8, num_workers=0, shuffle_buffer=8, seed=5,
                       samples_per_epoch=160, augment=AUGS[aug])
    new = _batches(sources, cfg, False, monkeypatch)
    old = _batches(sources, cfg, True, monkeypatch)
    _assert_identical(new, old)
    if aug == "device":      # the mix reached every kind of sample
        flat = [(d, s) for b in new for d, s in zip(b["dataset"], b["has_smpl"].tolist())]
        assert {d for d, _ in flat} == {"people", "h36m", "coco", "large"}
        assert any(s for _, s in flat) and sum(b["flipped"].sum() for b in new) > 8


def test_npz_reader_equals_the_former_one_on_every_layout_and_damage(sources):
    """Same names, dtypes, shapes, values and read-only views as before, also for layouts that repeat (the
    reader remembers them), and the same outcome for damaged or foreign bytes."""
    blobs = [raw["npz"] for src in sources for t in sorted(Path(src.paths[0]).glob("*.tar")) for raw in iter_tar(t)]
    rng = np.random.default_rng(0)
    blobs += [npz_bytes({"a": rng.normal(size=(n, 3)), "b": np.float32(n), "c": np.arange(n, dtype=np.uint8)})
              for n in (0, 1, 3, 3, 7)]
    blobs += [npz_bytes({"f": np.asfortranarray(rng.normal(size=(2, 3))), "e": np.zeros(0), "t": np.array([True])})]
    x = rng.normal(size=4)                  # one byte length, four layouts: name, shape, dtype, order differ
    same_length = [npz_bytes(a) for a in ({"p": x}, {"q": x}, {"p": x.reshape(2, 2)}, {"p": x.view(np.int64)},
                                          {"p": np.asfortranarray(x.reshape(2, 2))})]
    assert len({len(b) for b in same_length}) == 1
    blobs += same_length
    for b in blobs + blobs:                                                   # twice: layouts seen before
        _assert_same_arrays(read_npz(b), ref.read_npz(b))
    b = blobs[0]
    damaged = [b[:-30], b[:100], b[:2] + b"\x00" + b[3:]]
    off = b.index(b"\x93NUMPY")
    damaged.append(b[:off + 10] + b"{'descr': '|O1'" + b[off + 25:])         # an object dtype: never unpickled
    damaged.append(b[:off + 40] + b"9" + b[off + 41:])                       # a header that no longer matches
    for d in damaged:
        try:
            expect = ref.read_npz(d)
        except Exception as e:                                                # noqa: BLE001 - compare outcomes
            with pytest.raises(type(e)):
                read_npz(d)
        else:
            _assert_same_arrays(read_npz(d), expect)


def _assert_same_arrays(x: dict, y: dict) -> None:
    assert list(x) == list(y)
    for k in x:
        assert x[k].dtype == y[k].dtype and x[k].shape == y[k].shape and x[k].strides == y[k].strides, k
        assert x[k].flags.writeable == y[k].flags.writeable, k
        np.testing.assert_array_equal(x[k], y[k])


def test_augment_sample_writes_the_same_image_into_out(sources):
    """``out`` (the batch slot) receives the image augment_sample returns without it, from RGB or RGBX input, with
    the chain on the CPU or not, flipped or not; the labels do not change."""
    raws = [raw for src in sources[:3] for t in sorted(Path(src.paths[0]).glob("*.tar")) for raw in iter_tar(t)]
    for rgbx in (False, True):
        for aug in AUGS.values():
            for i, raw in enumerate(raws[:12]):
                s = decode_sample(raw, rgbx)
                a = augment_sample(s, S, aug, np.random.default_rng(i))
                slot = np.full((2, S, S, 3), 7, np.uint8)
                b = augment_sample(s, S, aug, np.random.default_rng(i), out=slot[1])
                assert np.shares_memory(b["image"], slot) and (slot[0] == 7).all()
                np.testing.assert_array_equal(a["image"], slot[1])
                for k in ("K_crop", "R", "joints", "uvd", "vis", "photo"):
                    assert a[k].tobytes() == b[k].tobytes(), k


def test_cheaper_draws_are_numpys_to_the_bit():
    """The draws the loader makes in pure Python give numpy's numbers and leave the generator in numpy's state:
    uniform(rng, lo, hi) is rng.uniform(lo, hi), rng.random() is rng.uniform(), math.radians / math.sqrt are
    np.radians / np.sqrt (on every bound the augmentation uses)."""
    for lo, hi in ((-30.0, 30.0), (0.7, 1.1), (-1.0, 1.0), (0.3, 1.0 / 0.3), (-1.5, 1.5), (0.0, 1.0)):
        a, b = np.random.default_rng(1), np.random.default_rng(1)
        for _ in range(20000):
            x, y = a.uniform(lo, hi), uniform(b, lo, hi)
            assert x == y and math.copysign(1, x) == math.copysign(1, y)
            assert float(np.radians(x)) == math.radians(y)
            assert a.uniform() == b.random()
        assert a.integers(1 << 40) == b.integers(1 << 40)                  # the same state afterwards
    for v in np.random.default_rng(2).uniform(0, 30000, 20000):
        assert int(round(np.sqrt(v))) == int(round(math.sqrt(float(v))))

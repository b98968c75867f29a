"""trainer.data and trainer.shards: shard discovery and checks, batch contract, mixing, the held-out stream's
completeness and order, workers, errors."""
from __future__ import annotations

import io
import json
import pickle
import tarfile
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from _geom import shift_intrinsics
from _rows import person_row
from pipeline import geometry as g
from pipeline.codec import read_npz
from pipeline.errors import InputError
from pipeline.shard import (FORMAT_VERSION, BuildOptions, decode_sample, encode_sample, iter_tar, npz_bytes,
                            process_row, write_tar)
from pipeline.skeleton import get_skeleton, joint_slices
from trainer.augment import AugmentConfig
from trainer.batch import pack_batch, unpack_batch
from trainer.data import DataSource, LoaderConfig, make_train_loader
from trainer.model import normalize_images
from trainer.photometric import COL, NUM_PARAMS
from trainer.photometric_torch import apply_photometric_torch
from trainer.shards import heldout_stream, resolve_shards
from trainer.train import to_device

S = 64
OPTS = BuildOptions(crop_size=S, context=1.25)          # stored crops 80 x 80
SKELETONS = ("smpl24", "h36m17", "coco17")
W, H = 160, 120


def _row(rng, dataset: str, i: int, skeleton: str) -> tuple[dict, np.ndarray]:
    row, _ = person_row(rng, dataset, i, skeleton, W, H)
    if skeleton == "coco17":
        row["joints_vis"] = [int(v) for v in rng.integers(0, 2, len(row["joints_vis"]))]
    return row, rng.integers(0, 256, (H, W, 3), dtype=np.uint8)


def build_set(root: Path, dataset: str, n: int, n_shards: int, skeleton: str = "h36m17", seed: int = 0,
              opts: BuildOptions = OPTS, build_json: bool = True) -> tuple[Path, dict]:
    """A shard directory like perspose-build writes (tars + build.json); returns (dir, {sample_id: row})."""
    rng = np.random.default_rng(seed)
    out = root / dataset
    out.mkdir(parents=True)
    rows = [_row(rng, dataset, i, skeleton) for i in range(n)]
    per = -(-n // n_shards)
    shards = []
    for k in range(n_shards):
        enc = [encode_sample(process_row(r, img, opts)) for r, img in rows[k * per:(k + 1) * per]]
        write_tar(out / f"shard-{k:06d}.tar", enc)
        shards.append({"file": f"shard-{k:06d}.tar", "samples": len(enc)})
    if build_json:
        (out / "build.json").write_text(json.dumps({"format_version": FORMAT_VERSION, "shards": shards,
                                                    "options": {"crop_size": opts.crop_size}}))
    return out, {r["sample_id"]: r for r, _ in rows}


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    a, rows_a = build_set(root, "alpha", 24, 3, "h36m17", seed=1)
    b, rows_b = build_set(root, "beta", 12, 2, "coco17", seed=2)
    return {"alpha": a, "beta": b, "rows": {**rows_a, **rows_b}, "root": root}


def _heldout(specs, crop=S, workers=0, skeletons=SKELETONS) -> tuple[list[dict], int]:
    """(records, number of 2D-only samples skipped) of the held-out stream; its error as an InputError."""
    items = list(heldout_stream(resolve_shards(specs, crop).urls, crop, skeletons, workers=workers))
    errors = [v for k, v in items if k == "error"]
    if errors:
        raise InputError(errors[0])
    return [v for k, v in items if k == "ok"], sum(k == "skip" for k, _ in items)


def _assert_same_records(xs, ys):
    assert len(xs) == len(ys)
    for x, y in zip(xs, ys):
        assert x["meta"] == y["meta"]
        for k in ("image", "K_crop", "R", "uvd", "joints_rot"):
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def _cfg(**kw) -> LoaderConfig:
    base = LoaderConfig(crop_size=S, skeletons=SKELETONS, batch_size=8, num_workers=0, shuffle_buffer=16, seed=3)
    return replace(base, **kw)


def test_batch_contract_and_labels_invert_to_manifest_joints(sets):
    cfg = _cfg(samples_per_epoch=64)
    loader = make_train_loader([DataSource("alpha", (str(sets["alpha"]),), 0.5),
                                DataSource("beta", (str(sets["beta"]),), 0.5)], cfg)
    assert len(loader) == 8
    layout = joint_slices(SKELETONS)
    J = max(s.stop for s in layout.values())
    batches = list(loader)
    assert len(batches) == 8
    seen_2d = seen_3d = flipped = 0
    for b in batches:
        assert b["image"].shape == (8, 3, S, S) and b["image"].dtype == torch.uint8
        assert b["K_crop"].shape == (8, 3, 3) and b["K_crop"].dtype == torch.float32
        assert b["R"].dtype == torch.float64 and b["uvd"].shape == (8, J, 3) and b["uvd"].dtype == torch.float32
        assert b["mask_uv"].shape == (8, J) and b["mask_d"].dtype == torch.float32
        assert b["scale"].shape == (8,) and b["has_3d"].dtype == torch.bool and len(b["sample_id"]) == 8
        for i in range(8):
            own = np.zeros(J, bool)
            own[layout[b["skeleton"][i]]] = True
            assert not b["uvd"][i][~own].any() and not b["mask_uv"][i][~own].any() and not b["mask_d"][i][~own].any()
            row = sets["rows"][b["sample_id"][i]]
            perm = list(get_skeleton(row["skeleton"]).flip_perm)
            vis = np.array(row["joints_vis"])[perm if b["flipped"][i] else slice(None)]
            np.testing.assert_array_equal(b["mask_uv"][i, own].numpy(), vis > 0)
            flipped += bool(b["flipped"][i])
            if b["has_3d"][i]:
                seen_3d += 1
                assert b["mask_d"][i, own].all() and b["has_intrinsics"][i]
                np.testing.assert_allclose(b["K_crop"][i, :2, 2].numpy(), [(S - 1) / 2] * 2, atol=1e-4)
                P, _ = g.joints_from_uvd(b["uvd"][i, own].double().numpy(), b["scale"][i].double().numpy(),
                                         b["K_crop"][i].double().numpy(), b["R"][i].numpy())
                if b["flipped"][i]:
                    P = P[list(get_skeleton(row["skeleton"]).flip_perm)]
                np.testing.assert_allclose(P, np.reshape(row["joints_cam"], (-1, 3)), atol=2e-3)
            else:
                seen_2d += 1
                assert not b["mask_d"][i].any() and not b["has_intrinsics"][i] and b["scale"][i] == 0
    assert seen_2d > 5 and seen_3d > 5 and 5 < flipped < 59


def test_mixing_ratio_is_respected(sets):
    cfg = _cfg(samples_per_epoch=2000, batch_size=50, augment=AugmentConfig(enabled=False))
    loader = make_train_loader([DataSource("alpha", (str(sets["alpha"]),), 0.7),
                                DataSource("beta", (str(sets["beta"]),), 0.3)], cfg)
    names = [d for b in loader for d in b["dataset"]]
    ids = {d for b in loader for d in b["sample_id"]}
    assert len(names) == 2000
    assert abs(names.count("alpha") / 2000 - 0.7) < 0.03      # binomial sd 0.010
    assert len(ids) == 36                                     # resampling reaches every sample of both sources


def test_train_loader_with_two_workers_is_seeded_and_epochs_differ(sets):
    cfg = _cfg(samples_per_epoch=48, num_workers=2)
    src = [DataSource("alpha", (str(sets["alpha"]),), 1.0), DataSource("beta", (str(sets["beta"]) + "/*.tar",), 1.0)]
    loader = make_train_loader(src, cfg)
    run1 = [b for b in loader]
    run2 = [b for b in loader]
    assert len(run1) == len(loader) == 6
    assert [b["sample_id"] for b in run1] == [b["sample_id"] for b in run2]
    assert all(torch.equal(x["image"], y["image"]) for x, y in zip(run1, run2))
    loader.set_epoch(1)
    run3 = [b for b in loader]
    assert [b["sample_id"] for b in run3] != [b["sample_id"] for b in run1]


def _assert_same_batches(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b) > 0
    for x, y in zip(a, b):
        assert sorted(x) == sorted(y)
        for k, v in x.items():
            if isinstance(v, torch.Tensor):
                assert v.dtype == y[k].dtype and v.shape == y[k].shape and torch.equal(v, y[k]), k
                assert y[k].is_contiguous() or k == "image", k      # image: channels_last view, as in-process
            else:
                assert v == y[k], k


def test_batches_from_a_worker_process_equal_the_in_process_ones(sets):
    """Workers send the small tensors packed into one (pack_batch); the consumer sees the same contract."""
    src = [DataSource("alpha", (str(sets["alpha"]),), 1.0), DataSource("beta", (str(sets["beta"]),), 1.0)]
    in_process = list(make_train_loader(src, _cfg(samples_per_epoch=32)))
    _assert_same_batches(in_process, list(make_train_loader(src, _cfg(samples_per_epoch=32, num_workers=1))))
    packed = pack_batch(dict(in_process[0]))
    assert [k for k, v in packed.items() if isinstance(v, torch.Tensor)] == ["image", "_packed"]
    _assert_same_batches(in_process[:1], [unpack_batch(dict(packed))])
    packed["_layout"] = [[k, list(shape)] for k, shape in packed["_layout"]]   # what older torch pin_memory makes
    _assert_same_batches(in_process[:1], [unpack_batch(packed)])
    one = sorted(sets["alpha"].glob("*.tar"))[:1]
    _assert_same_records(_heldout(one)[0], _heldout(one, workers=1)[0])


def test_photometric_on_device_same_stream_and_the_device_gives_the_cpu_images(sets):
    """The option moves where the chain runs, not what is drawn: same ids, labels and parameters (two loaders
    with one seed agree exactly), and the device chain, which to_device applies, turns the batch into the
    CPU-chain batch (tolerance and its reasons: trainer/photometric_torch.py). Workers pack ``photo`` too."""
    src = [DataSource("alpha", (str(sets["alpha"]),), 1.0), DataSource("beta", (str(sets["beta"]),), 1.0)]
    aug = replace(AugmentConfig(), p_no_aug=0.0, blur_prob=0.5, noise_prob=0.5, channel_prob=0.3)
    cfg = _cfg(samples_per_epoch=32, augment=aug)
    dev_cfg = _cfg(samples_per_epoch=32, augment=replace(aug, photometric_on_device=True))
    cpu, dev = list(make_train_loader(src, cfg)), list(make_train_loader(src, dev_cfg))
    _assert_same_batches(dev, list(make_train_loader(src, dev_cfg)))
    _assert_same_batches(dev, list(make_train_loader(src, replace(dev_cfg, num_workers=1))))
    for c, d in zip(cpu, dev):
        assert "photo" not in c and d["photo"].shape == (8, NUM_PARAMS) and d["photo"].dtype == torch.float64
        assert c["sample_id"] == d["sample_id"] and torch.equal(c["uvd"], d["uvd"])
        assert torch.equal(d["photo"][:, COL["flip"]].bool(), d["flipped"])
        out = apply_photometric_torch(d["image"], d["photo"])
        diff = (out.int() - c["image"].int()).abs()
        assert diff.max() <= 2 and (diff > 0).float().mean() <= 1e-3
        assert not torch.equal(d["image"], c["image"])
        assert torch.equal(to_device(d, torch.device("cpu"), False)["image"], normalize_images(out, False))
    with pytest.raises(InputError, match="836"):
        make_train_loader(src, replace(dev_cfg, crop_size=900))


def _ids_in_file_order(d: Path) -> list[str]:
    out = []
    for t in sorted(d.glob("*.tar")):
        with tarfile.open(t) as tf:
            out += [json.loads(tf.extractfile(m).read())["sample_id"] for m in tf if m.name.endswith(".json")]
    return out


def test_heldout_stream_is_complete_ordered_and_deterministic(sets):
    recs, skipped = _heldout([str(sets["alpha"]), str(sets["beta"])])
    ids = [r["meta"]["sample_id"] for r in recs]
    assert ids == _ids_in_file_order(sets["alpha"]) and skipped == 12      # beta is 2D-only (coco17)
    _assert_same_records(recs, _heldout([str(sets["alpha"]), str(sets["beta"])])[0])
    # the crop-size rule (docs/design.md §6) at C = S: the integer centre slice of the stored crop, uv = stored uv - offset, K shifted
    off = (OPTS.store_size - S) // 2
    first = decode_sample(next(iter_tar(sorted(sets["alpha"].glob("*.tar"))[0])))
    assert first["meta"]["sample_id"] == ids[0]
    np.testing.assert_array_equal(recs[0]["image"], first["image"][off:off + S, off:off + S])
    # uv re-projected in float64 from the stored float32 joints vs the stored float32 uv: float32 rounding apart
    np.testing.assert_allclose(recs[0]["uvd"][:, :2], first["arrays"]["uvd"][:, :2] - off, atol=1e-5)
    np.testing.assert_allclose(recs[0]["K_crop"], shift_intrinsics(first["arrays"]["K_crop"], off, off),
                               atol=1e-12)
    np.testing.assert_array_equal(recs[0]["joints_rot"], first["arrays"]["joints_rot"])


def test_fast_decode_equals_reference_decode_and_never_unpickles(sets):
    raw = next(iter_tar(sorted(sets["beta"].glob("*.tar"))[0]))
    fast = decode_sample(raw)
    ref_image = cv2.cvtColor(cv2.imdecode(np.frombuffer(raw["jpg"], np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    with np.load(io.BytesIO(raw["npz"]), allow_pickle=False) as z:
        ref_arrays = {k: z[k] for k in z.files}
    assert np.array_equal(ref_image, fast["image"]) and json.loads(raw["json"]) == fast["meta"]
    assert sorted(ref_arrays) == sorted(fast["arrays"])
    for k, v in ref_arrays.items():
        assert v.dtype == fast["arrays"][k].dtype and v.shape == fast["arrays"][k].shape
        np.testing.assert_array_equal(v, fast["arrays"][k])
    arrays = {"a": np.arange(6.0).reshape(2, 3), "f": np.asfortranarray(np.arange(6).reshape(2, 3)),
              "s": np.float64(2.5), "e": np.zeros(0), "b": np.array([True, False])}
    for blob in (npz_bytes(arrays), _savez_compressed(arrays)):          # fast path and np.load fallback
        out = read_npz(blob)
        assert sorted(out) == sorted(arrays)
        for k, v in arrays.items():
            np.testing.assert_array_equal(out[k], v)
            assert out[k].shape == np.shape(v) and out[k].dtype == np.asarray(v).dtype
    buf = io.BytesIO()
    np.savez(buf, o=np.array([_Boom()], dtype=object))
    with pytest.raises(ValueError):
        read_npz(buf.getvalue())


def _savez_compressed(arrays) -> bytes:
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


@pytest.mark.filterwarnings("ignore:This DataLoader will create")
def test_heldout_stream_with_more_workers_than_shards_reads_everything_once(sets):
    alpha = _ids_in_file_order(sets["alpha"])                     # 3 shards
    for workers in (2, 3, 4):                                     # by shard (2, 3), by sample (4 > 3 shards)
        ids = [r["meta"]["sample_id"] for r in _heldout([str(sets["alpha"])], workers=workers)[0]]
        assert sorted(ids) == sorted(alpha) and len(ids) == len(set(ids)) == 24, workers
    urls = resolve_shards(str(sets["alpha"])).urls
    parts = [[r["meta"]["sample_id"] for k, r in heldout_stream(urls, S, None, rank, 5) if k == "ok"]
             for rank in range(5)]                           # 5 ranks > 3 shards: every 5th sample each
    assert sorted(i for p in parts for i in p) == sorted(alpha) and all(parts)


def test_errors_are_input_errors(sets, tmp_path):
    with pytest.raises(InputError, match="no such shard"):
        resolve_shards([str(tmp_path / "missing")], S)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no .tar shards"):
        resolve_shards([str(tmp_path / "empty")], S)
    with pytest.raises(InputError, match="matches no shard"):
        resolve_shards([str(tmp_path / "nothing*.tar")], S)
    assert resolve_shards([str(sets["alpha"] / "shard-{000000..000002}.tar")], S).num_samples == 24
    with pytest.raises(InputError, match="no such shard"):
        resolve_shards([str(sets["alpha"] / "shard-{000000..000003}.tar")], S)
    with pytest.raises(InputError, match="not a .tar"):
        resolve_shards([str(sets["alpha"] / "build.json")], S)
    with pytest.raises(InputError, match="smaller than the model's crop size"):
        resolve_shards([str(sets["alpha"])], 2 * S)
    with pytest.raises(InputError, match="not predicted by the model"):
        resolve_shards([str(sets["alpha"])], S, skeletons=("smpl24",))
    with pytest.raises(InputError, match="not predicted by the model"):
        _heldout([str(sets["alpha"])], skeletons=("smpl24",))
    old, _ = build_set(tmp_path, "old", 2, 1)
    bj = json.loads((old / "build.json").read_text())
    (old / "build.json").write_text(json.dumps({**bj, "format_version": FORMAT_VERSION + 1}))
    with pytest.raises(InputError, match="format_version"):
        make_train_loader([DataSource("old", (str(old),))], _cfg())
    with pytest.raises(InputError, match="no training sources"):
        make_train_loader([], _cfg())
    (old / "build.json").write_text("[1, 2]")
    with pytest.raises(InputError, match="not a perspose build.json"):
        resolve_shards([str(old)], S)
    (old / "build.json").write_text(json.dumps(bj))
    (old / "shard-000000.tar").write_bytes(b"garbage" * 100)   # build.json still counts samples in it
    with pytest.raises(InputError, match="not a readable tar shard"):
        resolve_shards([str(old)], S)


def test_crop_size_from_sample_json_without_build_json(tmp_path):
    d, _ = build_set(tmp_path, "bare", 3, 1, build_json=False)
    assert resolve_shards([str(d)], S).num_samples == 3
    with pytest.raises(InputError, match="crop_size 64"):
        resolve_shards([str(d / "shard-000000.tar")], S + 32)


def test_larger_built_crop_is_zoomed_down(tmp_path):
    d, rows = build_set(tmp_path, "big", 4, 1, opts=BuildOptions(crop_size=2 * S))
    recs, _ = _heldout([str(d)])            # docs/design.md §6, the crop-size rule at C > S: one resampling
    assert len(recs) == 4 and all(r["image"].shape == (S, S, 3) for r in recs)
    for r in recs:                                # exact labels, up to the shard's float32 storage (~3e-7 m at 5 m)
        P, _ = g.joints_from_uvd(r["uvd"], r["scale"], r["K_crop"], r["R"])
        np.testing.assert_allclose(P, np.reshape(rows[r["meta"]["sample_id"]]["joints_cam"], (-1, 3)), atol=1e-6)
    stored = decode_sample(next(iter_tar(d / "shard-000000.tar")))
    assert stored["meta"]["sample_id"] == recs[0]["meta"]["sample_id"]
    assert recs[0]["K_crop"][0, 0] == pytest.approx(0.5 * stored["arrays"]["K_crop"][0, 0], rel=1e-12)


class _Boom:
    def __reduce__(self):
        return (exec, ("raise SystemExit('unpickled!')",))


def test_foreign_members_are_never_unpickled_and_bad_samples(sets, tmp_path):
    src = sorted(sets["alpha"].glob("*.tar"))[0]
    dst = tmp_path / "evil" / "shard-000000.tar"
    dst.parent.mkdir()
    with tarfile.open(src) as tin, tarfile.open(dst, "w") as tout:
        members = [m for m in tin]
        for j, m in enumerate(members):
            data = tin.extractfile(m).read()
            if j == 0:
                extra = tarfile.TarInfo(m.name.split(".")[0] + ".pyd")
                payload = pickle.dumps(_Boom())
                extra.size = len(payload)
                tout.addfile(extra, io.BytesIO(payload))
            if m.name.endswith(".jpg") and j > 10:
                data = b"not a jpeg"                   # corrupt samples after the first few
            m.size = len(data)
            tout.addfile(m, io.BytesIO(data))
    n_good = sum(1 for j, m in enumerate(members) if m.name.endswith(".jpg") and j <= 10)
    with pytest.raises(InputError, match="cannot decode"):
        _heldout([str(dst.parent)])
    ids = set()
    for b in make_train_loader([DataSource("evil", (str(dst.parent),))], _cfg(samples_per_epoch=16)):
        ids |= set(b["sample_id"])
    assert 0 < len(ids) <= n_good

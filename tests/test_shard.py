"""Unit tests of pipeline/shard.py: deterministic encoding, round trips, and label exactness found in the pixels
(a Gaussian dot is drawn at every joint; after cropping, the dot must sit on the label within 0.5 px)."""
from __future__ import annotations

import io
import tarfile
import time

import cv2
import numpy as np
import pytest

from _builddata import bbox_of, dot_image, make_row, spread_joints
from pipeline import geometry as g
from pipeline.shard import (BuildOptions, Rejected, decode_sample, encode_sample, iter_tar, load_image, npz_bytes,
                            process_row, sample_key, write_tar)


def _dot_centres(img: np.ndarray, uv: np.ndarray, r: int = 5) -> np.ndarray:
    """Intensity-weighted centroid of the dot around every predicted position (NaN near the border)."""
    ch = img[..., 0].astype(np.float64)
    out = np.full_like(uv, np.nan)
    S = img.shape[0]
    for i, (u, v) in enumerate(uv):
        x0, y0 = int(round(u)) - r, int(round(v)) - r
        if x0 < 0 or y0 < 0 or x0 + 2 * r + 1 > S or y0 + 2 * r + 1 > S:
            continue
        w = np.maximum(ch[y0:y0 + 2 * r + 1, x0:x0 + 2 * r + 1] - 40.0, 0.0)
        yy, xx = np.mgrid[y0:y0 + 2 * r + 1, x0:x0 + 2 * r + 1]
        if w.sum() > 0:
            out[i] = [(w * xx).sum() / w.sum(), (w * yy).sum() / w.sum()]
    return out


def _isolated(uv: np.ndarray, min_dist: float = 14.0) -> np.ndarray:
    d = np.linalg.norm(uv[:, None] - uv[None], axis=-1) + np.eye(len(uv)) * 1e9
    return d.min(1) > min_dist


def _assert_dots_on_labels(sample, tol=0.25, min_found=8):  # measured errors <= 0.09 px
    uv = sample["arrays"]["uvd"][:, :2].astype(np.float64)
    found = _dot_centres(sample["image"], uv)
    ok = _isolated(uv) & np.all(np.isfinite(found), 1)
    assert ok.sum() >= min_found, ok.sum()
    err = np.linalg.norm(found[ok] - uv[ok], axis=1)
    assert err.max() < tol, err


def _scene(seed, w=320, h=240, f=288.0, extent=1.1, z=4.0, lateral=(0.25, -0.15)):
    rng = np.random.default_rng(seed)
    K = g.intrinsics(f, f * 1.02, (w - 1) / 2 + 4, (h - 1) / 2 - 3)
    c = [lateral[0] * z * w / f, lateral[1] * z * h / f, z]
    return rng, K, spread_joints(rng, c, extent)


def test_npz_bytes_is_deterministic_and_pickle_free():
    arrays = {"b": np.arange(6, dtype=np.float32).reshape(2, 3), "a": np.eye(3), "s": np.float64(2.5)}
    b1 = npz_bytes(arrays)
    time.sleep(1.1)  # np.savez would stamp a different time
    assert npz_bytes(dict(reversed(list(arrays.items())))) == b1
    with np.load(io.BytesIO(b1), allow_pickle=False) as z:
        assert z.files == ["a", "b", "s"] and np.array_equal(z["b"], arrays["b"]) and z["s"] == 2.5
    with pytest.raises(ValueError):
        npz_bytes({"o": np.array([{"x": 1}], dtype=object)})


def test_write_tar_is_deterministic_atomic_and_readable(tmp_path):
    samples = [{"__key__": f"k{i}", "jpg": bytes([i]) * 10, "npz": b"n" * i, "json": b"{}"} for i in range(3)]
    n = write_tar(tmp_path / "a.tar", samples)
    time.sleep(1.1)
    write_tar(tmp_path / "b.tar", samples)
    assert n == 3 and (tmp_path / "a.tar").read_bytes() == (tmp_path / "b.tar").read_bytes()
    with tarfile.open(tmp_path / "a.tar") as tf:
        ms = tf.getmembers()
    assert [m.name for m in ms] == [f"k{i}.{e}" for i in range(3) for e in ("jpg", "json", "npz")]
    assert all(m.mtime == 0 and m.uid == 0 and m.uname == "" for m in ms)
    assert list(iter_tar(tmp_path / "a.tar")) == samples
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.tar", "b.tar"]  # no temporaries left

    def boom():
        yield samples[0]
        raise RuntimeError("disk on fire")
    with pytest.raises(RuntimeError):
        write_tar(tmp_path / "c.tar", boom())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.tar", "b.tar"]  # nothing partial


def test_sample_key_and_load_image_rejections(tmp_path):
    assert sample_key("h36m/train/S1.Walking 1/12/0") == "h36m_train_S1_Walking_1_12_0"
    with pytest.raises(Rejected, match="missing"):
        load_image(tmp_path / "nope.jpg")
    (tmp_path / "bad.jpg").write_bytes(b"garbage")
    with pytest.raises(Rejected, match="corrupt"):
        load_image(tmp_path / "bad.jpg")


def test_encode_decode_round_trip_and_dots_on_labels():
    rng, K, joints = _scene(0)
    uv = g.project(joints, K)
    img = dot_image(320, 240, uv)
    row = make_row(("toy", "train", "s", 3, 1), "x.jpg", 320, 240, K, joints, bbox_of(uv))
    opts = BuildOptions()
    s = process_row(row, img, opts)
    assert s["image"].shape == (320, 320, 3) and s["key"] == "toy_train_s_3_1"
    Kc = s["arrays"]["K_crop"]
    assert np.allclose(Kc[:2, 2], 159.5, atol=1e-12) and Kc[0, 0] == Kc[1, 1]
    enc = encode_sample(s, 95)
    assert encode_sample(s, 95) == enc
    dec = decode_sample(enc)
    assert dec["meta"] == s["meta"] and dec["meta"]["has_3d"] and dec["meta"]["pr"]
    for k, v in s["arrays"].items():
        assert np.array_equal(dec["arrays"][k], v) and dec["arrays"][k].dtype == np.asarray(v).dtype, k
    assert np.abs(dec["image"].astype(int) - s["image"]).mean() < 2.0
    _assert_dots_on_labels(dec)
    # labels invert exactly to the original camera
    back, _ = g.joints_from_uvd(dec["arrays"]["uvd"], dec["arrays"]["scale"], Kc, dec["arrays"]["R"])
    assert np.abs(back - joints).max() < 1e-5


def test_no_pr_keeps_identity_and_off_centre_principal_point():
    rng, K, joints = _scene(1)
    uv = g.project(joints, K)
    row = make_row(("toy", "train", "s", 0, 0), "x.jpg", 320, 240, K, joints, bbox_of(uv))
    s = process_row(row, dot_image(320, 240, uv), BuildOptions(pr=False))
    assert np.array_equal(s["arrays"]["R"], np.eye(3)) and not s["meta"]["pr"]
    assert np.abs(s["arrays"]["K_crop"][:2, 2] - 159.5).max() > 5
    _assert_dots_on_labels(s)


def test_distortion_path_undistorts_exactly():
    rng, K, joints = _scene(2, w=480, h=360, f=330.0, lateral=(0.3, 0.2))
    dist = np.array([-0.25, 0.08, 0.002, -0.0015, -0.01])
    xy = joints[:, :2] / joints[:, 2:]
    uv_d = g.project(np.concatenate([g.distort_normalized(xy, dist), np.ones((17, 1))], 1), K)
    row = make_row(("toy", "train", "d", 0, 0), "x.jpg", 480, 360, K, joints, bbox_of(uv_d), dist=dist)
    s = process_row(row, dot_image(480, 360, uv_d), BuildOptions())
    # pinhole labels of the undistorted view; ignoring distortion would put dots several px off
    naive = g.apply_homography(s["arrays"]["H"], uv_d)
    assert np.abs(naive - s["arrays"]["uvd"][:, :2]).max() > 2.0
    _assert_dots_on_labels(s)


def test_preshrink_path_keeps_labels_exact():
    rng, K, joints = _scene(3, w=1600, h=1200, f=1400.0, extent=2.2, z=4.0, lateral=(0.1, 0.05))
    uv = g.project(joints, K)
    row = make_row(("toy", "train", "p", 0, 0), "x.jpg", 1600, 1200, K, joints, bbox_of(uv))
    img = dot_image(1600, 1200, uv, sigma=6.0)
    s = process_row(row, img, BuildOptions())
    assert g.preshrink_factor(K, s["arrays"]["K_crop"][0, 0]) >= 3
    _assert_dots_on_labels(s)


def test_2d_only_without_intrinsics():
    rng = np.random.default_rng(4)
    n = 5
    ij = np.stack(np.meshgrid(np.arange(n), np.arange(n)), -1).reshape(-1, 2)[:17]
    uv = 60 + ij * 45 + rng.uniform(-3, 3, (17, 2))
    row = make_row(("coco", "val", "img", 0, 2), "x.jpg", 320, 300, None, None, bbox_of(uv), skeleton="coco17",
                   joints_2d=uv)
    s = process_row(row, dot_image(320, 300, uv), BuildOptions())
    a = s["arrays"]
    assert not s["meta"]["has_3d"] and not s["meta"]["has_intrinsics"] and not s["meta"]["pr"]
    assert a["scale"] == 0 and not a["joints_rot"].any() and not a["uvd"][:, 2].any()
    assert np.array_equal(a["R"], np.eye(3))
    _assert_dots_on_labels(s)


def test_rejections_from_process_row():
    rng, K, joints = _scene(5)
    uv = g.project(joints, K)
    img = dot_image(320, 240, uv)
    row = make_row(("toy", "train", "s", 0, 0), "x.jpg", 320, 240, K, joints, [500, 500, 20, 20])
    with pytest.raises(Rejected, match="entirely outside"):
        process_row(row, img, BuildOptions())
    row = make_row(("toy", "train", "s", 0, 0), "x.jpg", 320, 240, K, joints, bbox_of(uv))
    with pytest.raises(Rejected, match="manifest says"):
        process_row(row, cv2.resize(img, (160, 120)), BuildOptions())
    with pytest.raises(Rejected, match="PR angle"):
        process_row(row, img, BuildOptions(max_pr_angle_deg=1.0))


def test_atomic_writes_get_ordinary_permissions(tmp_path):
    """mkstemp's 0o600 must not leak into outputs: a team reading shared shards needs the umask's mode."""
    import os

    from pipeline.fsutil import atomic_write_text
    old = os.umask(0o027)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
        write_tar(tmp_path / "s.tar", [])
    finally:
        os.umask(old)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o640
    assert (tmp_path / "s.tar").stat().st_mode & 0o777 == 0o640
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]

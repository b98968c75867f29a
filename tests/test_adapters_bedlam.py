"""BEDLAM adapter: generated SMPL-flavour label npz files (the format in the adapter docstring), close-up rotation to the disk frame."""
from __future__ import annotations

import json
import os

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from fake_smpl import write_model_npz
from pipeline.adapters.bedlam import closeup_to_disk, read_bedlam, read_npz_arrays, split_of_index
from pipeline.cli import main
from pipeline.errors import InputError
from pipeline.geometry import project
from pipeline.manifest import read_manifest

NORMAL = "20221010_3_1000_batch01hand"
CLOSEUP = "20221011_1_250_batch01hand_closeup_suburb_a"
FRAMES = 6


def make_scene(root, scene, closeup, seed):
    rng = np.random.default_rng(seed)
    W, H = (720, 1280) if closeup else (1280, 720)  # label image size
    names, n = [], 0
    for fr in range(FRAMES):
        for p in range(2 if fr == 0 else 1):
            names.append(f"seq_000001/seq_000001_{fr:04d}.png")
    n = len(names)
    f = 50.0 / (20.25 if closeup else 36.0) * W
    K = np.array([[f, 0, W / 2], [0, f, H / 2], [0, 0, 1]])
    ext = np.tile(np.eye(4), (n, 1, 1))
    ext[:, :3, 3] = [0.05, -0.1, 0.5]
    pose = rng.normal(0, 0.15, (n, 72))
    pose[:, :3] = [np.pi, 0, 0]  # upright in OpenCV camera
    d = {"imgname": np.array(names), "center": rng.uniform(0, 100, (n, 2)), "scale": np.ones(n),
         "pose_cam": pose, "pose_world": pose, "shape": rng.normal(0, 1, (n, 11)),
         "trans_cam": np.tile([0.1, 0.2, 6.0], (n, 1)) + rng.normal(0, 0.05, (n, 3)), "trans_world": np.zeros((n, 3)),
         "cam_int": np.tile(K, (n, 1, 1)), "cam_ext": ext, "gtkps": np.zeros((n, 45, 3)),
         "gender": np.array(["female"] * n),
         "sub": np.array([f"rp_body_{i:03d}" for i in range(n)], dtype=object),  # needs the restricted reader
         "motion_info": np.array([["a", 1]] * n, dtype=object)}
    (root / "processed_labels").mkdir(parents=True, exist_ok=True)
    np.savez(root / "processed_labels" / f"{scene}.npz", **d)
    return d, K


@pytest.fixture(scope="module")
def smpl_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("smpl")
    write_model_npz(d / "SMPL_NEUTRAL.npz", seed=5, num_betas=11)
    return d


def test_bedlam_split_index_and_safe_npz(tmp_path):
    assert [split_of_index(i) for i in (0, 20, 21, 26, 27, 29)] == ["train", "train", "val", "val", "train", "train"]
    d, _ = make_scene(tmp_path, NORMAL, False, 0)
    arr = read_npz_arrays(tmp_path / "processed_labels" / f"{NORMAL}.npz", ("imgname",), optional=("sub",))
    assert arr["sub"].tolist() == d["sub"].tolist()
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))
    np.savez(tmp_path / "evil.npz", imgname=np.array(["a"]), sub=np.array([Evil()], dtype=object))
    with pytest.raises(InputError, match="refusing to load global"):
        read_npz_arrays(tmp_path / "evil.npz", ("imgname",), optional=("sub",))
    assert not marker.exists()


def test_bedlam_joints_interval_persons_and_transl(tmp_path, smpl_dir):
    from pipeline.body_model import load_smpl
    d, K = make_scene(tmp_path, NORMAL, False, 1)
    out = tmp_path / "m.parquet"
    res = CliRunner().invoke(main, ["manifest", "bedlam", "--root", str(tmp_path), "--split", "train",
                                    "--smpl-dir", str(smpl_dir), "--out", str(out), "--no-check-images"])
    assert res.exit_code == 0, res.output
    rows = {r["sample_id"]: r for r in read_manifest(out)[0].to_pylist()}
    seq = f"{NORMAL}.seq_000001"
    assert set(rows) == {f"bedlam/train/{seq}/0/0", f"bedlam/train/{seq}/0/1", f"bedlam/train/{seq}/3/0"}
    model = load_smpl(smpl_dir, "neutral", num_betas=11)
    i = 1  # second person of frame 0
    ref = model(d["shape"][i:i + 1], d["pose_cam"][i:i + 1], d["trans_cam"][i:i + 1]).joints[0] + [0.05, -0.1, 0.5]
    r = rows[f"bedlam/train/{seq}/0/1"]
    np.testing.assert_allclose(np.reshape(r["joints_cam"], (24, 3)), ref, atol=1e-5)
    np.testing.assert_allclose(r["smpl"]["transl"], d["trans_cam"][i] + [0.05, -0.1, 0.5], atol=1e-6)
    assert len(r["smpl"]["betas"]) == 11 and r["smpl"]["gender"] == "neutral"
    np.testing.assert_allclose(r["K"], K.ravel())
    assert (r["image_w"], r["image_h"]) == (1280, 720) and json.loads(r["meta"])["sub"] == "rp_body_001"
    assert r["image_path"] == f"{NORMAL}/png/seq_000001/seq_000001_0000.png"


def test_bedlam_closeup_dot_lands_at_projection_on_disk(tmp_path, smpl_dir):
    from pipeline.body_model import load_smpl
    d, K = make_scene(tmp_path, CLOSEUP, True, 2)
    model = load_smpl(smpl_dir, "neutral", num_betas=11)
    i, joint = 4, 15  # frame 3 is npz row 4 (frame 0 has two people)
    transl = d["trans_cam"][i:i + 1] + d["cam_ext"][i, :3, 3]
    jl = model(d["shape"][i:i + 1], d["pose_cam"][i:i + 1], transl).joints[0]
    uv_label = project(jl[joint], K)
    ru, rv = np.round(uv_label).astype(int)
    label_img = np.zeros((1280, 720, 3), np.uint8)  # the image the labels describe (portrait)
    label_img[rv, ru] = 255
    disk = cv2.rotate(label_img, cv2.ROTATE_90_COUNTERCLOCKWISE)  # how BEDLAM stores close-ups
    assert np.array_equal(cv2.rotate(disk, cv2.ROTATE_90_CLOCKWISE), label_img)
    img_dir = tmp_path / CLOSEUP / "png" / "seq_000001"
    img_dir.mkdir(parents=True)
    cv2.imwrite(str(img_dir / "seq_000001_0003.png"), disk)
    out = read_bedlam(tmp_path, "train", smpl_dir=smpl_dir, progress=False)
    r = next(r for r in out.rows if r["frame"] == 3)
    assert (r["image_w"], r["image_h"]) == (1280, 720)  # on-disk landscape
    Kd = np.reshape(r["K"], (3, 3))
    jd = np.reshape(r["joints_cam"], (24, 3)).astype(np.float64)
    uv_disk = project(jd[joint], Kd)
    ys, xs = np.nonzero(cv2.imread(str(img_dir / "seq_000001_0003.png"))[..., 0])
    assert (xs[0], ys[0]) == (rv, 719 - ru)  # pixel mapping of a CCW rotation
    np.testing.assert_allclose(uv_disk, [rv + (uv_label[1] - rv), 719 - ru - (uv_label[0] - ru)], atol=1e-3)
    assert np.hypot(uv_disk[0] - xs[0], uv_disk[1] - ys[0]) < 0.75
    # the 3D rotation is a proper roll about the optical axis: depth and distances unchanged
    np.testing.assert_allclose(jd[:, 2], jl[:, 2], atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(jd - jd[0], axis=1), np.linalg.norm(jl - jl[0], axis=1), atol=1e-5)
    # the SMPL struct, moved with it, reproduces the on-disk joints
    s = r["smpl"]
    again = model(np.asarray(s["betas"])[None], np.asarray(s["pose"])[None], np.asarray(s["transl"])[None]).joints[0]
    np.testing.assert_allclose(again, jd, atol=2e-5)
    Rz, Kd2 = closeup_to_disk(K, 720)
    np.testing.assert_allclose(Kd, Kd2)
    np.testing.assert_allclose(np.linalg.det(Rz), 1.0)


def test_bedlam_layout_and_model_errors(tmp_path, smpl_dir):
    res = CliRunner().invoke(main, ["manifest", "bedlam", "--root", str(tmp_path), "--split", "train",
                                    "--smpl-dir", str(smpl_dir), "--out", str(tmp_path / "m.parquet")])
    assert res.exit_code == 2 and "processed_labels" in res.output
    make_scene(tmp_path, NORMAL, False, 0)
    res = CliRunner().invoke(main, ["manifest", "bedlam", "--root", str(tmp_path), "--split", "train",
                                    "--smpl-dir", str(tmp_path / "nosmpl"), "--out", str(tmp_path / "m.parquet")])
    assert res.exit_code == 2 and "nosmpl" in res.output

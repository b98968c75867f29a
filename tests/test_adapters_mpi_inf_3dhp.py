"""MPI-INF-3DHP adapter: HybrIK jsons and native .mat files, generated in their native formats."""
from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import scipy.io
from click.testing import CliRunner

from pipeline.adapters.mpi_inf_3dhp import TO_17, parse_calibration, project_distorted, read_mpi_inf_3dhp, ts_camera
from pipeline.cli import main
from pipeline.errors import InputError
from pipeline.manifest import read_manifest
from pipeline.skeleton import get_skeleton

K_TRAIN = np.array([[1497.69, 0, 1024.70], [0, 1497.10, 1051.39], [0, 0, 1]])


def _joints_mm(rng, n, j):
    return rng.normal([0, 0, 4000], [300, 500, 150], (n, j, 3))


def _proj(X, K):
    return X[..., :2] / X[..., 2:] * [K[0, 0], K[1, 1]] + K[:2, 2]


def make_json(root, split, n=3, seed=0):
    rng = np.random.default_rng(seed)
    J = 28 if split == "train" else 17
    images, anns = [], []
    for i in range(n):
        if split == "train":
            fn = f"S1/Seq1/images/S1_Seq1_V{i % 2}/img_S1_Seq1_V{i % 2}_{i + 1:06d}.jpg"
        else:
            fn = f"TS{1 if i == 0 else 5}/imageSequence/img_{i + 1:06d}.jpg"
        K3x4 = np.hstack([K_TRAIN + np.diag([i, i, 0]), np.zeros((3, 1))])
        images.append({"id": i, "file_name": fn, "width": 2048, "height": 2048,
                       "cam_param": {"intrinsic_param": K3x4.tolist()}})
        anns.append({"id": i, "image_id": i, "bbox": [10.0, 20.0 + i, 300.0, 600.0], "frame_idx": i,
                     "keypoints_cam": _joints_mm(rng, 1, J)[0].tolist(), "keypoints_vis": [1] * J,
                     **({"activity_id": 3} if split == "test" else {})})
    root.mkdir(parents=True, exist_ok=True)
    name = "annotation_mpi_inf_3dhp_train_v2.json" if split == "train" else "annotation_mpi_inf_3dhp_test.json"
    (root / name).write_text(json.dumps({"images": images, "annotations": anns}))
    return images, anns


def test_3dhp_json_train_28_and_17(tmp_path):
    images, anns = make_json(tmp_path, "train")
    out = tmp_path / "m.parquet"
    res = CliRunner().invoke(main, ["manifest", "mpi_inf_3dhp", "--root", str(tmp_path), "--split", "train",
                                    "--out", str(out), "--no-check-images"])
    assert res.exit_code == 0, res.output
    rows = read_manifest(out)[0].to_pylist()
    r = next(r for r in rows if r["frame"] == 1)
    assert r["skeleton"] == "mpi_inf_3dhp28" and r["sequence"] == "S1_Seq1_V1"
    kc = np.array(anns[1]["keypoints_cam"]) / 1000.0
    np.testing.assert_allclose(np.reshape(r["joints_cam"], (28, 3)), kc, rtol=1e-6)
    np.testing.assert_array_equal(np.reshape(r["K"], (3, 3)), K_TRAIN + np.diag([1, 1, 0]))  # intrinsic[:3, :3]
    assert r["bbox"] == anns[1]["bbox"] and r["dist"] == []
    assert r["image_path"] == "mpi_inf_3dhp_train_set/" + images[1]["file_name"]
    out17 = read_mpi_inf_3dhp(tmp_path, "train", joints=17, progress=False)
    r17 = next(r for r in out17.rows if r["frame"] == 1)
    assert r17["skeleton"] == "mpi_inf_3dhp17"
    np.testing.assert_allclose(np.reshape(r17["joints_cam"], (17, 3)), kc[list(TO_17)], rtol=1e-6)
    # 28 -> 17 keeps left/right: the 17-joint names equal the 28-joint names picked
    n28, n17 = get_skeleton("mpi_inf_3dhp28").joint_names, get_skeleton("mpi_inf_3dhp17").joint_names
    assert [n28[i] for i in TO_17] == list(n17)


def test_3dhp_json_test_order_and_ts5_distortion(tmp_path):
    images, anns = make_json(tmp_path / "annotations", "test")
    out = read_mpi_inf_3dhp(tmp_path, "test", progress=False)
    assert [r["sequence"] for r in out.rows] == ["TS1", "TS5", "TS5"]
    r1, r5 = out.rows[0], out.rows[1]
    assert r1["skeleton"] == "mpi_inf_3dhp17" and get_skeleton("mpi_inf_3dhp17").root == 14
    assert r1["dist"] == [] and len(r5["dist"]) == 5
    j = np.array(anns[1]["keypoints_cam"]) / 1000.0
    np.testing.assert_allclose(np.reshape(r5["joints_cam"], (17, 3)), j, rtol=1e-6)
    K = np.array(images[1]["cam_param"]["intrinsic_param"])[:, :3]
    np.testing.assert_allclose(np.reshape(r5["joints_2d"], (17, 2)), project_distorted(j, K, r5["dist"]), atol=1e-3)
    assert not np.allclose(np.reshape(r5["joints_2d"], (17, 2)), _proj(j, K), atol=0.5)  # distortion applied
    assert json.loads(r5["meta"])["activity_id"] == 3


def test_3dhp_test_cameras_from_mm_spec():
    K, dist, wh = ts_camera(1)
    assert wh == (2048, 2048) and dist == []
    np.testing.assert_allclose([K[0, 0], K[1, 1], K[0, 2], K[1, 2]], [1500.172, 1500.832, 1017.387, 1043.032],
                               atol=2e-3)
    K, dist, wh = ts_camera(6)
    assert wh == (1920, 1080) and len(dist) == 5
    np.testing.assert_allclose([K[0, 0], K[1, 1], K[0, 2], K[1, 2]], [1683.983, 1672.594, 939.858, 560.141], atol=2e-3)
    with pytest.raises(InputError):
        ts_camera(7)


def _calibration_text(Ks):
    lines = ["Skeletool Camera Calibration File V1.0"]
    for c, K in enumerate(Ks):
        M = np.eye(4)
        M[:3, :3] = K
        lines += [f"name          {c}", "  sensor      10 10", "  size        2048 2048", "  animated    0",
                  "  intrinsic   " + " ".join(f"{v:.6f}" for v in M.ravel()),
                  "  extrinsic   " + " ".join(f"{v:.6f}" for v in np.eye(4).ravel()), "  radial      0"]
    return "\n".join(lines) + "\n"


def make_native_train(root, n=25, seed=0):
    rng = np.random.default_rng(seed)
    d = root / "mpi_inf_3dhp_train_set" / "S1" / "Seq1"
    d.mkdir(parents=True)
    Ks = [K_TRAIN + np.diag([c, c, 0]) for c in range(14)]
    a2, a3 = np.empty((14, 1), object), np.empty((14, 1), object)
    j3s = []
    for c in range(14):
        j3 = _joints_mm(rng, n, 28)
        j3s.append(j3)
        a3[c, 0] = j3.reshape(n, 84)
        a2[c, 0] = _proj(j3, Ks[c]).reshape(n, 56)
    scipy.io.savemat(d / "annot.mat", {"annot2": a2, "annot3": a3, "univ_annot3": a3,
                                       "frames": np.arange(n, dtype=np.uint16)[:, None],
                                       "cameras": np.arange(14, dtype=np.uint8)[None]})
    (d / "camera.calibration").write_text(_calibration_text(Ks))
    return Ks, j3s


def test_3dhp_native_train(tmp_path):
    Ks, j3s = make_native_train(tmp_path)
    assert set(parse_calibration(tmp_path / "mpi_inf_3dhp_train_set/S1/Seq1/camera.calibration")) == set(range(14))
    out = read_mpi_inf_3dhp(tmp_path, "train", source="native", progress=False)
    seqs = sorted({r["sequence"] for r in out.rows})
    assert seqs == sorted(f"S1_Seq1_V{c}" for c in (0, 1, 2, 4, 5, 6, 7, 8))
    assert sorted({r["frame"] for r in out.rows}) == [0, 10, 20]  # interval 10
    r = next(r for r in out.rows if r["sequence"] == "S1_Seq1_V4" and r["frame"] == 20)
    np.testing.assert_allclose(np.reshape(r["joints_cam"], (28, 3)), j3s[4][20] / 1000, rtol=1e-6)
    np.testing.assert_allclose(np.reshape(r["K"], (3, 3)), Ks[4], atol=1e-6)
    assert r["image_path"] == "mpi_inf_3dhp_train_set/S1/Seq1/images/S1_Seq1_V4/img_S1_Seq1_V4_000021.jpg"
    out17 = read_mpi_inf_3dhp(tmp_path, "train", source="native", joints=17, interval=5, progress=False)
    r17 = next(r for r in out17.rows if r["sequence"] == "S1_Seq1_V4" and r["frame"] == 5)
    np.testing.assert_allclose(np.reshape(r17["joints_cam"], (17, 3)), j3s[4][5][list(TO_17)] / 1000, rtol=1e-6)
    np.testing.assert_allclose(np.reshape(r17["joints_2d"], (17, 2)), _proj(j3s[4][5], Ks[4])[list(TO_17)],
                               atol=1e-3)


def make_native_test(root, ts, n=8, seed=0):
    rng = np.random.default_rng(seed + ts)
    d = root / "mpi_inf_3dhp_test_set" / f"TS{ts}"
    d.mkdir(parents=True)
    K, dist, _ = ts_camera(ts)
    j3 = _joints_mm(rng, n, 17)
    valid = np.ones((n, 1))
    valid[[1, 4]] = 0
    with h5py.File(d / "annot_data.mat", "w") as f:  # v7.3 = HDF5
        f["annot3"] = j3[:, None]
        f["univ_annot3"] = j3[:, None] * 0.9
        f["annot2"] = project_distorted(j3, K, dist)[:, None]
        f["valid_frame"] = valid
        f["activity_annotation"] = np.full((n, 1), 2.0)
        f["bb_crop"] = np.zeros((n, 34))
    return j3


def test_3dhp_native_test_valid_frames_and_per_ts_cameras(tmp_path):
    j1 = make_native_test(tmp_path, 1)
    j5 = make_native_test(tmp_path, 5)
    out = tmp_path / "m.parquet"
    res = CliRunner().invoke(main, ["manifest", "mpi_inf_3dhp", "--root", str(tmp_path), "--split", "test",
                                    "--source", "native", "--out", str(out), "--no-check-images"])
    assert res.exit_code == 0, res.output
    rows = {r["sample_id"]: r for r in read_manifest(out)[0].to_pylist()}
    assert len(rows) == 12 and "mpi_inf_3dhp/test/TS1/1/0" not in rows and "mpi_inf_3dhp/test/TS5/4/0" not in rows
    r1, r5 = rows["mpi_inf_3dhp/test/TS1/2/0"], rows["mpi_inf_3dhp/test/TS5/2/0"]
    assert r1["image_path"] == "mpi_inf_3dhp_test_set/TS1/imageSequence/img_000003.jpg"  # 1-based names
    assert (r1["image_w"], r1["image_h"]) == (2048, 2048) and (r5["image_w"], r5["image_h"]) == (1920, 1080)
    assert r1["K"] != r5["K"] and r1["dist"] == [] and len(r5["dist"]) == 5
    np.testing.assert_allclose(np.reshape(r5["joints_cam"], (17, 3)), j5[2] / 1000, rtol=1e-6)
    assert json.loads(r5["meta"])["activity"] == 2
    univ = read_mpi_inf_3dhp(tmp_path, "test", source="native", univ=True, subjects=[1], progress=False)
    np.testing.assert_allclose(np.reshape(univ.rows[1]["joints_cam"], (17, 3)), j1[2] * 0.9 / 1000, rtol=1e-6)


def test_3dhp_wrong_layout(tmp_path):
    res = CliRunner().invoke(main, ["manifest", "mpi_inf_3dhp", "--root", str(tmp_path), "--split", "test",
                                    "--out", str(tmp_path / "m.parquet")])
    assert res.exit_code == 2 and "annotation_mpi_inf_3dhp_test.json" in res.output
    res = CliRunner().invoke(main, ["manifest", "mpi_inf_3dhp", "--root", str(tmp_path), "--split", "train",
                                    "--source", "native", "--out", str(tmp_path / "m.parquet")])
    assert res.exit_code == 2 and "annot.mat" in res.output


def test_3dhp_json_rejections(tmp_path):
    images, anns = make_json(tmp_path, "train", n=4)
    anns[1]["keypoints_cam"] = anns[1]["keypoints_cam"][:17]          # wrong joint count
    images[2]["cam_param"]["intrinsic_param"][0][0] = 0.0             # f <= 0
    anns[3]["bbox"] = [5.0, 5.0, 0.0, 10.0]                           # degenerate box
    (tmp_path / "annotation_mpi_inf_3dhp_train_v2.json").write_text(
        json.dumps({"images": images, "annotations": anns}))
    out = tmp_path / "m.parquet"
    res = CliRunner().invoke(main, ["manifest", "mpi_inf_3dhp", "--root", str(tmp_path), "--split", "train",
                                    "--out", str(out), "--no-check-images"])
    assert res.exit_code == 0, res.output
    import pyarrow.parquet as pq
    from pipeline.manifest import rejected_path_for
    rej = dict(zip(*pq.read_table(rejected_path_for(out)).to_pydict().values()))
    assert rej == {"mpi_inf_3dhp/train/S1_Seq1_V1/1/0": "keypoints_cam has 17 joints, expected 28",
                   "mpi_inf_3dhp/train/S1_Seq1_V0/2/0": "focal length <= 0",
                   "mpi_inf_3dhp/train/S1_Seq1_V1/3/0": "degenerate bbox (w or h <= 0)"}
    assert read_manifest(out)[0].num_rows == 1 and "rejected: focal length <= 0" in res.output

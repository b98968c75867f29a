"""Human3.6M (Moon JSON) adapter: generated annotation files in the native format and the real fixture."""
from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from scipy.spatial.transform import Rotation

from pipeline.adapters.h36m import bbox_from_joints, is_excluded, read_h36m
from pipeline.cli import main
from pipeline.errors import InputError
from pipeline.manifest import read_manifest, rejected_path_for

CAMS = {1: (1000, 1002), 4: (1000, 1002)}


def _camera(cam):
    R = Rotation.from_rotvec([1.5 + 0.1 * cam, 0.2 * cam, 0.1]).as_matrix()
    return {"R": R.tolist(), "t": [10.0 * cam, 400.0, 5000.0 + cam], "f": [1145.0 + cam, 1144.0], "c": [512.0, 515.0]}


def make_h36m(root, subject, seqs, frames, missing_joint=None):
    """seqs: [(action, subaction)]; world joints derived from camera-1 joints in front of the camera."""
    rng = np.random.default_rng(subject)
    ann = root / "annotations"
    ann.mkdir(parents=True, exist_ok=True)
    cams = {str(c): _camera(c) for c in CAMS}
    R1, t1 = np.array(cams["1"]["R"]), np.array(cams["1"]["t"])
    images, anns, joints = [], [], {}
    for a, sa in seqs:
        for fr in frames:
            jc = rng.normal([0, 0, 4500], [300, 600, 200], (17, 3))
            jw = (jc - t1) @ R1  # X_w = R^T (X_c - t)
            if (a, sa, fr) != missing_joint:
                joints.setdefault(str(a), {}).setdefault(str(sa), {})[str(fr)] = jw.tolist()
            for c, (w, h) in CAMS.items():
                cam = cams[str(c)]
                folder = f"s_{subject:02d}_act_{a:02d}_subact_{sa:02d}_ca_{c:02d}"
                iid = len(images) + 1
                images.append({"id": iid, "file_name": f"{folder}/{folder}_{fr + 1:06d}.jpg", "width": w,
                               "height": h, "subject": subject, "action_name": "X", "action_idx": a,
                               "subaction_idx": sa, "cam_idx": c, "frame_idx": fr})
                jcc = jw @ np.array(cam["R"]).T + cam["t"]
                anns.append({"id": iid, "image_id": iid, "keypoints_vis": [True] * 17,
                             "bbox": bbox_from_joints(jcc, cam["f"], cam["c"]).tolist()})
    for name, obj in (("data", {"images": images, "annotations": anns}), ("camera", cams), ("joint_3d", joints)):
        (ann / f"Human36M_subject{subject}_{name}.json").write_text(json.dumps(obj))
    return cams, joints


def test_h36m_train_units_world_to_camera_interval_and_exclusion(tmp_path):
    cams, joints = make_h36m(tmp_path, 1, [(2, 1), (3, 2)], range(10), missing_joint=(3, 2, 5))
    out = tmp_path / "m.parquet"
    res = CliRunner().invoke(main, ["manifest", "h36m", "--root", str(tmp_path), "--split", "train",
                                    "--subjects", "1", "--out", str(out), "--no-check-images"])
    assert res.exit_code == 0, res.output
    table, meta = read_manifest(out)
    rows = {r["sample_id"]: r for r in table.to_pylist()}
    rej = dict(zip(*pq.read_table(rejected_path_for(out)).to_pydict().values()))
    # frames 0 and 5 of 2 sequences x 2 cameras, minus the frame without joints (rejected, both cameras)
    assert len(rows) == 6 and len(rej) == 2
    assert rej["h36m/train/s_01_act_03_subact_02_ca_04/5/0"] == "missing 3D joints in joint_3d.json"
    r = rows["h36m/train/s_01_act_02_subact_01_ca_04/5/0"]
    cam = cams["4"]
    jw = np.array(joints["2"]["1"]["5"])
    jc = (jw @ np.array(cam["R"]).T + cam["t"]) / 1000.0  # mm -> m
    np.testing.assert_allclose(np.reshape(r["joints_cam"], (17, 3)), jc, rtol=1e-6)
    assert r["skeleton"] == "h36m17" and r["dist"] == [] and r["frame"] == 5
    np.testing.assert_allclose(r["K"], [1149.0, 0, 512.0, 0, 1144.0, 515.0, 0, 0, 1])
    assert r["image_path"] == "images/s_01_act_02_subact_01_ca_04/s_01_act_02_subact_01_ca_04_000006.jpg"
    assert (r["image_w"], r["image_h"]) == (1000, 1002)  # metadata (no image on disk)
    np.testing.assert_allclose(r["bbox"], bbox_from_joints(jc * 1000, cam["f"], cam["c"]), atol=1e-9)


def test_h36m_test_sampling_and_blocklist(tmp_path):
    seqs9 = [(2, 1), (5, 2), (10, 2), (13, 1), (13, 2)]
    make_h36m(tmp_path, 9, seqs9, range(25))
    make_h36m(tmp_path, 11, [(2, 1), (2, 2), (6, 2), (6, 1)], range(25))
    out = read_h36m(tmp_path, "test", progress=False)
    seqs = {r["sequence"].rsplit("_ca_", 1)[0] for r in out.rows}
    assert seqs == {"s_09_act_02_subact_01", "s_09_act_13_subact_02", "s_11_act_06_subact_01"}
    assert is_excluded(11, 2, 1) and is_excluded(9, 13, 1) and not is_excluded(9, 13, 2)
    # kept per (seq, cam): frames 0,5,10,15,20 -> 3 sequences x 2 cams x 5 = 30 entries, then every 4th
    ordered = []
    for seq in ("s_09_act_02_subact_01", "s_09_act_13_subact_02"):  # file order: seq, frame, camera
        ordered += [(f"{seq}_ca_{c:02d}", f) for f in range(0, 25, 5) for c in (1, 4)]
    ordered += [(f"s_11_act_06_subact_01_ca_{c:02d}", f) for f in range(0, 25, 5) for c in (1, 4)]
    assert [(r["sequence"], r["frame"]) for r in out.rows] == ordered[::4]
    assert all(r["split"] == "test" for r in out.rows)
    assert len(read_h36m(tmp_path, "test", limit=2, progress=False).rows) == 2


def test_h36m_missing_file_named(tmp_path):
    make_h36m(tmp_path, 9, [(2, 1)], range(5))
    res = CliRunner().invoke(main, ["manifest", "h36m", "--root", str(tmp_path), "--split", "test",
                                    "--out", str(tmp_path / "m.parquet")])
    assert res.exit_code == 2 and "Human36M_subject11_data.json" in res.output
    with pytest.raises(InputError, match="unknown split"):
        read_h36m(tmp_path, "val")


def test_h36m_real_moon_json_bbox_reproduced(fixtures_dir, tmp_path):
    src = fixtures_dir / "h36m_moon_json"
    ann = tmp_path / "annotations"
    ann.mkdir()
    for k in ("data", "camera", "joint_3d"):
        (ann / f"Human36M_subject1_{k}.json").symlink_to(src / f"Dummy_subject1_{k}.json")
    data = json.loads((src / "Dummy_subject1_data.json").read_text())
    cam = json.loads((src / "Dummy_subject1_camera.json").read_text())["1"]
    jw = np.array(json.loads((src / "Dummy_subject1_joint_3d.json").read_text())["2"]["1"]["0"])
    jc_mm = jw @ np.array(cam["R"]).T + cam["t"]
    np.testing.assert_allclose(bbox_from_joints(jc_mm, cam["f"], cam["c"]), data["annotations"][0]["bbox"],
                               atol=1e-6, rtol=0)
    out = read_h36m(tmp_path, "train", subjects=[1], progress=False)
    assert len(out.rows) == 1
    r = out.rows[0]
    np.testing.assert_allclose(r["bbox"], data["annotations"][0]["bbox"], atol=0)
    np.testing.assert_allclose(np.reshape(r["joints_cam"], (17, 3)), jc_mm / 1000, rtol=1e-6)
    assert r["sequence"] == "s_11_act_02_subact_01_ca_01" and (r["image_w"], r["image_h"]) == (1000, 1002)
    # pelvis is the root and depth is plausible (metres)
    assert 4.0 < r["joints_cam"][2] < 7.0

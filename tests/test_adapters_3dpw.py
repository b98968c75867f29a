"""3DPW adapter on generated sequence pickles in the real schema (the format in pipeline/adapters/pw3d.py)."""
from __future__ import annotations

import json
import os
import pickle

import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from scipy.spatial.transform import Rotation

from fake_smpl import random_regressor, write_model_npz
from pipeline.cli import main
from pipeline.errors import InputError
from pipeline.manifest import read_manifest, rejected_path_for
from pipeline.adapters.pw3d import H36M17_PERSON_OFFSET, read_3dpw

SEQ = "courtyard_fake_00"
N = 6
W, H = 108, 192
K = np.array([[196.0, 0, 50.0], [0, 197.0, 96.0], [0, 0, 1]])  # cx != W/2: the size must come from the file


def _cam_poses(n):
    out = np.zeros((n, 4, 4))
    for i in range(n):
        out[i, :3, :3] = Rotation.from_rotvec([0.05 * i, 0.3 + 0.02 * i, 0.01]).as_matrix()
        out[i, :3, 3] = [0.1 * i, 0.2, 4.0 + 0.1 * i]
        out[i, 3, 3] = 1.0
    return out


def make_3dpw(root, split="test", rng_seed=0, images=True):
    rng = np.random.default_rng(rng_seed)
    joints = [rng.normal(0, 0.4, (N, 72)) for _ in range(2)]
    joints[0][1, 5] = np.nan                     # -> "non-finite values in joints_cam"
    joints[1][3] = np.tile([0.0, 0.0, -20.0], 24)  # far behind every camera -> "joints behind the camera"
    valid = [np.ones(N, np.uint8), np.ones(N, np.uint8)]
    valid[0][2] = 0                              # not a row at all
    poses2d = [rng.uniform(1, 50, (N, 3, 18)) for _ in range(2)]
    poses2d[1][4] = 0.0
    d = {"sequence": SEQ, "genders": ["m", "f"], "betas": [rng.normal(0, 1, 10), rng.normal(0, 1, 300)],
         "poses": [rng.normal(0, 0.2, (N, 72)) for _ in range(2)], "trans": [rng.normal(0, 0.3, (N, 3))] * 2,
         "jointPositions": joints, "poses2d": poses2d, "campose_valid": valid, "cam_poses": _cam_poses(N),
         "cam_intrinsics": K, "img_frame_ids": (2 * np.arange(N)).astype(np.uint16), "texture_maps": []}
    (root / "sequenceFiles" / split).mkdir(parents=True, exist_ok=True)
    with open(root / "sequenceFiles" / split / f"{SEQ}.pkl", "wb") as f:
        pickle.dump(d, f, protocol=2)
    if images:
        (root / "imageFiles" / SEQ).mkdir(parents=True, exist_ok=True)
        for i in range(N - 1):  # the last image is missing -> "missing image"
            cv2.imwrite(str(root / "imageFiles" / SEQ / f"image_{i:05d}.jpg"), np.zeros((H, W, 3), np.uint8))
    return d


def _run(root, out, *extra, split="test"):
    res = CliRunner().invoke(main, ["manifest", "3dpw", "--root", str(root), "--split", split, "--out", str(out),
                                    *extra])
    return res


def _rows(out):
    table, meta = read_manifest(out)
    return {r["sample_id"]: r for r in table.to_pylist()}, meta


def test_3dpw_rows_world_to_camera_validity_and_rejections(tmp_path):
    d = make_3dpw(tmp_path / "3dpw")
    out = tmp_path / "m.parquet"
    res = _run(tmp_path / "3dpw", out)
    assert res.exit_code == 0, res.output
    rows, meta = _rows(out)
    rej = dict(zip(*pq.read_table(rejected_path_for(out)).to_pydict().values()))
    assert meta["adapter"] == "3dpw" and any(k.endswith(f"{SEQ}.pkl") for k in meta["source_checksums"])
    # campose_valid = 0 -> neither a row nor a rejection
    assert f"3dpw/test/{SEQ}/2/0" not in rows and f"3dpw/test/{SEQ}/2/0" not in rej
    assert rej[f"3dpw/test/{SEQ}/1/0"] == "non-finite values in joints_cam"
    assert rej[f"3dpw/test/{SEQ}/3/1"] == "joints behind the camera (z <= 0)"
    assert rej[f"3dpw/test/{SEQ}/5/0"] == "missing image" and rej[f"3dpw/test/{SEQ}/5/1"] == "missing image"
    assert len(rows) == 2 * (N - 1) - 3
    cam = d["cam_poses"]
    for (i, p) in [(0, 0), (3, 0), (4, 1)]:
        r = rows[f"3dpw/test/{SEQ}/{i}/{p}"]
        R, t = cam[i, :3, :3], cam[i, :3, 3]
        jw = d["jointPositions"][p][i].reshape(24, 3)
        jc = jw @ R.T + t
        np.testing.assert_allclose(np.reshape(r["joints_cam"], (24, 3)), jc, atol=1e-5)
        assert r["skeleton"] == "smpl24" and r["joints_vis"] == [1] * 24
        # array index i names the image, not img_frame_ids[i] (= 2i)
        assert r["image_path"] == f"imageFiles/{SEQ}/image_{i:05d}.jpg"
        assert json.loads(r["meta"])["img_frame_id"] == 2 * i
        assert (r["image_w"], r["image_h"]) == (W, H)  # from the JPEG header, not 2*cx
        np.testing.assert_allclose(r["K"], K.ravel())
        uv = jc[:, :2] / jc[:, 2:] * [K[0, 0], K[1, 1]] + K[:2, 2]
        np.testing.assert_allclose(np.reshape(r["joints_2d"], (24, 2)), uv, atol=1e-3)
        lo, hi = uv.min(0), uv.max(0)  # 1.2x the tight joint box about its centre
        np.testing.assert_allclose(r["bbox"], [*(0.5 * (lo + hi) - 0.6 * (hi - lo)), *(1.2 * (hi - lo))], atol=1e-9)
        s = r["smpl"]
        assert len(s["betas"]) == 10 and s["gender"] == ("male" if p == 0 else "female")
        np.testing.assert_allclose(s["betas"], d["betas"][p][:10], atol=1e-6)
        root_c = Rotation.from_rotvec(s["pose"][:3]).as_matrix()
        np.testing.assert_allclose(root_c, R @ Rotation.from_rotvec(d["poses"][p][i, :3]).as_matrix(), atol=1e-5)
        np.testing.assert_allclose(s["pose"][3:], d["poses"][p][i, 3:], atol=1e-6)
        tr = d["trans"][p][i]
        j0 = jw[0] - tr
        np.testing.assert_allclose(s["transl"], R @ (tr + j0) + t - j0, atol=1e-5)


def test_3dpw_require_poses2d_limit_and_split(tmp_path):
    make_3dpw(tmp_path / "a", split="validation")
    out = read_3dpw(tmp_path / "a", "validation", require_poses2d=True, progress=False)
    ids = {(r["frame"], r["person"]) for r in out.rows}
    assert (4, 1) not in ids and (4, 0) in ids and (2, 0) not in ids
    assert {r["split"] for r in out.rows} == {"validation"}
    assert len(read_3dpw(tmp_path / "a", "validation", limit=3, progress=False).rows) == 3
    with pytest.raises(InputError, match="sequenceFiles/test"):
        read_3dpw(tmp_path / "a", "test", progress=False)
    with pytest.raises(InputError, match="unknown split"):
        read_3dpw(tmp_path / "a", "val", progress=False)


def test_3dpw_wrong_layout_exit_2_names_missing_path(tmp_path):
    (tmp_path / "empty").mkdir()
    res = _run(tmp_path / "empty", tmp_path / "m.parquet")
    assert res.exit_code == 2
    assert str(tmp_path / "empty" / "sequenceFiles" / "test") in res.output
    assert not (tmp_path / "m.parquet").exists()


def test_3dpw_malicious_pickle_refused(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))
    seq_dir = tmp_path / "r" / "sequenceFiles" / "test"
    seq_dir.mkdir(parents=True)
    (seq_dir / "evil.pkl").write_bytes(pickle.dumps({"sequence": Evil()}, protocol=2))
    res = _run(tmp_path / "r", tmp_path / "m.parquet")
    assert res.exit_code == 2 and "refusing to load global" in res.output and "evil.pkl" in res.output
    assert not marker.exists()


@pytest.fixture(scope="module")
def smpl_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("smpl")
    write_model_npz(d / "SMPL_MALE.npz", seed=11, num_betas=10)
    write_model_npz(d / "SMPL_FEMALE.npz", seed=12, num_betas=10)
    np.save(d / "J_regressor_h36m_correct.npy", random_regressor())
    return d


def test_3dpw_with_body_model_mesh_box_and_h36m17_rows(tmp_path, smpl_dir):
    from pipeline.body_model import load_smpl
    d = make_3dpw(tmp_path / "3dpw")
    out = tmp_path / "m.parquet"
    res = _run(tmp_path / "3dpw", out, "--smpl-dir", str(smpl_dir), "--regressor",
               str(smpl_dir / "J_regressor_h36m_correct.npy"), "--no-check-images")
    assert res.exit_code == 0, res.output
    rows, meta = _rows(out)
    reg = np.load(smpl_dir / "J_regressor_h36m_correct.npy")
    i, p = 4, 1
    R, t = d["cam_poses"][i, :3, :3], d["cam_poses"][i, :3, 3]
    model = load_smpl(smpl_dir, "female", num_betas=10)
    world = model(d["betas"][p][None, :10], d["poses"][p][i][None], d["trans"][p][i][None])
    verts_c = world.vertices[0] @ R.T + t
    r24 = rows[f"3dpw/test/{SEQ}/{i}/{p}"]
    r17 = rows[f"3dpw/test/{SEQ}/{i}/{p + H36M17_PERSON_OFFSET}"]
    assert r17["skeleton"] == "h36m17" and json.loads(r17["meta"])["row_set"] == "mesh_h36m17"
    np.testing.assert_allclose(np.reshape(r17["joints_cam"], (17, 3)), reg @ verts_c, atol=1e-5)
    uv = verts_c[:, :2] / verts_c[:, 2:] * [K[0, 0], K[1, 1]] + K[:2, 2]
    uv = np.clip(uv, -0.2 * H, 1.2 * H)
    box = [*uv.min(0), *(uv.max(0) - uv.min(0))]
    np.testing.assert_allclose(r24["bbox"], box, atol=1e-6)
    np.testing.assert_allclose(r17["bbox"], box, atol=1e-6)
    # the camera-frame SMPL parameters reproduce the camera-frame mesh exactly (root orient + pelvis offset)
    s = r24["smpl"]
    cam = model(np.asarray(s["betas"])[None], np.asarray(s["pose"])[None], np.asarray(s["transl"])[None])
    np.testing.assert_allclose(cam.vertices[0], verts_c, atol=2e-5)
    # joints_cam of the smpl24 rows are still the dataset's jointPositions
    np.testing.assert_allclose(np.reshape(r24["joints_cam"], (24, 3)),
                               d["jointPositions"][p][i].reshape(24, 3) @ R.T + t, atol=1e-5)
    assert meta["regressor"].endswith("J_regressor_h36m_correct.npy")

"""The synthetic people's SMPL-format body model (pipeline/synth_model.py, issue 12 item 3): the cached file is what
the script builds, smplx loads it, its mesh is the rendered surface of every synthetic person, and the labels that
synth writes (β, θ, transl, twists) give back the rendered joints, the rendered surface and a mirror-symmetric body."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.body_model import load_body_layer, load_smpl
from pipeline.errors import InputError
from pipeline.ik import rotations_from_axis_angle, twist_labels
from pipeline.skeleton import get_skeleton
from pipeline.synth import SynthConfig, synth_sample
from pipeline.synth_body import contains, sample_body
from pipeline.synth_model import (CAPSULES, MARKER_VERTICES, MESH_ELLIPSOIDS, body_model_path, body_shape, build_body_model,
                                  load_shape_model, mesh_vertices)
from pipeline.synth_render import Capsule
from trainer.hps_labels import flip_hps_labels, hps_labels

ROOT = Path(__file__).resolve().parents[1]
SMPL_KEYS = ("v_template", "shapedirs", "posedirs", "J_regressor", "weights", "kintree_table", "f")


@pytest.fixture(scope="module")
def smpl():
    return load_smpl("synthetic", "neutral", num_betas=10)


def test_the_model_file_is_what_the_script_builds(tmp_path):
    out = tmp_path / "model.npz"
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "make_body_model.py"), "--out", str(out)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert out.read_bytes() == body_model_path().read_bytes()            # the same bytes, every build
    built = build_body_model()
    with np.load(body_model_path()) as shipped, np.load(out) as rebuilt:
        assert sorted(shipped.files) == sorted(built) == sorted(rebuilt.files)
        for k in built:
            np.testing.assert_allclose(shipped[k], built[k], rtol=0, atol=1e-12, err_msg=k)
            np.testing.assert_array_equal(rebuilt[k], shipped[k], err_msg=k)
    for k in SMPL_KEYS:
        assert k in built
    assert built["weights"].sum(1).tolist() == [1.0] * len(built["weights"])       # one-hot: rigid volumes
    np.testing.assert_allclose(built["J_regressor"].sum(1), 1.0)
    assert not built["posedirs"].any()


def test_smplx_forward_gives_the_shape_models_rest_body(smpl):
    rng = np.random.default_rng(0)
    betas = rng.normal(0, 1.2, (5, 10))
    out = smpl(betas, np.zeros((5, 72)), np.zeros((5, 3)))
    for b, v, j in zip(betas, out.vertices, out.joints):
        shape = body_shape(load_shape_model(), b)
        np.testing.assert_allclose(j, shape.joints, atol=1e-6)     # smplx reads the arrays as float32
        np.testing.assert_allclose(v, mesh_vertices(shape), atol=1e-6)
    layer = load_body_layer("synthetic")
    np.testing.assert_allclose(layer.rest_joints(torch.from_numpy(betas)).numpy(), out.joints, atol=1e-12)


def _on_surface(prim, pts, tol=1e-5):
    """Whether each point lies on the volume's surface (not merely inside)."""
    if isinstance(prim, Capsule):
        ba = prim.b - prim.a
        s = np.clip((pts - prim.a) @ ba / (ba @ ba), 0.0, 1.0)
        return np.abs(np.linalg.norm(pts - prim.a - s[:, None] * ba, axis=1) - prim.radius) <= tol
    q = (pts - prim.center) @ prim.axes / prim.radii
    return np.abs((q * q).sum(1) - 1.0) <= 10 * tol


@pytest.mark.parametrize("index", range(6))
def test_the_labels_mesh_is_the_rendered_surface(smpl, index):
    s = synth_sample(3, "train", index, SynthConfig(min_box_inside=1))
    for person in s["persons"]:
        lab = person.smpl
        out = smpl(lab["betas"][None], lab["pose"][None], lab["transl"][None])
        np.testing.assert_allclose(out.joints[0], person.joints, atol=2e-6)   # the stored (float32) joints
        surface = [m for m in range(out.vertices.shape[1]) if m not in set(MARKER_VERTICES.tolist())]
        v = out.vertices[0][surface]
        on = np.zeros(len(v), bool)
        hair = min(p.part for p in person.prims) + len(CAPSULES) + MESH_ELLIPSOIDS
        for prim in person.prims:
            if prim.part != hair:                                             # the hair is not body
                on |= _on_surface(prim, v)
        assert on.all(), f"{(~on).sum()} vertices off every drawn volume"
        markers = out.vertices[0][MARKER_VERTICES]                            # inside the body
        assert np.all([any(contains(p, m[None])[0] for p in person.prims) for m in markers])


def test_body_heights_and_betas():
    rng = np.random.default_rng(1)
    bodies = [sample_body(rng) for _ in range(200)]
    h = np.array([b.height for b in bodies])
    assert h.min() >= 1.5 and h.max() <= 2.0 and 1.65 < h.mean() < 1.85
    B = np.stack([b.betas for b in bodies])
    assert B.shape == (200, 10) and abs(B.mean()) < 0.15 and 0.8 < B.std() < 1.1


def _mirror(local: np.ndarray) -> np.ndarray:
    """Local rotations of the mirrored person: M R M on the mirror joint."""
    M = np.diag([-1.0, 1.0, 1.0])
    perm = get_skeleton("smpl24").flip_perm
    out = np.empty_like(local)
    for j, k in enumerate(perm):
        out[k] = M @ local[j] @ M
    return out


def test_the_body_is_mirror_symmetric_and_flipped_labels_are_the_mirrored_persons():
    rng = np.random.default_rng(4)
    perm = list(get_skeleton("smpl24").flip_perm)
    M = np.diag([-1.0, 1.0, 1.0])
    for _ in range(5):
        b = rng.normal(0, 1, 10)
        J = body_shape(load_shape_model(), b).joints
        np.testing.assert_allclose(J[perm] @ M, J, atol=1e-12)              # left/right twins mirror exactly
        aa = rng.normal(0, 0.5, (24, 3))
        local = rotations_from_axis_angle(torch.from_numpy(aa)).numpy()
        rest = torch.from_numpy(J[None])
        tw = twist_labels(torch.from_numpy(local[None]), rest)[0].numpy()
        tw_m = twist_labels(torch.from_numpy(_mirror(local)[None]), rest)[0].numpy()
        pose = np.concatenate([cv2_rodrigues(r) for r in local])
        pose_m = np.concatenate([cv2_rodrigues(r) for r in _mirror(local)])
        lab = flip_hps_labels(hps_labels({"smpl_betas": b, "smpl_pose": pose, "smpl_twist": tw}))
        ref = hps_labels({"smpl_betas": b, "smpl_pose": pose_m, "smpl_twist": tw_m})
        np.testing.assert_array_equal(lab["twist_mask"], ref["twist_mask"])
        assert lab["twist_mask"][:3].sum() == 0 and lab["twist_mask"][3:].all()   # the pelvis's bones: masked
        np.testing.assert_allclose(lab["twist"], ref["twist"], atol=1e-6)
        np.testing.assert_allclose(lab["leaf_rot"], ref["leaf_rot"], atol=1e-6)
        np.testing.assert_allclose(lab["betas"], ref["betas"])


def cv2_rodrigues(R):
    import cv2
    return cv2.Rodrigues(np.asarray(R, np.float64))[0][:, 0]


def test_the_model_file_is_written_whole_where_it_can_be(tmp_path, monkeypatch):
    """Created on first use, rewritten when a file of its name is not whole, and under the temporary directory when
    the cache directory cannot be written."""
    from pipeline import synth_model
    cache = tmp_path / "cache"
    monkeypatch.setenv("PERSPOSE_CACHE", str(cache))
    synth_model.body_model_path.cache_clear()
    try:
        path = synth_model.body_model_path()
        assert path.parent == cache and path.read_bytes() == synth_model.body_model_bytes()
        path.write_bytes(path.read_bytes()[:1000])                           # a torn copy from elsewhere
        synth_model.body_model_path.cache_clear()
        assert synth_model.body_model_path().read_bytes() == synth_model.body_model_bytes()
        blocked = tmp_path / "not-a-dir"
        blocked.write_text("a file where the cache directory should be")
        monkeypatch.setenv("PERSPOSE_CACHE", str(blocked))
        monkeypatch.setattr(synth_model.tempfile, "gettempdir", lambda: str(tmp_path / "tmp"))
        synth_model.body_model_path.cache_clear()
        fallback = synth_model.body_model_path()
        assert fallback.parent.parent == tmp_path / "tmp" and fallback.name == path.name
        assert fallback.read_bytes() == synth_model.body_model_bytes()
        (tmp_path / "tmp").rename(tmp_path / "tmp-moved")
        (tmp_path / "tmp").write_text("and a file where the temporary directory should be")
        synth_model.body_model_path.cache_clear()
        with pytest.raises(InputError, match="not-a-dir: cannot write the synthetic body model .* PERSPOSE_CACHE"):
            synth_model.body_model_path()
    finally:
        synth_model.body_model_path.cache_clear()

"""The built-in synthetic dataset: determinism, manifest validity, exact labels and rendering convention, CLI."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from pipeline.cli import main
from pipeline.geometry import intrinsics, project
from pipeline.manifest import read_manifest, validate_rows
from pipeline.skeleton import get_skeleton
from pipeline.synth import (SynthConfig, fov_horizontal, image_rng, sample_camera, sample_location, sample_person,
                            synth_sample)
from pipeline.synth_body import (contains, forward_kinematics, rest_height, sample_body, sample_pose)
from pipeline.synth_render import Capsule, Ellipsoid, projected_extent, render_primitives

SMALL = ["--image-size", "160", "120", "--no-progress"]
J = 24


def _run(args):
    res = CliRunner().invoke(main, ["synth", *args])
    return res


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.jpg"))}


@pytest.fixture(scope="module")
def synth_dirs(tmp_path_factory):
    """The same 12 images written three times: jobs=1, jobs=2, and jobs=1 again into the first directory."""
    a, b = tmp_path_factory.mktemp("synth_a"), tmp_path_factory.mktemp("synth_b")
    common = ["-n", "12", "--seed", "7", "--second-person-prob", "0.5", *SMALL]
    ra = _run(["--out", str(a), "--jobs", "1", *common])
    assert ra.exit_code == 0, ra.output
    first = (a / "manifest.parquet").read_bytes()
    rb = _run(["--out", str(b), "--jobs", "2", *common])
    assert rb.exit_code == 0, rb.output
    ra2 = _run(["--out", str(a), "--jobs", "2", *common])
    assert ra2.exit_code == 0, ra2.output
    return a, b, first, ra.output


def test_same_seed_same_bytes_regardless_of_jobs(synth_dirs):
    a, b, first, _ = synth_dirs
    fa, fb = _files(a), _files(b)
    assert len(fa) == 12 and fa == fb
    assert (a / "manifest.parquet").read_bytes() == first          # rerun into the same directory: same bytes
    (ta, ma), (tb, mb) = read_manifest(a / "manifest.parquet"), read_manifest(b / "manifest.parquet")
    # (the undefined twist labels are NaN, which Table.equals never calls equal; JSON writes them as NaN)
    assert json.dumps(ta.to_pylist()) == json.dumps(tb.to_pylist())
    for m in (ma, mb):
        m.pop("image_root"), m.pop("dataset_root")
    assert ma == mb


def test_manifest_is_valid_smpl24_with_relative_paths(synth_dirs):
    a, _, _, output = synth_dirs
    table, meta = read_manifest(a / "manifest.parquet")
    assert meta["adapter"] == "synth" and Path(meta["image_root"]) == a.resolve()
    rows = table.to_pylist()
    assert len(rows) >= 12 and set(r["skeleton"] for r in rows) == {"smpl24"}
    kept, rejected = validate_rows(rows, a)
    assert rejected == [] and len(kept) == len(rows)
    assert pq.read_table(a / "manifest.rejected.parquet").num_rows == 0
    assert {r["person"] for r in rows} <= {0, 1} and sum(r["person"] == 0 for r in rows) == 12
    for r in rows:
        assert not Path(r["image_path"]).is_absolute() and r["image_path"].startswith("images/train/seq000/")
        assert r["sample_id"] == f"synth/train/{r['sequence']}/{r['frame']}/{r['person']}"
        assert r["dist"] == [] and len(r["K"]) == 9
        img = cv2.imread(str(a / r["image_path"]))
        assert img.shape == (r["image_h"], r["image_w"], 3)
    assert "images" in output and "people (rows)" in output


def test_stored_labels_are_exact_projections(synth_dirs):
    a = synth_dirs[0]
    table, _ = read_manifest(a / "manifest.parquet")
    for r in table.to_pylist():
        K = np.array(r["K"]).reshape(3, 3)
        X = np.array(r["joints_cam"], np.float32).astype(np.float64).reshape(J, 3)
        uv = np.array(r["joints_2d"], np.float64).reshape(J, 2)
        np.testing.assert_allclose(project(X, K), uv, atol=1e-4, rtol=0)
        inside = ((uv[:, 0] >= -0.5) & (uv[:, 0] <= r["image_w"] - 0.5)
                  & (uv[:, 1] >= -0.5) & (uv[:, 1] <= r["image_h"] - 0.5))
        vis = np.array(r["joints_vis"], bool)
        np.testing.assert_array_equal(vis, inside)
        x, y, w, h = r["bbox"]
        assert np.all((uv[vis, 0] >= x) & (uv[vis, 0] <= x + w) & (uv[vis, 1] >= y) & (uv[vis, 1] <= y + h))
        meta = json.loads(r["meta"])
        assert 30 <= meta["fov_h_deg"] <= 120 and 1.5 <= meta["height_m"] <= 2.0


def test_split_changes_ids_and_stream(tmp_path):
    res = _run(["--out", str(tmp_path), "-n", "2", "--split", "val", "--jobs", "1", *SMALL])
    assert res.exit_code == 0, res.output
    rows = read_manifest(tmp_path / "manifest.parquet")[0].to_pylist()
    assert all(r["sample_id"].startswith("synth/val/seq000/") and r["split"] == "val" for r in rows)
    cfg = SynthConfig(image_size=(160, 120))
    tr, va = synth_sample(7, "train", 0, cfg), synth_sample(7, "val", 0, cfg)
    assert not np.array_equal(tr["labels"][0]["joints_cam"], va["labels"][0]["joints_cam"])


def test_sequences_group_frames():
    assert sample_location("train", 0, 50) == ("seq000", 0, "images/train/seq000/000000.jpg")
    assert sample_location("test", 123, 50) == ("seq002", 23, "images/test/seq002/000023.jpg")


def test_rendered_joints_lie_on_the_body():
    """Every joint is inside a body volume, so the pixel at its projection shows the body; an unoccluded joint's
    pixel shows a part that contains the joint (pelvis and head included)."""
    cfg = SynthConfig(second_person_prob=0.0, occluder_prob=0.0)   # occluders: tests/test_synth_look.py
    sk = get_skeleton("smpl24")
    checked = {"pelvis": 0, "head": 0}
    for i in range(6):
        s = synth_sample(3, "test", i, cfg, finish=False)
        person, lab = s["persons"][0], s["labels"][0]
        uv, vis, occ = lab["joints_2d"], lab["joints_vis"].astype(bool), np.array(lab["occluded"], bool)
        px = np.floor(uv + 0.5).astype(int)
        for j in np.nonzero(vis)[0]:
            u, v = np.clip(px[j], 0, [s["camera"].width - 1, s["camera"].height - 1])
            shown = s["part"][v, u]
            assert shown != 0, f"joint {sk.joint_names[j]} projects onto background"
            if not occ[j]:
                prim = next(p for p in person.prims if p.part == shown)
                assert contains(prim, person.joints[j])[0]
                if sk.joint_names[j] in checked:
                    checked[sk.joint_names[j]] += 1
    assert min(checked.values()) > 0


def _render_single(prim, K, size=(64, 48)):
    img = np.zeros((size[1], size[0], 3), np.uint8)
    part, depth = render_primitives(img, [prim], K, np.array([0.0, 0.0, -1.0]), 0.3)
    return part > 0, depth


@pytest.mark.parametrize("cx, cy", [(32.0, 24.0), (32.5, 23.5), (31.25, 24.75)])
def test_pixel_centres_at_integers(cx, cy):
    """A sphere on the optical axis renders symmetric about the principal point: its mask centroid is (cx, cy)."""
    K = intrinsics(100.0, 100.0, cx, cy)
    ball = Ellipsoid(np.array([0.0, 0.0, 2.0]), np.eye(3), np.full(3, 0.3), np.full(3, 200.0), 1)
    mask, _ = _render_single(ball, K)
    v, u = np.nonzero(mask)
    # the continuous disc's centroid is exact; pixel sampling adds < 0.05 px at this size
    assert abs(u.mean() - cx) < 0.05 and abs(v.mean() - cy) < 0.05
    if cx == int(cx) and cy == int(cy):
        assert abs(u.mean() - cx) < 1e-9 and abs(v.mean() - cy) < 1e-9       # exactly symmetric


def test_capsule_silhouette_matches_ray_distance():
    K = intrinsics(90.0, 95.0, 30.3, 22.8)
    cap = Capsule(np.array([-0.4, -0.2, 2.0]), np.array([0.5, 0.35, 3.0]), 0.12, np.full(3, 200.0), 1)
    mask, depth = _render_single(cap, K)
    uu, vv = np.meshgrid(np.arange(64), np.arange(48))
    rays = np.stack([(uu - K[0, 2]) / K[0, 0], (vv - K[1, 2]) / K[1, 1], np.ones_like(uu, float)], -1)
    rays /= np.linalg.norm(rays, axis=-1, keepdims=True)
    seg = cap.a + np.linspace(0, 1, 2001)[:, None] * (cap.b - cap.a)        # (S, 3)
    proj = rays.reshape(-1, 1, 3) @ seg.T[None]                              # (P, 1, S) ray . point
    dist = np.sqrt(np.maximum((seg ** 2).sum(1)[None] - proj[:, 0] ** 2, 0)).min(1).reshape(48, 64)
    clear = np.abs(dist - cap.radius) > 2e-3
    assert mask.sum() > 100
    np.testing.assert_array_equal(mask[clear], (dist <= cap.radius)[clear])
    ext = projected_extent(cap, K)
    v, u = np.nonzero(mask)
    assert ext[0] <= u.min() and u.max() <= ext[1] and ext[2] <= v.min() and v.max() <= ext[3]
    assert u.min() - ext[0] < 1 and ext[1] - u.max() < 1 and v.min() - ext[2] < 1 and ext[3] - v.max() < 1


def test_zbuffer_keeps_the_nearer_part():
    K = intrinsics(100.0, 100.0, 31.5, 23.5)
    near = Ellipsoid(np.array([0.05, 0.0, 2.0]), np.eye(3), np.full(3, 0.2), np.full(3, 100.0), 1)
    far = Capsule(np.array([-0.5, 0.0, 3.0]), np.array([0.5, 0.0, 3.0]), 0.2, np.full(3, 200.0), 2)
    img = np.zeros((48, 64, 3), np.uint8)
    part, depth = render_primitives(img, [far, near], K, np.array([0.0, 0.0, -1.0]), 0.3)
    assert part[23, 31] == 1 and part[23, 12] == 2 and 1.7 < depth[23, 32] < 2.0


def test_bbox_is_the_tight_silhouette_box():
    """The box is the body's whole silhouette, also where the image cuts it: the person is re-rendered on a
    canvas grown by 400 px per side (principal point shifted), where the box must be tight on all four sides."""
    cfg = SynthConfig(second_person_prob=0.0, occluder_prob=0.0, image_size=(320, 240))
    M = 400
    for i in range(5):
        s = synth_sample(11, "train", i, cfg, finish=False)
        x, y, w, h = s["labels"][0]["bbox"]
        v, u = np.nonzero(s["part"])
        assert x <= u.min() and u.max() <= x + w and y <= v.min() and v.max() <= y + h
        K = s["camera"].K.copy()
        K[:2, 2] += M
        canvas = np.zeros((240 + 2 * M, 320 + 2 * M, 3), np.uint8)
        part, _ = render_primitives(canvas, s["persons"][0].prims, K, np.array([0.0, 0.0, -1.0]), 0.3)
        v, u = np.nonzero(part)
        assert 0 < u.min() and u.max() < canvas.shape[1] - 1 and 0 < v.min() and v.max() < canvas.shape[0] - 1
        # pixel centres sample a rounded tip: the silhouette's extreme pixel lies < 2 px inside the exact extent
        x, y = x + M, y + M
        assert x <= u.min() < x + 2 and x + w - 2 < u.max() <= x + w
        assert y <= v.min() < y + 2 and y + h - 2 < v.max() <= y + h


def test_fov_range_and_intrinsics():
    cfg = SynthConfig(fov_range=(40.0, 50.0))
    fovs, aspects, offs = [], [], []
    for i in range(300):
        cam = sample_camera(image_rng(0, "train", i), cfg)
        fovs.append(fov_horizontal(cam.K, cam.width))
        aspects.append(cam.K[1, 1] / cam.K[0, 0])
        offs.append(cam.K[0, 2] - (cam.width - 1) / 2)
        assert cam.K[0, 1] == 0 and cam.K[2, 2] == 1
    assert 40 <= min(fovs) < 41 and 49 < max(fovs) <= 50
    assert 0.98 <= min(aspects) and max(aspects) <= 1.02 and np.ptp(aspects) > 0.02
    assert all(o != 0 for o in offs)
    sizes = {(sample_camera(image_rng(1, "val", i), SynthConfig()).width,
              sample_camera(image_rng(1, "val", i), SynthConfig()).height) for i in range(100)}
    assert any(w > h for w, h in sizes) and any(h > w for w, h in sizes)


def test_people_anywhere_and_in_range():
    cfg = SynthConfig()
    crossing, depths = 0, []
    for i in range(150):
        rng = image_rng(5, "train", i)
        cam = sample_camera(rng, cfg)
        p = sample_person(rng, cam, cfg)
        x, y, w, h = p.bbox
        crossing += x < -0.5 or y < -0.5 or x + w > cam.width - 0.5 or y + h > cam.height - 0.5
        depths.append(p.joints[0, 2])
        assert 1.5 <= p.height <= 2.0
    assert crossing >= 15
    assert 1.5 <= min(depths) < 2.5 and 8 < max(depths) <= 12.0


def test_min_box_inside_keeps_whole_people_in_frame():
    cfg = SynthConfig(min_box_inside=1.0)
    for i in range(60):
        rng = image_rng(5, "train", i)
        cam = sample_camera(rng, cfg)
        x, y, w, h = sample_person(rng, cam, cfg).bbox
        assert x >= -0.5 and y >= -0.5 and x + w <= cam.width - 0.5 and y + h <= cam.height - 0.5
    r = _run(["--out", "unused", "-n", "1", "--min-box-inside", "0", *SMALL])
    assert r.exit_code == 2 and "--min-box-inside must lie in (0, 1]" in r.output


def test_poses_respect_joint_limits_and_heights():
    rng = np.random.default_rng(0)
    for _ in range(300):
        body = sample_body(rng)
        assert 1.5 <= body.height <= 2.0
        assert rest_height(body.offsets, body.capsule_radii, body.ellipsoid_radii,
                           body.ellipsoid_offsets) == pytest.approx(body.height)
        P, G = forward_kinematics(body.offsets, sample_pose(rng), np.eye(3), np.zeros(3))
        for hip, knee, ankle in ((1, 4, 7), (2, 5, 8)):      # knees bend one way only
            flex = np.cross(P[knee] - P[hip], P[ankle] - P[knee]) @ G[knee][:, 0]
            assert flex > 0
        thigh = np.linalg.norm(P[4] - P[1])
        assert 0.3 < thigh < 0.5


def test_cli_help_and_bad_options(tmp_path):
    res = _run(["--help"])
    assert res.exit_code == 0 and "--fov-range" in res.output and "--image-size" in res.output
    for bad, word in ((["--fov-range", "100", "50"], "fov-range"), (["-n", "0"], "-n"),
                      (["--image-size", "10", "10"], "image-size"), (["--image-scale", "0.1"], "image-scale"),
                      (["--image-scale", "0"], "image-scale")):
        args = ["--out", str(tmp_path / "x"), "-n", "3", *bad]
        res = _run(args)
        assert res.exit_code == 2, res.output
        lines = res.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error:") and word in lines[0], res.output


def test_image_scale_scales_every_default_size_and_keeps_the_default_bytes(tmp_path):
    from pipeline.synth import DEFAULT_IMAGE_SIZES
    from pipeline.synth_cli import make_config
    assert make_config(3, (30, 120), None, 0.2, 50).image_sizes == DEFAULT_IMAGE_SIZES   # scale 1: unchanged
    half = make_config(3, (30, 120), None, 0.2, 50, image_scale=0.5).image_sizes
    assert half == tuple((w // 2, h // 2) for w, h in DEFAULT_IMAGE_SIZES)
    res = _run(["--out", str(tmp_path / "h"), "-n", "4", "--seed", "1", "--image-scale", "0.5", "--no-progress"])
    assert res.exit_code == 0, res.output
    import pyarrow.parquet as pq
    sizes = {(r["image_w"], r["image_h"]) for r in pq.read_table(tmp_path / "h" / "manifest.parquet").to_pylist()}
    assert sizes and sizes <= set(half)

"""The PR crop geometry on real Human3.6M frames (<real fixtures>/h36m, never copied into the repo; tests/_fixtures.py).

The dataset's own 2D labels include lens distortion; its 3D labels do not. An exact pipeline that undistorts
must put both at the same crop pixels (within ~0.1 px); ignoring distortion is off by several tenths of a pixel.
"""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from _fixtures import real_fixtures, require_real
from pipeline import geometry as g
from pipeline.skeleton import get_skeleton

S, CONTEXT = 256, 1.25
S_STORE = g.stored_crop_size(S, CONTEXT)


def _frame_ids() -> list[str]:
    """The frames to parametrize over, read at collection time (before any fixture can skip)."""
    labels = real_fixtures() / "h36m" / "labels.json"
    if not labels.is_file():
        return ["missing"]  # one placeholder id: the h36m fixture then skips it with the reason
    return [s["image"] for s in json.loads(labels.read_text())["samples"]]


@pytest.fixture(scope="module")
def h36m():
    root = require_real("h36m")
    data = json.loads((root / "labels.json").read_text())
    return root, data, {s["image"]: s for s in data["samples"]}


def _frame(h36m, name, box_key, box_scale=1.0):
    root, _, samples = h36m
    s = samples[name]
    K, dist = np.array(s["K"]), np.array(s["dist_opencv"])
    bbox = np.array(s[box_key], dtype=np.float64)
    centre = g.bbox_center(bbox)
    bbox = np.concatenate([centre - 0.5 * box_scale * bbox[2:], box_scale * bbox[2:]])
    a = g.center_ray(bbox, K)
    R = g.rotation_to_optical_axis(a)
    f = g.crop_focal(bbox, K, R, S)
    return dict(img_path=root / name, K=K, dist=dist, bbox=bbox, R=R, f=f,
                K_crop=g.crop_intrinsics(bbox, K, R, f, S), K_store=g.crop_intrinsics(bbox, K, R, f, S_STORE),
                P=np.array(s["joints_cam_m"]), uv=np.array(s["joints_2d_px"]))


def _bilinear(img: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """Sample a 2D float array at sub-pixel points (N, 2), pixel centres at integers."""
    u0, v0 = np.floor(uv[:, 0]).astype(int), np.floor(uv[:, 1]).astype(int)
    du, dv = uv[:, 0] - u0, uv[:, 1] - v0
    img = img.astype(np.float64)
    return ((1 - du) * (1 - dv) * img[v0, u0] + du * (1 - dv) * img[v0, u0 + 1]
            + (1 - du) * dv * img[v0 + 1, u0] + du * dv * img[v0 + 1, u0 + 1])


@pytest.mark.parametrize("box_key", ["bbox_square_xywh", "bbox_tight_xywh"])
@pytest.mark.parametrize("name", _frame_ids())
def test_distorted_2d_labels_land_on_projected_3d_labels(h36m, name, box_key):
    fr = _frame(h36m, name, box_key)
    H = g.crop_from_image(fr["K"], fr["R"], fr["K_crop"])
    _, uvd, _ = g.labels_from_joints(fr["P"], fr["R"], fr["K_crop"], root=0)
    from_2d = g.apply_homography(H, g.undistort_pixels(fr["uv"], fr["K"], fr["dist"]))
    err = np.linalg.norm(from_2d - uvd[:, :2], axis=-1)
    err_ignoring_dist = np.linalg.norm(g.apply_homography(H, fr["uv"]) - uvd[:, :2], axis=-1)
    assert err.mean() <= 0.15, f"mean {err.mean():.4f} px (max {err.max():.4f})"
    assert err_ignoring_dist.mean() > 0.15 and err_ignoring_dist.mean() > 3 * err.mean(), \
        f"ignoring distortion: {err_ignoring_dist.mean():.4f} px vs {err.mean():.4f} px"


@pytest.mark.parametrize("name", _frame_ids())
def test_remap_grid_inverts_forward_mapping(h36m, name):
    """Sampling the cv2.remap maps (crop pixel -> distorted original pixel) at a joint's forward-mapped crop
    location gives back the joint's original distorted pixel."""
    fr = _frame(h36m, name, "bbox_square_xywh")
    mx, my = g.image_maps_for_crop(fr["K"], fr["dist"], fr["R"], fr["K_store"], S_STORE)
    H = g.crop_from_image(fr["K"], fr["R"], fr["K_store"])
    in_crop = g.apply_homography(H, g.undistort_pixels(fr["uv"], fr["K"], fr["dist"]))
    assert ((in_crop >= 0) & (in_crop <= S_STORE - 2)).all()
    back = np.stack([_bilinear(mx, in_crop), _bilinear(my, in_crop)], axis=-1)
    assert np.abs(back - fr["uv"]).max() < 0.01
    # the maps without distortion do not invert it: the check above is sensitive to the distortion model
    mx0, my0 = g.image_maps_for_crop(fr["K"], None, fr["R"], fr["K_store"], S_STORE)
    back0 = np.stack([_bilinear(mx0, in_crop), _bilinear(my0, in_crop)], axis=-1)
    assert np.abs(back0 - fr["uv"]).max() > 0.1


def _warp(fr):
    """Warp the frame into the stored crop, shrinking first (INTER_AREA, K scaled exactly) when zooming out."""
    img = cv2.imread(str(fr["img_path"]), cv2.IMREAD_COLOR)
    K = fr["K"]
    n = g.preshrink_factor(K, fr["f"])
    if n > 1:
        h, w = img.shape[:2]
        small = cv2.resize(img, (w // n, h // n), interpolation=cv2.INTER_AREA)
        K = g.scale_intrinsics_for_resize(K, (w, h), (w // n, h // n))
        img = small
    mx, my = g.image_maps_for_crop(K, fr["dist"], fr["R"], fr["K_store"], S_STORE)
    crop = cv2.remap(img, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return img, crop, mx, my, n


@pytest.mark.parametrize("box_scale", [1.0, 2.5])
@pytest.mark.parametrize("name", _frame_ids())
def test_warped_crop_is_centred_on_the_person(h36m, name, box_scale):
    """box_scale 2.5 makes the box leave the image (black border there only) and needs a pre-shrink."""
    fr = _frame(h36m, name, "bbox_square_xywh", box_scale)
    img, crop, mx, my, n = _warp(fr)
    assert crop.shape == (S_STORE, S_STORE, 3)
    assert (n > 1) == (box_scale > 2)
    c = 0.5 * (S_STORE - 1)
    rot = fr["P"] @ fr["R"].T
    pelvis = g.project(rot[:1], fr["K_store"])[0]
    assert np.abs(pelvis - c).max() < 0.2 * S_STORE / box_scale
    # every joint is inside the S x S centre slice for the square box
    joints = g.project(rot, fr["K_store"])
    o = g.center_slice_offset(S_STORE, S)
    if box_scale == 1.0:
        assert ((joints >= o) & (joints <= o + S - 1)).all()
    h, w = img.shape[:2]
    inside = (mx >= 0) & (mx <= w - 1) & (my >= 0) & (my <= h - 1)
    outside = (mx < -1) | (mx > w) | (my < -1) | (my > h)
    assert crop[inside].mean() > 30.0                          # real image content, not a black crop
    assert (crop[inside].max(-1) == 0).mean() < 0.01           # no black pixels where the box is inside
    assert (crop[outside] == 0).all()                          # black exactly where the box leaves the image
    assert (outside.mean() > 0.05) == (box_scale > 2)
    if n == 1:  # the crop at the projected 3D joints shows what the original shows at the distorted 2D labels
        at_labels = np.stack([_bilinear(img[..., ch], fr["uv"]) for ch in range(3)], -1)
        at_joints = np.stack([_bilinear(crop[..., ch], joints) for ch in range(3)], -1)
        assert np.median(np.abs(at_joints - at_labels)) < 3.0


def test_fixture_joint_names_are_h36m17(h36m):
    _, data, _ = h36m
    names = [n.replace("right_", "r_").replace("left_", "l_") for n in data["joint_names"]]
    assert tuple(names) == get_skeleton("h36m17").joint_names
    assert data["root_index"] == get_skeleton("h36m17").root

"""Property tests of the exact PR crop geometry (pipeline/geometry.py) over random cameras, boxes and joints.

Every invariant is checked at a tolerance far below half a pixel, and the tests below show that the checks FAIL
when the principal point is shifted by half a pixel or R is replaced by R^T, so they would catch those bugs.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from _geom import shift_intrinsics
from pipeline import geometry as g
from pipeline.skeleton import get_skeleton

PROPS = settings(max_examples=200, deadline=None)
TOL_PX = 1e-6    # crop pixels
TOL_M = 1e-9     # metres, float64 round trip
TOL_R = 1e-12    # R a = e_z, orthonormality
EZ = np.array([0.0, 0.0, 1.0])
NJ = 17


@dataclass(frozen=True)
class Scene:
    K: np.ndarray        # (3, 3), fx != fy
    bbox: np.ndarray     # (4,) x y w h, possibly partly outside the image
    joints: np.ndarray   # (NJ, 3) original camera, all in front of both the original and the rotated camera
    S: int


@st.composite
def scenes(draw) -> Scene:
    W = draw(st.integers(64, 4096))
    H = int(round(W * draw(st.floats(0.5, 2.0))))  # portrait to landscape; hfov is the horizontal FOV
    hfov = np.radians(draw(st.floats(20.0, 140.0)))
    fx = 0.5 * W / np.tan(0.5 * hfov)
    fy = fx * draw(st.floats(0.8, 1.25))
    cx = 0.5 * (W - 1) + draw(st.floats(-0.1, 0.1)) * W
    cy = 0.5 * (H - 1) + draw(st.floats(-0.1, 0.1)) * H
    K = g.intrinsics(fx, fy, cx, cy)
    uc, vc = draw(st.floats(-0.25, 1.25)) * W, draw(st.floats(-0.25, 1.25)) * H
    bw, bh = draw(st.floats(0.01, 0.8)) * W, draw(st.floats(0.01, 0.8)) * H
    bbox = np.array([uc - 0.5 * bw, vc - 0.5 * bh, bw, bh])
    # root on the bbox centre ray at depth z >= 2 m; other joints within 0.9 m per axis, so z > 0 and z' > 0
    a = g.center_ray(bbox, K)
    # the crop must be able to see the whole box: every corner within 80 deg of the centre ray (a box reaching
    # 90 deg has no finite f_crop, see test_crop_focal_nan_for_box_beyond_hemisphere)
    assume(np.min(g.rays_from_pixels(g.bbox_corners(bbox), K) @ a) > np.cos(np.radians(80.0)))
    root = a / a[2] * draw(st.floats(2.0, 30.0))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    joints = root + rng.uniform(-0.9, 0.9, (NJ, 3))
    joints[0] = root
    return Scene(K, bbox, joints, draw(st.sampled_from([64, 192, 256, 320])))


def build(scene: Scene, pr: bool = True, use_points: bool = False):
    """The pipeline's crop geometry for one scene; calls through the module so tests can monkeypatch it."""
    a = g.center_ray(scene.bbox, scene.K)
    R = g.rotation_to_optical_axis(a) if pr else np.eye(3)
    pts = g.project(scene.joints, scene.K) if use_points else None
    f = g.crop_focal(scene.bbox, scene.K, R, scene.S, points_2d=pts)
    Kc = g.crop_intrinsics(scene.bbox, scene.K, R, f, scene.S)
    H = g.crop_from_image(scene.K, R, Kc)
    rot, uvd, s = g.labels_from_joints(scene.joints, R, Kc, 0)
    back, _ = g.joints_from_uvd(uvd, s, Kc, R)
    return dict(a=a, R=R, f=f, Kc=Kc, H=H, uvd=uvd, s=s, back=back, pts=pts)


def invariant_errors(scene: Scene, b: dict, pr: bool = True) -> dict:
    """Errors of every invariant, each computed independently of the function under test where possible."""
    c = 0.5 * (scene.S - 1)
    R, Kc, H, a = b["R"], b["Kc"], b["H"], b["a"]
    P_rot = (R @ scene.joints.T).T
    ph = (Kc @ P_rot.T).T
    uv_direct = ph[:, :2] / ph[:, 2:]                                    # pi(K_crop R P)
    uv_orig = (scene.K @ scene.joints.T).T
    uv_orig = uv_orig[:, :2] / uv_orig[:, 2:]                           # the joints' original projections
    corners = g.bbox_corners(scene.bbox)
    if b["pts"] is not None:
        corners = np.concatenate([corners, b["pts"]])
    pp_expected = np.full(2, c) if pr else c - b["f"] * a[:2] / a[2]    # docs/design.md §4.4 (paper Eq. 4 without PR)
    return {
        "R_a": np.abs(R @ a - EZ).max() if pr else 0.0,
        "R_orth": max(np.abs(R @ R.T - np.eye(3)).max(), abs(np.linalg.det(R) - 1.0)),
        "principal_point": np.abs(Kc[:2, 2] - pp_expected).max(),
        "square_pixels": abs(Kc[0, 0] - Kc[1, 1]),
        "bbox_centre": np.abs(g.apply_homography(H, g.bbox_center(scene.bbox)[None]) - c).max(),
        "box_touches_edge": abs(np.abs(g.apply_homography(H, corners) - c).max() - 0.5 * scene.S),
        "labels_px": np.abs(g.apply_homography(H, uv_orig) - uv_direct).max(),
        "uvd_uv_px": np.abs(b["uvd"][:, :2] - uv_direct).max(),
        "roundtrip_m": np.abs(b["back"] - scene.joints).max(),
    }


LIMITS = {"R_a": TOL_R, "R_orth": TOL_R, "principal_point": TOL_PX, "square_pixels": 0.0, "bbox_centre": TOL_PX,
          "box_touches_edge": TOL_PX, "labels_px": TOL_PX, "uvd_uv_px": TOL_PX, "roundtrip_m": TOL_M}


def check_sample(scene: Scene, pr: bool = True, use_points: bool = False) -> dict:
    b = build(scene, pr, use_points)
    with np.errstate(invalid="ignore"):
        errs = invariant_errors(scene, b, pr)   # NaNs (e.g. f_crop) fail every comparison below
    bad = {k: v for k, v in errs.items() if not v <= LIMITS[k]}
    assert not bad, f"invariants violated: {bad}"
    return errs


# ---------------------------------------------------------------------------------------------- invariants
@PROPS
@given(scenes(), st.booleans())
def test_pr_invariants(scene, use_points):
    check_sample(scene, pr=True, use_points=use_points)


@PROPS
@given(scenes(), st.booleans())
def test_no_pr_invariants_with_off_centre_principal_point(scene, use_points):
    errs = check_sample(scene, pr=False, use_points=use_points)
    assert errs["R_a"] == 0.0
    b = build(scene, pr=False)
    a = b["a"]
    # the principal point really moves off the crop centre by f_crop * tan(offset angle)
    off = np.abs(b["Kc"][:2, 2] - 0.5 * (scene.S - 1))
    np.testing.assert_allclose(off, b["f"] * np.abs(a[:2] / a[2]), rtol=1e-9, atol=1e-9)


@PROPS
@given(scenes())
def test_batched_equals_per_sample(scene):
    """The batched call over (2, ...) gives the same numbers as single calls (broadcasting is not mixing)."""
    scene2 = Scene(scene.K * [[1.1], [0.9], [1.0]], scene.bbox[[1, 0, 3, 2]] * 0.5 + 3.0, scene.joints, scene.S)
    Ks, bbs = np.stack([scene.K, scene2.K]), np.stack([scene.bbox, scene2.bbox])
    R = g.rotation_to_optical_axis(g.center_ray(bbs, Ks))
    f = g.crop_focal(bbs, Ks, R, scene.S)
    Kc = g.crop_intrinsics(bbs, Ks, R, f, scene.S)
    for i, sc in enumerate((scene, scene2)):
        b = build(sc)
        np.testing.assert_allclose(R[i], b["R"], atol=1e-15)
        np.testing.assert_allclose(Kc[i], b["Kc"], rtol=1e-14)


# ---------------------------------------------------------------------------------------------- the checks bite
def _shifted_crop_intrinsics(du, dv):
    orig = g.crop_intrinsics

    def bad(*args, **kw):
        return shift_intrinsics(orig(*args, **kw), -du, -dv)  # principal point moved by (+du, +dv)
    return bad


@settings(max_examples=50, deadline=None)
@given(scenes(), st.sampled_from([(0.5, 0.0), (0.0, 0.5), (-0.5, 0.0)]), st.booleans())
def test_half_pixel_principal_point_shift_fails_the_check(scene, shift, pr):
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(g, "crop_intrinsics", _shifted_crop_intrinsics(*shift))
        with pytest.raises(AssertionError, match="bbox_centre"):
            check_sample(scene, pr=pr)


@settings(max_examples=50, deadline=None)
@given(scenes(), st.sampled_from([(0.5, 0.0), (0.0, 0.5)]))
def test_image_warped_with_shifted_intrinsics_fails_the_label_check(scene, shift):
    """Labels from K_crop but the image warped with a half-pixel-shifted K_crop: the label check catches it."""
    orig = g.crop_from_image
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(g, "crop_from_image", lambda K, R, Kc: orig(K, R, shift_intrinsics(Kc, *shift)))
        with pytest.raises(AssertionError, match="labels_px"):
            check_sample(scene)


@settings(max_examples=50, deadline=None)
@given(scenes())
def test_transposed_rotation_fails_the_check(scene):
    assume(g.pr_angle(g.center_ray(scene.bbox, scene.K)) > 1e-4)
    orig = g.rotation_to_optical_axis
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(g, "rotation_to_optical_axis", lambda a: np.swapaxes(orig(a), -1, -2))
        with pytest.raises(AssertionError, match="R_a"):
            check_sample(scene)


@settings(max_examples=50, deadline=None)
@given(scenes())
def test_inverse_with_transposed_rotation_fails_the_roundtrip(scene):
    assume(g.pr_angle(g.center_ray(scene.bbox, scene.K)) > 1e-4)
    orig = g.joints_from_uvd
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(g, "joints_from_uvd", lambda uvd, s, Kc, R: orig(uvd, s, Kc, np.swapaxes(R, -1, -2)))
        with pytest.raises(AssertionError, match="roundtrip_m"):
            check_sample(scene)


# ---------------------------------------------------------------------------------------------- PE map
@PROPS
@given(scenes(), st.booleans())
def test_pe_map_is_inverse_intrinsics_at_grid_points(scene, pr):
    """docs/design.md §2 (heatmap / PE grid points 4j + 1.5) and §4.8 (the PE map)."""
    Kc = build(scene, pr)["Kc"]
    S, n = scene.S, scene.S // 4
    M = g.pe_map(Kc, S)
    assert M.shape == (2, n, n)
    jj, ii = np.meshgrid(np.arange(n), np.arange(n))
    pix = np.stack([4 * jj + 1.5, 4 * ii + 1.5, np.ones_like(jj, dtype=float)]).reshape(3, -1)
    expected = np.linalg.solve(Kc, pix)[:2].reshape(2, n, n)
    np.testing.assert_allclose(M, expected, rtol=0, atol=1e-12)
    if pr:  # principal point at the crop centre and a symmetric grid: the map is point-symmetric
        np.testing.assert_allclose(M, -M[:, ::-1, ::-1], rtol=0, atol=1e-12)


def test_pe_map_batched_shape():
    Kc = g.intrinsics([300.0, 400.0, 500.0], [300.0, 400.0, 500.0], 127.5, 127.5)
    assert g.pe_map(Kc.reshape(3, 3, 3)[None].repeat(2, 0).reshape(2, 3, 3, 3), 256).shape == (2, 3, 2, 64, 64)


# ---------------------------------------------------------------------------------------------- flip
@PROPS
@given(scenes(), st.sampled_from(["h36m17", "smpl24", "mpi_inf_3dhp17"]))
def test_flip_twice_is_identity_and_flipped_labels_match(scene, skel):
    """docs/design.md §2, flip: u -> (S-1) - u, x -> -x, c_x -> (S-1) - c_x, joints swapped."""
    sk = get_skeleton(skel)
    J, S = sk.num_joints, scene.S
    joints = np.resize(scene.joints, (J, 3))
    b = build(scene)
    rot, uvd, s = g.labels_from_joints(joints, b["R"], b["Kc"], sk.root)
    perm = sk.flip_perm
    tol = 1e-12 * max(1.0, np.abs(uvd).max())  # (S-1) - ((S-1) - u) is exact only up to float rounding
    np.testing.assert_allclose(g.flip_uvd(g.flip_uvd(uvd, S, perm), S, perm), uvd, rtol=0, atol=tol)
    np.testing.assert_array_equal(g.flip_points(g.flip_points(rot, perm), perm), rot)
    np.testing.assert_allclose(g.flip_intrinsics(g.flip_intrinsics(b["Kc"], S), S), b["Kc"], rtol=0, atol=tol)
    # the flipped sample (mirrored 3D joints seen by the flipped camera) has exactly the flipped labels
    Kf = g.flip_intrinsics(b["Kc"], S)
    _, uvd_f, s_f = g.labels_from_joints(g.flip_points(rot, perm), np.eye(3), Kf, sk.root)
    np.testing.assert_allclose(uvd_f, g.flip_uvd(uvd, S, perm), rtol=0, atol=1e-9 * max(1.0, np.abs(uvd).max()))
    assert s_f == pytest.approx(s, rel=1e-15)
    # and the PE map of the flipped camera is the mirrored map with x negated
    M, Mf = g.pe_map(b["Kc"], S), g.pe_map(Kf, S)
    np.testing.assert_allclose(Mf[0], -M[0, :, ::-1], atol=1e-12)
    np.testing.assert_allclose(Mf[1], M[1, :, ::-1], atol=1e-12)


def _blob_image(uv: np.ndarray, S: int, sigma: float = 1.5) -> np.ndarray:
    """(S, S, N) image with one Gaussian blob per channel centred at uv[k] (pixel centres at integers)."""
    u = np.arange(S, dtype=np.float64)
    gx = np.exp(-0.5 * ((u[None, :] - uv[:, :1]) / sigma) ** 2)    # (N, S) over columns
    gy = np.exp(-0.5 * ((u[None, :] - uv[:, 1:]) / sigma) ** 2)    # (N, S) over rows
    return np.einsum("ki,kj->ijk", gy, gx)


def _centroids(img: np.ndarray) -> np.ndarray:
    H, W = img.shape[:2]
    m = img.sum(axis=(0, 1))
    u = (img.sum(axis=0) * np.arange(W)[:, None]).sum(0) / m
    v = (img.sum(axis=1) * np.arange(H)[:, None]).sum(0) / m
    return np.stack([u, v], axis=-1)


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 2**32 - 1), st.sampled_from([64, 256]))
def test_flipped_labels_match_flipped_image(seed, S):
    """docs/design.md §2 (pixel centres at integers, the flip). Draw each joint as a blob, flip the image array (np.fliplr, what cv2.flip(img, 1) does): the blob of the
    physical joint now labelled k sits exactly at flip_uvd's label; the pixel-edge convention W - u would be 1 px
    off."""
    sk = get_skeleton("h36m17")
    rng = np.random.default_rng(seed)
    uvd = np.concatenate([rng.uniform(12, S - 13, (sk.num_joints, 2)), rng.normal(0, 0.3, (sk.num_joints, 1))], 1)
    img = _blob_image(uvd[:, :2], S)
    flipped = img[:, ::-1]
    uvd_f = g.flip_uvd(uvd, S, sk.flip_perm)
    found = _centroids(flipped)[list(sk.flip_perm)]   # channel = original joint; flipped joint k is joint perm[k]
    np.testing.assert_allclose(found, uvd_f[:, :2], rtol=0, atol=1e-6)
    np.testing.assert_allclose(_centroids(img), uvd[:, :2], rtol=0, atol=1e-6)


# ---------------------------------------------------------------------------------------------- degenerate cases
def test_bbox_centre_at_principal_point_gives_exact_identity():
    K = g.intrinsics(1145.25, 1143.75, 512.5, 515.25)
    bbox = np.array([512.5 - 100.0, 515.25 - 200.0, 200.0, 400.0])   # centre exactly (cx, cy)
    a = g.center_ray(bbox, K)
    np.testing.assert_array_equal(a, EZ)
    np.testing.assert_array_equal(g.rotation_to_optical_axis(a), np.eye(3))
    assert g.pr_angle(a) == 0.0
    f = g.crop_focal(bbox, K, np.eye(3), 256)
    np.testing.assert_array_equal(g.crop_intrinsics(bbox, K, np.eye(3), f, 256)[:2, 2], [127.5, 127.5])


@pytest.mark.parametrize("phi", [1e-10, 1e-14, 3e-8])
@pytest.mark.parametrize("theta", [0.0, 0.7, 2.0, -2.5])
def test_tiny_angles_are_stable(phi, theta):
    a = np.array([np.sin(phi) * np.cos(theta), np.sin(phi) * np.sin(theta), np.cos(phi)])
    R = g.rotation_to_optical_axis(a)
    assert np.abs(R @ R.T - np.eye(3)).max() <= 1e-15
    assert abs(np.linalg.det(R) - 1.0) <= 1e-15
    assert np.abs(R @ a - EZ).max() <= 1e-15
    assert g.pr_angle(a) == pytest.approx(phi, rel=1e-9)
    # the rotation really turns by phi (not snapped to the identity): R's off-diagonal z terms are +-a_xy
    np.testing.assert_allclose(R[:2, 2], -a[:2], rtol=1e-9, atol=0)


def test_tiny_angle_from_pixels():
    K = g.intrinsics(1000.0, 1000.0, 500.0, 400.0)
    bbox = np.array([400.0 + 1e-7, 300.0, 200.0, 200.0])             # centre 1e-7 px right: phi = 1e-10
    a = g.center_ray(bbox, K)
    assert g.pr_angle(a) == pytest.approx(1e-10, rel=1e-6)
    R = g.rotation_to_optical_axis(a)
    assert np.abs(R @ a - EZ).max() <= 1e-15 and abs(np.linalg.det(R) - 1.0) <= 1e-15


def test_backward_ray_has_no_rotation():
    assert np.isnan(g.rotation_to_optical_axis(np.array([0.0, 0.0, -1.0]))).all()


def test_crop_focal_nan_for_box_beyond_hemisphere():
    """A box whose corners are more than 90 deg from its centre ray cannot be put on a finite crop plane."""
    K = g.intrinsics(100.0, 100.0, 0.0, 0.0)
    bboxes = np.array([[-1e4, -10.0, 1e6 + 1e4, 20.0],      # centre far right, left corner far left
                       [-50.0, -50.0, 100.0, 100.0]])        # sane box for comparison
    R = g.rotation_to_optical_axis(g.center_ray(bboxes, K))
    f = g.crop_focal(bboxes, K, R, 256)
    assert np.isnan(f[0]) and np.isfinite(f[1]) and f[1] > 0
    assert g.crop_focal(bboxes[1], K, R[1], 256, margin=0.25) == pytest.approx(f[1] / 1.25, rel=1e-14)


def test_crop_focal_uses_2d_points_and_ignores_nan_ones():
    K = g.intrinsics(1000.0, 900.0, 500.0, 400.0)
    bbox = np.array([600.0, 300.0, 100.0, 200.0])
    R = g.rotation_to_optical_axis(g.center_ray(bbox, K))
    f_box = g.crop_focal(bbox, K, R, 256)
    inside = np.array([[650.0, 400.0], [np.nan, np.nan], [610.0, 310.0]])
    assert g.crop_focal(bbox, K, R, 256, points_2d=inside) == f_box
    wider = np.concatenate([inside, [[820.0, 400.0]]])      # a joint outside the box widens the view
    f_wide = g.crop_focal(bbox, K, R, 256, points_2d=wider)
    assert f_wide < f_box
    Kc = g.crop_intrinsics(bbox, K, R, f_wide, 256)
    u = g.apply_homography(g.crop_from_image(K, R, Kc), wider[-1:])[0, 0]
    assert u == pytest.approx(255.5, abs=1e-9)              # that joint now touches the crop's right edge


def test_box_partly_outside_image_warps_black_only_outside():
    W, H = 640, 480
    img = np.full((H, W, 3), 200, np.uint8)
    K = g.intrinsics(500.0, 520.0, 330.0, 236.0)
    bbox = np.array([-100.0, 100.0, 300.0, 200.0])           # a third of the box is left of the image
    a = g.center_ray(bbox, K)
    R = g.rotation_to_optical_axis(a)
    f = g.crop_focal(bbox, K, R, 128)
    Kc = g.crop_intrinsics(bbox, K, R, f, 128)
    mx, my = g.image_maps_for_crop(K, None, R, Kc, 128)
    crop = cv2.remap(img, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    inside = (mx >= 0) & (mx <= W - 1) & (my >= 0) & (my <= H - 1)
    outside = (mx < -1) | (mx > W) | (my < -1) | (my > H)
    assert inside.mean() > 0.3 and outside.mean() > 0.1
    assert (crop[inside] == 200).all() and (crop[outside] == 0).all()
    # without distortion the map is exactly H^-1 at the crop's pixel centres (float32 storage)
    grid = g.pixel_grid_points(128, 128).reshape(-1, 2)
    back = g.apply_homography(np.linalg.inv(g.crop_from_image(K, R, Kc)), grid).reshape(128, 128, 2)
    ok = np.abs(back).max(-1) < 1e4
    np.testing.assert_allclose(np.stack([mx, my], -1)[ok], back[ok], rtol=0, atol=1e-3)


@given(st.floats(0.01, 3.0), st.floats(100.0, 5000.0), st.floats(0.5, 2.0))
@PROPS
def test_preshrink_factor_rule(r, fx, aspect):
    K = g.intrinsics(fx, fx * aspect, 100.0, 100.0)
    n = g.preshrink_factor(K, r * max(fx, fx * aspect))
    assert isinstance(n, int)
    if r >= 0.5 + 1e-9:
        assert n == 1
    elif r < 0.5 - 1e-9:
        assert n == int(np.floor(1.0 / r + 1e-9)) or n == int(np.floor(1.0 / r - 1e-9))
        assert 0.5 < r * n <= 1.0 + 1e-9       # the remaining warp shrinks by at most 2x


@pytest.mark.parametrize("n", [2, 3, 4])
def test_scale_intrinsics_for_resize_is_exact(n):
    W, H = 480, 360
    K = g.intrinsics(600.0, 610.0, 241.3, 178.9)
    K2 = g.scale_intrinsics_for_resize(K, (W, H), (W // n, H // n))
    # an n x n block aligned to the output grid collapses onto exactly one output pixel
    j0, i0 = 37, 29
    img = np.zeros((H, W), np.uint8)
    img[n * i0:n * i0 + n, n * j0:n * j0 + n] = 255
    small = cv2.resize(img, (W // n, H // n), interpolation=cv2.INTER_AREA)
    assert small[i0, j0] == 255 and np.count_nonzero(small) == 1
    block_centre = np.array([n * j0 + 0.5 * (n - 1), n * i0 + 0.5 * (n - 1)])
    P = 3.7 * g.rays_from_pixels(block_centre[None], K, normalize=False)    # a 3D point seen at the block centre
    np.testing.assert_allclose(g.project(P, K2)[0], [j0, i0], rtol=0, atol=1e-9)
    # a sub-pixel dot: its centroid moves exactly where the scaled K predicts (u/n would be (n-1)/2n px off)
    uv0 = np.array([201.37, 150.81])
    u, v = np.arange(W), np.arange(H)
    dot = np.exp(-0.5 * (((u[None, :] - uv0[0]) / 6.0) ** 2 + ((v[:, None] - uv0[1]) / 6.0) ** 2))
    small = cv2.resize(dot.astype(np.float32), (W // n, H // n), interpolation=cv2.INTER_AREA).astype(np.float64)
    found = _centroids(small[..., None])[0]
    P = 2.0 * g.rays_from_pixels(uv0[None], K, normalize=False)
    np.testing.assert_allclose(found, g.project(P, K2)[0], rtol=0, atol=1e-3)


def test_stored_crop_size_and_offset():
    assert g.stored_crop_size(256, 1.25) == 320 and g.stored_crop_size(256, 1.0) == 256
    for S in (64, 192, 256, 257):
        for ctx in (1.0, 1.1, 1.25, 1.33, 1.5):
            St = g.stored_crop_size(S, ctx)
            assert (St - S) % 2 == 0 and abs(St - S * ctx) <= 1.0
            assert g.center_slice_offset(St, S) == (St - S) // 2
    with pytest.raises(ValueError, match="odd"):
        g.center_slice_offset(321, 256)


@settings(max_examples=20, deadline=None)
@given(scenes(), st.booleans())
def test_center_slice_of_stored_crop_equals_direct_crop(scene, pr):
    """docs/design.md §4 (stored crops with context) and §6 (the crop-size rule at C = S): the S crop is the
    integer centre slice of the S_store crop: same f_crop, K and labels shifted by the offset, identical pixels."""
    S = scene.S
    St = g.stored_crop_size(S, 1.25)
    o = g.center_slice_offset(St, S)
    b = build(scene, pr)
    K_store = g.crop_intrinsics(scene.bbox, scene.K, b["R"], b["f"], St)
    np.testing.assert_allclose(shift_intrinsics(K_store, o, o), b["Kc"], rtol=0, atol=1e-9)
    rot = scene.joints @ b["R"].T
    np.testing.assert_allclose(g.project(rot, K_store) - o, g.project(rot, b["Kc"]), rtol=0, atol=1e-8)
    W, H = min(int(2 * scene.K[0, 2] + 1), 2048), min(int(2 * scene.K[1, 2] + 1), 2048)
    img = np.random.default_rng(0).integers(0, 256, (H, W, 3), dtype=np.uint8)
    maps_store = g.image_maps_for_crop(scene.K, None, b["R"], K_store, St)
    maps = g.image_maps_for_crop(scene.K, None, b["R"], b["Kc"], S)
    for ms, m in zip(maps_store, maps):
        np.testing.assert_allclose(ms[o:o + S, o:o + S], m, rtol=2e-7, atol=1e-3)
    crop_store = cv2.remap(img, *maps_store, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    crop = cv2.remap(img, *maps, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    diff = np.abs(crop_store[o:o + S, o:o + S].astype(int) - crop)
    assert diff.max() <= 1 and (diff > 0).mean() < 0.01   # identical up to a float32 map rounding at 1/32 px


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_distortion_matches_opencv_and_undistort_inverts(seed):
    rng = np.random.default_rng(seed)
    K = g.intrinsics(1150.0, 1148.0, 510.0, 507.0)
    dist = np.array([-0.2, 0.24, -0.0015, -0.001, 0.004]) * rng.uniform(0.0, 1.2)
    pts = rng.uniform([0, 0], [1000, 1000], (50, 2))
    P = np.concatenate([g.rays_from_pixels(pts, K, normalize=False)[:, :2], np.ones((50, 1))], 1) * 4.0
    ours = g.project(np.concatenate([g.distort_normalized(P[:, :2] / P[:, 2:], dist), np.ones((50, 1))], 1), K)
    ref, _ = cv2.projectPoints(P, np.zeros(3), np.zeros(3), K, dist)
    np.testing.assert_allclose(ours, ref[:, 0], rtol=0, atol=1e-6)
    np.testing.assert_allclose(g.undistort_pixels(ours, K, dist), pts, rtol=0, atol=1e-9)

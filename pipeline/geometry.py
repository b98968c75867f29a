"""Exact Perspective-Rotation (PR) crop geometry: pure, batched float64 numpy functions.

Conventions (docs/design.md §2), written once here:

* Camera frame: OpenCV (x right, y down, z forward). Points are row vectors ``(..., N, 3)``; a rotation
  ``R`` maps original-camera points to rotated-camera points as ``P' = R @ P`` (column form), i.e.
  ``P' = P @ R.T`` in row form. The inverse is ``P = R.T @ P'``.
* Pixels: pixel centres at integer coordinates; an image of width W spans ``[-0.5, W - 0.5]``.
* An S x S crop under PR has its principal point at ``((S-1)/2, (S-1)/2)``.
* Units: metres.
* Every function accepts any leading batch shape and broadcasts; inputs are promoted to float64.

Names say which frames a transform maps between: ``crop_from_image`` is the homography taking original image
pixels to crop pixels, ``rays_from_pixels`` maps pixels to unit rays, and so on.
"""
from __future__ import annotations

import numpy as np

__all__ = [
    "as_f64", "intrinsics", "project", "rays_from_pixels", "bbox_center", "bbox_corners", "center_ray",
    "rotation_to_optical_axis", "pr_angle", "crop_focal", "crop_intrinsics", "crop_from_image", "apply_homography",
    "stored_crop_size", "center_slice_offset", "distort_normalized", "undistort_normalized",
    "undistort_pixels", "image_maps_for_crop", "preshrink_factor", "scale_intrinsics_for_resize",
    "labels_from_joints", "joints_from_uvd", "pe_map", "flip_intrinsics", "flip_uvd", "flip_points",
    "pixel_grid_points", "rotation_about_z",
]

_EZ = np.array([0.0, 0.0, 1.0])


def as_f64(x) -> np.ndarray:
    return np.asarray(x, dtype=np.float64)


def intrinsics(fx, fy, cx, cy) -> np.ndarray:
    """Batched 3x3 pinhole intrinsics with zero skew from broadcastable fx, fy, cx, cy."""
    fx, fy, cx, cy = np.broadcast_arrays(as_f64(fx), as_f64(fy), as_f64(cx), as_f64(cy))
    K = np.zeros(fx.shape + (3, 3))
    K[..., 0, 0], K[..., 1, 1], K[..., 0, 2], K[..., 1, 2], K[..., 2, 2] = fx, fy, cx, cy, 1.0
    return K


def project(points: np.ndarray, K: np.ndarray) -> np.ndarray:
    """Pinhole projection pi(K P): points (..., N, 3) in a camera frame, K (..., 3, 3) -> pixels (..., N, 2)."""
    p = as_f64(points) @ np.swapaxes(as_f64(K), -1, -2)
    return p[..., :2] / p[..., 2:3]


def rays_from_pixels(uv: np.ndarray, K: np.ndarray, normalize: bool = True) -> np.ndarray:
    """K^-1 [u, v, 1]: pixels (..., N, 2) -> rays (..., N, 3); unit length if ``normalize`` else z = 1."""
    uv = as_f64(uv)
    h = np.concatenate([uv, np.ones(uv.shape[:-1] + (1,))], axis=-1)
    r = h @ np.swapaxes(np.linalg.inv(as_f64(K)), -1, -2)
    return r / np.linalg.norm(r, axis=-1, keepdims=True) if normalize else r


def bbox_center(bbox: np.ndarray) -> np.ndarray:
    """bbox (..., 4) as (x, y, w, h) in continuous pixel coordinates -> centre (..., 2)."""
    b = as_f64(bbox)
    return b[..., :2] + 0.5 * b[..., 2:4]


def bbox_corners(bbox: np.ndarray) -> np.ndarray:
    """bbox (..., 4) (x, y, w, h) -> its 4 corners (..., 4, 2)."""
    b = as_f64(bbox)
    x0, y0, x1, y1 = b[..., 0], b[..., 1], b[..., 0] + b[..., 2], b[..., 1] + b[..., 3]
    return np.stack([np.stack([x0, y0], -1), np.stack([x1, y0], -1),
                     np.stack([x1, y1], -1), np.stack([x0, y1], -1)], axis=-2)


def center_ray(bbox: np.ndarray, K: np.ndarray) -> np.ndarray:
    """Unit ray a = normalise(K^-1 [u_c, v_c, 1]) through the bbox centre: (..., 3)."""
    return rays_from_pixels(bbox_center(bbox)[..., None, :], K)[..., 0, :]


def rotation_to_optical_axis(a: np.ndarray) -> np.ndarray:
    """Minimal rotation R with R a = e_z for unit rays a (..., 3) -> (..., 3, 3).

    Rodrigues about v = a x e_z written without trigonometry, R = I + [v]x + [v]x^2 / (1 + c) with c = a . e_z,
    which is exact at tiny angles (R -> I smoothly, no division by |v|). Rays with a_z <= -1 + 1e-12 (pointing
    backwards) have no minimal rotation and give NaN.
    """
    a = as_f64(a)
    a = a / np.linalg.norm(a, axis=-1, keepdims=True)
    v = np.cross(a, _EZ)
    c = a[..., 2]
    vx = np.zeros(a.shape[:-1] + (3, 3))
    vx[..., 0, 1], vx[..., 0, 2], vx[..., 1, 2] = -v[..., 2], v[..., 1], -v[..., 0]
    vx[..., 1, 0], vx[..., 2, 0], vx[..., 2, 1] = v[..., 2], -v[..., 1], v[..., 0]
    with np.errstate(divide="ignore", invalid="ignore"):
        k = np.where(1.0 + c > 1e-12, 1.0 / (1.0 + c), np.nan)
    return np.eye(3) + vx + (vx @ vx) * k[..., None, None]


def pr_angle(a: np.ndarray) -> np.ndarray:
    """PR angle phi = arccos(a_z) in radians, computed as atan2(|a x e_z|, a_z) (accurate at small angles)."""
    a = as_f64(a)
    return np.arctan2(np.hypot(a[..., 0], a[..., 1]), a[..., 2])


def rotation_about_z(angle: np.ndarray) -> np.ndarray:
    """Rotation by ``angle`` radians about the optical axis (in-plane roll): rows (c,-s,0),(s,c,0),(0,0,1)."""
    t = as_f64(angle)
    c, s = np.cos(t), np.sin(t)
    R = np.zeros(t.shape + (3, 3))
    R[..., 0, 0], R[..., 0, 1], R[..., 1, 0], R[..., 1, 1], R[..., 2, 2] = c, -s, s, c, 1.0
    return R


def _plane_points(uv: np.ndarray, K: np.ndarray, R: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rotate the rays of pixels uv (..., N, 2) by R and intersect them with z = 1: (xy (..., N, 2), z (..., N))."""
    r = rays_from_pixels(uv, K, normalize=False) @ np.swapaxes(as_f64(R), -1, -2)
    z = r[..., 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        return r[..., :2] / z[..., None], z


def crop_focal(bbox, K, R, crop_size: int, margin: float = 0.0, points_2d=None) -> np.ndarray:
    """Focal length f_crop (...,) so that the bbox (and optional 2D points) touch the S crop's edge.

    The rays of the bbox corners (and of ``points_2d`` (..., N, 2), NaNs ignored) are rotated by R and put on the
    plane z = 1; e is the largest |x| or |y| offset from the centre ray's point; f_crop = (S/2) / (e (1 + margin)).
    Returns NaN where a rotated corner lies at or behind z = 0 (a box spanning more than a hemisphere).
    """
    pts = bbox_corners(bbox)
    if points_2d is not None:
        pts = np.concatenate([pts, as_f64(points_2d)], axis=-2)
    xy, z = _plane_points(pts, K, R)
    cxy, _ = _plane_points(bbox_center(bbox)[..., None, :], K, R)
    off = np.abs(xy - cxy)
    off = np.where(np.isfinite(off) & (z[..., None] > 1e-9), off, -np.inf)  # NaN / behind-camera points skipped
    e = off.max(axis=(-1, -2))
    corners_behind = np.any(z[..., :4] <= 1e-9, axis=-1)
    with np.errstate(divide="ignore"):
        f = (0.5 * crop_size) / (e * (1.0 + margin))
    return np.where(corners_behind | ~(e > 0), np.nan, f)


def crop_intrinsics(bbox, K, R, f_crop, crop_size: int) -> np.ndarray:
    """K_crop (..., 3, 3) with square pixels f_crop and the bbox centre's rotated ray on the crop centre.

    c' = ((S-1)/2, (S-1)/2) - f_crop (R a)_xy / (R a)_z: exactly the crop centre under PR (R a = e_z), and an
    off-centre principal point without PR (R = I, the paper's Eq. 4).
    """
    cxy, _ = _plane_points(bbox_center(bbox)[..., None, :], K, R)
    f = as_f64(f_crop)
    c = 0.5 * (crop_size - 1) - f[..., None] * cxy[..., 0, :]
    return intrinsics(f, f, c[..., 0], c[..., 1])


def crop_from_image(K, R, K_crop) -> np.ndarray:
    """Homography H = K_crop R K^-1 mapping original image pixels to crop pixels (..., 3, 3)."""
    return as_f64(K_crop) @ as_f64(R) @ np.linalg.inv(as_f64(K))


def apply_homography(H, uv) -> np.ndarray:
    """Apply H (..., 3, 3) to pixels uv (..., N, 2)."""
    uv = as_f64(uv)
    h = np.concatenate([uv, np.ones(uv.shape[:-1] + (1,))], axis=-1) @ np.swapaxes(as_f64(H), -1, -2)
    return h[..., :2] / h[..., 2:3]


def stored_crop_size(crop_size: int, context: float) -> int:
    """S_store = S + 2 round(S (context - 1) / 2): about S * context, and S_store - S even so that the final S
    crop is an integer centre slice (256, 1.25 -> 320)."""
    return int(crop_size + 2 * round(crop_size * (context - 1.0) / 2.0))


def center_slice_offset(store_size: int, crop_size: int) -> int:
    """Integer offset of the centred S x S window inside the S_store x S_store stored crop."""
    if (store_size - crop_size) % 2:
        raise ValueError(f"stored crop {store_size} and crop {crop_size} differ by an odd number of pixels")
    return (store_size - crop_size) // 2


# ---------------------------------------------------------------------------------------------- distortion
def _dist5(dist) -> np.ndarray:
    d = as_f64(dist)
    if d.shape[-1] > 5:
        raise ValueError(f"only OpenCV (k1, k2, p1, p2[, k3]) distortion is supported, got {d.shape[-1]} coefficients")
    return np.concatenate([d, np.zeros(d.shape[:-1] + (5 - d.shape[-1],))], axis=-1)


def distort_normalized(xy, dist) -> np.ndarray:
    """OpenCV lens distortion of normalised coordinates xy (..., N, 2) with (k1, k2, p1, p2[, k3]) (..., <=5)."""
    xy = as_f64(xy)
    k1, k2, p1, p2, k3 = [v[..., None] for v in np.moveaxis(_dist5(dist), -1, 0)]
    x, y = xy[..., 0], xy[..., 1]
    r2 = x * x + y * y
    rad = 1.0 + r2 * (k1 + r2 * (k2 + r2 * k3))
    xd = x * rad + 2.0 * p1 * x * y + p2 * (r2 + 2.0 * x * x)
    yd = y * rad + p1 * (r2 + 2.0 * y * y) + 2.0 * p2 * x * y
    return np.stack([xd, yd], axis=-1)


def undistort_normalized(xy_d, dist, iters: int = 20) -> np.ndarray:
    """Invert :func:`distort_normalized` by Newton's method (analytic Jacobian), float64; converges to ~1e-15
    for the distortions of H36M and 3DHP within the image."""
    xy_d = as_f64(xy_d)
    k1, k2, p1, p2, k3 = [v[..., None] for v in np.moveaxis(_dist5(dist), -1, 0)]
    xy = xy_d.copy()
    for _ in range(iters):
        x, y = xy[..., 0], xy[..., 1]
        r2 = x * x + y * y
        rad = 1.0 + r2 * (k1 + r2 * (k2 + r2 * k3))
        drad = 2.0 * (k1 + r2 * (2.0 * k2 + 3.0 * k3 * r2))  # d rad / d(r2) * 2
        res = distort_normalized(xy, dist) - xy_d
        a = rad + x * x * drad + 2.0 * p1 * y + 6.0 * p2 * x
        b = x * y * drad + 2.0 * p1 * x + 2.0 * p2 * y
        d = rad + y * y * drad + 6.0 * p1 * y + 2.0 * p2 * x
        det = a * d - b * b
        dx = (d * res[..., 0] - b * res[..., 1]) / det
        dy = (a * res[..., 1] - b * res[..., 0]) / det
        xy = xy - np.stack([dx, dy], axis=-1)
        if np.nanmax(np.abs(res), initial=0.0) < 1e-15:
            break
    return xy


def undistort_pixels(uv, K, dist) -> np.ndarray:
    """Distorted pixels (..., N, 2) -> the pixels an ideal pinhole camera with the same K would see."""
    r = rays_from_pixels(uv, K, normalize=False)[..., :2]
    xy = undistort_normalized(r, dist)
    return project(np.concatenate([xy, np.ones(xy.shape[:-1] + (1,))], axis=-1), K)


def pixel_grid_points(width: int, height: int, stride: float = 1.0, offset: float = 0.0) -> np.ndarray:
    """Pixel coordinates (H', W', 2) of the grid u = stride * j + offset, v = stride * i + offset."""
    u = stride * np.arange(width, dtype=np.float64) + offset
    v = stride * np.arange(height, dtype=np.float64) + offset
    uu, vv = np.meshgrid(u, v)
    return np.stack([uu, vv], axis=-1)


def image_maps_for_crop(K, dist, R, K_crop, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Inverse map (map_x, map_y), float32 (out, out), for ``cv2.remap``: for every crop pixel, where to sample the
    original (distorted) image. crop pixel -> K_crop^-1 -> R^T -> distort -> K: exact undistortion and PR in
    one resampling. Crop pixels whose ray points behind the original camera map far outside the image."""
    grid = pixel_grid_points(out_size, out_size).reshape(-1, 2)
    rays = rays_from_pixels(grid, K_crop, normalize=False) @ as_f64(R)  # row form of R^T @ r
    z = rays[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        xy = rays[:, :2] / z[:, None]
    if dist is not None and np.size(dist) and np.any(as_f64(dist) != 0):
        xy = distort_normalized(xy, dist)
    K = as_f64(K)
    uv = np.stack([K[0, 0] * xy[:, 0] + K[0, 2], K[1, 1] * xy[:, 1] + K[1, 2]], axis=-1)
    uv[~(z > 1e-9)] = -1e6
    uv = uv.reshape(out_size, out_size, 2)
    return uv[..., 0].astype(np.float32), uv[..., 1].astype(np.float32)


def preshrink_factor(K, f_crop, threshold: float = 0.5) -> int:
    """Integer factor n by which to shrink the original image (cv2.INTER_AREA) before the warp.

    When r = f_crop / max(fx, fy) < threshold, a single bilinear warp would alias, so the image is first reduced
    by n = floor(1 / r) (the remaining warp then scales by r n in (0.5, 1]). Otherwise n = 1.
    """
    K = as_f64(K)
    r = float(f_crop) / max(K[0, 0], K[1, 1])
    return 1 if r >= threshold else max(1, int(np.floor(1.0 / r)))


def scale_intrinsics_for_resize(K, src_wh, dst_wh) -> np.ndarray:
    """Exact intrinsics after resizing an image from src_wh to dst_wh (pixel-centre convention:
    u' = (u + 0.5) * W'/W - 0.5)."""
    sx, sy = dst_wh[0] / src_wh[0], dst_wh[1] / src_wh[1]
    A = np.array([[sx, 0.0, 0.5 * sx - 0.5], [0.0, sy, 0.5 * sy - 0.5], [0.0, 0.0, 1.0]])
    return A @ as_f64(K)


# ---------------------------------------------------------------------------------------------- labels
def labels_from_joints(joints_cam, R, K_crop, root: int):
    """Rotated joints, UVD labels and scale from joints in the original camera frame.

    joints_cam (..., J, 3), R (..., 3, 3), K_crop (..., 3, 3) ->
    (joints_rot (..., J, 3) = R P, uvd (..., J, 3) with uv = pi(K_crop P') and d = z' - z'_root,
    scale (...,) = z'_root / f_crop in metres per pixel).
    """
    rot = as_f64(joints_cam) @ np.swapaxes(as_f64(R), -1, -2)
    uv = project(rot, K_crop)
    z = rot[..., 2]
    d = z - z[..., root:root + 1]
    scale = z[..., root] / as_f64(K_crop)[..., 0, 0]
    return rot, np.concatenate([uv, d[..., None]], axis=-1), scale


def joints_from_uvd(uvd, scale, K_crop, R):
    """Inverse of :func:`labels_from_joints`: z' = d + s f_crop, P' = z' K_crop^-1 [u, v, 1], P = R^T P'.

    uvd (..., J, 3), scale (...,), K_crop (..., 3, 3), R (..., 3, 3; any orthogonal matrix) ->
    (joints in the original camera (..., J, 3), joints in the rotated crop camera (..., J, 3)).
    """
    uvd = as_f64(uvd)
    K_crop = as_f64(K_crop)
    z = uvd[..., 2] + as_f64(scale)[..., None] * K_crop[..., None, 0, 0]
    rot = rays_from_pixels(uvd[..., :2], K_crop, normalize=False) * z[..., None]
    return rot @ as_f64(R), rot


def pe_map(K_crop, crop_size: int, stride: int = 4) -> np.ndarray:
    """Perspective-Encoding map (..., 2, S/stride, S/stride): M[:, i, j] = (K_crop^-1 [s j + o, s i + o, 1])_xy with
    o = (stride - 1) / 2 (the centres of the stride x stride cells, 1.5 for stride 4)."""
    n = crop_size // stride
    grid = pixel_grid_points(n, n, stride, 0.5 * (stride - 1)).reshape(-1, 2)
    K_crop = as_f64(K_crop)
    xy = rays_from_pixels(np.broadcast_to(grid, K_crop.shape[:-2] + grid.shape), K_crop, normalize=False)[..., :2]
    return np.moveaxis(xy.reshape(K_crop.shape[:-2] + (n, n, 2)), -1, -3)


# ---------------------------------------------------------------------------------------------- flip
def flip_intrinsics(K_crop, crop_size: int) -> np.ndarray:
    """Intrinsics after a horizontal image flip u -> (S-1) - u together with x -> -x: c_x -> (S-1) - c_x."""
    K2 = as_f64(K_crop).copy()
    K2[..., 0, 2] = (crop_size - 1) - K2[..., 0, 2]
    return K2


def flip_uvd(uvd, crop_size: int, flip_perm) -> np.ndarray:
    """Flip UVD labels (..., J, 3): u -> (S-1) - u and the left/right joints swapped by ``flip_perm``."""
    out = as_f64(uvd)[..., list(flip_perm), :].copy()
    out[..., 0] = (crop_size - 1) - out[..., 0]
    return out


def flip_points(points, flip_perm) -> np.ndarray:
    """Flip 3D joints (..., J, 3): x -> -x and the left/right joints swapped."""
    out = as_f64(points)[..., list(flip_perm), :].copy()
    out[..., 0] = -out[..., 0]
    return out

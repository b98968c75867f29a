"""Exact train-time augmentation of a stored shard crop (docs/design.md §4, last paragraph; the reference recipe: §11).

A shard stores an S_store x S_store crop (context around the person) with intrinsics K_store. The final S x S
crop is ONE resampling with the homography

    H_aug = K_aug · R_aug · K_store⁻¹,    R_aug = R_tilt · R_roll

where R_roll is a roll about the optical axis (the reference's in-plane rotation), R_tilt an optional tiny
rotation about x/y (sub-pixel jitter; default off) and K_aug has focal f·zoom. Under PR the principal point stays
at the S crop centre ((S-1)/2, (S-1)/2). Without PR (off-centre principal point c_store) we choose

    c_aug = (S-1)/2 + zoom · Rot2(roll) · (c_store - (S_store-1)/2)

so that the pixel map is a similarity about the stored crop's centre (the person stays centred) while the labels
are still exactly pi(K_aug P''): K_aug R_roll K_store⁻¹ u = (S-1)/2 + zoom Rot2 (u - (S_store-1)/2).

Labels are transformed exactly: P'' = R_aug P', R_total = R_aug R, uv = pi(K_aug P''), d = z'' - z''_root
(unchanged by a roll, which keeps z), scale = z''_root / f_aug. A horizontal flip (per sample) maps u -> (S-1) - u,
x -> -x, swaps joints by the skeleton's flip_perm, cx -> (S-1) - cx and R_total -> diag(-1,1,1) R_total (det -1;
R_totalᵀ still maps back, then un-permute). 2D-only samples map uv through the same homography.

Without augmentation (validation, or the 20 % no-aug coin) with shards built at the configured S, the final crop
is the integer centre slice: no resampling, K shifted.

Randomness: every draw comes from the ``np.random.Generator`` passed in, in a fixed order, so the same sample and
generator state give the same bytes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np

from pipeline import geometry as g
from pipeline.skeleton import get_skeleton

from .photometric import COL, NUM_PARAMS, apply_photometric, draw_photometric, uniform

__all__ = ["AugmentConfig", "GeometricParams", "sample_geometric", "augmentation_homography", "augment_sample",
           "transform_labels", "IDENTITY"]


@dataclass(frozen=True)
class AugmentConfig:
    """Reference defaults (configs/*.yaml: 46-74). ``enabled=False`` switches everything off (validation)."""
    enabled: bool = True
    p_no_aug: float = 0.2            # the do_aug coin: 80 % of samples get the chain below (flip is separate)
    rot_prob: float = 0.5
    rot_max_deg: float = 30.0        # roll ~ U(-30, 30) deg
    zoom_prob: float = 0.2
    zoom_min: float = 0.7            # f_aug = f * zoom; zoom < 1 zooms out
    zoom_max: float = 1.1
    jitter_px: float = 0.0           # sub-pixel jitter as a tiny x/y camera rotation (0 = off)
    flip_prob: float = 0.5           # per sample, independent of the do_aug coin (the reference flips in the model)
    blur_prob: float = 0.1
    noise_prob: float = 0.3
    contrast_prob: float = 0.5
    hue_prob: float = 0.5
    channel_prob: float = 0.1
    cutout_prob: float = 0.4
    # the loader draws the photometric chain's and cutout's parameters but leaves the pixels to the training
    # device (trainer.photometric_torch, batched, after the copy); the drawn numbers, hence the data stream,
    # are the same either way
    photometric_on_device: bool = False


@dataclass(frozen=True)
class GeometricParams:
    roll: float = 0.0                # radians, rotation_about_z(roll) = rows (c,-s,0),(s,c,0),(0,0,1)
    zoom: float = 1.0
    tilt: tuple[float, float] = (0.0, 0.0)   # radians about the x and y axes
    flip: bool = False

    @property
    def is_identity(self) -> bool:
        return self.roll == 0.0 and self.zoom == 1.0 and self.tilt == (0.0, 0.0)


IDENTITY = GeometricParams()


def sample_geometric(cfg: AugmentConfig, rng: np.random.Generator, focal: float) -> tuple[GeometricParams, bool]:
    """Draw (geometric params, do_aug) in a fixed order. ``focal`` (final-crop pixels) converts jitter px to radians.
    (``rng.random()`` and :func:`trainer.photometric.uniform` are ``rng.uniform()`` and ``rng.uniform(lo, hi)``
    to the bit, at a third of the cost per draw.)"""
    if not cfg.enabled:
        return IDENTITY, False
    do_aug = rng.random() >= cfg.p_no_aug
    roll, zoom, tilt, drawn = 0.0, 1.0, (0.0, 0.0), False
    if do_aug:
        if rng.random() < cfg.rot_prob:
            roll, drawn = math.radians(uniform(rng, -cfg.rot_max_deg, cfg.rot_max_deg)), True  # == np.radians
        if rng.random() < cfg.zoom_prob:
            zoom, drawn = uniform(rng, cfg.zoom_min, cfg.zoom_max), True
        if cfg.jitter_px > 0:
            tx, ty = rng.uniform(-cfg.jitter_px, cfg.jitter_px, 2) / focal
            tilt, drawn = (float(np.arctan(ty)), float(np.arctan(tx))), True   # about x moves v, about y moves u
    flip = bool(rng.random() < cfg.flip_prob)
    if not drawn:                       # most samples: no need to build a (frozen) dataclass
        return _UNDRAWN[flip], do_aug
    return GeometricParams(roll, zoom, tilt, flip), do_aug


_UNDRAWN = (IDENTITY, GeometricParams(flip=True))


def _tilt_rotation(tilt) -> np.ndarray:
    ax, ay = tilt
    cx, sx, cy, sy = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay)
    rx = np.array([[1.0, 0.0, 0.0], [0.0, cx, -sx], [0.0, sx, cx]])
    ry = np.array([[cy, 0.0, sy], [0.0, 1.0, 0.0], [-sy, 0.0, cy]])
    return rx @ ry


def augmentation_homography(K_store, store_size: int, crop_size: int, params: GeometricParams,
                            base_zoom: float = 1.0):
    """(H stored-crop pixel -> final-crop pixel (3, 3), K_final (3, 3), R_aug (3, 3)), float64, before any flip.

    ``base_zoom`` = S / (crop size the shards were built for) rescales shards built for a larger crop exactly.
    H = K_final R_aug K_store⁻¹ (:func:`pipeline.geometry.crop_from_image`), written out for the zero-skew
    crop intrinsics the shards store: this runs once per training sample, and the general form's small numpy
    calls cost 3x more (equal to 1e-12 px, tested)."""
    K_final, R_aug, K_store_inv = _homography_parts(K_store, store_size, crop_size, params, base_zoom)
    return _compose(K_final, R_aug, K_store_inv), K_final, R_aug


def _homography_parts(K_store, store_size: int, crop_size: int, params: GeometricParams, base_zoom: float):
    """(K_final, R_aug, K_store⁻¹) of :func:`augmentation_homography`."""
    k = g.as_f64(K_store).ravel().tolist()
    zoom = params.zoom * base_zoom
    fx, fy, cx, cy = k[0], k[4], k[2], k[5]
    c, s = math.cos(params.roll), math.sin(params.roll)
    R_roll = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    R_aug = R_roll if params.tilt == (0.0, 0.0) else _tilt_rotation(params.tilt) @ R_roll
    c0, half = 0.5 * (store_size - 1), 0.5 * (crop_size - 1)
    dx, dy = cx - c0, cy - c0
    K_final = np.array([[fx * zoom, 0.0, half + zoom * (c * dx - s * dy)],
                        [0.0, fy * zoom, half + zoom * (s * dx + c * dy)], [0.0, 0.0, 1.0]])
    K_store_inv = np.array([[1.0 / fx, 0.0, -cx / fx], [0.0, 1.0 / fy, -cy / fy], [0.0, 0.0, 1.0]])
    return K_final, R_aug, K_store_inv


def _compose(K_final, R_aug, K_store_inv) -> np.ndarray:
    H = K_final @ R_aug @ K_store_inv
    # without tilt the last rows are (0, 0, 1) and H[2, 2] is exactly 1: the division would change no bit
    return H if H[2, 2] == 1.0 else H / H[2, 2]


def transform_labels(joints_rot, uv_store, has_3d: bool, R, R_aug, K_final, H, root: int):
    """Exact labels in the final crop before flip: (P'' (J, 3), uvd (J, 3), scale, R_total), float64. (``H`` is
    read for 2D-only samples only.)"""
    R_total = g.as_f64(R_aug) @ g.as_f64(R)
    if has_3d:  # the stored crop's camera frame is "the original camera" for R_aug
        P, uvd, scale = _labels_from_joints(joints_rot, g.as_f64(R_aug), g.as_f64(K_final), root)
        return P, uvd, scale, R_total
    n = len(uv_store)
    uvd = np.concatenate([g.apply_homography(H, g.as_f64(uv_store)), np.zeros((n, 1))], axis=1)
    return np.zeros((n, 3)), uvd, 0.0, R_total


def _labels_from_joints(joints, R, K, root: int):
    """:func:`pipeline.geometry.labels_from_joints` for one sample's (J, 3) joints, op for op (the same bits; the
    exactness test in tests/test_loader_exact.py), without its batch-generic conversions and concatenation:
    (rot = P Rᵀ, uvd with uv = pi(K rot) and d = z - z_root, scale = z_root / f as a float)."""
    rot = np.asarray(joints, np.float64) @ R.T
    p = rot @ K.T
    uvd = np.empty(rot.shape)
    np.divide(p[:, :2], p[:, 2:3], out=uvd[:, :2])
    np.subtract(rot[:, 2], rot[root, 2], out=uvd[:, 2])
    return rot, uvd, float(rot[root, 2] / K[0, 0])


_FLIP_X = np.diag([-1.0, 1.0, 1.0])


@lru_cache(maxsize=None)
def _flip_index(skeleton: str) -> np.ndarray:
    return np.array(get_skeleton(skeleton).flip_perm, np.intp)


def _flip_labels(K, P, uvd, vis, R_total, crop_size: int, perm):
    """pipeline.geometry's flip_intrinsics, flip_points and flip_uvd, op for op, on the (J, 3) float64 arrays
    here, without their generic conversions and copies (this runs for half the training samples)."""
    K = K.copy()
    K[0, 2] = (crop_size - 1) - K[0, 2]
    P = P[perm]
    P[:, 0] = -P[:, 0]
    uvd = uvd[perm]
    uvd[:, 0] = (crop_size - 1) - uvd[:, 0]
    return K, P, uvd, vis[perm], _FLIP_X @ R_total


def _final_image(crop, photo, chain: bool, flip: bool, out):
    """RGBX -> RGB, the CPU photometric chain, the flip: the last step that runs writes into ``out`` if given."""
    if crop.shape[2] == 4:                                      # RGBX input (decode_sample(rgbx=True))
        last = out is not None and not chain and not flip
        crop = cv2.cvtColor(crop, cv2.COLOR_RGBA2RGB, dst=out if last else None)
    if chain:
        crop = apply_photometric(crop, photo)
    if flip:
        crop = cv2.flip(crop, 1, dst=out)
    if out is not None and crop is not out:
        np.copyto(out, crop)
        crop = out
    return crop


def augment_sample(sample: dict, crop_size: int, cfg: AugmentConfig, rng: np.random.Generator,
                   out: np.ndarray | None = None) -> dict:
    """Decoded shard sample (:func:`pipeline.shard.decode_sample`; RGB or RGBX) -> final S crop with exact labels.

    Returns {'image' (S, S, 3) uint8 RGB (may be a view into an RGB stored crop), 'K_crop' (3, 3), 'R' (3, 3)
    R_total, 'joints' (J, 3) P'', 'uvd' (J, 3), 'scale' float, 'vis' (J,) uint8, 'flipped' bool, 'do_aug' bool,
    'params' GeometricParams, 'photo' (NUM_PARAMS,) the photometric/cutout parameters drawn (zeros without
    do_aug; :mod:`trainer.photometric`)}; geometry in float64. With ``cfg.photometric_on_device`` the image has
    the geometric augmentation and the flip only, and 'photo' is still to be applied (its ``flip`` column says
    the image is mirrored). ``out``: a C-contiguous (S, S, 3) uint8 array (a slot of the batch being built)
    that receives the final image, which 'image' then is.
    """
    arrays, meta = sample["arrays"], sample["meta"]
    image = sample["image"]
    store_size = int(image.shape[0])
    built_for = int(meta.get("crop_size", crop_size))
    if built_for < crop_size:
        raise ValueError(f"sample {meta.get('sample_id')}: built for crop {built_for} < configured {crop_size}")
    base_zoom = crop_size / built_for
    K_store = g.as_f64(arrays["K_crop"])
    params, do_aug = sample_geometric(cfg, rng, float(K_store[0, 0]) * base_zoom)
    K_final, R_aug, K_store_inv = _homography_parts(K_store, store_size, crop_size, params, base_zoom)
    has_3d = bool(meta["has_3d"])
    H = None
    if params.is_identity and base_zoom == 1.0 and (store_size - crop_size) % 2 == 0:
        off = g.center_slice_offset(store_size, crop_size)
        crop = image[off:off + crop_size, off:off + crop_size]   # exact: no resampling
    else:
        H = _compose(K_final, R_aug, K_store_inv)
        crop = cv2.warpPerspective(image, H, (crop_size, crop_size), flags=cv2.INTER_LINEAR,
                                   borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0, 0))
    if H is None and not has_3d:                                 # 2D-only labels map through H
        H = _compose(K_final, R_aug, K_store_inv)

    sk = get_skeleton(meta["skeleton"])
    P, uvd, scale, R_total = transform_labels(arrays["joints_rot"], arrays["uvd"][:, :2], has_3d,
                                              arrays["R"], R_aug, K_final, H, sk.root)
    vis = np.asarray(arrays["vis"], np.uint8)
    photo = draw_photometric(rng, crop.shape[:2] + (3,), cfg) if do_aug else np.zeros(NUM_PARAMS)
    photo[COL["flip"]] = params.flip
    crop = _final_image(crop, photo, do_aug and not cfg.photometric_on_device, params.flip, out)
    K = K_final
    if params.flip:
        K, P, uvd, vis, R_total = _flip_labels(K, P, uvd, vis, R_total, crop_size, _flip_index(sk.name))
    return {"image": crop, "K_crop": K, "R": R_total, "joints": P, "uvd": uvd,
            "scale": scale, "vis": vis, "flipped": params.flip, "do_aug": do_aug, "params": params, "photo": photo}

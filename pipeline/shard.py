"""One shard sample: manifest row + image -> PR-centred stored crop + exact labels, and its byte encoding.

The sample contract (docs/design.md §6) is read by the trainer and the evaluator:

* ``KEY.jpg``  RGB crop of S_store x S_store pixels (S_store = :func:`geometry.stored_crop_size`), JPEG.
* ``KEY.npz``  arrays, no pickle: K_crop (stored-crop intrinsics), K_orig, R, H (original pixel -> stored crop
  pixel, distortion ignored), bbox, joints_rot (J, 3), uvd (J, 3; u, v in stored-crop pixels, d = z' - z'_root),
  scale (z'_root / f_crop), vis, pr_angle (radians), dist, optional smpl_*.
* ``KEY.json`` sample_id, dataset, split, sequence, frame, person, skeleton, has_3d, has_intrinsics, crop_size,
  store_size, pr, image_path.

2D-only samples (no joints_cam) store uv from the 2D labels, d = 0, scale = 0 and joints_rot = 0 (zeros, not
NaN, so that masked losses stay finite). Samples without intrinsics (COCO) are cropped with a pseudo camera
(f = max(W, H), principal point at the image centre) and never get PR; ``has_intrinsics`` is false so the model
zeroes their PE map.

Lens distortion: the box is taken to the undistorted pixel frame first, labels come from the 3D joints (exact
pinhole), and the image is resampled once with :func:`geometry.image_maps_for_crop` (exact undistortion).
"""
from __future__ import annotations

import io
import json
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from . import geometry as g
from .errors import InputError
from .codec import decode_jpeg_rgb, encode_jpeg, npz_bytes, read_npz
from .fsutil import atomic_path
from .manifest import validate_row
from .skeleton import get_skeleton
from .tario import iter_tar

__all__ = ["BuildOptions", "Rejected", "sample_key", "process_row", "encode_sample", "decode_sample",
           "npz_bytes", "write_tar", "iter_tar", "load_image", "FORMAT_VERSION"]

FORMAT_VERSION = 1
_EXTS = ("jpg", "json", "npz")


@dataclass(frozen=True)
class BuildOptions:
    crop_size: int = 256
    context: float = 1.25
    margin: float = 0.0
    pr: bool = True
    max_pr_angle_deg: float = 75.0
    jpeg_quality: int = 95
    preshrink_threshold: float = 0.5

    @property
    def store_size(self) -> int:
        return g.stored_crop_size(self.crop_size, self.context)


class Rejected(Exception):
    """A per-sample data problem; the message is the rejection reason recorded in rejected.parquet."""


def sample_key(sample_id: str) -> str:
    """webdataset key: every character outside [A-Za-z0-9_-] becomes '_' (keys must not contain dots)."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", sample_id)


def load_image(path, rgb: bool = True) -> np.ndarray:
    """Read an image as RGB uint8 (BGR, OpenCV's order, with ``rgb=False``); raises Rejected for a missing or
    undecodable file."""
    data = np.fromfile(str(path), dtype=np.uint8) if Path(path).is_file() else None
    if data is None:
        raise Rejected("missing image")
    img = cv2.imdecode(data, cv2.IMREAD_COLOR)
    if img is None:
        raise Rejected("corrupt image (cannot decode)")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB) if rgb else img


def _undistorted_box(bbox, K, dist) -> np.ndarray:
    """Tight box of the undistorted box outline (corners and edge midpoints)."""
    x, y, w, h = bbox
    xs, ys = np.meshgrid([x, x + w / 2, x + w], [y, y + h / 2, y + h])
    pts = g.undistort_pixels(np.stack([xs.ravel(), ys.ravel()], -1), K, dist)
    lo, hi = pts.min(0), pts.max(0)
    return np.array([lo[0], lo[1], hi[0] - lo[0], hi[1] - lo[1]])


def _pseudo_intrinsics(w: int, h: int) -> np.ndarray:
    f = float(max(w, h))
    return g.intrinsics(f, f, 0.5 * (w - 1), 0.5 * (h - 1))


def process_row(row: dict, image: np.ndarray, opts: BuildOptions) -> dict:
    """Crop and label one manifest row (python values as in :data:`manifest.SCHEMA`). Raises Rejected.

    The row is checked again with the manifest's own rules first (non-finite values, f <= 0, joints behind the
    camera, ...): a manifest written or edited by other means cannot slip one into a shard."""
    reason = validate_row(row, None, check_images=False)
    if reason is not None:
        raise Rejected(reason)
    sk = get_skeleton(row["skeleton"])
    W, Hh = int(row["image_w"]), int(row["image_h"])
    if image.shape[0] != Hh or image.shape[1] != W:
        raise Rejected(f"image is {image.shape[1]}x{image.shape[0]}, manifest says {W}x{Hh}")
    has_k = row.get("K") is not None
    K = np.asarray(row["K"], np.float64).reshape(3, 3) if has_k else _pseudo_intrinsics(W, Hh)
    dist = np.asarray(row.get("dist") or [], np.float64)
    has_dist = dist.size > 0 and np.any(dist != 0)
    bbox = np.asarray(row["bbox"], np.float64)
    x, y, w, h = bbox
    if x + w < -0.5 or y + h < -0.5 or x > W - 0.5 or y > Hh - 0.5:
        raise Rejected("bbox entirely outside the image")
    box = _undistorted_box(bbox, K, dist) if has_dist else bbox

    joints_cam = None if row.get("joints_cam") is None else np.asarray(row["joints_cam"], np.float64).reshape(-1, 3)
    vis = np.asarray(row["joints_vis"], np.uint8)
    if joints_cam is not None:
        pts2d = g.project(joints_cam, K)
    elif row.get("joints_2d") is not None:
        pts2d = np.asarray(row["joints_2d"], np.float64).reshape(-1, 2)
        if has_dist:
            pts2d = g.undistort_pixels(pts2d, K, dist)
    else:
        pts2d = None
    in_box = None if pts2d is None else pts2d[vis > 0]

    a = g.center_ray(box, K)
    phi = float(g.pr_angle(a))
    pr = opts.pr and has_k
    if pr and np.degrees(phi) > opts.max_pr_angle_deg:
        raise Rejected(f"PR angle {np.degrees(phi):.1f} deg over the limit {opts.max_pr_angle_deg:g}")
    R = g.rotation_to_optical_axis(a) if pr else np.eye(3)
    f_crop = float(g.crop_focal(box, K, R, opts.crop_size, opts.margin, in_box))
    if not np.isfinite(f_crop) or f_crop <= 0:
        raise Rejected("bbox spans more than a hemisphere of view directions")
    S, Ss = opts.crop_size, opts.store_size
    K_crop = g.crop_intrinsics(box, K, R, f_crop, Ss)
    H = g.crop_from_image(K, R, K_crop)

    crop = _warp(image, K, dist if has_dist else None, R, K_crop, Ss, f_crop, opts.preshrink_threshold)

    if joints_cam is not None:
        rot, uvd, scale = g.labels_from_joints(joints_cam, R, K_crop, sk.root)
        if np.any(rot[:, 2] <= 0):
            raise Rejected("joints behind the rotated camera")
    else:
        rot = np.zeros((sk.num_joints, 3))
        uvd = np.zeros((sk.num_joints, 3))
        if pts2d is not None:
            uvd[:, :2] = g.apply_homography(H, pts2d)
        scale = 0.0
    arrays = {"K_crop": K_crop, "K_orig": K, "R": R, "H": H, "bbox": bbox,
              "joints_rot": rot.astype(np.float32), "uvd": uvd.astype(np.float32),
              "scale": np.float64(scale), "vis": vis, "pr_angle": np.float64(phi), "dist": dist}
    if not all(np.all(np.isfinite(v)) for v in arrays.values()):
        raise Rejected("non-finite label after cropping")
    smpl = row.get("smpl")
    if smpl:
        for k in ("betas", "pose", "transl", "twist"):
            if smpl.get(k) is not None:
                arrays[f"smpl_{k}"] = np.asarray(smpl[k], np.float32)
    meta = {"sample_id": row["sample_id"], "dataset": row["dataset"], "split": row["split"],
            "sequence": row["sequence"], "frame": int(row["frame"]), "person": int(row["person"]),
            "skeleton": sk.name, "has_3d": joints_cam is not None, "has_intrinsics": has_k,
            "crop_size": S, "store_size": Ss, "pr": pr, "image_path": row["image_path"]}
    if smpl and smpl.get("gender"):
        meta["smpl_gender"] = str(smpl["gender"])
    return {"key": sample_key(row["sample_id"]), "image": crop, "arrays": arrays, "meta": meta}


def _warp(image, K, dist, R, K_crop, size, f_crop, threshold) -> np.ndarray:
    n = g.preshrink_factor(K, f_crop, threshold)
    if n > 1:  # area-average first so the final bilinear warp does not alias
        h, w = image.shape[:2]
        dst = (max(1, round(w / n)), max(1, round(h / n)))
        image = cv2.resize(image, dst, interpolation=cv2.INTER_AREA)
        K = g.scale_intrinsics_for_resize(K, (w, h), dst)
    if dist is not None:
        mx, my = g.image_maps_for_crop(K, dist, R, K_crop, size)
        return cv2.remap(image, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    M = g.crop_from_image(K, R, K_crop)
    return cv2.warpPerspective(image, M, (size, size), flags=cv2.INTER_LINEAR,
                               borderMode=cv2.BORDER_CONSTANT, borderValue=0)


# ------------------------------------------------------------------------------------------- encoding
def encode_sample(sample: dict, jpeg_quality: int = 95) -> dict:
    """Sample (key, image RGB, arrays, meta) -> {'__key__', 'jpg', 'npz', 'json'} bytes."""
    try:
        jpg = encode_jpeg(sample["image"], jpeg_quality)
    except ValueError as e:
        raise Rejected(str(e)) from None
    return {"__key__": sample["key"], "jpg": jpg, "npz": npz_bytes(sample["arrays"]),
            "json": json.dumps(sample["meta"], sort_keys=True).encode()}


def decode_sample(members: dict, rgbx: bool = False) -> dict:
    """{'jpg','npz','json'} bytes (other members ignored, nothing unpickled) -> {'key', 'image' (RGB uint8, or
    RGBX with ``rgbx``: see :func:`pipeline.codec.decode_jpeg_rgb`), 'arrays' (dict of read-only np arrays),
    'meta'}."""
    img = decode_jpeg_rgb(members["jpg"], rgbx)
    if img is None:
        raise ValueError(f"sample {members.get('__key__')}: cannot decode jpg")
    return {"key": members.get("__key__"), "image": img, "arrays": read_npz(members["npz"]),
            "meta": json.loads(members["json"])}


def write_tar(path, encoded_samples) -> int:
    """Write encoded samples to a tar atomically and reproducibly (mtime 0, uid 0, fixed modes, given order).
    Returns the number of samples written."""
    n = 0
    with atomic_path(path, ".tar") as tmp:
        with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tf:
            for s in encoded_samples:
                for ext in _EXTS:
                    data = s[ext]
                    info = tarfile.TarInfo(f"{s['__key__']}.{ext}")
                    info.size, info.mtime, info.mode = len(data), 0, 0o644
                    info.uid = info.gid = 0
                    info.uname = info.gname = ""
                    tf.addfile(info, io.BytesIO(data))
                n += 1
    return n


def read_build_json(path) -> dict:
    """A shard directory's build.json (a local path or a URL), checked for shape and ``format_version``;
    InputError naming the file."""
    from .remote import is_url, read_bytes
    path = path if is_url(path) else Path(path)
    try:
        data = read_bytes(path)
    except OSError as e:
        raise InputError(f"{path}: unreadable build.json ({e})") from None
    return parse_build_json(data, path)


def parse_build_json(data: bytes, path) -> dict:
    """The checks of :func:`read_build_json` on bytes already read (``path`` names them in errors)."""
    try:
        info = json.loads(data.decode())
    except ValueError as e:
        raise InputError(f"{path}: unreadable build.json ({e})") from None
    shards = info.get("shards", []) if isinstance(info, dict) else None
    if not isinstance(info, dict) or not isinstance(info.get("options", {}), dict) or not isinstance(shards, list) \
            or not all(isinstance(x, dict) for x in shards):
        raise InputError(f"{path}: not a perspose build.json (expected an object with 'options' and a 'shards' list)")
    if info.get("format_version") != FORMAT_VERSION:
        raise InputError(f"{path}: shard format_version {info.get('format_version')!r}, this toolkit reads "
                         f"{FORMAT_VERSION}; rebuild the shards")
    return info

"""Helpers shared by the dataset adapters: image sizes from file headers, boxes, the adapter result type."""
from __future__ import annotations

import logging
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..fsutil import sha256_file
from ..geometry import project

log = logging.getLogger(__name__)

__all__ = ["AdapterOutput", "image_size_from_header", "image_size", "tight_bbox", "expanded_bbox", "joints_bbox",
           "require_file", "require_dir", "checksums", "progress_bar", "flat"]


@dataclass(frozen=True)
class AdapterOutput:
    """What every adapter returns: manifest rows (dicts in SCHEMA, fixed-size lists flat), adapter-side rejections
    [(sample_id, reason)], the directory image paths are relative to, and the source files read."""
    adapter: str
    version: str
    rows: list
    rejected: list
    image_root: Path
    dataset_root: Path
    sources: tuple = ()
    extra: dict = field(default_factory=dict)


def _jpeg_size(f) -> tuple[int, int] | None:
    f.seek(2)
    while True:
        b = f.read(1)
        while b and b != b"\xff":
            b = f.read(1)
        while b == b"\xff":
            b = f.read(1)
        if not b:
            return None
        marker = b[0]
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # markers without a length
            continue
        seg = f.read(2)
        if len(seg) < 2:
            return None
        length = struct.unpack(">H", seg)[0]
        # SOF0..SOF15 except DHT (C4), JPG (C8) and DAC (CC) carry the frame size
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            data = f.read(5)
            if len(data) < 5:
                return None
            h, w = struct.unpack(">HH", data[1:5])
            return w, h
        f.seek(length - 2, 1)


def image_size_from_header(path) -> tuple[int, int] | None:
    """(width, height) from a JPEG or PNG header (a few bytes read); None if the file is absent or unparsable."""
    p = Path(path)
    try:
        with open(p, "rb") as f:
            head = f.read(24)
            if head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR":
                w, h = struct.unpack(">II", head[16:24])
                return int(w), int(h)
            if head[:2] == b"\xff\xd8":
                return _jpeg_size(f)
    except (OSError, struct.error):
        return None
    return None


def image_size(path, fallback: tuple[int, int] | None) -> tuple[int, int]:
    """The real image size when the file can be read (header only, else cv2), else the metadata ``fallback``."""
    wh = image_size_from_header(path)
    if wh is None and Path(path).is_file():
        import cv2
        img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if img is not None:
            wh = (img.shape[1], img.shape[0])
    if wh is None:
        wh = fallback if fallback is not None else (0, 0)
    return int(wh[0]), int(wh[1])


def tight_bbox(uv: np.ndarray) -> np.ndarray:
    """Tight (x, y, w, h) box of points (..., N, 2) (ignores non-finite points)."""
    uv = np.asarray(uv, np.float64)
    lo, hi = np.nanmin(uv, axis=-2), np.nanmax(uv, axis=-2)
    return np.concatenate([lo, hi - lo], axis=-1)


def expanded_bbox(bbox: np.ndarray, factor: float) -> np.ndarray:
    """Scale (x, y, w, h) boxes about their centres by ``factor`` (w and h independently)."""
    b = np.asarray(bbox, np.float64)
    c = b[..., :2] + 0.5 * b[..., 2:]
    wh = b[..., 2:] * factor
    return np.concatenate([c - 0.5 * wh, wh], axis=-1)


def joints_bbox(joints_cam: np.ndarray, K: np.ndarray, factor: float = 1.2) -> np.ndarray:
    """The box the adapters use when no mesh/dataset box exists: the tight box of the projected joints, scaled by
    ``factor`` (default 1.2, as I2L/SPIN) about its centre, since joints are skeleton centres, not the body outline."""
    return expanded_bbox(tight_bbox(project(joints_cam, K)), factor)


def require_file(path, what: str = "file") -> Path:
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: {what} not found (wrong --root or layout? see README 'Datasets')")
    return p


def require_dir(path, what: str = "directory") -> Path:
    p = Path(path)
    if not p.is_dir():
        raise InputError(f"{p}: {what} not found (wrong --root or layout? see README 'Datasets')")
    return p


def checksums(paths, root) -> dict:
    """sha256 of each source annotation file, keyed by its path relative to the dataset root."""
    root = Path(root)
    out = {}
    for p in paths:
        p = Path(p)
        try:
            key = str(p.resolve().relative_to(root.resolve()))
        except ValueError:
            key = str(p)
        out[key] = sha256_file(p)
    return out


def progress_bar(iterable, desc: str, enabled: bool = True, total=None):
    from tqdm import tqdm
    return tqdm(iterable, desc=desc, disable=not enabled, total=total, unit="it", leave=False)


def flat(a, dtype=np.float64) -> list:
    return np.asarray(a, dtype=dtype).reshape(-1).tolist()


def rotate_root_orient(R: np.ndarray, rotvec: np.ndarray) -> np.ndarray:
    """Axis-angle root orientation expressed after a frame change P' = R P: rotvec(R @ Rodrigues(rotvec)).
    R (N, 3, 3) or (3, 3), rotvec (N, 3)."""
    from scipy.spatial.transform import Rotation
    Rr = Rotation.from_rotvec(np.asarray(rotvec, np.float64).reshape(-1, 3)).as_matrix()
    return Rotation.from_matrix(np.asarray(R, np.float64) @ Rr).as_rotvec()

"""3D poses for your own photos, in the camera that took them (issue 13; the library behind perspose-predict).

Per image: EXIF orientation first (so portrait photos get the right K and the right boxes), then the intrinsics
in this order of precedence (:func:`intrinsics_for`): an explicit K > a focal length in pixels > a horizontal
field of view > EXIF ``FocalLengthIn35mmFilm`` (f_px = f35 / 36 mm x the long side of the oriented image) > the
default 55 deg horizontal field of view; principal point at the image centre ((W-1)/2, (H-1)/2: pixel centres at
integers, docs/design.md §2). EXIF ``FocalLength`` alone (in mm) needs the sensor width, which a photo does not
carry: it is reported, not used.

Per person: the box goes through exactly the shards' functions (:func:`pipeline.shard.process_row`: PR, f_crop,
K_crop, the warp; then the crop-size rule of :mod:`trainer.shards`), the model predicts (u, v, d, s-hat) in the
crop, and :func:`trainer.geometry_torch.joints_from_uvd` takes them to the crop camera and Rᵀ back to the original
camera: joints in metres, root depth included.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from pipeline.errors import InputError
from pipeline.shard import BuildOptions, process_row

from .geometry_torch import joints_from_uvd
from .shards import heldout_record

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_FOV_DEG", "ExifInfo", "read_exif", "apply_orientation", "load_oriented", "intrinsics_for",
           "person_record", "predict_people"]

DEFAULT_FOV_DEG = 55.0
_ORIENTATION, _EXIF_IFD, _F35, _FOCAL = 0x0112, 0x8769, 0xA405, 0x920A


@dataclass(frozen=True)
class ExifInfo:
    orientation: int = 1             # EXIF 1..8; 1 = as stored
    focal_35mm: float | None = None  # FocalLengthIn35mmFilm
    focal_mm: float | None = None    # FocalLength (needs the sensor width; reported only)
    error: str = ""                  # a corrupt EXIF block: what PIL said (the image is still used)


def read_exif(path) -> ExifInfo:
    """The EXIF fields the intrinsics need; a missing block is the default, a corrupt one is reported."""
    import warnings

    from PIL import Image, UnidentifiedImageError
    try:
        with warnings.catch_warnings(record=True) as caught:   # PIL reports a damaged EXIF block as a warning
            warnings.simplefilter("always")
            with Image.open(path) as im:
                exif = im.getexif()
                sub = exif.get_ifd(_EXIF_IFD) if exif else {}
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        return ExifInfo(error=f"{type(e).__name__}: {e}")
    damaged = [str(w.message) for w in caught if "exif" in str(w.message).lower()]
    if damaged:
        return ExifInfo(error=damaged[0])

    def num(v):
        try:
            v = float(v)
        except (TypeError, ValueError, ZeroDivisionError):
            return None
        return v if math.isfinite(v) and v > 0 else None
    orientation = exif.get(_ORIENTATION, 1) if exif else 1
    return ExifInfo(orientation=int(orientation) if orientation in range(1, 9) else 1,
                    focal_35mm=num(sub.get(_F35)), focal_mm=num(sub.get(_FOCAL)))


def apply_orientation(image: np.ndarray, orientation: int) -> np.ndarray:
    """The image as it is meant to be seen (EXIF orientation 1-8: mirrors and quarter turns)."""
    ops = {1: [], 2: ["flip_h"], 3: ["rot180"], 4: ["flip_v"], 5: ["transpose"], 6: ["rot90cw"],
           7: ["transverse"], 8: ["rot90ccw"]}[orientation]
    for op in ops:
        image = {"flip_h": lambda x: x[:, ::-1], "flip_v": lambda x: x[::-1], "rot180": lambda x: x[::-1, ::-1],
                 "transpose": lambda x: np.swapaxes(x, 0, 1), "rot90cw": lambda x: np.rot90(x, -1),
                 "rot90ccw": lambda x: np.rot90(x, 1), "transverse": lambda x: np.rot90(x, 2).swapaxes(0, 1)}[op](image)
    return np.ascontiguousarray(image)


def load_oriented(path) -> tuple[np.ndarray, ExifInfo]:
    """RGB uint8 image with its EXIF orientation applied (OpenCV's own orientation handling is switched off so
    that this is the one place it happens), and its EXIF info. InputError for an unreadable file."""
    data = np.fromfile(str(path), dtype=np.uint8) if Path(path).is_file() else None
    if data is None:
        raise InputError(f"{path}: no such image file")
    bgr = cv2.imdecode(data, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    if bgr is None:
        raise InputError(f"{path}: not a readable image")
    info = read_exif(path)
    return apply_orientation(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), info.orientation), info


def intrinsics_for(width: int, height: int, K=None, focal_px: float | None = None, fov_deg: float | None = None,
                   exif: ExifInfo | None = None) -> tuple[np.ndarray, str]:
    """(K, source) for an oriented image of width x height (module docstring for the order)."""
    c = np.array([(width - 1) / 2.0, (height - 1) / 2.0])
    if K is not None:
        return np.asarray(K, np.float64).reshape(3, 3), "--K"
    if focal_px is not None:
        f, source = float(focal_px), "--focal-px"
    elif fov_deg is not None:
        f, source = width / 2.0 / math.tan(math.radians(fov_deg) / 2.0), "--fov"
    elif exif is not None and exif.focal_35mm:
        f, source = exif.focal_35mm / 36.0 * max(width, height), "EXIF FocalLengthIn35mmFilm"
    else:
        f = width / 2.0 / math.tan(math.radians(DEFAULT_FOV_DEG) / 2.0)
        source = f"default {DEFAULT_FOV_DEG:g} deg horizontal FOV" + (
            " (EXIF FocalLength without a sensor width)" if exif is not None and exif.focal_mm else "")
    return np.array([[f, 0.0, c[0]], [0.0, f, c[1]], [0.0, 0.0, 1.0]]), source


def person_record(image: np.ndarray, K: np.ndarray, box, crop_size: int, skeleton: str, name: str) -> dict:
    """One person's model input, made by the shards' own functions; Rejected (with a reason) otherwise."""
    from pipeline.skeleton import get_skeleton
    H, W = image.shape[:2]
    J = get_skeleton(skeleton).num_joints
    row = {"sample_id": name, "dataset": "predict", "split": "test", "sequence": "", "frame": 0, "person": 0,
           "image_path": name, "image_w": W, "image_h": H, "K": np.asarray(K, np.float64).reshape(-1).tolist(),
           "dist": [], "bbox": [float(v) for v in box], "skeleton": skeleton, "joints_cam": None, "joints_2d": None,
           "joints_vis": [0] * J}
    sample = process_row(row, image, BuildOptions(crop_size=crop_size))
    rec = heldout_record(sample, crop_size)
    rec["H"] = sample["arrays"]["H"]
    return rec


@torch.no_grad()
def predict_people(predict_fn, records: list[dict], batch_size: int) -> list[dict]:
    """Batched model calls -> per person: joints in the original camera (J, 3, metres), the model's uv in the crop
    and the crop camera joints. ``predict_fn`` as :func:`trainer.evaluate.model_predict_fn` (one skeleton)."""
    out = []
    for i in range(0, len(records), batch_size):
        part = records[i:i + batch_size]
        batch = {"image": np.stack([r["image"] for r in part]), "K_crop": np.stack([r["K_crop"] for r in part]),
                 "has_intrinsics": np.ones(len(part), bool), "skeleton": part[0]["meta"]["skeleton"]}
        pred = predict_fn(batch)
        uvd = torch.as_tensor(pred["uvd"]).double()
        scale = torch.as_tensor(pred["scale"]).double().reshape(-1)
        K = torch.as_tensor(batch["K_crop"], dtype=torch.float64)
        R = torch.as_tensor(np.stack([r["R"] for r in part]), dtype=torch.float64)
        orig, crop = joints_from_uvd(uvd, scale, K, R)
        for j, r in enumerate(part):
            out.append({"joints_cam": orig[j].numpy(), "joints_crop": crop[j].numpy(),
                        "uv_crop": uvd[j, :, :2].numpy()})
    return out

"""COCO keypoints adapter -> dataset ``coco`` (2D-only rows: ``K`` and ``joints_cam`` null, skeleton ``coco17``).

Layout: ``ROOT/annotations/person_keypoints_{split}2017.json`` and ``ROOT/{split}2017/<file_name>``.

PersPose's filters keep an annotation when it is not a crowd, has ``area > 0``, ``category_id == 1`` and at least
one labelled limb joint (elbows, wrists, knees, ankles: indices 7, 8, 9, 10, 13, 14, 15, 16 with v > 0). Filtered
annotations are not rows and not rejections. ``bbox`` passes through unchanged; ``joints_2d`` = the keypoints'
(x, y); ``joints_vis`` = (v > 0). ``sequence`` = "coco", ``frame`` = image id, ``person`` = the annotation's index
among all annotations of its image in file order (stable whatever the filters keep).
Image size: from the image header when the image exists, else ``width``/``height`` of the json.
"""
from __future__ import annotations

import json
import logging
from collections import defaultdict
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..manifest import make_sample_id
from .common import AdapterOutput, flat, image_size, progress_bar, require_file

log = logging.getLogger(__name__)

ADAPTER = "coco"
ADAPTER_VERSION = "1"
LIMB_JOINTS = (7, 8, 9, 10, 13, 14, 15, 16)

__all__ = ["read_coco", "keep_annotation", "LIMB_JOINTS"]


def keep_annotation(ann: dict) -> bool:
    """PersPose's COCO filter (see the module docstring)."""
    if ann.get("iscrowd", 0) or not ann.get("area", 0) > 0 or ann.get("category_id") != 1:
        return False
    kp = np.asarray(ann.get("keypoints") or [0] * 51, np.float64).reshape(17, 3)
    return bool(np.any(kp[list(LIMB_JOINTS), 2] > 0))


def read_coco(root, split: str, *, limit: int | None = None, progress: bool = True) -> AdapterOutput:
    root = Path(root)
    path = require_file(root / "annotations" / f"person_keypoints_{split}2017.json", "COCO keypoint annotations")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        images, anns, cats = data["images"], data["annotations"], data["categories"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise InputError(f"{path}: not a COCO keypoints json ({type(e).__name__}: {e})") from None
    if not any(c.get("id") == 1 and c.get("name") == "person" for c in cats):
        raise InputError(f"{path}: category 1 is not 'person'")
    by_image = defaultdict(list)
    for a in anns:
        by_image[a["image_id"]].append(a)
    rows = []
    for img in progress_bar(images, f"coco {split}", progress):
        rel = f"{split}2017/{img['file_name']}"
        wh = None
        for person, a in enumerate(by_image.get(img["id"], [])):
            if not keep_annotation(a):
                continue
            if wh is None:
                wh = image_size(root / rel, (img["width"], img["height"]))
            kp = np.asarray(a["keypoints"], np.float64).reshape(17, 3)
            rows.append({"sample_id": make_sample_id(ADAPTER, split, "coco", img["id"], person),
                         "dataset": ADAPTER, "split": split, "sequence": "coco", "frame": int(img["id"]),
                         "person": person, "image_path": rel, "image_w": wh[0], "image_h": wh[1], "K": None,
                         "dist": [], "bbox": [float(x) for x in a["bbox"]], "skeleton": "coco17",
                         "joints_cam": None, "joints_2d": flat(kp[:, :2], np.float32),
                         "joints_vis": (kp[:, 2] > 0).astype(np.uint8).tolist(),
                         "meta": json.dumps({"annotation_id": a.get("id"), "v": kp[:, 2].astype(int).tolist()})})
        if limit is not None and len(rows) >= limit:
            rows = rows[:limit]
            break
    return AdapterOutput(ADAPTER, ADAPTER_VERSION, rows, [], root, root, (path,), {})

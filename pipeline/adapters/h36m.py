"""Human3.6M adapter for G. Moon's preprocessed JSONs (I2L-MeshNet / Pose2Mesh / PersPose) -> dataset ``h36m``.

Layout: ``ROOT/annotations/Human36M_subject{N}_{data,camera,joint_3d}.json`` and
``ROOT/images/s_SS_act_AA_subact_BB_ca_CC/s_SS_act_AA_subact_BB_ca_CC_{frame_idx+1:06d}.jpg`` (``file_name``).

* Subjects: train S1, S5, S6, S7, S8; test S9, S11 (``subjects`` overrides).
* Sampling: train keeps ``frame_idx % interval == 0`` (interval 5). Test follows PersPose/HybrIK: keep
  ``frame_idx % 5 == 0`` (``interval``), then every 4th of the kept entries in file order, subjects in order
  (``test_stride``; ≈ every 20th frame, all 4 cameras).
* Excluded before sampling (damaged GT/sync, as the reference): all of S11 action 2; (S9, act 5, sub 2),
  (S9, act 10, sub 2), (S9, act 13, sub 1), (S11, act 6, sub 2). Excluded and unsampled frames are not rows and
  not rejections. Frames without 3D joints or camera become rejections.
* ``joints_cam``: world joints (mm) to the camera, ``X_c = R X_w + t`` (t in mm), then mm -> m. Skeleton
  ``h36m17`` (Moon naming: 1-3 is the RIGHT leg). ``K`` from ``f``, ``c``; the JSON has no distortion, so
  ``dist`` is empty. ``joints_2d`` = pinhole projection; ``joints_vis`` = ``keypoints_vis``.
* ``bbox`` = the ``data.json`` annotation box, which :func:`bbox_from_joints` reproduces from joints and camera.
* Image size: from the image header when the image exists, else ``width``/``height`` of ``data.json``.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..geometry import intrinsics, project
from ..manifest import make_sample_id
from .common import AdapterOutput, flat, image_size, progress_bar, require_file

log = logging.getLogger(__name__)

ADAPTER = "h36m"
ADAPTER_VERSION = "1"
SUBJECTS = {"train": (1, 5, 6, 7, 8), "test": (9, 11)}
EXCLUDED = frozenset({(9, 5, 2), (9, 10, 2), (9, 13, 1), (11, 6, 2)})
EXCLUDED_ACTIONS = frozenset({(11, 2)})
DEFAULT_INTERVAL = 5
TEST_STRIDE = 4

__all__ = ["read_h36m", "bbox_from_joints", "is_excluded", "SUBJECTS", "EXCLUDED"]


def bbox_from_joints(joints_cam_mm: np.ndarray, f, c) -> np.ndarray:
    """The ``data.json`` bbox (x, y, w, h) of Moon's H36M annotations, from camera-frame joints (..., 17, 3):
    pinhole projection, box centre = midpoint of the joints' min and max, ``w = 1.2 (x_max - x_min - 1)``,
    ``h = 1.2 (y_max - y_min - 1)``. (The -1 comes from Moon's integer-pixel width convention.)"""
    uv = project(joints_cam_mm, intrinsics(f[0], f[1], c[0], c[1]))
    lo, hi = uv.min(-2), uv.max(-2)
    ctr = 0.5 * (lo + hi)
    wh = 1.2 * (hi - lo - 1.0)
    return np.concatenate([ctr - 0.5 * wh, wh], axis=-1)


def is_excluded(subject: int, action: int, subaction: int) -> bool:
    return (subject, action) in EXCLUDED_ACTIONS or (subject, action, subaction) in EXCLUDED


def _load_json(path: Path):
    require_file(path, "Human3.6M annotation file")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise InputError(f"{path}: invalid JSON ({e.msg} at line {e.lineno})") from None


def _subject_rows(root, subject, split, interval, stats):
    """Candidates of one subject in file order, before the test stride: each (row, None) or (None, rejection)."""
    ann = root / "annotations"
    data = _load_json(ann / f"Human36M_subject{subject}_data.json")
    cams = _load_json(ann / f"Human36M_subject{subject}_camera.json")
    joints = _load_json(ann / f"Human36M_subject{subject}_joint_3d.json")
    for k in ("images", "annotations"):
        if k not in data:
            raise InputError(f"{ann / f'Human36M_subject{subject}_data.json'}: missing key {k!r}")
    boxes = {a["image_id"]: a for a in data["annotations"]}
    cam_mats = {}
    for cid, c in cams.items():
        cam_mats[str(cid)] = (np.asarray(c["R"], np.float64), np.asarray(c["t"], np.float64).reshape(3),
                              np.asarray(c["f"], np.float64), np.asarray(c["c"], np.float64))
    out = []
    for img in data["images"]:
        s, a, sa = int(img.get("subject", subject)), int(img["action_idx"]), int(img["subaction_idx"])
        cam_idx, fr = int(img["cam_idx"]), int(img["frame_idx"])
        if is_excluded(s, a, sa) or fr % interval:
            continue
        seq = Path(img["file_name"]).parent.name or f"s_{s:02d}_act_{a:02d}_subact_{sa:02d}_ca_{cam_idx:02d}"
        sid = make_sample_id(ADAPTER, split, seq, fr, 0)
        j = joints.get(str(a), {}).get(str(sa), {}).get(str(fr))
        cam = cam_mats.get(str(cam_idx))
        box = boxes.get(img["id"])
        if j is None:
            out.append((None, (sid, "missing 3D joints in joint_3d.json")))
            continue
        if cam is None:
            out.append((None, (sid, f"camera {cam_idx} missing in camera.json")))
            continue
        if box is None:
            out.append((None, (sid, "no annotation (bbox) for the image in data.json")))
            continue
        R, t, f, c = cam
        jc = (np.asarray(j, np.float64) @ R.T + t) / 1000.0
        K = intrinsics(f[0], f[1], c[0], c[1])
        rel = f"images/{img['file_name']}"
        wh = image_size(root / rel, (img.get("width"), img.get("height")) if img.get("width") else None)
        vis = box.get("keypoints_vis") or [1] * 17
        out.append(({"sample_id": sid, "dataset": ADAPTER, "split": split, "sequence": seq, "frame": fr,
                     "person": 0, "image_path": rel, "image_w": wh[0], "image_h": wh[1], "K": flat(K), "dist": [],
                     "bbox": flat(box["bbox"]), "skeleton": "h36m17", "joints_cam": flat(jc, np.float32),
                     "joints_2d": flat(project(jc, K), np.float32), "joints_vis": [int(bool(v)) for v in vis],
                     "meta": json.dumps({"subject": s, "action": a, "subaction": sa, "camera": cam_idx,
                                         "image_id": img["id"], "action_name": img.get("action_name")})}, None))
    stats["files"] += [ann / f"Human36M_subject{subject}_{k}.json" for k in ("data", "camera", "joint_3d")]
    return out


def read_h36m(root, split: str, *, interval: int | None = None, test_stride: int | None = None,
              subjects=None, limit: int | None = None, progress: bool = True) -> AdapterOutput:
    root = Path(root)
    if split not in SUBJECTS and subjects is None:
        raise InputError(f"h36m: unknown split {split!r} (train or test, or give --subjects)")
    subjects = tuple(int(s) for s in (subjects or SUBJECTS[split]))
    interval = int(interval or DEFAULT_INTERVAL)
    if interval < 1:
        raise InputError(f"h36m: --interval must be >= 1, got {interval}")
    stride = int(test_stride or (TEST_STRIDE if split == "test" else 1))
    for s in subjects:  # fail on a wrong layout before reading gigabytes
        for k in ("data", "camera", "joint_3d"):
            require_file(root / "annotations" / f"Human36M_subject{s}_{k}.json", "Human3.6M annotation file")
    stats = {"files": []}
    cands = []
    for s in progress_bar(subjects, f"h36m {split}", progress):
        cands += _subject_rows(root, s, split, interval, stats)
        if limit is not None and len(cands) >= limit * stride:
            break
    cands = cands[::stride][:limit]
    rows = [r for r, _ in cands if r is not None]
    rejected = [b for _, b in cands if b is not None]
    return AdapterOutput(ADAPTER, ADAPTER_VERSION, rows, rejected, root, root, tuple(stats["files"]),
                         {"interval": interval, "test_stride": stride, "subjects": list(subjects)})

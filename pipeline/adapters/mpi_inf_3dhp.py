"""MPI-INF-3DHP adapter -> dataset ``mpi_inf_3dhp``. Two sources (``source``):

``json`` (default; what PersPose/HybrIK train and test on): ``ROOT/annotation_mpi_inf_3dhp_{train_v2,test}.json``
(or under ``ROOT/annotations/``); ``images`` and ``annotations`` are index-aligned (zipped, no id join). Images
live at ``ROOT/mpi_inf_3dhp_{train,test}_set/<file_name>``. ``K = intrinsic_param[:3, :3]`` (3x4 [K|0]);
``bbox`` = the json box; ``keypoints_cam`` mm -> m.

``native``: train ``ROOT/mpi_inf_3dhp_train_set/S{s}/Seq{q}/annot.mat`` (MATLAB v5, scipy) + ``camera.calibration``
(intrinsic 4x4 per camera), images extracted from the videos as HybrIK does
(``S1/Seq1/images/S1_Seq1_V{c}/img_S1_Seq1_V{c}_{i+1:06d}.jpg``, i = annotation row), cameras 0,1,2,4,5,6,7,8
(VNect set), every ``interval``-th frame (default 10); test ``ROOT/mpi_inf_3dhp_test_set/TS{k}/annot_data.mat``
(MATLAB v7.3 = HDF5, h5py; v5 files fall back to scipy), rows only where ``valid_frame == 1`` (others are not
rows and not rejections), images ``TS{k}/imageSequence/img_{i+1:06d}.jpg``. The test cameras have no file and are
hard-coded from the dataset's mm specification (:func:`ts_camera`): TS1-4 2048x2048 without distortion,
TS5/6 1920x1080 with OpenCV distortion (k1, k2, p1, p2, k3) in ``dist``. ``bbox`` = tight box of the 2D labels
scaled 1.2x about its centre. ``annot3`` (metric, camera frame) by default; ``univ=True`` uses ``univ_annot3``.

Joints: train has 28 joints -> skeleton ``mpi_inf_3dhp28`` (root 4), or with ``joints=17`` the 28->17 selection
-> ``mpi_inf_3dhp17``; test has 17 joints in test order -> ``mpi_inf_3dhp17`` (root 14). No reordering to H36M
here (that is the skeleton registry's business). ``joints_vis`` = 1 (the json's visibility flags are fake).
The HybrIK json carries no distortion; TS5/6 images are distorted, so their ``dist`` is added from
:func:`ts_camera` in json mode too. ``joints_2d``: the dataset's 2D labels when present, else the projection
(with distortion) of the 3D joints.
"""
from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..geometry import as_f64, distort_normalized, intrinsics
from ..manifest import make_sample_id
from ..skeleton import get_skeleton
from .common import AdapterOutput, expanded_bbox, flat, image_size, progress_bar, require_file, tight_bbox

log = logging.getLogger(__name__)

ADAPTER = "mpi_inf_3dhp"
ADAPTER_VERSION = "1"
TO_17 = get_skeleton("mpi_inf_3dhp28").eval_subsets["to_17"]
TRAIN_CAMERAS = (0, 1, 2, 4, 5, 6, 7, 8)
JSON_NAMES = {"train": "annotation_mpi_inf_3dhp_train_v2.json", "test": "annotation_mpi_inf_3dhp_test.json"}
SET_DIRS = {"train": "mpi_inf_3dhp_train_set", "test": "mpi_inf_3dhp_test_set"}

__all__ = ["read_mpi_inf_3dhp", "ts_camera", "parse_calibration", "project_distorted", "TO_17"]


def ts_camera(ts: int) -> tuple[np.ndarray, list, tuple[int, int]]:
    """(K, dist, (W, H)) of test sequence TS``ts``, from the dataset's mm specification:
    fx = f/sensor_w·W, fy = fx·pixel_aspect, c = image centre + centre offset (mm -> px, no aspect on cy)."""
    if ts in (1, 2, 3, 4):
        W, H, sensor, f, aspect, off, dist = 2048, 2048, (10.0, 10.0), 7.32506, 1.00044, (-0.0322884, 0.0929296), []
    elif ts in (5, 6):
        W, H, sensor, f, aspect, off = 1920, 1080, (10.0, 5.625), 8.770747185, 0.993236423, (-0.104908645, 0.104899704)
        dist = [-0.276859611, 0.131125256, -0.000360494, -0.001149441, -0.049318332]
    else:
        raise InputError(f"mpi_inf_3dhp: no test sequence TS{ts} (TS1..TS6)")
    fx = f / sensor[0] * W
    cx = W / 2 + off[0] / sensor[0] * W
    cy = H / 2 + off[1] / sensor[1] * H
    return intrinsics(fx, fx * aspect, cx, cy), dist, (W, H)


def project_distorted(points, K, dist) -> np.ndarray:
    """Pinhole projection with OpenCV distortion (k1, k2, p1, p2, k3); ``dist`` may be empty."""
    p = as_f64(points)
    xy = p[..., :2] / p[..., 2:3]
    if len(dist):
        xy = distort_normalized(xy, np.asarray(dist, np.float64))
    K = as_f64(K)
    return np.stack([K[0, 0] * xy[..., 0] + K[0, 2], K[1, 1] * xy[..., 1] + K[1, 2]], axis=-1)


def parse_calibration(path) -> dict[int, tuple[np.ndarray, tuple[int, int]]]:
    """``camera.calibration`` -> {camera: (K 3x3, (W, H))} from the ``intrinsic`` (4x4 row-major) lines."""
    path = require_file(path, "3DHP camera.calibration")
    cams, cur, size = {}, None, (2048, 2048)
    for line in path.read_text().splitlines():
        tok = line.split()
        if not tok:
            continue
        if tok[0] == "name":
            cur = int(tok[1])
        elif tok[0] == "size" and cur is not None:
            size = (int(tok[1]), int(tok[2]))
        elif tok[0] == "intrinsic" and cur is not None:
            vals = np.asarray([float(v) for v in tok[1:17]]).reshape(4, 4)
            cams[cur] = (vals[:3, :3].copy(), size)
    if not cams:
        raise InputError(f"{path}: no camera intrinsics found")
    return cams


def _row(split, seq, frame, rel, wh, K, dist, bbox, skel, joints_m, uv, meta):
    J = joints_m.shape[0]
    return {"sample_id": make_sample_id(ADAPTER, split, seq, frame, 0), "dataset": ADAPTER, "split": split,
            "sequence": seq, "frame": int(frame), "person": 0, "image_path": rel, "image_w": wh[0],
            "image_h": wh[1], "K": flat(K), "dist": list(dist), "bbox": flat(bbox), "skeleton": skel,
            "joints_cam": flat(joints_m, np.float32), "joints_2d": flat(uv, np.float32), "joints_vis": [1] * J,
            "meta": json.dumps(meta)}


def _select(j, joints: int, expected_28: bool):
    """(joints in the chosen skeleton, skeleton name)."""
    if expected_28 and joints == 17:
        return j[..., list(TO_17), :], "mpi_inf_3dhp17"
    return j, ("mpi_inf_3dhp28" if expected_28 else "mpi_inf_3dhp17")


def _ts_of(name: str) -> int | None:
    m = re.match(r"TS(\d+)", name)
    return int(m.group(1)) if m else None


# ----------------------------------------------------------------------------------------------------- json
def _read_json(root, split, joints, limit, progress):
    cands = [root / JSON_NAMES[split], root / "annotations" / JSON_NAMES[split]]
    path = next((p for p in cands if p.is_file()), None)
    if path is None:
        raise InputError(f"{cands[0]}: 3DHP annotation json not found (also looked in {cands[1].parent})")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        images, anns = data["images"], data["annotations"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise InputError(f"{path}: not a HybrIK 3DHP json ({type(e).__name__}: {e})") from None
    if len(images) != len(anns):
        raise InputError(f"{path}: {len(images)} images but {len(anns)} annotations (must be index-aligned)")
    want = 28 if split == "train" else 17
    rows, rejected = [], []
    for img, ann in progress_bar(list(zip(images, anns))[:limit], f"3dhp json {split}", progress):
        fn = img["file_name"]
        parts = fn.split("/")
        seq = parts[3] if split == "train" and len(parts) > 3 else (parts[0] if split == "test" else
                                                                     Path(fn).parent.name)
        frame = ann.get("frame_idx", img.get("frame_idx"))
        if frame is None:
            frame = int(re.findall(r"(\d+)", Path(fn).stem)[-1]) - 1
        sid = make_sample_id(ADAPTER, split, seq, frame, 0)
        kc = np.asarray(ann["keypoints_cam"], np.float64).reshape(-1, 3)
        if kc.shape[0] != want:
            rejected.append((sid, f"keypoints_cam has {kc.shape[0]} joints, expected {want}"))
            continue
        j, skel = _select(kc / 1000.0, joints, want == 28)
        K = np.asarray(img["cam_param"]["intrinsic_param"], np.float64).reshape(3, 4)[:, :3]
        ts = _ts_of(seq) if split == "test" else None
        dist = ts_camera(ts)[1] if ts in (5, 6) else []
        uv = project_distorted(j, K, dist)
        rel = f"{SET_DIRS[split]}/{fn}"
        wh = image_size(root / rel, (img["width"], img["height"]))
        meta = {"image_id": img.get("id"), "activity_id": ann.get("activity_id")}
        rows.append(_row(split, seq, frame, rel, wh, K, dist, ann["bbox"], skel, j, uv, meta))
    return rows, rejected, [path]


# --------------------------------------------------------------------------------------------------- native
def _load_mat(path: Path) -> dict:
    import h5py
    if h5py.is_hdf5(path):
        with h5py.File(path, "r") as f:
            return {k: np.asarray(f[k]) for k in f.keys() if isinstance(f[k], h5py.Dataset)}
    import scipy.io
    try:
        return scipy.io.loadmat(path)
    except Exception as e:  # scipy raises several types on non-mat input
        raise InputError(f"{path}: not a readable .mat file ({type(e).__name__}: {e})") from None


def _native_train(root, subjects, joints, interval, cameras, limit, progress):
    base = root / SET_DIRS["train"]
    seqs = [(s, q) for s in (subjects or range(1, 9)) for q in (1, 2) if (base / f"S{s}" / f"Seq{q}").is_dir()]
    if not seqs:
        raise InputError(f"{base / 'S1' / 'Seq1' / 'annot.mat'}: no 3DHP training sequence found")
    rows, used = [], []
    for s, q in progress_bar(seqs, "3dhp native train", progress):
        d = base / f"S{s}" / f"Seq{q}"
        mat = _load_mat(require_file(d / "annot.mat", "3DHP annot.mat"))
        calib = parse_calibration(d / "camera.calibration")
        used += [d / "annot.mat", d / "camera.calibration"]
        for c in cameras:
            if c not in calib:
                raise InputError(f"{d / 'camera.calibration'}: camera {c} missing")
            K, size = calib[c]
            j3 = np.asarray(mat["annot3"][c][0], np.float64).reshape(-1, 28, 3) / 1000.0
            j2 = np.asarray(mat["annot2"][c][0], np.float64).reshape(-1, 28, 2)
            j3, skel = _select(j3, joints, True)
            j2, _ = _select(j2, joints, True)
            seq = f"S{s}_Seq{q}_V{c}"
            for i in range(0, len(j3), interval):
                rel = f"{SET_DIRS['train']}/S{s}/Seq{q}/images/{seq}/img_{seq}_{i + 1:06d}.jpg"
                wh = image_size(root / rel, size)
                bbox = expanded_bbox(tight_bbox(j2[i]), 1.2)
                rows.append(_row("train", seq, i, rel, wh, K, [], bbox, skel, j3[i], j2[i],
                                 {"subject": s, "seq": q, "camera": c}))
                if limit is not None and len(rows) >= limit:
                    return rows, used
    return rows, used


def _native_test(root, subjects, univ, interval, limit, progress):
    base = root / SET_DIRS["test"]
    todo = [k for k in (subjects or range(1, 7)) if (base / f"TS{k}").is_dir()]
    if not todo:
        raise InputError(f"{base / 'TS1' / 'annot_data.mat'}: no 3DHP test sequence found")
    rows, used = [], []
    for k in progress_bar(todo, "3dhp native test", progress):
        path = require_file(base / f"TS{k}" / "annot_data.mat", "3DHP annot_data.mat")
        mat = _load_mat(path)
        used.append(path)
        valid = np.asarray(mat["valid_frame"]).reshape(-1).astype(bool)
        n = valid.size
        j3 = np.asarray(mat["univ_annot3" if univ else "annot3"], np.float64)
        j2 = np.asarray(mat["annot2"], np.float64)
        # h5py gives (N,1,17,3); mat73/scipy give MATLAB order (17,3,N) or (17,3,1,N): move N first
        if j3.shape[0] != n:
            j3, j2 = np.moveaxis(j3, -1, 0), np.moveaxis(j2, -1, 0)
            j3, j2 = j3.reshape(n, 3, 17).transpose(0, 2, 1), j2.reshape(n, 2, 17).transpose(0, 2, 1)
        j3, j2 = j3.reshape(n, 17, 3) / 1000.0, j2.reshape(n, 17, 2)
        act = np.asarray(mat.get("activity_annotation", np.zeros(n))).reshape(-1)
        K, dist, size = ts_camera(k)
        for i in np.flatnonzero(valid)[::interval]:
            rel = f"{SET_DIRS['test']}/TS{k}/imageSequence/img_{i + 1:06d}.jpg"
            wh = image_size(root / rel, size)
            bbox = expanded_bbox(tight_bbox(j2[i]), 1.2)
            rows.append(_row("test", f"TS{k}", i, rel, wh, K, dist, bbox, "mpi_inf_3dhp17", j3[i], j2[i],
                             {"activity": int(act[i]) if act.size == n else None}))
            if limit is not None and len(rows) >= limit:
                return rows, used
    return rows, used


def read_mpi_inf_3dhp(root, split: str, *, source: str = "json", joints: int = 28, interval: int | None = None,
                      subjects=None, cameras=TRAIN_CAMERAS, univ: bool = False, limit: int | None = None,
                      progress: bool = True) -> AdapterOutput:
    root = Path(root)
    if split not in ("train", "test"):
        raise InputError(f"mpi_inf_3dhp: unknown split {split!r} (train or test)")
    if joints not in (17, 28):
        raise InputError(f"mpi_inf_3dhp: --joints must be 17 or 28, got {joints}")
    rejected = []
    if source == "json":
        rows, rejected, used = _read_json(root, split, joints, limit, progress)
    elif source == "native" and split == "train":
        rows, used = _native_train(root, subjects, joints, int(interval or 10), tuple(cameras), limit, progress)
    elif source == "native":
        rows, used = _native_test(root, subjects, univ, int(interval or 1), limit, progress)
    else:
        raise InputError(f"mpi_inf_3dhp: unknown --source {source!r} (json or native)")
    return AdapterOutput(ADAPTER, ADAPTER_VERSION, rows, rejected, root, root, tuple(used),
                         {"source": source, "joints": joints, "univ": univ})

"""3DPW adapter: ``sequenceFiles/{train,validation,test}/*.pkl`` -> manifest rows (dataset ``3dpw``).

Layout: ``ROOT/sequenceFiles/<split>/<seq>.pkl`` and ``ROOT/imageFiles/<seq>/image_{i:05d}.jpg``, where ``i`` is
the ARRAY index of the frame (not ``img_frame_ids[i]``, which counts at 60 Hz). The pickles are Python-2 pickles
read with :class:`pipeline.unpickle.RestrictedUnpickler` (latin-1, numpy data only): a 3DPW file can never run code.

Rows (one per actor per frame):
* Only frames with ``campose_valid[actor][i] == 1`` become rows (the official rule; with ``require_poses2d`` also
  the 3dpw-eval rule "poses2d not all zero"). Filtered frames are not rows and not rejections.
* ``joints_cam``: the 24 SMPL joints of ``jointPositions`` (world, metres) moved to the camera of that frame,
  ``X_c = R_i X_w + t_i`` from ``cam_poses[i]`` (the camera moves; never ``cam_poses[0]``). Skeleton ``smpl24``.
  No body model is needed. ``joints_2d`` = their pinhole projection; ``joints_vis`` = 1 (3D label present; not
  image visibility). ``K`` = ``cam_intrinsics``, no distortion.
* ``smpl``: ``betas[:10]`` (some files hold 300), ``pose`` with the root orientation in the camera frame
  (R_i @ Rodrigues(pose[:3])), ``transl`` in the camera frame, gender male/female. SMPL rotates about the rest
  pelvis J0, so ``transl_cam = R_i (trans + J0) + t_i - J0``; J0 = pelvis - trans, with the pelvis taken from the
  body model when one is given, else from ``jointPositions[0]`` (identical when the joints come from that SMPL).
  With ``smpl_dir`` also ``twist``: the bone twist labels of the HPS branch (pipeline.ik.twist_labels, with the
  gendered model's rest skeleton); null without a body model.
* ``bbox``: without a body model, the tight box of the projected 24 joints scaled 1.2x about its centre (joints are
  skeleton centres; 1.2 as I2L/SPIN). With ``smpl_dir`` (gendered SMPL), the official crop box: the tight box of
  the projected mesh vertices, vertices clipped to [-0.2, 1.2]·max(W, H) as PersPose does.
* With ``smpl_dir`` AND ``regressor`` (J_regressor_h36m_correct, 17x6890), a SECOND row set holds the H36M-17
  joints regressed from the camera-frame mesh (the standard 3DPW test protocol): skeleton ``h36m17``, same
  sequence and frame, ``person = actor + H36M17_PERSON_OFFSET`` (100), ``meta.row_set = "mesh_h36m17"``.
* Image size: read from the header of the sequence's first image (all frames of a sequence share it); when no
  image is present, (2·cx, 2·cy) from K (3DPW's principal point is the image centre); missing images are then
  rejected by the manifest validation.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..geometry import project
from ..manifest import make_sample_id
from ..unpickle import UnsafePickleError, restricted_load
from .common import (AdapterOutput, flat, image_size, joints_bbox, progress_bar, require_dir,
                     rotate_root_orient, tight_bbox)

log = logging.getLogger(__name__)

ADAPTER = "3dpw"
ADAPTER_VERSION = "1"
SPLITS = ("train", "validation", "test")
H36M17_PERSON_OFFSET = 100
CHUNK = 256
_KEYS = ("sequence", "genders", "betas", "poses", "trans", "jointPositions", "campose_valid", "cam_poses",
         "cam_intrinsics")
_GENDER = {"m": "male", "f": "female", "male": "male", "female": "female"}

__all__ = ["read_3dpw", "load_sequence", "H36M17_PERSON_OFFSET", "SPLITS"]


def load_sequence(path) -> dict:
    """One 3DPW sequence pickle -> dict, via the restricted unpickler; InputError naming the file otherwise."""
    path = Path(path)
    try:
        d = restricted_load(path)
    except UnsafePickleError as e:
        raise InputError(str(e)) from None
    except Exception as e:  # any unpickling failure of a corrupt file
        raise InputError(f"{path}: not a readable 3DPW pickle ({type(e).__name__}: {e})") from None
    if not isinstance(d, dict):
        raise InputError(f"{path}: expected a dict, got {type(d).__name__}")
    missing = [k for k in _KEYS if k not in d]
    if missing:
        raise InputError(f"{path}: not a 3DPW sequence file, missing key(s) {', '.join(missing)}")
    return d


def _vertex_bbox(verts_cam: np.ndarray, K: np.ndarray, wh) -> np.ndarray:
    uv = project(verts_cam, K)
    m = max(wh)
    return tight_bbox(np.clip(uv, -0.2 * m, 1.2 * m))


def _actor_rows(d, seq, p, idx, split, K, wh, image_dir_rel, models, regressor):
    """Rows of actor p for the frame indices idx (both row sets)."""
    cam = np.asarray(d["cam_poses"], np.float64)[idx]
    R, t = cam[:, :3, :3], cam[:, :3, 3]
    joints_w = np.asarray(d["jointPositions"][p], np.float64)[idx].reshape(-1, 24, 3)
    Rt = np.swapaxes(R, -1, -2)  # row-vector form: X_c = X_w @ R^T + t (matmul: einsum is 10x slower here)
    joints_c = joints_w @ Rt + t[:, None]
    pose = np.asarray(d["poses"][p], np.float64)[idx].reshape(-1, 72).copy()
    trans = np.asarray(d["trans"][p], np.float64)[idx].reshape(-1, 3)
    betas = np.asarray(d["betas"][p], np.float64).reshape(-1)[:10]
    gender = _GENDER.get(str(d["genders"][p]).lower(), "neutral")
    uv = project(joints_c, K)
    bbox = joints_bbox(joints_c, K)
    pelvis_w = joints_w[:, 0]
    j17 = twist = None
    if models is not None:
        out = models[gender](np.repeat(betas[None], len(idx), 0), pose, trans)
        from ..body_model import twist_labels_of
        twist = twist_labels_of(models[gender], np.repeat(betas[None], len(idx), 0), pose)
        verts_c = out.vertices @ Rt + t[:, None]
        bbox = np.stack([_vertex_bbox(v, K, wh) for v in verts_c])
        pelvis_w = out.joints[:, 0]
        if regressor is not None:
            j17 = regressor @ verts_c
    j0 = pelvis_w - trans
    transl_c = (R @ pelvis_w[..., None])[..., 0] + t - j0
    pose[:, :3] = rotate_root_orient(R, pose[:, :3])
    img_ids = d.get("img_frame_ids")
    rows = []
    for n, i in enumerate(idx):
        smpl = {"betas": betas, "pose": pose[n], "transl": transl_c[n], "gender": gender,
                "twist": None if twist is None else twist[n]}
        base = {"dataset": ADAPTER, "split": split, "sequence": seq, "frame": int(i),
                "image_path": f"{image_dir_rel}/image_{int(i):05d}.jpg", "image_w": wh[0], "image_h": wh[1],
                "K": flat(K), "dist": [], "smpl": smpl}
        meta = {"actor": p, "img_frame_id": int(img_ids[i]) if img_ids is not None else None}
        rows.append({**base, "sample_id": make_sample_id(ADAPTER, split, seq, i, p), "person": p,
                     "bbox": flat(bbox[n]), "skeleton": "smpl24", "joints_cam": flat(joints_c[n], np.float32),
                     "joints_2d": flat(uv[n], np.float32), "joints_vis": [1] * 24,
                     "meta": json.dumps({**meta, "row_set": "smpl24"})})
        if j17 is not None:
            q = p + H36M17_PERSON_OFFSET
            rows.append({**base, "sample_id": make_sample_id(ADAPTER, split, seq, i, q), "person": q,
                         "bbox": flat(bbox[n]), "skeleton": "h36m17", "joints_cam": flat(j17[n], np.float32),
                         "joints_2d": flat(project(j17[n], K), np.float32), "joints_vis": [1] * 17,
                         "meta": json.dumps({**meta, "row_set": "mesh_h36m17"})})
    return rows


def read_3dpw(root, split: str, *, limit: int | None = None, smpl_dir=None, regressor=None,
              require_poses2d: bool = False, progress: bool = True) -> AdapterOutput:
    root = Path(root)
    if split not in SPLITS:
        raise InputError(f"3dpw: unknown split {split!r} (one of {', '.join(SPLITS)})")
    seq_dir = require_dir(root / "sequenceFiles" / split, "3DPW sequence directory")
    files = sorted(seq_dir.glob("*.pkl"))
    if not files:
        raise InputError(f"{seq_dir}: no *.pkl sequence files")
    if regressor is not None and smpl_dir is None:
        raise InputError("3dpw: --regressor needs --smpl-dir (the H36M-17 joints are regressed from the mesh)")
    models = reg = None
    if smpl_dir is not None:
        from ..body_model import load_regressor
        models = _LazyModels(smpl_dir)
        reg = load_regressor(regressor) if regressor is not None else None
    rows, used = [], []
    for path in progress_bar(files, f"3dpw {split}", progress):
        d = load_sequence(path)
        used.append(path)
        seq = str(d["sequence"])
        K = np.asarray(d["cam_intrinsics"], np.float64).reshape(3, 3)
        n_frames = len(d["cam_poses"])
        wh = image_size(root / "imageFiles" / seq / "image_00000.jpg",
                        (int(round(2 * K[0, 2])), int(round(2 * K[1, 2]))))
        for p in range(len(d["genders"])):
            valid = np.asarray(d["campose_valid"][p]).astype(bool).reshape(-1)[:n_frames]
            if require_poses2d and "poses2d" in d:
                valid &= np.abs(np.asarray(d["poses2d"][p]).reshape(n_frames, -1)).sum(1) > 0
            idx = np.flatnonzero(valid)
            if limit is not None:
                idx = idx[:max(0, limit - sum(r["skeleton"] == "smpl24" for r in rows))]
            for c in range(0, len(idx), CHUNK):  # bounded memory with meshes (6890 x 3 per frame)
                rows += _actor_rows(d, seq, p, idx[c:c + CHUNK], split, K, wh, f"imageFiles/{seq}", models, reg)
        if limit is not None and sum(r["skeleton"] == "smpl24" for r in rows) >= limit:
            break
    return AdapterOutput(ADAPTER, ADAPTER_VERSION, rows, [], root, root, tuple(used),
                         {"body_model": str(smpl_dir) if smpl_dir else None,
                          "regressor": str(regressor) if regressor else None})


class _LazyModels:
    """Gendered SMPL models, loaded on first use (3DPW actors are male or female)."""

    def __init__(self, smpl_dir):
        from ..body_model import find_model_file
        self.smpl_dir = smpl_dir
        self._cache = {}
        find_model_file(smpl_dir, "male"), find_model_file(smpl_dir, "female")  # fail early, naming the file

    def __getitem__(self, gender):
        from ..body_model import load_smpl
        if gender not in self._cache:
            self._cache[gender] = load_smpl(self.smpl_dir, gender, num_betas=10)
        return self._cache[gender]

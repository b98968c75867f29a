"""BEDLAM adapter (SMPL label flavour, ``processed_labels/*.npz``) -> dataset ``bedlam``.

Layout: ``ROOT/processed_labels/<scene>.npz`` and images ``ROOT/<scene>/png/<imgname>`` (a ``.jpg`` with the same
stem is used when the ``.png`` is absent, as PersPose does).

* The npz files are read WITHOUT pickle: numeric and unicode arrays load with ``allow_pickle=False``; a string
  column stored as an object array (some label versions) is read with the restricted unpickler (plain ``str``
  only), never with numpy's unrestricted pickle. Only imgname, pose_cam, shape, trans_cam, cam_int, cam_ext (and
  ``sub`` for meta) are read; ``gender`` is ignored on purpose (the fits are neutral).
* Split (PersPose re-split): sorted npz index 21-26 -> ``val``, all others -> ``train`` (both are used for
  training by the paper). Sorting is by file name (Python order, '-' before '_').
* Sampling: person-frames whose frame number (from ``imgname``) is a multiple of ``interval`` (default 3); other
  frames are not rows and not rejections. ``person`` = the row's order among the rows of its image.
* 3D: camera-frame joints = SMPL_neutral(num_betas=11; global_orient = pose_cam[:3], body_pose = pose_cam[3:72],
  betas = shape, transl = trans_cam + cam_ext[:3, 3]).joints[:, :24] (skeleton ``smpl24``); the ``smpl`` struct
  stores that full translation, and the bone twist labels (``twist``, pipeline.ik.twist_labels). ``bbox``: tight box of the projected mesh vertices, clipped to
  [-0.2, 1.2]·max(W, H) like PersPose. ``K`` = cam_int, no distortion.
* Close-up scenes (``closeup`` in the scene name) are stored on disk as landscape images, while their labels
  describe the portrait image ``cv2.rotate(disk, ROTATE_90_CLOCKWISE)``. The shard builder reads images as they
  are on disk, so the adapter moves every label into the ON-DISK frame: the disk image is the label image rotated
  counter-clockwise, i.e. label pixel (u, v) -> disk pixel (v, W_label - 1 - u). That is exactly a camera roll
  about the optical axis, P_disk = R_z P with R_z = [[0, 1, 0], [-1, 0, 0], [0, 0, 1]], together with
  K_disk = [[fy, 0, cy], [0, fx, W_label - 1 - cx], [0, 0, 1]] (:func:`closeup_to_disk`). Joints, K, the SMPL root
  orientation and translation (about the rest pelvis) are all transformed; the builder needs no special case.
"""
from __future__ import annotations

import json
import logging
import re
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np

from ..body_model import twist_labels_of
from ..errors import InputError
from ..geometry import project
from ..manifest import make_sample_id
from ..unpickle import RestrictedUnpickler, UnsafePickleError
from .common import AdapterOutput, flat, image_size, progress_bar, require_dir, rotate_root_orient, tight_bbox

log = logging.getLogger(__name__)

ADAPTER = "bedlam"
ADAPTER_VERSION = "1"
VAL_INDICES = range(21, 27)
DEFAULT_INTERVAL = 3
CHUNK = 256
ROT_LABEL_TO_DISK = np.array([[0.0, 1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
_KEYS = ("imgname", "pose_cam", "shape", "trans_cam", "cam_int", "cam_ext")

__all__ = ["read_bedlam", "split_of_index", "closeup_to_disk", "read_npz_arrays", "ROT_LABEL_TO_DISK"]


def split_of_index(i: int) -> str:
    """PersPose's re-split of the 30 sorted scene files: 21-26 -> 'val', the rest -> 'train'."""
    return "val" if i in VAL_INDICES else "train"


def closeup_to_disk(K: np.ndarray, label_width: int) -> tuple[np.ndarray, np.ndarray]:
    """(R_z, K_disk) for a close-up label camera K (3x3) whose label image is ``label_width`` wide: the on-disk
    image is the label image rotated 90° counter-clockwise, so project(K_disk, R_z P) = (v, W_label - 1 - u)."""
    K = np.asarray(K, np.float64)
    Kd = np.array([[K[1, 1], 0.0, K[1, 2]], [0.0, K[0, 0], label_width - 1 - K[0, 2]], [0.0, 0.0, 1.0]])
    return ROT_LABEL_TO_DISK.copy(), Kd


def _read_member_restricted(path: Path, key: str) -> np.ndarray:
    """One .npy member of an npz holding an object array (e.g. strings), via the restricted unpickler."""
    with zipfile.ZipFile(path) as zf, zf.open(f"{key}.npy") as f:
        version = np.lib.format.read_magic(f)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
            np.lib.format.read_array_header_2_0
        shape, _, dtype = read_header(f)
        if not dtype.hasobject:
            raise InputError(f"{path}: member {key} is neither a plain nor an object array")
        try:
            arr = RestrictedUnpickler(f, source=f"{path}:{key}").load()
        except UnsafePickleError as e:
            raise InputError(str(e)) from None
    return np.asarray(arr).reshape(shape)


def read_npz_arrays(path, keys, optional=()) -> dict:
    """Named arrays of an npz without numpy's unrestricted pickle (see the module docstring)."""
    path = Path(path)
    out = {}
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in keys if k not in z.files]
            if missing:
                raise InputError(f"{path}: not a BEDLAM label file, missing {', '.join(missing)}")
            for k in list(keys) + [k for k in optional if k in z.files]:
                try:
                    out[k] = z[k]
                except ValueError:  # object array: needs pickle
                    out[k] = _read_member_restricted(path, k)
    except (OSError, zipfile.BadZipFile) as e:
        raise InputError(f"{path}: not a readable npz ({e})") from None
    return out


def _frame_of(imgname: str) -> tuple[str, int]:
    p = Path(str(imgname))
    m = re.search(r"(\d+)$", p.stem)
    if m is None:
        raise ValueError(f"no frame number in imgname {imgname!r}")
    return p.parent.name or p.stem[:m.start()].rstrip("_"), int(m.group(1))


def _chunk_rows(d, names, sel, persons, scene, closeup, root, split, model):
    pose = np.asarray(d["pose_cam"], np.float64)[sel][:, :72].copy()
    betas = np.asarray(d["shape"], np.float64)[sel]
    transl = np.asarray(d["trans_cam"], np.float64)[sel] + np.asarray(d["cam_ext"], np.float64)[sel, :3, 3]
    Ks = np.asarray(d["cam_int"], np.float64)[sel]
    out = model(betas, pose, transl)
    joints, verts = out.joints, out.vertices
    twist = twist_labels_of(model, betas, pose)
    rows = []
    for n, i in enumerate(sel):
        name = names[i]
        seq, frame = _frame_of(name)
        rel = f"{scene}/png/{name}"
        if not (root / rel).is_file() and (root / rel).with_suffix(".jpg").is_file():
            rel = str(Path(rel).with_suffix(".jpg"))
        K, j, v, p, tr = Ks[n], joints[n], verts[n], pose[n], transl[n]
        if closeup:
            wh = image_size(root / rel, (int(round(2 * K[1, 2])), int(round(2 * K[0, 2]))))
            Rz, K = closeup_to_disk(K, label_width=wh[1])
            j0 = j[0] - tr  # rest pelvis: SMPL rotates about it
            j, v = j @ Rz.T, v @ Rz.T
            p = p.copy()
            p[:3] = rotate_root_orient(Rz, p[None, :3])[0]
            tr = j[0] - j0
        else:
            wh = image_size(root / rel, (int(round(2 * K[0, 2])), int(round(2 * K[1, 2]))))
        m = max(wh)
        bbox = tight_bbox(np.clip(project(v, K), -0.2 * m, 1.2 * m))
        sid = make_sample_id(ADAPTER, split, f"{scene}.{seq}", frame, persons[n])
        meta = {"scene": scene, "imgname": name, "closeup_rotated_to_disk": closeup}
        if "sub" in d:
            meta["sub"] = str(d["sub"][i])
        rows.append({"sample_id": sid, "dataset": ADAPTER, "split": split, "sequence": f"{scene}.{seq}",
                     "frame": frame, "person": persons[n], "image_path": rel, "image_w": wh[0], "image_h": wh[1],
                     "K": flat(K), "dist": [], "bbox": flat(bbox), "skeleton": "smpl24",
                     "joints_cam": flat(j, np.float32), "joints_2d": flat(project(j, K), np.float32),
                     "joints_vis": [1] * 24,
                     "smpl": {"betas": betas[n], "pose": p, "transl": tr, "gender": "neutral", "twist": twist[n]},
                     "meta": json.dumps(meta)})
    return rows


def _scene_rows(path, root, split, interval, model, limit):
    scene = path.stem
    closeup = "closeup" in scene
    d = read_npz_arrays(path, _KEYS, optional=("sub",))
    names = [str(s) for s in d["imgname"]]
    seen = Counter()
    sel, persons = [], []
    for i, name in enumerate(names):
        person = seen[name]
        seen[name] += 1
        if _frame_of(name)[1] % interval == 0:
            sel.append(i)
            persons.append(person)
        if limit is not None and len(sel) >= limit:
            break
    if not sel:
        return []
    rows = []
    for c in range(0, len(sel), CHUNK):  # bounded memory: vertices are 6890 x 3 float64 per person-frame
        rows += _chunk_rows(d, names, np.asarray(sel[c:c + CHUNK]), persons[c:c + CHUNK], scene, closeup, root,
                            split, model)
    return rows


def read_bedlam(root, split: str, *, smpl_dir=None, interval: int | None = None, limit: int | None = None,
                progress: bool = True) -> AdapterOutput:
    root = Path(root)
    if split not in ("train", "val"):
        raise InputError(f"bedlam: unknown split {split!r} (train or val: PersPose's re-split)")
    lab = require_dir(root / "processed_labels", "BEDLAM processed_labels directory")
    files = sorted(lab.glob("*.npz"), key=lambda p: p.name)
    if not files:
        raise InputError(f"{lab}: no *.npz label files")
    if smpl_dir is None:
        raise InputError("bedlam: --smpl-dir is required (3D joints come from the neutral SMPL body model)")
    interval = int(interval or DEFAULT_INTERVAL)
    from ..body_model import load_smpl
    model = load_smpl(smpl_dir, "neutral", num_betas=11)
    chosen = [p for i, p in enumerate(files) if split_of_index(i) == split]
    rows = []
    for path in progress_bar(chosen, f"bedlam {split}", progress):
        try:
            rows += _scene_rows(path, root, split, interval, model, None if limit is None else limit - len(rows))
        except ValueError as e:
            raise InputError(f"{path}: {e}") from None
        if limit is not None and len(rows) >= limit:
            break
    return AdapterOutput(ADAPTER, ADAPTER_VERSION, rows, [], root, root, tuple(chosen),
                         {"interval": interval, "body_model": str(smpl_dir)})

"""SMPL-format body models: the adapters' meshes (3DPW vertices/H36M-17, BEDLAM joints, synth labels) and the HPS
branch's forward pass (trainer: IK -> mesh, PVE).

Model files are found in a directory as ``SMPL_{NEUTRAL,MALE,FEMALE}.npz`` (see ``perspose-build smpl-convert``)
or ``.pkl`` (official pickles, converted in memory without chumpy), or the official
``basicmodel_{neutral,m,f}_lbs_10_207_0_v1.*.pkl`` names. A file path is accepted too, and the name ``synthetic``
means the toolkit's own generated model (pipeline/synth_model.py), which any vertex count other than SMPL's 6890
may have: smplx's extra vertex joints are then switched off (only the 24 kinematic joints are used anywhere).
:class:`SmplModel` runs numpy float64 batches for the adapters; :class:`BodyLayer` is the batched torch forward
(float32 or float64, rotation matrices in, differentiable) the HPS branch uses.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import InputError
from .smpl_convert import read_smpl_model

log = logging.getLogger(__name__)

__all__ = ["find_model_file", "SmplModel", "load_smpl", "twist_labels_of", "load_regressor", "smpl_layer", "BodyLayer",
           "load_body_layer", "SYNTHETIC"]

SYNTHETIC = "synthetic"   # the name of the toolkit's generated body model (synth_model.body_model_path)
SMPL_NUM_VERTICES = 6890

_GENDER_ALIASES = {"m": "male", "male": "male", "f": "female", "female": "female", "n": "neutral",
                   "neutral": "neutral"}
_OFFICIAL = {"neutral": "neutral", "male": "m", "female": "f"}


def find_model_file(smpl_path, gender: str = "neutral") -> Path:
    """The model file for ``gender`` inside directory ``smpl_path`` (or ``smpl_path`` itself if it is a file)."""
    if str(smpl_path) == SYNTHETIC:
        from .synth_model import body_model_path
        return body_model_path()
    p = Path(smpl_path)
    if p.is_file():
        return p
    g = _GENDER_ALIASES.get(str(gender).lower())
    if g is None:
        raise InputError(f"unknown SMPL gender {gender!r}")
    if not p.is_dir():
        raise InputError(f"{p}: SMPL model directory not found")
    cands = [p / f"SMPL_{g.upper()}.npz", p / f"SMPL_{g.upper()}.pkl"]
    cands += sorted(p.glob(f"basicmodel_{_OFFICIAL[g]}_lbs_10_207_0_v1.*.pkl"))
    for c in cands:
        if c.is_file():
            return c
    raise InputError(f"{p}: no SMPL model for gender {g} (expected {cands[0].name} or {cands[1].name}; "
                     "convert official pickles with `perspose-build smpl-convert`)")


@dataclass(frozen=True)
class SmplOutput:
    vertices: np.ndarray   # (B, V, 3)
    joints: np.ndarray     # (B, 24, 3) SMPL kinematic joints


class SmplModel:
    """A thin float64 wrapper around ``smplx.SMPL`` built from plain arrays (no pickle involved)."""

    def __init__(self, path, gender: str = "neutral", num_betas: int = 10):
        import torch
        self.path = Path(path)
        model = read_smpl_model(self.path)
        self.num_betas = num_betas
        self._torch = torch
        self.layer = smpl_layer(model, self.path, gender, num_betas, torch.float64)

    def __call__(self, betas, pose, transl, batch: int = 512) -> SmplOutput:
        """betas (N, <=num_betas), pose (N, 72) axis-angle, transl (N, 3) -> vertices and 24 joints, float64."""
        torch = self._torch
        betas = np.asarray(betas, np.float64)
        nb = min(betas.shape[1], self.num_betas)
        b = np.zeros((betas.shape[0], self.num_betas))
        b[:, :nb] = betas[:, :nb]
        pose = np.asarray(pose, np.float64).reshape(-1, 72)
        transl = np.asarray(transl, np.float64).reshape(-1, 3)
        verts, joints = [], []
        with torch.no_grad():
            for s in range(0, len(b), batch):
                sl = slice(s, s + batch)
                out = self.layer(betas=torch.from_numpy(b[sl]), global_orient=torch.from_numpy(pose[sl, :3]),
                                 body_pose=torch.from_numpy(pose[sl, 3:]), transl=torch.from_numpy(transl[sl]))
                verts.append(out.vertices.numpy())
                joints.append(out.joints[:, :24].numpy())
        if not verts:
            return SmplOutput(np.zeros((0, self.layer.get_num_verts(), 3)), np.zeros((0, 24, 3)))
        return SmplOutput(np.concatenate(verts), np.concatenate(joints))


def twist_labels_of(model: SmplModel, betas, pose) -> np.ndarray:
    """Twist labels (N, 23) of SMPL parameters (pipeline.ik.twist_labels): betas (N, <=num_betas), pose (N, 72)."""
    import torch

    from .ik import axis_angle_rotation, twist_labels
    pose = np.asarray(pose, np.float64).reshape(-1, 24, 3)
    if len(pose) == 0:
        return np.zeros((0, 23))
    rest = model(betas, np.zeros((len(pose), 72)), np.zeros((len(pose), 3))).joints
    aa = torch.from_numpy(pose)
    angle = aa.norm(dim=-1)
    axis = torch.where(angle[..., None] > 0, aa, torch.tensor([1.0, 0.0, 0.0], dtype=aa.dtype))
    local = axis_angle_rotation(axis, angle)
    return twist_labels(local, torch.from_numpy(rest)).numpy()


def load_smpl(smpl_path, gender: str = "neutral", num_betas: int = 10) -> SmplModel:
    g = _GENDER_ALIASES.get(str(gender).lower(), "neutral")
    return SmplModel(find_model_file(smpl_path, g), gender=g, num_betas=num_betas)


def load_regressor(path, num_vertices: int = 6890) -> np.ndarray:
    """A (17, V) joint regressor (.npy, e.g. J_regressor_h36m_correct.npy), loaded without pickle."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: joint regressor file not found")
    try:
        reg = np.load(p, allow_pickle=False)
    except ValueError as e:
        raise InputError(f"{p}: not a plain .npy array ({e})") from None
    if reg.ndim != 2 or reg.shape[1] != num_vertices:
        raise InputError(f"{p}: regressor has shape {reg.shape}, expected (J, {num_vertices})")
    return reg.astype(np.float64)


def smpl_layer(model: dict, path, gender: str, num_betas: int, dtype):
    """An eval-mode ``smplx.SMPL`` over the arrays of :func:`pipeline.smpl_convert.read_smpl_model`."""
    import smplx
    import torch  # noqa: F401  (smplx needs it; imported here so pipeline stays torch-free at import)
    from smplx.utils import Struct
    model = dict(model)
    avail = model["shapedirs"].shape[2]
    if num_betas > avail:
        raise InputError(f"{path}: model has {avail} shape components, {num_betas} betas requested")
    # smplx prints a warning and caps num_betas at 10 for models with < 300 components; padding with zero
    # components changes nothing numerically and keeps num_betas as asked.
    if avail < smplx.SMPL.SHAPE_SPACE_DIM:
        pad = np.zeros(model["shapedirs"].shape[:2] + (smplx.SMPL.SHAPE_SPACE_DIM - avail,))
        model["shapedirs"] = np.concatenate([model["shapedirs"], pad], axis=2)
    extra = {}
    if model["v_template"].shape[0] != SMPL_NUM_VERTICES:  # smplx's extra joints index SMPL's own vertices
        extra = {"vertex_ids": {k: 0 for k in ("nose", "reye", "leye", "rear", "lear")}, "use_hands": False,
                 "use_feet_keypoints": False}
    layer = smplx.SMPL(model_path=str(path), data_struct=Struct(**model), gender=gender, num_betas=num_betas,
                       dtype=dtype, create_betas=False, create_global_orient=False, create_body_pose=False,
                       create_transl=False, **extra)
    return layer.eval()


class BodyLayer:
    """Batched torch forward of an SMPL-format model from rotation matrices, on any device and dtype.

    ``rest_joints(betas)`` (B, 24, 3): J_regressor (v_template + shapedirs β), the T-pose joints the IK needs;
    ``forward(betas, rotations, root)`` -> (vertices (B, V, 3), joints (B, 24, 3)) with the local rotations
    (B, 24, 3, 3) (rotation 0 = the global orientation) and the root joint placed at ``root`` (B, 3)."""

    def __init__(self, path, gender: str = "neutral", num_betas: int = 10, dtype=None, device="cpu"):
        import torch
        self.path = find_model_file(path, gender) if not Path(str(path)).is_file() else Path(path)
        model = read_smpl_model(self.path)
        self.num_betas = num_betas
        self.num_vertices = int(model["v_template"].shape[0])
        self.faces = model["f"]
        self.dtype = dtype or torch.float64
        self.layer = smpl_layer(model, self.path, gender, num_betas, self.dtype).to(device)

    def to(self, device) -> "BodyLayer":
        self.layer = self.layer.to(device)
        return self

    def _betas(self, betas):
        b = betas.to(self.dtype)
        n = min(b.shape[1], self.num_betas)
        if n == self.num_betas and b.shape[1] == n:
            return b
        out = b.new_zeros((b.shape[0], self.num_betas))
        out[:, :n] = b[:, :n]
        return out

    def rest_joints(self, betas):
        lay = self.layer
        b = self._betas(betas)
        v = lay.v_template[None] + (lay.shapedirs[..., :self.num_betas] @ b.T).permute(2, 0, 1)
        return lay.J_regressor @ v

    def forward(self, betas, rotations, root):
        import torch
        b = self._betas(betas)
        rot = rotations.to(self.dtype)
        B = rot.shape[0]
        zero = torch.zeros((B, 3), dtype=self.dtype, device=rot.device)
        out = self.layer(betas=b, global_orient=rot[:, :1], body_pose=rot[:, 1:],
                         transl=zero, pose2rot=False)
        shift = (root.to(self.dtype) - out.joints[:, 0])[:, None]
        return out.vertices + shift, out.joints[:, :24] + shift

    __call__ = forward


def load_body_layer(path=SYNTHETIC, gender: str = "neutral", num_betas: int = 10, dtype=None) -> BodyLayer:
    """``path``: ``synthetic`` (the toolkit's model), a model file, or a directory with SMPL_{GENDER}.npz/.pkl."""
    return BodyLayer(find_model_file(path, gender), gender=gender, num_betas=num_betas, dtype=dtype)

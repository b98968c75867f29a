"""SMPL body model for the adapters that need meshes (3DPW vertices/H36M-17, BEDLAM joints).

Model files are found in a directory as ``SMPL_{NEUTRAL,MALE,FEMALE}.npz`` (see ``perspose-build smpl-convert``)
or ``.pkl`` (official pickles, converted in memory without chumpy), or the official
``basicmodel_{neutral,m,f}_lbs_10_207_0_v1.*.pkl`` names. A file path is accepted too.
Forward passes run in float64 on the CPU in batches.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..smpl_convert import read_smpl_model

log = logging.getLogger(__name__)

__all__ = ["find_model_file", "SmplModel", "load_smpl", "load_regressor"]

_GENDER_ALIASES = {"m": "male", "male": "male", "f": "female", "female": "female", "n": "neutral",
                   "neutral": "neutral"}
_OFFICIAL = {"neutral": "neutral", "male": "m", "female": "f"}


def find_model_file(smpl_path, gender: str = "neutral") -> Path:
    """The model file for ``gender`` inside directory ``smpl_path`` (or ``smpl_path`` itself if it is a file)."""
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
        import smplx
        import torch
        from smplx.utils import Struct
        self.path = Path(path)
        model = read_smpl_model(self.path)
        avail = model["shapedirs"].shape[2]
        if num_betas > avail:
            raise InputError(f"{self.path}: model has {avail} shape components, {num_betas} betas requested")
        # smplx prints a warning and caps num_betas at 10 for models with < 300 components; padding with zero
        # components changes nothing numerically and keeps num_betas as asked.
        if avail < smplx.SMPL.SHAPE_SPACE_DIM:
            pad = np.zeros(model["shapedirs"].shape[:2] + (smplx.SMPL.SHAPE_SPACE_DIM - avail,))
            model["shapedirs"] = np.concatenate([model["shapedirs"], pad], axis=2)
        self.num_betas = num_betas
        self._torch = torch
        self.layer = smplx.SMPL(model_path=str(self.path), data_struct=Struct(**model), gender=gender,
                                num_betas=num_betas, dtype=torch.float64, create_betas=False,
                                create_global_orient=False, create_body_pose=False, create_transl=False)
        self.layer.eval()

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

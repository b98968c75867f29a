"""The HPS branch's labels (issue 12): shape β, bone twists and leaf rotations of a shard sample, and their flip.

A shard sample of a manifest row with an ``smpl`` struct carries ``smpl_betas``, ``smpl_pose`` (72 axis-angle values,
the root orientation in the original camera) and ``smpl_twist`` (23 angles: the twist of each bone parent(c) -> c
about its rest direction, pipeline.ik.bone_twists). The HPS heads learn things that do not depend on the camera:

* ``betas``     (10,)     the first 10 shape coefficients (BEDLAM's 11th, where present, is not predicted);
* ``twist``     (23, 2)   (cos φ, sin φ) per bone; ``twist_mask`` (23,) 1 where φ is defined (finite);
* ``leaf_rot``  (5, 3, 3) the local rotations of the leaves :data:`LEAF_JOINTS` (feet, head, hands): the joints
  and twists cannot determine them (docs/design.md §12), so they are predicted directly, as the official code does.

Roll, zoom and the perspective rotation do not change any of them (they are local or intrinsic). A horizontal flip
mirrors the person: with M = diag(-1, 1, 1), a local rotation becomes M R M on the mirror joint, so a bone's
twist becomes -φ on the mirror bone and a leaf rotation M R M on the mirror leaf; β is unchanged (the body models
are left/right symmetric; exactly so for the synthetic one). Samples without SMPL labels get zeros and
``has_smpl`` False, and contribute nothing to the HPS losses.
"""
from __future__ import annotations

from functools import lru_cache

import cv2
import numpy as np

from pipeline.skeleton import get_skeleton

__all__ = ["LEAF_JOINTS", "NUM_BETAS", "NUM_TWISTS", "hps_labels", "flip_hps_labels", "empty_hps_labels",
           "mirror_bone_perm", "mirror_leaf_perm"]

LEAF_JOINTS = (10, 11, 15, 22, 23)      # SMPL joints without children (pipeline.ik.LEAVES)
NUM_BETAS = 10
NUM_TWISTS = 23                         # bones parent(c) -> c, c = 1..23
_M = np.diag([-1.0, 1.0, 1.0])


@lru_cache(maxsize=None)
def mirror_bone_perm() -> tuple[int, ...]:
    """perm[k] = index of the mirror of bone k (bone k ends at SMPL joint k + 1)."""
    fp = get_skeleton("smpl24").flip_perm
    return tuple(fp[c] - 1 for c in range(1, 24))


@lru_cache(maxsize=None)
def mirror_leaf_perm() -> tuple[int, ...]:
    fp = get_skeleton("smpl24").flip_perm
    return tuple(LEAF_JOINTS.index(fp[j]) for j in LEAF_JOINTS)


def empty_hps_labels() -> dict:
    return {"betas": np.zeros(NUM_BETAS, np.float32), "twist": np.zeros((NUM_TWISTS, 2), np.float32),
            "twist_mask": np.zeros(NUM_TWISTS, np.float32), "leaf_rot": np.zeros((len(LEAF_JOINTS), 3, 3), np.float32),
            "has_smpl": False}


def hps_labels(arrays: dict) -> dict:
    """Shard arrays -> the HPS labels (module docstring); zeros with has_smpl False without SMPL labels."""
    if "smpl_betas" not in arrays or "smpl_pose" not in arrays:
        return empty_hps_labels()
    out = empty_hps_labels()
    betas = np.asarray(arrays["smpl_betas"], np.float64).reshape(-1)
    n = min(NUM_BETAS, betas.size)
    out["betas"][:n] = betas[:n]
    pose = np.asarray(arrays["smpl_pose"], np.float64).reshape(24, 3)
    out["leaf_rot"] = np.stack([cv2.Rodrigues(pose[j])[0] for j in LEAF_JOINTS]).astype(np.float32)
    if "smpl_twist" in arrays:
        phi = np.asarray(arrays["smpl_twist"], np.float64).reshape(NUM_TWISTS)
        ok = np.isfinite(phi)
        phi = np.where(ok, phi, 0.0)
        out["twist"] = np.stack([np.cos(phi), np.sin(phi)], -1).astype(np.float32) * ok[:, None]
        out["twist_mask"] = ok.astype(np.float32)
    out["has_smpl"] = True
    return out


def flip_hps_labels(labels: dict) -> dict:
    """The labels of the mirrored person (module docstring)."""
    if not labels["has_smpl"]:
        return labels
    bones, leaves = list(mirror_bone_perm()), list(mirror_leaf_perm())
    twist = labels["twist"][bones].copy()
    twist[:, 1] *= -1.0
    leaf = (_M @ labels["leaf_rot"][leaves].astype(np.float64) @ _M).astype(np.float32)
    return {**labels, "twist": twist, "twist_mask": labels["twist_mask"][bones].copy(), "leaf_rot": leaf}

"""Registry of named skeletons: the single source of truth for joint order, root, parents and flip pairs.

Left/right are anatomical (the person's own left). Flip pairs are derived from the ``l_``/``r_`` name prefixes,
so they cannot disagree with the names. Human3.6M follows G. Moon's naming, which the fixtures and
``J_regressor_h36m_correct`` confirm: indices 1-3 are the RIGHT leg (HybrIK/SPIN label them left).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from types import MappingProxyType
from typing import Mapping

__all__ = ["Skeleton", "get_skeleton", "SKELETONS", "DEFAULT_SKELETONS", "joint_slices"]


@dataclass(frozen=True)
class Skeleton:
    name: str
    joint_names: tuple[str, ...]
    parents: tuple[int, ...]           # -1 for the root / unattached joints; used for drawing and bone lengths
    root: int | None                   # None for 2D-only skeletons (no depth reference)
    has_3d: bool = True
    eval_subsets: Mapping[str, tuple[int, ...]] = field(default_factory=dict)

    def __post_init__(self):
        if len(self.parents) != len(self.joint_names):
            raise ValueError(f"skeleton {self.name}: {len(self.parents)} parents for {len(self.joint_names)} joints")
        if len(set(self.joint_names)) != len(self.joint_names):
            raise ValueError(f"skeleton {self.name}: duplicate joint names")

    @property
    def num_joints(self) -> int:
        return len(self.joint_names)

    @cached_property                    # read per flipped training sample; a frozen dataclass still has a __dict__
    def flip_perm(self) -> tuple[int, ...]:
        """flip_perm[i] = index of the mirror joint of i (i itself for central joints)."""
        index = {n: i for i, n in enumerate(self.joint_names)}

        def mirror(n: str) -> str:
            if n.startswith("l_"):
                return "r_" + n[2:]
            if n.startswith("r_"):
                return "l_" + n[2:]
            return n
        return tuple(index[mirror(n)] for n in self.joint_names)

    @property
    def flip_pairs(self) -> tuple[tuple[int, int], ...]:
        return tuple((i, j) for i, j in enumerate(self.flip_perm) if i < j)

    @property
    def edges(self) -> tuple[tuple[int, int], ...]:
        return tuple((p, i) for i, p in enumerate(self.parents) if p >= 0)

    def side(self, i: int) -> str:
        """'l', 'r' or 'c' (central), for colouring drawings."""
        n = self.joint_names[i]
        return n[0] if n[:2] in ("l_", "r_") else "c"

    def index(self, name: str) -> int:
        return self.joint_names.index(name)


_SMPL24 = Skeleton(
    "smpl24",
    ("pelvis", "l_hip", "r_hip", "spine1", "l_knee", "r_knee", "spine2", "l_ankle", "r_ankle", "spine3", "l_foot",
     "r_foot", "neck", "l_collar", "r_collar", "head", "l_shoulder", "r_shoulder", "l_elbow", "r_elbow", "l_wrist",
     "r_wrist", "l_hand", "r_hand"),
    (-1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19, 20, 21),
    root=0,
    # the 3DPW challenge's 12 major joints (PCK/AUC); metrics use all 24 otherwise
    eval_subsets=MappingProxyType({"all": tuple(range(24))}),
)

_H36M17 = Skeleton(
    "h36m17",
    ("pelvis", "r_hip", "r_knee", "r_ankle", "l_hip", "l_knee", "l_ankle", "spine", "thorax", "neck_nose", "head_top",
     "l_shoulder", "l_elbow", "l_wrist", "r_shoulder", "r_elbow", "r_wrist"),
    (-1, 0, 1, 2, 0, 4, 5, 0, 7, 8, 9, 8, 11, 12, 8, 14, 15),
    root=0,
    eval_subsets=MappingProxyType({"all": tuple(range(17)), "h36m14": (6, 5, 4, 1, 2, 3, 16, 15, 14, 11, 12, 13, 8, 10)}),
)

_MPII3DHP17 = Skeleton(
    "mpi_inf_3dhp17",
    ("head_top", "neck", "r_shoulder", "r_elbow", "r_wrist", "l_shoulder", "l_elbow", "l_wrist", "r_hip", "r_knee",
     "r_ankle", "l_hip", "l_knee", "l_ankle", "pelvis", "spine", "head"),
    (16, 15, 1, 2, 3, 1, 5, 6, 14, 8, 9, 14, 11, 12, -1, 14, 1),
    root=14,
    # PCK/AUC protocol (HybrIK): head-top, neck, shoulders, elbows, wrists, hips, knees, ankles = test indices 0..13
    eval_subsets=MappingProxyType({"all": tuple(range(17)), "pck14": tuple(range(14))}),
)

_MPII3DHP28 = Skeleton(
    "mpi_inf_3dhp28",
    ("spine3", "spine4", "spine2", "spine", "pelvis", "neck", "head", "head_top", "l_clavicle", "l_shoulder",
     "l_elbow", "l_wrist", "l_hand", "r_clavicle", "r_shoulder", "r_elbow", "r_wrist", "r_hand", "l_hip", "l_knee",
     "l_ankle", "l_foot", "l_toe", "r_hip", "r_knee", "r_ankle", "r_foot", "r_toe"),
    (2, 0, 3, 4, -1, 1, 5, 6, 1, 8, 9, 10, 11, 1, 13, 14, 15, 16, 4, 18, 19, 20, 21, 4, 23, 24, 25, 26),
    root=4,
    eval_subsets=MappingProxyType({"all": tuple(range(28)),
                                   # 28 -> 17 (test order), 0-based
                                   "to_17": (7, 5, 14, 15, 16, 9, 10, 11, 23, 24, 25, 18, 19, 20, 4, 3, 6)}),
)

_COCO17 = Skeleton(
    "coco17",
    ("nose", "l_eye", "r_eye", "l_ear", "r_ear", "l_shoulder", "r_shoulder", "l_elbow", "r_elbow", "l_wrist",
     "r_wrist", "l_hip", "r_hip", "l_knee", "r_knee", "l_ankle", "r_ankle"),
    (-1, 0, 0, 1, 2, 0, 0, 5, 6, 7, 8, 5, 6, 11, 12, 13, 14),
    root=None,
    has_3d=False,
    eval_subsets=MappingProxyType({"all": tuple(range(17))}),
)

SKELETONS: Mapping[str, Skeleton] = MappingProxyType(
    {s.name: s for s in (_SMPL24, _H36M17, _MPII3DHP17, _MPII3DHP28, _COCO17)})

# the joint sets a model predicts by default (their concatenation, in this order): the paper's training mix
DEFAULT_SKELETONS = ("smpl24", "h36m17", "mpi_inf_3dhp17", "coco17")


def get_skeleton(name: str) -> Skeleton:
    try:
        return SKELETONS[name]
    except KeyError:
        raise ValueError(f"unknown skeleton {name!r}; known: {', '.join(SKELETONS)}") from None


def joint_slices(names) -> dict[str, slice]:
    """Slices of each skeleton in the concatenation the model predicts, e.g. smpl24 -> 0:24, h36m17 -> 24:41."""
    out, start = {}, 0
    for n in names:
        j = get_skeleton(n).num_joints
        out[n] = slice(start, start + j)
        start += j
    return out

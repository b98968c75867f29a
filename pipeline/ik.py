"""HybrIK-style analytical inverse kinematics for SMPL (issue 12, item 2): joints + twists -> local rotations.

The SMPL kinematic tree (parents below; every parent index is smaller than its children's) poses the rest joints
J (from the shape β) top-down: G_0 = R_0, G_i = G_parent(i) R_i, p_c = p_i + G_i (J_c - J_i) for each child c.
Given the posed joints p and the rest joints J, the local rotations are recovered in the same order:

* a joint with one child c: its rest bone t = J_c - J_i must point along q = G_parent(i)ᵀ (p_c - p_i). The
  *swing* is the smallest rotation taking t̂ to q̂; the rotation about t̂ itself (the *twist* φ_i) is invisible in
  the joints and comes from the network: R_i = R_swing(t̂ -> q̂) · R_twist(t̂, φ_i) (HybrIK's decomposition);
* a joint with several children (the pelvis, spine3): the rotation that best maps its rest bones onto the posed
  ones (Kabsch; exact when the joints come from SMPL);
* a leaf (feet, head, hands: no child) moves no joint; its rotation is given (``leaf_rotations``) or identity.

Batched, plain torch, float32 or float64 (the dtype of the inputs). :func:`twist_angles` is the inverse
decomposition: the φ of given local rotations (to make labels, and for the exactness tests).

Twist labels and the HPS head use one twist per non-root joint c = 1..23 (HybrIK's convention): the twist of its
parent's local rotation about the rest bone parent(c) -> c (:func:`bone_twists`). The IK reads the twists of the
bones whose parent has exactly one child (:func:`parent_twists`); the others (the pelvis's and spine3's children,
whose parents are fitted by Kabsch) are well-defined labels the IK does not need. :func:`twist_labels` makes the
training labels: NaN (undefined) for the pelvis's three child bones, whose twist is measured on the root's
rotation and so changes with the camera (and with every roll of the augmentation), and for a bone folded back on
itself (swing within 0.5 deg of a half turn), where the swing-twist split is undefined.
"""
from __future__ import annotations

import torch

__all__ = ["SMPL_PARENTS", "SMPL_CHILDREN", "LEAVES", "rotation_between", "axis_angle_rotation",
           "rotations_from_axis_angle", "twist_angles",
           "kabsch", "solve_rotations", "forward_kinematics", "bone_twists", "parent_twists", "global_rotations",
           "twist_labels"]

SMPL_PARENTS = (-1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19, 20, 21)
SMPL_CHILDREN = tuple(tuple(c for c in range(24) if SMPL_PARENTS[c] == i) for i in range(24))
LEAVES = tuple(i for i in range(24) if not SMPL_CHILDREN[i])        # 10, 11, 15, 22, 23


def _skew(v: torch.Tensor) -> torch.Tensor:
    z = torch.zeros_like(v[..., 0])
    return torch.stack([torch.stack([z, -v[..., 2], v[..., 1]], -1), torch.stack([v[..., 2], z, -v[..., 0]], -1),
                        torch.stack([-v[..., 1], v[..., 0], z], -1)], -2)


def rotation_between(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The smallest rotation taking direction a to direction b: (..., 3) x 2 -> (..., 3, 3). Rodrigues about
    n = (â x b̂) / |â x b̂| by atan2(|â x b̂|, â · b̂), which stays accurate up to the antipode (the axis is known to
    ~1e-16 / sin(angle)); where â x b̂ vanishes, the identity (parallel) or a half turn about an axis
    perpendicular to â (antipodal, where any such axis would do)."""
    a = a / a.norm(dim=-1, keepdim=True)
    b = b / b.norm(dim=-1, keepdim=True)
    v = torch.cross(a, b, dim=-1)
    s, c = v.norm(dim=-1), (a * b).sum(-1)
    eye = torch.eye(3, dtype=a.dtype, device=a.device).expand(a.shape[:-1] + (3, 3))
    tiny = s < 1e-12
    helper = torch.where(a[..., :1].abs() < 0.9, torch.tensor([1.0, 0, 0], dtype=a.dtype, device=a.device),
                         torch.tensor([0, 1.0, 0], dtype=a.dtype, device=a.device))
    perp = torch.cross(a, helper, dim=-1)
    axis = torch.where(tiny[..., None], perp, v)
    R = axis_angle_rotation(axis, torch.atan2(s, c))
    R = torch.where((tiny & (c > 0))[..., None, None], eye, R)
    return torch.where((tiny & (c <= 0))[..., None, None], axis_angle_rotation(perp, torch.full_like(c, torch.pi)), R)


def axis_angle_rotation(axis: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
    """Rodrigues: rotation by ``angle`` (...) about the direction ``axis`` (..., 3)."""
    k = axis / axis.norm(dim=-1, keepdim=True)
    K = _skew(k)
    s, c = torch.sin(angle)[..., None, None], torch.cos(angle)[..., None, None]
    eye = torch.eye(3, dtype=k.dtype, device=k.device).expand(K.shape)
    return eye + s * K + (1 - c) * (K @ K)


def rotations_from_axis_angle(aa: torch.Tensor) -> torch.Tensor:
    """(..., 3) axis-angle (SMPL's pose vectors) -> (..., 3, 3); the identity for a zero vector."""
    angle = aa.norm(dim=-1)
    axis = torch.where(angle[..., None] > 0, aa, torch.tensor([1.0, 0.0, 0.0], dtype=aa.dtype, device=aa.device))
    return axis_angle_rotation(axis, angle)


def twist_angles(R: torch.Tensor, axis: torch.Tensor) -> torch.Tensor:
    """φ of R = R_swing(â -> R â) · R_twist(â, φ): (..., 3, 3) and (..., 3) -> (...), in (-pi, pi]."""
    tw = rotation_between(axis, (R @ axis[..., None])[..., 0]).transpose(-1, -2) @ R   # R_swing^T R
    k = axis / axis.norm(dim=-1, keepdim=True)
    sin = 0.5 * ((tw[..., 2, 1] - tw[..., 1, 2]) * k[..., 0] + (tw[..., 0, 2] - tw[..., 2, 0]) * k[..., 1]
                 + (tw[..., 1, 0] - tw[..., 0, 1]) * k[..., 2])
    cos = 0.5 * (tw.diagonal(dim1=-2, dim2=-1).sum(-1) - 1)
    return torch.atan2(sin, cos)


def kabsch(src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """The rotation R minimising sum |R src_k - dst_k|^2 (no translation): (..., K, 3) x 2 -> (..., 3, 3)."""
    H = src.transpose(-1, -2) @ dst
    U, _, Vh = torch.linalg.svd(H)
    V = Vh.transpose(-1, -2)
    d = torch.sign(torch.linalg.det(V @ U.transpose(-1, -2)))
    D = torch.diag_embed(torch.stack([torch.ones_like(d), torch.ones_like(d), d], -1))
    return V @ D @ U.transpose(-1, -2)


def solve_rotations(joints: torch.Tensor, rest: torch.Tensor, twists: torch.Tensor,
                    leaf_rotations: dict[int, torch.Tensor] | None = None) -> torch.Tensor:
    """Posed joints (B, 24, 3), rest joints (B, 24, 3), twist angles (B, 24) (used for single-child joints) ->
    local rotations (B, 24, 3, 3); ``leaf_rotations`` {joint: (B, 3, 3)} for the leaves (identity otherwise)."""
    B = joints.shape[0]
    eye = torch.eye(3, dtype=joints.dtype, device=joints.device).expand(B, 3, 3)
    local, glob = [None] * 24, [None] * 24
    for i in range(24):
        parent, children = SMPL_PARENTS[i], SMPL_CHILDREN[i]
        G_parent = eye if parent < 0 else glob[parent]
        if not children:
            R = (leaf_rotations or {}).get(i, eye)
        else:
            t = torch.stack([rest[:, c] - rest[:, i] for c in children], 1)                      # (B, K, 3)
            q = torch.stack([joints[:, c] - joints[:, i] for c in children], 1) @ G_parent      # G^T (p_c - p_i)
            if len(children) == 1:
                R = rotation_between(t[:, 0], q[:, 0]) @ axis_angle_rotation(t[:, 0], twists[:, i])
            else:
                R = kabsch(t, q)
        local[i], glob[i] = R, G_parent @ R
    return torch.stack(local, 1)


def forward_kinematics(local: torch.Tensor, rest: torch.Tensor, root: torch.Tensor | None = None) -> torch.Tensor:
    """Local rotations (B, 24, 3, 3) and rest joints (B, 24, 3) -> posed joints (B, 24, 3) (root at ``root`` or at
    its rest position)."""
    glob, pos = [None] * 24, [None] * 24
    for i in range(24):
        p = SMPL_PARENTS[i]
        if p < 0:
            glob[i], pos[i] = local[:, i], rest[:, i] if root is None else root
        else:
            glob[i] = glob[p] @ local[:, i]
            pos[i] = pos[p] + (glob[p] @ (rest[:, i] - rest[:, p])[..., None])[..., 0]
    return torch.stack(pos, 1)


def bone_twists(local: torch.Tensor, rest: torch.Tensor) -> torch.Tensor:
    """Local rotations (B, 24, 3, 3) and rest joints (B, 24, 3) -> the twist of each bone parent(c) -> c about its
    rest direction, c = 1..23: (B, 23), in (-pi, pi]."""
    parents = list(SMPL_PARENTS[1:])
    axes = rest[:, 1:] - rest[:, parents]
    return twist_angles(local[:, parents], axes)


def parent_twists(twists: torch.Tensor) -> torch.Tensor:
    """Per-bone twists (B, 23) (:func:`bone_twists`) -> per-joint twists (B, 24) as :func:`solve_rotations` reads
    them (joint i's entry is the twist of its only child's bone; 0 where i has no or several children)."""
    out = twists.new_zeros(twists.shape[:-1] + (24,))
    for i, ch in enumerate(SMPL_CHILDREN):
        if len(ch) == 1:
            out[..., i] = twists[..., ch[0] - 1]
    return out


def global_rotations(local: torch.Tensor) -> torch.Tensor:
    """Local rotations (B, 24, 3, 3) -> global ones G_i = G_parent(i) R_i."""
    glob = [None] * 24
    for i in range(24):
        p = SMPL_PARENTS[i]
        glob[i] = local[:, i] if p < 0 else glob[p] @ local[:, i]
    return torch.stack(glob, 1)


_FOLDED_COS = -0.99996      # cos(179.5 deg)


def twist_labels(local: torch.Tensor, rest: torch.Tensor) -> torch.Tensor:
    """:func:`bone_twists` with NaN where a label is undefined or camera-dependent (module docstring): (B, 23)."""
    parents = list(SMPL_PARENTS[1:])
    axes = rest[:, 1:] - rest[:, parents]
    tw = twist_angles(local[:, parents], axes)
    a = axes / axes.norm(dim=-1, keepdim=True)
    cos_swing = (a * (local[:, parents] @ a[..., None])[..., 0]).sum(-1)
    bad = (cos_swing < _FOLDED_COS) | torch.tensor([p == 0 for p in parents], device=tw.device)
    return torch.where(bad, torch.full_like(tw, float("nan")), tw)

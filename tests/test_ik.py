"""pipeline/ik.py (issue 12, item 2): random SMPL poses and shapes -> joints and true twists -> IK -> the same
local rotations (<= 1e-6 rad, float64) and the same vertices (<= 1e-6 m), including poses at the swing's
singularities (no swing, an almost antipodal swing); float32 to 1e-3 rad."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fake_smpl import write_model_npz
from pipeline.body_model import SmplModel, find_model_file
from pipeline.ik import (LEAVES, SMPL_CHILDREN, axis_angle_rotation, forward_kinematics, rotation_between,
                        rotations_from_axis_angle, solve_rotations, twist_angles)


@pytest.fixture(scope="module", params=["random", "synthetic"])
def smpl(request, tmp_path_factory):
    """A random full-size SMPL-structured model, and the toolkit's built-in synthetic body model."""
    if request.param == "synthetic":
        return SmplModel(find_model_file("synthetic"), num_betas=10)
    path = tmp_path_factory.mktemp("smpl") / "SMPL_NEUTRAL.npz"
    write_model_npz(path, seed=3, num_betas=10)
    return SmplModel(path, num_betas=10)


def _angle_between(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """Rotation angle of A^T B, stable near 0 (from the skew part and the trace)."""
    M = A.transpose(-1, -2) @ B
    s = 0.5 * torch.stack([M[..., 2, 1] - M[..., 1, 2], M[..., 0, 2] - M[..., 2, 0], M[..., 1, 0] - M[..., 0, 1]],
                          -1).norm(dim=-1)
    c = 0.5 * (M.diagonal(dim1=-2, dim2=-1).sum(-1) - 1)
    return torch.atan2(s, c)


def _case(smpl, B=24, seed=0, singular=True):
    rng = np.random.default_rng(seed)
    betas = rng.normal(0, 1, (B, 10))
    aa = torch.from_numpy(rng.normal(0, 0.6, (B, 24, 3)))
    rest = torch.from_numpy(smpl(betas, np.zeros((B, 72)), np.zeros((B, 3))).joints)
    R = rotations_from_axis_angle(aa)
    if singular:  # joint 4 (l_knee): a pure twist (no swing); joint 18 (l_elbow): a swing of pi - 1e-5 rad
        t4 = rest[:, SMPL_CHILDREN[4][0]] - rest[:, 4]
        R[:, 4] = axis_angle_rotation(t4, torch.full((B,), 0.7, dtype=torch.float64))
        t18 = rest[:, SMPL_CHILDREN[18][0]] - rest[:, 18]
        perp = torch.cross(t18, torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64).expand_as(t18), dim=-1)
        R[:, 18] = axis_angle_rotation(perp, torch.full((B,), math.pi - 1e-5, dtype=torch.float64)) @ \
            axis_angle_rotation(t18, torch.full((B,), -1.2, dtype=torch.float64))
    out = smpl.layer(betas=torch.from_numpy(betas), global_orient=R[:, :1], body_pose=R[:, 1:],
                     transl=torch.zeros(B, 3, dtype=torch.float64), pose2rot=False)
    return betas, rest, R, out.joints[:, :24].detach(), out.vertices.detach()


def _true_twists(R, rest):
    tw = torch.zeros(R.shape[:2], dtype=R.dtype)
    for i, ch in enumerate(SMPL_CHILDREN):
        if len(ch) == 1:
            tw[:, i] = twist_angles(R[:, i], rest[:, ch[0]] - rest[:, i])
    return tw


def test_ik_recovers_rotations_and_vertices_exactly_in_float64(smpl):
    betas, rest, R, joints, verts = _case(smpl)
    assert torch.allclose(forward_kinematics(R, rest, joints[:, 0]), joints, atol=1e-12)   # our FK = smplx's
    leaves = {i: R[:, i] for i in LEAVES}
    R_ik = solve_rotations(joints, rest, _true_twists(R, rest), leaves)
    err = _angle_between(R_ik, R)
    assert err.max() <= 1e-6, (err.max(), err.amax(0))
    out = smpl.layer(betas=torch.from_numpy(betas), global_orient=R_ik[:, :1], body_pose=R_ik[:, 1:],
                     transl=torch.zeros(len(betas), 3, dtype=torch.float64), pose2rot=False)
    assert (out.vertices - verts).norm(dim=-1).max() <= 1e-6
    # the twist is what the joints cannot tell: a wrong twist keeps every joint but moves the vertices
    wrong = _true_twists(R, rest) + 0.5
    R_wrong = solve_rotations(joints, rest, wrong, leaves)
    assert torch.allclose(forward_kinematics(R_wrong, rest, joints[:, 0]), joints, atol=1e-9)
    assert _angle_between(R_wrong[:, 1], R[:, 1]).min() > 0.4


def test_ik_in_float32(smpl):
    betas, rest, R, joints, _ = _case(smpl, seed=1, singular=False)
    leaves = {i: R[:, i].float() for i in LEAVES}
    R_ik = solve_rotations(joints.float(), rest.float(), _true_twists(R, rest).float(), leaves)
    assert R_ik.dtype == torch.float32 and _angle_between(R_ik.double(), R).max() <= 1e-3


def test_rotation_between_is_minimal_and_handles_the_antipode():
    a = torch.tensor([[0.3, -0.2, 0.9], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], dtype=torch.float64)
    b = torch.tensor([[0.1, 0.8, -0.2], [1.0, 1e-9, 0.0], [0.0, -1.0, 0.0]], dtype=torch.float64)
    R = rotation_between(a, b)
    got = (R @ (a / a.norm(dim=-1, keepdim=True))[..., None])[..., 0]
    assert torch.allclose(got, b / b.norm(dim=-1, keepdim=True), atol=1e-12)
    assert torch.allclose(R @ R.transpose(-1, -2), torch.eye(3, dtype=torch.float64).expand(3, 3, 3), atol=1e-12)
    cos_swing = (a[0] / a[0].norm()) @ (b[0] / b[0].norm())
    assert _angle_between(torch.eye(3, dtype=torch.float64), R[0]) == pytest.approx(float(torch.acos(cos_swing)))


def test_rotations_from_axis_angle_are_rodrigues_in_float64():
    """SMPL's pose vectors -> rotations, as OpenCV's Rodrigues (float64, 1e-12), the zero vector the identity."""
    import cv2
    aa = np.random.default_rng(5).normal(0, 1.5, (50, 3))
    aa[0] = 0.0
    aa[1] = [np.pi, 0.0, 0.0]
    R = rotations_from_axis_angle(torch.from_numpy(aa)).numpy()
    for a, r in zip(aa, R):
        np.testing.assert_allclose(r, cv2.Rodrigues(a)[0], rtol=0, atol=1e-12)

"""trainer.metrics against independent float64 references (loops, a generic least-squares fit) and known cases."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import least_squares
from scipy.spatial.transform import Rotation

from trainer import metrics as M


def _poses(rng, n=6, j=17):
    gt = rng.normal(0.0, 300.0, size=(n, j, 3)) + np.array([0.0, 0.0, 4000.0])
    pred = gt + rng.normal(0.0, 60.0, size=gt.shape)
    return pred, gt


# ------------------------------------------------------------------ loop references (written independently)
def _ref_mpjpe(pred, gt, root, joints):
    out = []
    for p, g in zip(pred, gt):
        errs = []
        for j in joints:
            d = (p[j] - p[root]) - (g[j] - g[root])
            errs.append(np.sqrt(sum(float(c) ** 2 for c in d)))
        out.append(sum(errs) / len(errs))
    return np.array(out)


def _ref_pa_mpjpe(pred, gt, joints):
    """Horn's closed-form quaternion method (1987), one sample at a time: the optimal rotation is the unit
    quaternion of the largest eigenvalue of a 4x4 matrix, always a proper rotation (no SVD, no sign fix);
    then s = sum(y . R x) / sum |x|^2 and t from the centroids."""
    out = []
    for p, g in zip(pred, gt):
        x = p[list(joints)] - p[list(joints)].mean(0)
        y = g[list(joints)] - g[list(joints)].mean(0)
        Sm = x.T @ y
        (sxx, sxy, sxz), (syx, syy, syz), (szx, szy, szz) = Sm
        N = np.array([[sxx + syy + szz, syz - szy, szx - sxz, sxy - syx],
                      [syz - szy, sxx - syy - szz, sxy + syx, szx + sxz],
                      [szx - sxz, sxy + syx, -sxx + syy - szz, syz + szy],
                      [sxy - syx, szx + sxz, syz + szy, -sxx - syy + szz]])
        w, v = np.linalg.eigh(N)
        q = v[:, np.argmax(w)]
        R = Rotation.from_quat([q[1], q[2], q[3], q[0]]).as_matrix()
        rx = x @ R.T
        s = (y * rx).sum() / (x * x).sum()
        e = s * rx - y
        out.append(np.mean(np.sqrt((e ** 2).sum(1))))
    return np.array(out)


def _ref_pa_lsq(p, g):
    """Generic numerical minimisation over scale, rotation vector and translation (one sample, a sanity check
    of the closed forms themselves)."""
    def resid(x):
        return (x[3] * p @ Rotation.from_rotvec(x[:3]).as_matrix().T + x[4:] - g).ravel()
    r = least_squares(resid, np.concatenate([np.zeros(3), [1.0], g.mean(0) - p.mean(0)]), xtol=1e-14, ftol=1e-14)
    return np.mean(np.linalg.norm(r.fun.reshape(-1, 3), axis=1))


def _ref_pck(errs, thr):
    """The MPI-INF-3DHP MATLAB evaluation / mmpose / HybrIK definition: error strictly below the threshold."""
    return np.array([sum(1 for e in row if e < thr) / len(row) for row in errs])


# ------------------------------------------------------------------ tests
def test_mpjpe_matches_loop_reference():
    rng = np.random.default_rng(0)
    pred, gt = _poses(rng)
    joints = (6, 5, 4, 1, 2, 3, 16, 15, 14, 11, 12, 13, 8, 10)
    np.testing.assert_allclose(M.mpjpe(pred, gt, 0, joints), _ref_mpjpe(pred, gt, 0, joints), rtol=1e-12)
    np.testing.assert_allclose(M.mpjpe(pred, gt, 14), _ref_mpjpe(pred, gt, 14, range(17)), rtol=1e-12)


def test_pa_mpjpe_matches_horn_quaternion_and_least_squares():
    rng = np.random.default_rng(1)
    pred, gt = _poses(rng, n=4, j=14)
    # a large rotation + scale + shift on top, so the fit has real work to do
    R = Rotation.from_rotvec([0.3, -1.2, 2.0]).as_matrix()
    pred = 0.8 * pred @ R.T + np.array([100.0, -50.0, 30.0])
    ours = M.pa_mpjpe(pred, gt)
    np.testing.assert_allclose(ours, _ref_pa_mpjpe(pred, gt, range(14)), rtol=1e-9)
    # near-identity case: the generic optimiser agrees with both closed forms
    p0, g0 = _poses(np.random.default_rng(11), n=1, j=14)
    assert M.pa_mpjpe(p0, g0)[0] == pytest.approx(_ref_pa_lsq(p0[0], g0[0]), rel=1e-6)
    assert np.all(ours < M.mpjpe(pred, gt, 0))


def test_identity_gives_zero_everywhere():
    rng = np.random.default_rng(2)
    _, gt = _poses(rng)
    assert np.all(M.mpjpe(gt, gt, 0) == 0)
    assert np.all(M.pa_mpjpe(gt, gt) < 1e-9)
    assert np.all(M.depth_error(gt, gt, 0) == 0)
    assert np.all(M.root_error(gt, gt, 0) == 0)
    e = M.joint_errors(M.root_relative(gt, 0), M.root_relative(gt, 0))
    assert np.all(M.pck(e) == 1) and np.all(M.auc(e) == 30 / 31)   # nothing is below the 0 mm threshold


def test_similarity_transform_pa_zero_mpjpe_positive():
    rng = np.random.default_rng(3)
    _, gt = _poses(rng)
    R = Rotation.from_rotvec([0.2, 0.5, -0.4]).as_matrix()
    pred = 1.3 * gt @ R.T + np.array([10.0, 20.0, -30.0])
    assert np.all(M.pa_mpjpe(pred, gt) < 1e-9)
    assert np.all(M.mpjpe(pred, gt, 0) > 10.0)
    aligned = M.procrustes_align(pred, gt)
    np.testing.assert_allclose(aligned, gt, atol=1e-9)


def test_mirrored_pose_is_not_aligned_by_a_reflection():
    rng = np.random.default_rng(4)
    _, gt = _poses(rng, n=3, j=14)
    mirrored = gt * np.array([-1.0, 1.0, 1.0])  # x -> -x: det -1, no rotation can undo it for a non-planar pose
    pa = M.pa_mpjpe(mirrored, gt)
    assert np.all(pa > 10.0)
    np.testing.assert_allclose(pa, _ref_pa_mpjpe(mirrored, gt, range(14)), rtol=1e-9)
    # the reflection-allowed optimum is 0: our fit must be strictly worse than it
    U, S, Vt = np.linalg.svd((mirrored[0] - mirrored[0].mean(0)).T @ (gt[0] - gt[0].mean(0)))
    assert np.linalg.det(Vt.T @ U.T) < 0


def test_pa_mpjpe_subset_and_degenerate_pose():
    rng = np.random.default_rng(5)
    pred, gt = _poses(rng)
    sub = (1, 2, 3, 8, 9)
    np.testing.assert_allclose(M.pa_mpjpe(pred, gt, sub), M.pa_mpjpe(pred[:, sub], gt[:, sub]), rtol=1e-12)
    flat = np.zeros((1, 5, 3))  # all joints at one point: maps to the GT centroid, finite error
    out = M.pa_mpjpe(flat, gt[:1, :5])
    g = gt[0, :5]
    assert np.isclose(out[0], np.linalg.norm(g - g.mean(0), axis=1).mean())


def test_pck_boundary_is_strict_and_matches_loop():
    below, above = np.nextafter(150.0, 0.0), np.nextafter(150.0, 300.0)      # one ulp either side
    assert M.pck(np.array([[150.0]]))[0] == 0.0                             # exactly at the threshold: a miss
    assert M.pck(np.array([[below]]))[0] == 1.0 and M.pck(np.array([[above]]))[0] == 0.0
    errs = np.array([[150.0, 149.999, 150.001, 0.0]])
    np.testing.assert_allclose(M.pck(errs), [0.5])
    rng = np.random.default_rng(6)
    e = rng.uniform(0, 300, size=(20, 14))
    e[0, :3] = 150.0
    np.testing.assert_allclose(M.pck(e), _ref_pck(e, 150.0), rtol=0)


def test_auc_thresholds_and_values():
    assert len(M.AUC_THRESHOLDS_MM) == 31 and M.AUC_THRESHOLDS_MM[0] == 0 and M.AUC_THRESHOLDS_MM[-1] == 150
    assert M.auc(np.zeros((2, 14))).tolist() == [30 / 31, 30 / 31]           # a perfect prediction
    assert M.auc(np.full((1, 14), 150.0))[0] == 0.0                         # below no threshold
    assert M.auc(np.full((1, 14), np.nextafter(150.0, 0.0)))[0] == pytest.approx(1 / 31)
    assert M.auc(np.full((1, 14), 5.0))[0] == pytest.approx(29 / 31)        # at 5 mm: counts from 10 mm on
    assert M.auc(np.full((1, 14), np.nextafter(5.0, 0.0)))[0] == pytest.approx(30 / 31)
    rng = np.random.default_rng(7)
    e = rng.uniform(0, 200, size=(10, 14))
    ref = np.array([np.mean([_ref_pck(e[i:i + 1], t)[0] for t in range(0, 151, 5)]) for i in range(10)])
    np.testing.assert_allclose(M.auc(e), ref, rtol=1e-12)


def test_depth_and_root_error_match_loops():
    rng = np.random.default_rng(8)
    pred, gt = _poses(rng)
    joints = (1, 2, 3, 4)
    ref_d = [np.mean([abs((p[j, 2] - p[0, 2]) - (g[j, 2] - g[0, 2])) for j in joints]) for p, g in zip(pred, gt)]
    np.testing.assert_allclose(M.depth_error(pred, gt, 0, joints), ref_d, rtol=1e-12)
    ref_r = [np.sqrt(np.sum((p[3] - g[3]) ** 2)) for p, g in zip(pred, gt)]
    np.testing.assert_allclose(M.root_error(pred, gt, 3), ref_r, rtol=1e-12)
    # a pure translation changes only the root error
    shifted = gt + np.array([5.0, -7.0, 40.0])
    assert np.allclose(M.depth_error(shifted, gt, 0), 0) and np.allclose(M.mpjpe(shifted, gt, 0), 0)
    np.testing.assert_allclose(M.root_error(shifted, gt, 0), np.sqrt(25 + 49 + 1600))


def test_float32_inputs_are_promoted():
    rng = np.random.default_rng(9)
    pred, gt = _poses(rng)
    assert M.pa_mpjpe(pred.astype(np.float32), gt).dtype == np.float64
    np.testing.assert_allclose(M.mpjpe(pred.astype(np.float32), gt, 0), M.mpjpe(pred, gt, 0), rtol=1e-5)

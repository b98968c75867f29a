"""3D pose metrics: pure, batched float64 numpy functions (millimetres in, millimetres out).

Conventions, fixed here once:

* Joints are arrays ``(N, J, 3)`` (N samples, J joints); every function promotes to float64.
* Root alignment subtracts each pose's own root joint (the skeleton's root), prediction and ground truth alike.
* PA-MPJPE fits, per sample, the similarity transform (scale, proper rotation, translation) that best maps the
  prediction onto the ground truth in the least-squares sense (Umeyama / Kabsch with the reflection fix: a
  mirrored pose is NOT aligned by a reflection, so it keeps a non-zero error).
* PCK counts a joint as correct when its error is strictly below the threshold (``error < threshold``, as the
  MPI-INF-3DHP MATLAB evaluation, mmpose and HybrIK do: an error of exactly 150 mm misses PCK@150); AUC is the
  mean PCK over the thresholds 0, 5, ..., 150 mm (31 values), so a perfect prediction scores 30/31 (nothing is
  below 0 mm). PCK and AUC are fractions in [0, 1] here; reports print percentages. Which joints each protocol
  counts is :func:`trainer.evaluate.protocol_for`'s business (never a joint whose error is zero by construction,
  such as the alignment root): docs/metrics.md.
* Non-finite inputs never raise: a sample with a NaN or inf joint gets NaN from every per-sample function
  (the evaluator refuses or skips such samples before it aggregates).
* Per-sample functions return ``(N,)`` (or ``(N, J)``) arrays; aggregation (means over samples, groups) is the
  caller's business, so every breakdown weighs samples equally.
"""
from __future__ import annotations

import numpy as np

__all__ = ["PCK_THRESHOLD_MM", "AUC_THRESHOLDS_MM", "as_f64", "root_relative", "joint_errors", "mpjpe",
           "procrustes_align", "pa_mpjpe", "pck", "auc", "depth_error", "root_error"]

PCK_THRESHOLD_MM = 150.0
AUC_THRESHOLDS_MM = np.arange(0.0, 150.0 + 1e-9, 5.0)  # 0, 5, ..., 150: 31 thresholds


def as_f64(x) -> np.ndarray:
    return np.asarray(x, dtype=np.float64)


def _subset(x: np.ndarray, joints) -> np.ndarray:
    return x if joints is None else x[..., list(joints), :]


def root_relative(joints, root: int) -> np.ndarray:
    """Subtract each pose's root joint: (N, J, 3) -> (N, J, 3)."""
    j = as_f64(joints)
    return j - j[..., root:root + 1, :]


def joint_errors(pred, gt) -> np.ndarray:
    """Euclidean distance per joint: (N, J, 3) x 2 -> (N, J)."""
    return np.linalg.norm(as_f64(pred) - as_f64(gt), axis=-1)


def mpjpe(pred, gt, root: int, joints=None) -> np.ndarray:
    """Root-aligned mean per-joint position error per sample (N,). ``joints``: the protocol subset (indices into
    J) averaged over after aligning at ``root`` (the root itself need not be in the subset)."""
    e = joint_errors(root_relative(pred, root), root_relative(gt, root))
    return _subset(e[..., None], joints)[..., 0].mean(axis=-1)


def procrustes_align(pred, gt) -> np.ndarray:
    """Similarity-align each predicted pose onto its ground truth: (N, J, 3) x 2 -> aligned prediction (N, J, 3).

    Minimises sum_j |s R p_j + t - g_j|^2 over s > 0, R in SO(3) (det +1), t. With X, Y the centred poses and
    U S V^T = svd(X^T Y): R = V D U^T with D = diag(1, 1, sign det(V U^T)), s = tr(D S) / |X|^2. A pose with no
    spread (|X| = 0) maps to the ground-truth centroid.
    """
    p, g = as_f64(pred), as_f64(gt)
    finite = np.isfinite(p).all(axis=(-1, -2)) & np.isfinite(g).all(axis=(-1, -2))
    if not finite.all():  # LAPACK's SVD does not converge on NaN: align the finite samples only
        out = np.full(np.broadcast_shapes(p.shape, g.shape), np.nan)
        if finite.any():
            out[finite] = procrustes_align(p[finite], g[finite])
        return out
    mp, mg = p.mean(axis=-2, keepdims=True), g.mean(axis=-2, keepdims=True)
    X, Y = p - mp, g - mg
    U, S, Vt = np.linalg.svd(np.swapaxes(X, -1, -2) @ Y)  # (N, 3, 3): X^T Y = U diag(S) Vt
    V = np.swapaxes(Vt, -1, -2)
    sign = np.sign(np.linalg.det(V @ np.swapaxes(U, -1, -2)))
    sign = np.where(sign == 0, 1.0, sign)
    D = np.ones(S.shape)
    D[..., -1] = sign
    R = (V * D[..., None, :]) @ np.swapaxes(U, -1, -2)  # V D U^T
    var = (X ** 2).sum(axis=(-1, -2))
    with np.errstate(divide="ignore", invalid="ignore"):
        s = np.where(var > 0, (S * D).sum(axis=-1) / var, 0.0)
    return s[..., None, None] * (X @ np.swapaxes(R, -1, -2)) + mg


def pa_mpjpe(pred, gt, joints=None) -> np.ndarray:
    """Procrustes-aligned MPJPE per sample (N,): the similarity transform is fitted on the ``joints`` subset
    and the error averaged over it (root alignment is irrelevant: the translation is fitted)."""
    p, g = _subset(as_f64(pred), joints), _subset(as_f64(gt), joints)
    return joint_errors(procrustes_align(p, g), g).mean(axis=-1)


def pck(errors, threshold: float = PCK_THRESHOLD_MM) -> np.ndarray:
    """Fraction of joints with error < threshold (strict), per sample: errors (N, J) -> (N,); NaN for a sample
    with a non-finite error."""
    e = as_f64(errors)
    return np.where(np.isfinite(e).all(axis=-1), (e < threshold).mean(axis=-1), np.nan)


def auc(errors, thresholds=AUC_THRESHOLDS_MM) -> np.ndarray:
    """Area under the PCK curve: mean over ``thresholds`` of :func:`pck`, per sample: (N, J) -> (N,)."""
    e = as_f64(errors)
    t = as_f64(thresholds)
    area = (e[..., None, :] < t[:, None]).mean(axis=-1).mean(axis=-1)
    return np.where(np.isfinite(e).all(axis=-1), area, np.nan)


def depth_error(pred, gt, root: int, joints=None) -> np.ndarray:
    """Mean |d_pred - d_gt| of root-relative depths (z - z_root), per sample (N,). Pass joints in the crop
    (rotated) camera, where d is the network's output (the paper's Table 2 column)."""
    dp = root_relative(pred, root)[..., 2]
    dg = root_relative(gt, root)[..., 2]
    return _subset(np.abs(dp - dg)[..., None], joints)[..., 0].mean(axis=-1)


def root_error(pred, gt, root: int) -> np.ndarray:
    """Euclidean error of the absolute root position, per sample (N,): joints in the same camera frame."""
    p, g = as_f64(pred), as_f64(gt)
    return np.linalg.norm(p[..., root, :] - g[..., root, :], axis=-1)

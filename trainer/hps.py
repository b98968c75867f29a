"""PersPose-HPS at evaluation (issue 12): predicted joints + β + twists + leaf rotations -> analytical IK -> SMPL mesh in
the original camera, the ground-truth mesh of a shard sample, and PVE.

Chain per sample (float64): the model's 24 SMPL joints in the crop camera (UVD -> XYZ, docs/design.md §4.7), its β,
bone twists and leaf rotations -> rest joints J(β) of the body model -> local rotations by HybrIK's swing-twist IK
(pipeline.ik.solve_rotations; the pelvis and spine3 by Kabsch, the leaves from the leaf head) -> the body model's
forward pass (smplx, pipeline.body_model.BodyLayer) with the root joint placed at the predicted root -> vertices in
the crop camera -> Rᵀ back to the original camera, like the joints.

The ground-truth mesh is the body model's forward pass of the sample's own SMPL labels (``smpl_betas``,
``smpl_pose`` with the root orientation in the original camera, ``smpl_transl``), with the sample's gender when the
body model is a directory of gendered files (3DPW), the one file otherwise (the synthetic model).

PVE (mm): the mean over the vertices of |(v_pred - root_pred) - (v_gt - root_gt)|, each mesh aligned at its own
SMPL pelvis (joint 0 of the forward pass), no Procrustes -- 3DPW's protocol, which aligns at the H36M-regressed
pelvis; with the SMPL-24 skeleton we align at the SMPL pelvis (docs/metrics.md).
"""
from __future__ import annotations

import logging

import numpy as np
import torch

from pipeline.body_model import BodyLayer, find_model_file
from pipeline.ik import parent_twists, rotations_from_axis_angle, solve_rotations

from .hps_labels import LEAF_JOINTS

log = logging.getLogger(__name__)

__all__ = ["BodyModels", "MeshScorer", "ik_rotations", "predicted_mesh", "gt_mesh", "pve"]


class BodyModels:
    """Body layers by gender, loaded once: ``spec`` is 'synthetic', a model file (one model for everyone) or a
    directory with SMPL_{NEUTRAL,MALE,FEMALE} files (the predicted mesh always uses the neutral one)."""

    def __init__(self, spec: str, num_betas: int = 10):
        self.spec, self.num_betas, self._cache = str(spec), num_betas, {}

    def get(self, gender: str = "neutral") -> BodyLayer:
        path = find_model_file(self.spec, gender or "neutral")
        if path not in self._cache:
            self._cache[path] = BodyLayer(path, gender=gender or "neutral", num_betas=self.num_betas,
                                          dtype=torch.float64)
        return self._cache[path]


def ik_rotations(body: BodyLayer, joints: torch.Tensor, betas: torch.Tensor, twist: torch.Tensor,
                 leaf_rot: torch.Tensor) -> torch.Tensor:
    """Local rotations (B, 24, 3, 3) (rotation 0 = the orientation in the joints' frame) from SMPL-24 joints
    (B, 24, 3), β (B, 10), twists (B, 23, 2) as (cos, sin) and leaf rotations (B, 5, 3, 3)."""
    dt = joints.dtype
    rest = body.rest_joints(betas.to(dt)).to(dt)
    phi = torch.atan2(twist[..., 1], twist[..., 0]).to(dt)
    leaves = {j: leaf_rot[:, k].to(dt) for k, j in enumerate(LEAF_JOINTS)}
    return solve_rotations(joints, rest, parent_twists(phi), leaves)


def predicted_mesh(body: BodyLayer, joints_crop: torch.Tensor, betas, twist, leaf_rot, R=None):
    """(vertices (B, V, 3), joints (B, 24, 3)) of the IK mesh, in the original camera when R (B, 3, 3) is given
    (P = Rᵀ P'), else in the crop camera. float64."""
    j = joints_crop.to(torch.float64)
    rot = ik_rotations(body, j, betas.to(torch.float64), twist.to(torch.float64), leaf_rot.to(torch.float64))
    verts, joints = body(betas.to(torch.float64), rot, j[:, 0])
    if R is not None:
        R = R.to(torch.float64)
        verts, joints = verts @ R, joints @ R        # row form of Rᵀ p
    return verts, joints


def gt_mesh(body: BodyLayer, betas, pose, transl):
    """Ground-truth mesh in the original camera from SMPL labels: β (B, n), pose (B, 72) axis-angle (root in the
    camera frame), transl (B, 3). (vertices (B, V, 3), joints (B, 24, 3)), float64."""
    pose = torch.tensor(np.asarray(pose, np.float64)).reshape(-1, 24, 3)
    betas = torch.tensor(np.asarray(betas, np.float64))
    rot = rotations_from_axis_angle(pose)
    rest0 = body.rest_joints(betas)[:, 0]
    root = rest0 + torch.tensor(np.asarray(transl, np.float64)).reshape(-1, 3)   # smplx: J_0 + transl
    return body(betas, rot, root)


def pve(pred_v: np.ndarray, gt_v: np.ndarray, pred_root: np.ndarray, gt_root: np.ndarray) -> np.ndarray:
    """Per-sample PVE in the input unit: mean over vertices of |(v_p - r_p) - (v_g - r_g)|; (B, V, 3) x 2,
    (B, 3) x 2 -> (B,). NaN for a sample with a non-finite prediction."""
    d = (pred_v - pred_root[:, None]) - (gt_v - gt_root[:, None])
    return np.sqrt((d * d).sum(-1)).mean(-1)


class MeshScorer:
    """:func:`trainer.evaluate.evaluate`'s HPS hook: per batch, the IK mesh of the prediction, the ground-truth mesh
    of the sample's SMPL labels and the PVE. Records (always the same keys, so batches merge):

    * ``pve`` (mm; NaN where the sample has no SMPL labels or is not an SMPL-24 sample, or the model has no HPS
      heads);
    * ``mesh_gt_rel``: the ground-truth vertices relative to their pelvis (original camera, float32), for the
      constant-mean-mesh reference row; kept for at most ``ref_values`` numbers in all (then None: the
      reference is computed over the samples that have it, and says how many);
    * ``mesh_pred``: the predicted vertices in the original camera (float32), only with ``keep_vertices``
      (``perspose-eval --save-vertices``).
    """

    def __init__(self, body_spec: str, keep_vertices: bool = False, ref_values: int = 50_000_000):
        self.models = BodyModels(body_spec)
        self.keep_vertices, self.ref_left = keep_vertices, ref_values

    def score(self, batch: dict, out: dict, pred_crop: np.ndarray) -> dict:
        B = len(batch["meta"])
        rec = {"pve": np.full(B, np.nan), "mesh_gt_rel": [None] * B, "mesh_pred": [None] * B}
        labelled = [i for i, s in enumerate(batch.get("smpl") or [None] * B) if s is not None]
        if "betas" not in out or batch["skeleton"] != "smpl24" or not labelled:
            return rec
        idx = torch.as_tensor(labelled)
        neutral = self.models.get("neutral")
        pv, pj = predicted_mesh(neutral, torch.as_tensor(pred_crop)[idx], torch.as_tensor(out["betas"])[idx],
                                torch.as_tensor(out["twist"])[idx], torch.as_tensor(out["leaf_rot"])[idx],
                                torch.as_tensor(batch["R"])[idx])
        pv, pj = pv.numpy(), pj.numpy()
        for k, i in enumerate(labelled):
            s = batch["smpl"][i]
            gv, gj = (t[0].numpy() for t in gt_mesh(self.models.get(s["gender"]), np.asarray(s["betas"])[None],
                                                    np.asarray(s["pose"])[None], np.asarray(s["transl"])[None]))
            if gv.shape != pv[k].shape:
                raise ValueError(f"sample {batch['meta'][i]['sample_id']}: its body model has {gv.shape[0]} "
                                 f"vertices, the predicted mesh {pv.shape[1]}; evaluate with the body model "
                                 "the labels were made with (--body-model)")
            rec["pve"][i] = 1000.0 * pve(pv[k][None], gv[None], pj[k, :1], gj[:1])[0]
            if self.ref_left >= gv.size:
                rec["mesh_gt_rel"][i] = (gv - gj[0]).astype(np.float32)
                self.ref_left -= gv.size
            if self.keep_vertices:
                rec["mesh_pred"][i] = pv[k].astype(np.float32)
        return rec


def mesh_overlay(model, shards, crop_size: int, skeletons, body: BodyLayer, device, path, n: int = 8,
                 flip_test: bool = True):
    """A picture of the first ``n`` SMPL-labelled test crops with the predicted mesh (IK) drawn over each, and
    the ground-truth mesh beside it (crop camera, K_crop). Returns the path, or None without such samples."""
    from pipeline.skeleton import joint_slices

    from .hps_report import draw_mesh, mesh_overlay_sheet
    from .model import flip_test as _flip_test
    from .shards import heldout_stream
    picked = []
    for kind, item in heldout_stream(list(shards.urls), crop_size, tuple(skeletons)):
        if kind == "error":
            raise ValueError(item)
        if kind == "ok" and item["smpl"] is not None and item["meta"]["skeleton"] == "smpl24":
            picked.append(item)
            if len(picked) == n:
                break
    if not picked:
        return None
    images = torch.from_numpy(np.stack([it["image"] for it in picked])).to(device)
    K = torch.from_numpy(np.stack([it["K_crop"] for it in picked])).to(device, torch.float32)
    with torch.inference_mode():
        out = _flip_test(model, images, K) if flip_test else model(images, K)
    sl = joint_slices(skeletons)["smpl24"]
    verts, _ = predicted_mesh(body, out["xyz_crop"][:, sl].cpu(), out["betas"].cpu(), out["twist"].cpu(),
                              out["leaf_rot"].cpu())
    tiles, captions = [], []
    for k, it in enumerate(picked):
        s = it["smpl"]
        gv, _ = gt_mesh(body, np.asarray(s["betas"])[None, :body.num_betas], np.asarray(s["pose"])[None],
                        np.asarray(s["transl"])[None])
        gv_crop = gv[0].numpy() @ np.asarray(it["R"]).T                     # original -> crop camera
        tiles += [draw_mesh(it["image"], verts[k].numpy(), body.faces, it["K_crop"]),
                  draw_mesh(it["image"], gv_crop, body.faces, it["K_crop"], color=(120, 255, 120))]
        captions += [f"pred {it['meta']['sample_id'].split('/', 2)[-1]}", "ground truth"]
    return mesh_overlay_sheet(path, tiles, captions)

"""Training losses: the paper's Eq. 18 (L1 on UVD with weight 1.0, L1 on s-hat with weight 0.5), masked per joint.

Each sample supervises only its own skeleton's slice of the concatenated joint set (docs/design.md §5); the batch marks it
with per-joint masks: ``mask_uv`` (B, J) for the 2D position and ``mask_d`` (B, J) for the relative depth, and
``has_3d`` (B,) for the scale. 2D-only samples (COCO) have ``mask_d`` all false and ``has_3d`` false, so they
supervise uv only.

Units (scale-balanced, independent of the crop size S). The paper writes a plain L1 sum; its official code
(docs/design.md §11) measures uv in pixels of the 256 crop, depth in centimetres and the scale in millimetres
per 256-crop pixel. We keep those units so the paper's weights keep their meaning at any S:

* uv:    ``|du| + |dv|`` (the L1 norm of the 2D error) in *reference pixels* = pixels * 256 / S;
* d:     ``|dd|`` in centimetres (``depth_unit_m`` = 0.01);
* scale: ``|ds|`` in millimetres per reference pixel (s-hat of an S crop is S/256 times the 256-crop value).

Each term is a masked mean over the batch, ``sum(mask * err) / max(sum(mask), 1)`` (the official mask_mean), and
``total = uvd_weight * (uv + d) + scale_weight * scale``.

Where we differ from the official code, and why (each variant is a config switch where it is cheap):

* ``uv_distance="euclidean"`` reproduces the official per-joint Euclidean uv error; the default is the paper's L1.
* No height normalisation (official: d and s-hat scaled by 1.8 / subject height). It needs a per-subject height
  the shards do not carry, and for a 1.8 m subject it is the identity.
* No dead zones (official: ReLU(err - 5 px) on COCO / 3DHP joints mapped onto SMPL joints). They tolerate
  mismatched joint definitions across datasets; here every dataset supervises its own skeleton slice, so there
  is no mismatch to tolerate.
* GT joints outside the crop are not supervised in uv (``uv_inside_crop_only``, as the official ``valid`` mask):
  the soft-argmax cannot reach them and would be dragged to the border.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

__all__ = ["LossConfig", "pose_losses", "masked_mean"]


@dataclass(frozen=True)
class LossConfig:
    uvd_weight: float = 1.0              # lambda of the UVD term (paper Eq. 18)
    scale_weight: float = 0.5            # lambda of the s-hat term
    uv_distance: Literal["l1", "euclidean"] = "l1"   # per-joint 2D error: L1 (paper) or L2 norm (official code)
    reference_crop: int = 256            # uv is measured in pixels of this crop size
    depth_unit_m: float = 0.01           # d error unit: centimetres
    scale_unit: float = 1e-3             # s-hat error unit: millimetres per reference pixel
    uv_inside_crop_only: bool = True     # drop GT joints outside [-0.5, S - 0.5]^2 from the uv term
    # Not in the paper (0 = off, the paper preset): cross-entropy of each joint's heatmap against a Gaussian at
    # its GT uv (sigma in heatmap cells). The soft-argmax alone gives a heatmap a gradient only through its
    # mean, so a network trained from scratch spreads probability for a long time; the demo turns this on
    # (docs/learning.md has the measured effect).
    heatmap_weight: float = 0.0
    heatmap_sigma: float = 1.0
    # HPS heads (model.hps): L1 on β (mean over the 10), L1 on each bone's (cos, sin) twist (masked where the
    # label is undefined), and the Frobenius norm of the leaf-rotation error (the official code's extra term);
    # weights as the paper's Eq. 18 (β 0.01, twist 0.1) and the official code (leaf 0.01). Samples without SMPL
    # labels (has_smpl False) contribute nothing to them.
    beta_weight: float = 0.01
    twist_weight: float = 0.1
    leaf_weight: float = 0.01

    def __post_init__(self):
        if self.reference_crop <= 0 or self.depth_unit_m <= 0 or self.scale_unit <= 0:
            raise ValueError("reference_crop, depth_unit_m and scale_unit must be positive")
        if min(self.uvd_weight, self.scale_weight, self.heatmap_weight, self.beta_weight, self.twist_weight,
               self.leaf_weight) < 0:
            raise ValueError("loss weights must be non-negative")
        if self.heatmap_sigma <= 0:
            raise ValueError("heatmap_sigma must be positive")


def masked_mean(err: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """sum(mask * err) / max(sum(mask), 1); masked entries never propagate NaN/inf (torch.where, not a product)."""
    m = mask.to(torch.bool)
    return torch.where(m, err, torch.zeros_like(err)).sum() / m.sum().clamp_min(1).to(err.dtype)


def pose_losses(pred: dict, batch: dict, cfg: LossConfig, crop_size: int) -> dict[str, torch.Tensor]:
    """Loss terms and their weighted total.

    pred:  ``uv`` (B, J, 2) crop pixels, ``d`` (B, J) metres, ``scale`` (B,) metres per pixel of the S crop.
    batch: ``uvd`` (B, J, 3) targets in the same units, ``scale`` (B,), ``mask_uv`` (B, J), ``mask_d`` (B, J),
           ``has_3d`` (B,). Everything is computed in float32.
    Returns {'uv', 'd', 'scale', 'total'} (0-d tensors; 'uv', 'd', 'scale' are unweighted, in the units above),
    plus 'heatmap' and, for an HPS model's prediction, 'beta', 'twist' and 'leaf' (:func:`hps_losses`).
    """
    uv_p, d_p, s_p = pred["uv"].float(), pred["d"].float(), pred["scale"].float()
    uvd_t = batch["uvd"].to(uv_p.device, torch.float32)
    uv_t, d_t = uvd_t[..., :2], uvd_t[..., 2]
    s_t = batch["scale"].to(uv_p.device, torch.float32)
    mask_uv = batch["mask_uv"].to(uv_p.device, torch.bool)
    mask_d = batch["mask_d"].to(uv_p.device, torch.bool)
    has_3d = batch["has_3d"].to(uv_p.device, torch.bool)
    if cfg.uv_inside_crop_only:
        mask_uv = mask_uv & ((uv_t >= -0.5) & (uv_t <= crop_size - 0.5)).all(dim=-1)

    px = cfg.reference_crop / crop_size  # crop pixels -> reference pixels
    duv = torch.where(mask_uv[..., None], uv_p - uv_t, torch.zeros_like(uv_p)) * px
    uv_err = duv.abs().sum(-1) if cfg.uv_distance == "l1" else _safe_norm(duv)
    terms = {
        "uv": masked_mean(uv_err, mask_uv),
        "d": masked_mean((d_p - d_t).abs() / cfg.depth_unit_m, mask_d),
        "scale": masked_mean((s_p - s_t).abs() * (crop_size / cfg.reference_crop) / cfg.scale_unit, has_3d),
    }
    terms["total"] = cfg.uvd_weight * (terms["uv"] + terms["d"]) + cfg.scale_weight * terms["scale"]
    if cfg.heatmap_weight > 0:
        if "heatmaps" not in pred:
            raise ValueError("loss.heatmap_weight > 0 needs the model's heatmaps (return_heatmaps=True)")
        terms["heatmap"] = heatmap_cross_entropy(pred["heatmaps"].float(), uv_t, mask_uv, crop_size,
                                                 cfg.heatmap_sigma)
        terms["total"] = terms["total"] + cfg.heatmap_weight * terms["heatmap"]
    if "betas" in pred:
        terms.update(hps_losses(pred, batch))
        terms["total"] = terms["total"] + cfg.beta_weight * terms["beta"] + cfg.twist_weight * terms["twist"] \
            + cfg.leaf_weight * terms["leaf"]
    return terms


def hps_losses(pred: dict, batch: dict) -> dict[str, torch.Tensor]:
    """{'beta', 'twist', 'leaf'}: masked means over the samples with SMPL labels (unweighted, float32)."""
    dev = pred["betas"].device
    has = batch["has_smpl"].to(dev, torch.bool)
    beta_err = (pred["betas"].float() - batch["betas"].to(dev, torch.float32)).abs().mean(-1)          # (B,)
    tw_err = (pred["twist"].float() - batch["twist"].to(dev, torch.float32)).abs().sum(-1)             # (B, 23)
    tw_mask = batch["twist_mask"].to(dev, torch.bool) & has[:, None]
    leaf_err = (pred["leaf_rot"].float() - batch["leaf_rot"].to(dev, torch.float32)).flatten(-2).norm(dim=-1)
    return {"beta": masked_mean(beta_err, has), "twist": masked_mean(tw_err, tw_mask),
            "leaf": masked_mean(leaf_err.mean(-1), has)}


def heatmap_cross_entropy(prob: torch.Tensor, uv_t: torch.Tensor, mask: torch.Tensor, crop_size: int,
                          sigma_cells: float) -> torch.Tensor:
    """Masked mean over joints of -sum_cells target * log(prob), the target a normalised Gaussian at the GT uv
    (crop pixels) on the heatmap's cell centres (the same grid the soft-argmax uses). Nats; 0-d tensor."""
    from trainer.geometry_torch import crop_pixel_grid

    from .model import HEATMAP_STRIDE
    grid = crop_pixel_grid(crop_size, HEATMAP_STRIDE, prob.device, torch.float32)      # (S/4,) pixel centres
    two_s2 = 2.0 * (sigma_cells * HEATMAP_STRIDE) ** 2
    gu = torch.exp(-(grid[None, None, :] - uv_t[..., 0:1]) ** 2 / two_s2)             # (B, J, W)
    gv = torch.exp(-(grid[None, None, :] - uv_t[..., 1:2]) ** 2 / two_s2)             # (B, J, H)
    target = gv[..., :, None] * gu[..., None, :]
    target = target / target.flatten(2).sum(-1).clamp_min(1e-12)[..., None, None]
    ce = -(target * prob.clamp_min(1e-12).log()).flatten(2).sum(-1)                   # (B, J)
    return masked_mean(ce, mask)


def _safe_norm(x: torch.Tensor) -> torch.Tensor:
    """Euclidean norm over the last axis with a finite gradient at 0 (masked joints have x = 0 exactly)."""
    return torch.sqrt((x * x).sum(-1) + 1e-12)

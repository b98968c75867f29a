"""PersPose model: HRNet backbone + Perspective Encoding (PE) + heatmap / relative-depth / scale heads.

Interface (the trainer and the evaluator code against this)::

    cfg = ModelConfig()                      # paper defaults: HRNet-W48, S = 256, PE on, 4 skeletons (J = 75)
    model = build_model(cfg)
    out = model(images, K_crop, has_intrinsics=None, R=None, return_heatmaps=False)

Inputs: ``images`` uint8 RGB (B,3,S,S) or (B,S,S,3) -- normalised inside with ImageNet mean/std -- or a float
(B,3,S,S) tensor already normalised by :func:`normalize_images`; ``K_crop`` (B,3,3) intrinsics of the S crop;
``has_intrinsics`` (B,) bool (False zeroes the sample's PE map, e.g. COCO; None = all True); ``R`` (B,3,3) the
PR rotation (P' = R P), optional.

Output dict (heads and decoding run in float32 outside autocast; with ``cfg.hps`` also ``betas`` (B,10),
``twist`` (B,23,2) and ``leaf_rot`` (B,5,3,3), :meth:`PersPose.hps_outputs`):
- ``uv`` (B,J,2): soft-argmax in pixels of the S crop; heatmap cell (i, j) <-> pixel (4j+1.5, 4i+1.5) (docs/design.md §2).
- ``d`` (B,J): relative depth z'_j - z'_root in metres, d = 2.2 (sigmoid - 0.5) (reference bounds, +-1.1 m), exactly
  0 at the root of every 3D skeleton slice (coco17 has no root: its d is unconstrained and not meant to be used).
- ``uvd`` (B,J,3) = cat(uv, d).
- ``scale`` (B,): s-hat = z'_root / f_crop, metres per pixel OF THE S CROP THE MODEL SEES. The reference predicts
  rho0 = 0.007 exp(3 (sigmoid - 0.5)) m/px for 256-px crops; s-hat scales with 1/f_crop, i.e. with 1/S for the same
  framing, so here s-hat = 0.007 (256/S) exp(3 (sigmoid - 0.5)) -- the reference bounds scaled by 256/S.
- ``xyz_crop`` (B,J,3): joints in the crop camera (trainer.geometry_torch.joints_from_uvd, docs/design.md §4.7); float64
  when K_crop is float64. Samples without a valid K_crop (fx <= 0) are decoded with a nominal K (f = S, centre
  (S-1)/2) so that no NaN appears; their xyz is meaningless.
- ``xyz_orig`` (B,J,3): only when R is given: R^T applied (the original camera).
- ``heatmaps`` (B,J,S/4,S/4): softmax probabilities, only when ``return_heatmaps``.
J is the concatenation of ``cfg.skeletons`` (``model.joint_slices``, pipeline.skeleton.joint_slices).

Every parameter takes part in the forward (no ``find_unused_parameters`` for DDP). Module names: ``backbone``
(HRNet, keys of the public pose checkpoint), ``pe_conv`` (absent with use_pe=False), ``global_head``,
``heatmap_head``, ``depth_head``, ``scale_head``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from trainer.geometry_torch import crop_pixel_grid, flip_intrinsics, joints_from_uvd, pe_map
from pipeline.skeleton import DEFAULT_SKELETONS, SKELETONS, get_skeleton, joint_slices
from trainer.hps_labels import LEAF_JOINTS, NUM_BETAS, NUM_TWISTS, mirror_bone_perm
from trainer.hrnet import GlobalHead, HighResolutionNet, LoadReport, init_hrnet_weights, load_pose_hrnet_weights

__all__ = ["ModelConfig", "PersPose", "build_model", "normalize_images", "flip_test", "soft_argmax",
           "assemble_outputs", "concat_flip_perm", "unflip_predictions", "load_pose_hrnet_weights", "LoadReport",
           "IMAGENET_MEAN", "IMAGENET_STD"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HEATMAP_STRIDE = 4
DEPTH_RANGE_M = 2.2             # d = 2.2 (sigmoid - 0.5) in metres (reference)
SCALE_REF_M_PER_PX = 0.007      # rho0 at sigmoid = 0.5 for a 256-px crop (reference: ~1.8 m over 256 px)
SCALE_LOG_RANGE = 3.0           # rho0 = ref * exp(3 (sigmoid - 0.5))
REFERENCE_CROP = 256


@dataclass(frozen=True)
class ModelConfig:
    width: int = 48                                  # HRNet branch widths C, 2C, 4C, 8C (48, 32, 18; tiny for tests)
    crop_size: int = 256                             # S: the model's input is S x S; S % 32 == 0
    skeletons: tuple[str, ...] = DEFAULT_SKELETONS   # predicted joint set = their concatenation
    use_pe: bool = True                              # False: no PE conv at all (ablation)
    global_dim: int = 2048                           # global (classification-head) vector width
    head_planes: tuple[int, ...] = (32, 64, 128, 256)  # global-head Bottleneck planes per branch (x4 channels)
    stem_channels: int = 64                          # stem width
    layer1_planes: int = 64                          # layer1 Bottleneck planes; layer1 outputs 4x this (256)
    stage_modules: tuple[int, ...] = (1, 4, 3)       # HRNet modules in stages 2, 3, 4 (W48: 1, 4, 3)
    stage_blocks: int = 4                            # BASIC blocks per branch and module (W48: 4)
    # "hrnet": the reference's N(0, 0.001) convs (the paper starts from pretrained weights, so it hardly matters);
    # "torch": PyTorch's default (Kaiming-uniform) init, which trains from scratch several times faster (measured
    # on the demo model: uv error 45 vs 81 reference px after 20 steps on a fixed batch) -- the demo's choice.
    backbone_init: Literal["hrnet", "torch"] = "hrnet"
    # PersPose-HPS (issue 12): linear heads on the global vector for SMPL shape (10 β), the twist of each of the 23
    # bones as (cos, sin) and the 5 leaf rotations (6-D); evaluation turns them into a mesh with the analytical IK
    # (trainer/hps.py) and the SMPL-format ``body_model`` ("synthetic": the toolkit's own; or an SMPL file / dir).
    hps: bool = False
    body_model: str = "synthetic"

    def __post_init__(self):
        # YAML gives lists: store tuples so the config stays hashable and frozen
        object.__setattr__(self, "skeletons", tuple(self.skeletons))
        object.__setattr__(self, "head_planes", tuple(int(p) for p in self.head_planes))
        object.__setattr__(self, "stage_modules", tuple(int(m) for m in self.stage_modules))
        if len(self.stage_modules) != 3 or min(self.stage_modules) < 1 or self.stage_blocks < 1:
            raise ValueError(f"stage_modules needs 3 positive counts (stages 2-4) and stage_blocks >= 1, got "
                             f"{self.stage_modules} and {self.stage_blocks}")
        if self.crop_size <= 0 or self.crop_size % 32:
            raise ValueError(f"crop_size must be a positive multiple of 32 (HRNet's 4 branches), got {self.crop_size}")
        if min(self.width, self.global_dim, self.stem_channels, self.layer1_planes) <= 0:
            raise ValueError("width, global_dim, stem_channels and layer1_planes must be positive")
        if len(self.head_planes) != 4 or min(self.head_planes) <= 0:
            raise ValueError(f"head_planes needs 4 positive values, got {self.head_planes}")
        if self.backbone_init not in ("hrnet", "torch"):
            raise ValueError(f"backbone_init must be 'hrnet' or 'torch', got {self.backbone_init!r}")
        if self.hps and "smpl24" not in self.skeletons:
            raise ValueError("model.hps needs the smpl24 skeleton among model.skeletons (the IK solves SMPL joints)")
        if not self.skeletons or len(set(self.skeletons)) != len(self.skeletons):
            raise ValueError(f"skeletons must be non-empty and distinct, got {self.skeletons}")
        unknown = [s for s in self.skeletons if s not in SKELETONS]
        if unknown:
            raise ValueError(f"unknown skeleton(s) {unknown}; known: {', '.join(SKELETONS)}")

    @classmethod
    def tiny(cls, crop_size: int = 64, **overrides) -> "ModelConfig":
        """A ~0.5 M-parameter model with the full topology (all stages, branches and heads), for tests and demos."""
        base = dict(width=4, crop_size=crop_size, global_dim=32, head_planes=(2, 4, 8, 16), stem_channels=8,
                    layer1_planes=4)
        return cls(**{**base, **overrides})

    @property
    def num_joints(self) -> int:
        return sum(get_skeleton(s).num_joints for s in self.skeletons)


def concat_flip_perm(skeletons) -> tuple[int, ...]:
    """Flip permutation of the concatenated joint set: each slice permuted by its skeleton's flip_perm."""
    perm: list[int] = []
    for name, sl in joint_slices(skeletons).items():
        perm += [sl.start + k for k in get_skeleton(name).flip_perm]
    return tuple(perm)


def normalize_images(images: torch.Tensor, channels_last: bool | None = None) -> torch.Tensor:
    """uint8 (or float in [0, 255]) RGB (B,3,S,S) or (B,S,S,3) -> float32 (B,3,S,S) normalised by ImageNet mean/std.

    channels_last: True forces torch.channels_last, False contiguous NCHW, None keeps the layout the input implies
    (a (B,S,S,3) input comes out channels_last without a copy)."""
    if images.ndim != 4:
        raise ValueError(f"images must be 4-D, got shape {tuple(images.shape)}")
    if images.shape[1] != 3:
        if images.shape[-1] != 3:
            raise ValueError(f"images must be (B,3,S,S) or (B,S,S,3), got {tuple(images.shape)}")
        images = images.permute(0, 3, 1, 2)
    mean = torch.tensor(IMAGENET_MEAN, device=images.device, dtype=torch.float32).view(1, 3, 1, 1) * 255.0
    inv_std = 1.0 / (torch.tensor(IMAGENET_STD, device=images.device, dtype=torch.float32).view(1, 3, 1, 1) * 255.0)
    x = (images.to(torch.float32) - mean) * inv_std
    if channels_last is None:
        return x
    return x.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def soft_argmax(logits: torch.Tensor, crop_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Heatmap logits (B,J,S/4,S/4) -> (uv (B,J,2) in crop pixels, probabilities (B,J,S/4,S/4)), in float32.
    Softmax over all cells (no temperature); cell (i, j) sits at pixel (4j+1.5, 4i+1.5)."""
    b, j, h, w = logits.shape
    if h != crop_size // HEATMAP_STRIDE or w != h:
        raise ValueError(f"heatmaps {h}x{w} do not match crop size {crop_size}")
    prob = logits.float().flatten(2).softmax(dim=-1).view(b, j, h, w)
    grid = crop_pixel_grid(crop_size, HEATMAP_STRIDE, logits.device, torch.float32)
    u = (prob.sum(dim=2) * grid).sum(dim=-1)  # marginal over rows, weighted by the column's pixel
    v = (prob.sum(dim=3) * grid).sum(dim=-1)
    return torch.stack([u, v], dim=-1), prob


def _safe_intrinsics(K_crop: torch.Tensor, crop_size: int) -> torch.Tensor:
    """K_crop with a nominal K (f = S, centre (S-1)/2) for samples without valid intrinsics (avoids 0-division)."""
    valid = (K_crop[:, 0, 0] > 0) & (K_crop[:, 1, 1] > 0)  # no data-dependent branch: torch.compile friendly
    c = (crop_size - 1) / 2.0
    nominal = K_crop.new_tensor([[crop_size, 0.0, c], [0.0, crop_size, c], [0.0, 0.0, 1.0]])
    return torch.where(valid[:, None, None], K_crop, nominal)


def assemble_outputs(uv: torch.Tensor, d: torch.Tensor, scale: torch.Tensor, K_crop: torch.Tensor, crop_size: int,
                     R: torch.Tensor | None = None, heatmaps: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """The model's output dict from uv (B,J,2), d (B,J), scale (B,) (also used by flip_test after averaging)."""
    uvd = torch.cat([uv, d[..., None]], dim=-1)
    xyz_orig, xyz_crop = joints_from_uvd(uvd, scale, _safe_intrinsics(K_crop, crop_size), R)
    out = {"uv": uv, "d": d, "uvd": uvd, "scale": scale, "xyz_crop": xyz_crop}
    if R is not None:
        out["xyz_orig"] = xyz_orig
    if heatmaps is not None:
        out["heatmaps"] = heatmaps
    return out


class PersPose(nn.Module):
    """HRNet (PE added to layer1's output) -> heatmap soft-argmax uv + global-vector depth and scale heads."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.backbone = HighResolutionNet(cfg.width, cfg.stem_channels, cfg.layer1_planes, cfg.stage_blocks,
                                          multi_scale_output=True, num_modules=cfg.stage_modules)
        self.global_head = GlobalHead(self.backbone.branch_channels, cfg.head_planes, cfg.global_dim)
        if cfg.backbone_init == "hrnet":
            init_hrnet_weights(self.backbone)
            init_hrnet_weights(self.global_head)
        if cfg.use_pe:
            self.pe_conv = nn.Conv2d(2, self.backbone.layer1_channels, kernel_size=1, bias=False)
            nn.init.normal_(self.pe_conv.weight, std=0.01)
        else:
            self.pe_conv = None
        n = cfg.num_joints
        # PersPose's heads keep PyTorch's default init
        self.heatmap_head = nn.Conv2d(cfg.width, n, kernel_size=1)
        self.depth_head = nn.Linear(cfg.global_dim, n)
        self.scale_head = nn.Linear(cfg.global_dim, 1)
        if cfg.hps:
            self.beta_head = nn.Linear(cfg.global_dim, NUM_BETAS)
            self.twist_head = nn.Linear(cfg.global_dim, NUM_TWISTS * 2)
            self.leaf_head = nn.Linear(cfg.global_dim, len(LEAF_JOINTS) * 6)
        self.joint_slices = joint_slices(cfg.skeletons)
        depth_mask = torch.ones(n)
        for name, sl in self.joint_slices.items():
            root = get_skeleton(name).root
            if root is not None:
                depth_mask[sl.start + root] = 0.0
        self.register_buffer("depth_mask", depth_mask, persistent=False)
        self.register_buffer("flip_perm", torch.tensor(concat_flip_perm(cfg.skeletons)), persistent=False)
        self.scale_ref = SCALE_REF_M_PER_PX * REFERENCE_CROP / cfg.crop_size

    @property
    def scale_bounds(self) -> tuple[float, float]:
        """Open interval of s-hat (m/px of the S crop)."""
        half = SCALE_LOG_RANGE / 2
        return self.scale_ref * math.exp(-half), self.scale_ref * math.exp(half)

    def forward(self, images: torch.Tensor, K_crop: torch.Tensor, has_intrinsics: torch.Tensor | None = None,
                R: torch.Tensor | None = None, return_heatmaps: bool = False) -> dict[str, torch.Tensor]:
        x = images if images.is_floating_point() else normalize_images(images)
        s = self.cfg.crop_size
        if x.ndim != 4 or x.shape[1] != 3 or x.shape[2] != s or x.shape[3] != s:
            raise ValueError(f"expected images (B,3,{s},{s}) (or uint8 (B,{s},{s},3)), got {tuple(images.shape)}")
        pe = None
        if self.pe_conv is not None:
            m = pe_map(K_crop, s, HEATMAP_STRIDE)
            if has_intrinsics is not None:
                m = m * has_intrinsics.to(device=m.device, dtype=m.dtype)[:, None, None, None]
            pe = self.pe_conv(m.to(self.pe_conv.weight.dtype))
        feats = self.backbone(x, pe)
        g = self.global_head(feats)
        with torch.autocast(device_type=x.device.type, enabled=False):
            logits = self.heatmap_head(feats[0].float())
            uv, prob = soft_argmax(logits, s)
            g = g.float()
            d = DEPTH_RANGE_M * (torch.sigmoid(self.depth_head(g)) - 0.5) * self.depth_mask
            sig = torch.sigmoid(self.scale_head(g)[:, 0])
            scale = self.scale_ref * torch.exp(SCALE_LOG_RANGE * (sig - 0.5))
            out = assemble_outputs(uv, d, scale, K_crop, s, R, prob if return_heatmaps else None)
            if self.cfg.hps:
                out.update(self.hps_outputs(g))
            return out

    def hps_outputs(self, g: torch.Tensor) -> dict[str, torch.Tensor]:
        """``betas`` (B, 10), ``twist`` (B, 23, 2) unit (cos, sin) per bone, ``leaf_rot`` (B, 5, 3, 3) local
        rotations of LEAF_JOINTS from 6-D vectors by Gram-Schmidt (the official code's form)."""
        B = g.shape[0]
        tw = self.twist_head(g).view(B, NUM_TWISTS, 2)
        tw = tw / tw.norm(dim=-1, keepdim=True).clamp_min(1e-8)
        return {"betas": self.beta_head(g), "twist": tw,
                "leaf_rot": rotation_from_6d(self.leaf_head(g).view(B, len(LEAF_JOINTS), 6))}


def rotation_from_6d(x: torch.Tensor) -> torch.Tensor:
    """(..., 6) -> rotation matrices (..., 3, 3): the two 3-vectors (x[..., :3], x[..., 3:]) orthonormalised by
    Gram-Schmidt are the first two columns, their cross product the third."""
    a, b = x[..., :3], x[..., 3:]
    c1 = a / a.norm(dim=-1, keepdim=True).clamp_min(1e-8)
    b = b - (c1 * b).sum(-1, keepdim=True) * c1
    c2 = b / b.norm(dim=-1, keepdim=True).clamp_min(1e-8)
    return torch.stack([c1, c2, torch.cross(c1, c2, dim=-1)], dim=-1)


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The bare module under any DDP (``.module``) and torch.compile (``._orig_mod``) wrappers."""
    while True:
        if isinstance(model, torch.nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, torch.nn.Module):
            model = model._orig_mod
        else:
            return model


def build_model(cfg: ModelConfig | None = None) -> PersPose:
    """A freshly initialised PersPose (CPU, train mode). Load pretrained weights with load_pose_hrnet_weights."""
    return PersPose(cfg or ModelConfig())


def unflip_predictions(out: dict[str, torch.Tensor], flip_perm: torch.Tensor, crop_size: int):
    """Predictions on a mirrored image -> predictions for the original: u -> (S-1) - u, joints swapped by
    flip_perm, d swapped, scale unchanged, heatmaps mirrored along the width (the stride-4 grid is symmetric)."""
    uv = out["uv"][:, flip_perm].clone()
    uv[..., 0] = (crop_size - 1) - uv[..., 0]
    res = {"uv": uv, "d": out["d"][:, flip_perm], "scale": out["scale"]}
    if "betas" in out:  # the mirrored person: same shape, mirror bones' twists with the opposite sense
        tw = out["twist"][:, list(mirror_bone_perm())].clone()
        tw[..., 1] = -tw[..., 1]
        res.update({"betas": out["betas"], "twist": tw})
    if "heatmaps" in out:
        res["heatmaps"] = out["heatmaps"][:, flip_perm].flip(-1)
    return res


def _flip_images(images: torch.Tensor) -> torch.Tensor:
    nhwc = images.shape[1] != 3 and images.shape[-1] == 3
    return images.flip(2 if nhwc else 3)


def flip_test(model: PersPose, images: torch.Tensor, K_crop: torch.Tensor, has_intrinsics: torch.Tensor | None = None,
              R: torch.Tensor | None = None, return_heatmaps: bool = False) -> dict[str, torch.Tensor]:
    """Average of the prediction and the un-flipped prediction on the mirrored image (the reference's flip test).

    The mirrored crop's camera has c_x -> (S-1) - c_x (exact for pixel centres at integers); uvd and xyz are
    recomputed from the averaged uv, d and scale with the original K_crop (and R). Works on DDP / torch.compile
    wrappers of the model."""
    net = unwrap_model(model)  # DDP (.module) and torch.compile (._orig_mod)
    if not isinstance(net, PersPose):
        raise TypeError(f"flip_test needs a PersPose model (possibly wrapped), got {type(model).__name__}")
    s = net.cfg.crop_size
    out = model(images, K_crop, has_intrinsics, None, return_heatmaps)
    K_flip = flip_intrinsics(K_crop, s)
    back = unflip_predictions(model(_flip_images(images), K_flip, has_intrinsics, None, return_heatmaps),
                              net.flip_perm, s)
    avg = {k: 0.5 * (out[k] + back[k]) for k in back}
    res = assemble_outputs(avg["uv"], avg["d"], avg["scale"], K_crop, s, R, avg.get("heatmaps"))
    if "betas" in out:
        # the mirrored pass's leaf rotations are discarded, as the official flip test does
        tw = avg["twist"] / avg["twist"].norm(dim=-1, keepdim=True).clamp_min(1e-8)
        res.update({"betas": avg["betas"], "twist": tw, "leaf_rot": out["leaf_rot"]})
    return res

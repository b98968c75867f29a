"""Torch twins of the geometry the model needs: the UVD -> camera inverse, the PE map and the flip.

It lives in ``trainer/`` because only the model, the losses and the evaluation use it; ``pipeline/`` stays
torch-free.

Same conventions as :mod:`pipeline.geometry` (OpenCV frames, pixel centres at integers, metres). Batched and
differentiable. Low-precision inputs (bf16/fp16) are computed in float32 (a bf16 pixel has ~3 significant digits,
too few for metres); float64 inputs stay float64 (used by the round-trip tests).
"""
from __future__ import annotations

import torch

__all__ = ["joints_from_uvd", "pe_map", "crop_pixel_grid", "flip_intrinsics"]


def _work_dtype(*ts: torch.Tensor) -> torch.dtype:
    return torch.float64 if any(t.dtype == torch.float64 for t in ts) else torch.float32


def joints_from_uvd(uvd: torch.Tensor, scale: torch.Tensor, K_crop: torch.Tensor,
                    R: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """z' = d + s f_crop; P' = z' K_crop^-1 [u, v, 1]; P = R^T P'.

    uvd (B, J, 3), scale (B,), K_crop (B, 3, 3) with zero skew, R (B, 3, 3) orthogonal or None (then the original
    camera is the crop camera) -> (joints in the original camera (B, J, 3), joints in the crop camera (B, J, 3)).
    """
    dt = _work_dtype(uvd, scale, K_crop)
    uvd, scale, K = uvd.to(dt), scale.to(dt), K_crop.to(dt)
    fx, fy = K[:, 0, 0, None], K[:, 1, 1, None]
    cx, cy = K[:, 0, 2, None], K[:, 1, 2, None]
    z = uvd[..., 2] + scale[:, None] * fx
    x = (uvd[..., 0] - cx) / fx * z
    y = (uvd[..., 1] - cy) / fy * z
    rot = torch.stack([x, y, z], dim=-1)
    if R is None:
        return rot, rot
    return rot @ R.to(dt), rot  # row form of R^T @ P'


def crop_pixel_grid(crop_size: int, stride: int = 4, device=None, dtype=torch.float32) -> torch.Tensor:
    """Centres of the stride x stride cells of an S crop: (S/stride,) values stride * j + (stride - 1) / 2."""
    n = crop_size // stride
    return torch.arange(n, device=device, dtype=dtype) * stride + 0.5 * (stride - 1)


def pe_map(K_crop: torch.Tensor, crop_size: int, stride: int = 4) -> torch.Tensor:
    """PE map (B, 2, S/stride, S/stride): channel 0 = (u - c_x)/f_x, channel 1 = (v - c_y)/f_y at the stride grid
    (K_crop^-1 [u, v, 1] for zero skew). A sample whose K_crop is all zeros (no intrinsics, e.g. COCO) gets zeros."""
    dt = _work_dtype(K_crop)
    K = K_crop.to(dt)
    g = crop_pixel_grid(crop_size, stride, K.device, dt)
    valid = (K[:, 0, 0] > 0) & (K[:, 1, 1] > 0)
    fx = torch.where(valid, K[:, 0, 0], torch.ones_like(K[:, 0, 0]))
    fy = torch.where(valid, K[:, 1, 1], torch.ones_like(K[:, 1, 1]))
    x = (g[None, :] - K[:, 0, 2, None]) / fx[:, None]  # (B, n) over columns j
    y = (g[None, :] - K[:, 1, 2, None]) / fy[:, None]  # (B, n) over rows i
    n = g.shape[0]
    m = torch.stack([x[:, None, :].expand(-1, n, -1), y[:, :, None].expand(-1, -1, n)], dim=1)
    return m * valid[:, None, None, None].to(dt)


def flip_intrinsics(K_crop: torch.Tensor, crop_size: int) -> torch.Tensor:
    """Intrinsics (..., 3, 3) after a horizontal flip u -> (S-1) - u of the S crop: c_x -> (S-1) - c_x (the
    torch twin of :func:`pipeline.geometry.flip_intrinsics`)."""
    out = K_crop.clone()
    out[..., 0, 2] = (crop_size - 1) - out[..., 0, 2]
    return out

"""The photometric chain and cutout as batched torch ops on the training device (issue 14).

:func:`apply_photometric_torch` applies the parameter vectors that the loader drew (:mod:`trainer.photometric`,
one row per sample) to a uint8 (B, 3, S, S) batch on any device: the CPU in the tests and the benchmark, CUDA in
training (:func:`trainer.train.to_device` calls it after the copy, before the normalisation). Each op runs on the
samples where it fires, in the reference order; which samples those are is read from a host copy of the
parameters, so the device never has to report back (no synchronisation).

Equality with the CPU chain. Every op reproduces the arithmetic of the OpenCV 8-bit kernel it replaces rather than
an idealised version of it (measured here: a float Gaussian blur, rounded, differs from cv2's fixed-point one by a
grey level on about 2 % of the values for k = 15; rounding where cv2's HSV -> RGB truncates, on a third):

* GaussianBlur: OpenCV's bit-exact 8-bit path, an integer kernel of sum 256 (its error-diffusion rounding of the
  sampled Gaussian; sigma from k when 0) applied separably in integers, rounded once: (sum + 2^15) >> 16.
  Border BORDER_REFLECT_101. Unsharp masking then saturates as cv2.subtract / cv2.add do.
* resize INTER_AREA: the area weights of OpenCV's table (float32 values) summed in float64 and rounded half to
  even; exact where the weights are short dyadic fractions (the reference factors at S = 64, 128, 256), else an
  occasional one-level difference from OpenCV's float32 sums. Its fast path for an exact factor 2:
  (a + b + c + d + 2) >> 2.
* resize INTER_LINEAR up: 11-bit fixed-point coefficients rounded separately, horizontal integer sums and the
  vertical ((b0 (S0 >> 4)) >> 16 + (b1 (S1 >> 4)) >> 16 + 2) >> 2; at the borders OpenCV 5 clamps the source
  index but keeps the coefficients (measured: clamping them too differs on the first and last rows).
* RGB -> HSV: OpenCV's integer algorithm with its division tables (exact for all 16.8 M colours). HSV -> RGB:
  the float32 algorithm of OpenCV's SIMD loop, whose two multiply-adds (1 - s h, 1 - s (1 - h)) the compiler
  fuses (emulated in float64, rounded once) and which truncates to uint8: equal for all 11.8 M (h, s, v)
  inputs (unfused, 1758 differ by one level). OpenCV runs that loop over blocks of 64 pixels of a row (AVX-512;
  32 with AVX2) and converts the rest of the row with scalar code that rounds instead; so for crop widths that
  are not a multiple of 64 the last W mod 64 pixels of each row may differ by one level (a documented, tested
  difference). The training crop, 256, has no such pixels.
* noise: float32 img + z * float32(sigma), rounded half-to-even; the grey mix: the weighted sum in the order and
  fused form cv2.transform uses; contrast and the saturation table: the same float64 expressions.

Tolerance (tests/test_photometric_torch.py): at most 1 grey level per op and 2 for the whole chain (a one-level
difference may pass through the contrast gain), on at most 0.1 % of the values. Measured with OpenCV 5.1.0
(opencv-python-headless 5.1.0.95, AVX-512 dispatch) at S = 64, 128 and 256 on the tests' drawn images and on a
real H36M frame: no difference at all, per op and for the chain, on the CPU. The tolerance is for
OpenCV builds whose float kernels round differently (another compiler, no FMA) and for the cases above.

The flip. The CPU chain runs before the horizontal flip; batches arrive flipped. Samples whose ``flip`` column is
set are mirrored back, augmented in the frame the parameters were drawn in, and mirrored again, so noise windows,
cutout rectangles and the resampling kernels see exactly the CPU's pixels (cheaper to get right than mirroring
each op's parameters, and two copies of half a batch cost nothing on a GPU).
"""
from __future__ import annotations

import logging
import math
from functools import lru_cache

import numpy as np
import torch

from .photometric import COL, fill_table, noise_table

log = logging.getLogger(__name__)

__all__ = ["apply_photometric_torch", "gaussian_kernel_int", "area_taps", "linear_taps"]

_SHIFT = 12                                        # OpenCV's RGB2HSV_b hsv_shift
# float32 constants as OpenCV computes them (6.f / 180, 1.f / 255); a Python float scalar meets a float32
# tensor as float32, so these exact values are what the kernels multiply by
_F_HSCALE, _F_INV255 = float(np.float32(6 / 180)), float(np.float32(1 / 255))
_SECTORS_RGB = ((0, 3, 1), (2, 0, 1), (1, 0, 3), (1, 2, 0), (3, 1, 0), (0, 1, 2))   # HSV2RGB sector_data, as r, g, b


# --------------------------------------------------------------------------------- OpenCV's tables (host side)
@lru_cache(maxsize=None)
def gaussian_kernel_int(k: int, sigma: float) -> tuple[int, ...]:
    """cv2.GaussianBlur's 8-bit kernel: getGaussianKernelBitExact (its fixed small tables for sigma <= 0 and
    k <= 7) rounded to 1/256 with error diffusion, the centre taking the remainder so the taps sum to 256."""
    small = {3: (0.25, 0.5, 0.25), 5: (0.0625, 0.25, 0.375, 0.25, 0.0625),
             7: (0.03125, 0.109375, 0.21875, 0.28125, 0.21875, 0.109375, 0.03125)}
    if sigma <= 0 and k in small:
        kernel = small[k]
    else:
        s = sigma if sigma > 0 else 0.15 * k + 0.35
        half = [math.exp((x * x) * (-0.125 / (s * s))) for x in range(1 - k, 0, 2)]
        mul = 1.0 / (2.0 * sum(half) + 1.0)
        kernel = tuple(v * mul for v in half) + (mul,)
    taps, err = [], 0.0
    for v in kernel[:k // 2]:
        adj = v * 256 + err
        taps.append(int(np.rint(adj)))
        err = adj - taps[-1]
    return tuple(taps) + (256 - 2 * sum(taps),) + tuple(reversed(taps))


@lru_cache(maxsize=None)
def area_taps(src: int, dst: int) -> tuple[np.ndarray, np.ndarray]:
    """INTER_AREA down-sampling src -> dst along one axis as (index (dst, T) int64, weight (dst, T) float64):
    OpenCV's computeResizeAreaTab, weights rounded to float32 as it stores them; unused taps weigh 0."""
    scale = src / dst
    rows = []
    for d in range(dst):
        f1 = d * scale
        f2, cell = f1 + scale, min(scale, src - f1)
        s2 = min(math.floor(f2), src - 1)
        s1 = min(math.ceil(f1), s2)
        taps = [(s1 - 1, (s1 - f1) / cell)] if s1 - f1 > 1e-3 else []
        taps += [(s, 1.0 / cell) for s in range(s1, s2)]
        if f2 - s2 > 1e-3:
            taps.append((s2, min(f2 - s2, 1.0, cell) / cell))
        rows.append(taps)
    width = max(len(r) for r in rows)
    idx, w = np.zeros((dst, width), np.int64), np.zeros((dst, width), np.float64)
    for d, taps in enumerate(rows):
        for t, (s, a) in enumerate(taps):
            idx[d, t], w[d, t] = s, np.float32(a)
    return idx, w


@lru_cache(maxsize=None)
def linear_taps(src: int, dst: int) -> tuple[np.ndarray, np.ndarray]:
    """INTER_LINEAR src -> dst along one axis as (index (dst, 2) int64, coefficient (dst, 2) int64): float32
    positions, 11-bit coefficients rounded separately, indices clamped, coefficients not."""
    scale = 1.0 / (dst / src)
    idx, coef = np.zeros((dst, 2), np.int64), np.zeros((dst, 2), np.int64)
    for d in range(dst):
        fx = np.float32((d + 0.5) * scale - 0.5)
        sx = int(np.floor(fx))
        fx = np.float32(fx - np.float32(sx))
        idx[d] = min(max(sx, 0), src - 1), min(max(sx + 1, 0), src - 1)
        coef[d] = np.rint((np.float32(1) - fx) * np.float32(2048)), np.rint(fx * np.float32(2048))
    return idx, coef


@lru_cache(maxsize=None)
def _reflect101(n: int, pad: int) -> np.ndarray:
    i = np.abs(np.arange(-pad, n + pad))
    return np.where(i > n - 1, 2 * (n - 1) - i, i)


@lru_cache(maxsize=8)
def _tables(device: torch.device) -> dict:
    """The constant tables on ``device`` (uploaded once per process and device)."""
    v = np.arange(1, 256, dtype=np.float64)
    sdiv = np.r_[0, np.rint((255 << _SHIFT) / v)].astype(np.int32)
    hdiv = np.r_[0, np.rint((180 << _SHIFT) / (6.0 * v))].astype(np.int32)
    t = {"noise": noise_table(), "fill": fill_table(), "sdiv": sdiv, "hdiv": hdiv,
         "sectors": np.array(_SECTORS_RGB, np.int64)}
    return {k: torch.from_numpy(np.array(a)).to(device) for k, a in t.items()}


def _put(a, device: torch.device, dtype=None) -> torch.Tensor:
    """A host array on ``device``. To CUDA through pinned memory and non-blocking: a copy from pageable memory
    would wait for the device to finish its queued work (the previous training step) on every call."""
    t = torch.from_numpy(np.ascontiguousarray(a))
    t = t if dtype is None else t.to(dtype)
    if device.type != "cuda":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


def _on(a, x: torch.Tensor, dtype=torch.float64) -> torch.Tensor:
    """Host values -> a (m, 1, 1, 1) tensor on x's device, one per sample."""
    return _put(np.asarray(a), x.device, dtype).view(-1, 1, 1, 1)


# --------------------------------------------------------------------------------- resampling (m, 3, H, W)
def _taps_along(x: torch.Tensor, dim: int, idx: np.ndarray, w) -> torch.Tensor:
    """sum_t w[:, t] * x.index_select(dim, idx[:, t]) with w broadcast along ``dim`` (-1 or -2)."""
    out = None
    for t in range(idx.shape[1]):
        wt = _put(w[:, t], x.device, x.dtype)
        term = x.index_select(dim, _put(idx[:, t], x.device)) * (wt if dim == -1 else wt[:, None])
        out = term if out is None else out + term
    return out


def _gaussian(x: torch.Tensor, k: int, sigma: float) -> torch.Tensor:
    """cv2.GaussianBlur(img, (k, k), sigma) on uint8, bit-exact: integer taps, one rounding."""
    taps = gaussian_kernel_int(k, sigma)
    h, w = x.shape[-2:]
    pad = k // 2
    xi = x.to(torch.int32)
    cols = xi.index_select(-1, _put(_reflect101(w, pad), x.device))
    rows = sum(c * cols[..., i:i + w] for i, c in enumerate(taps))
    rows = rows.index_select(-2, _put(_reflect101(h, pad), x.device))
    acc = sum(c * rows[..., i:i + h, :] for i, c in enumerate(taps))
    return ((acc + (1 << 15)) >> 16).to(torch.uint8)


def _resize_area(x: torch.Tensor, dh: int, dw: int) -> torch.Tensor:
    h, w = x.shape[-2:]
    if h == 2 * dh and w == 2 * dw:                 # OpenCV's fast path for an exact factor 2
        s = x.to(torch.int32).view(*x.shape[:-2], dh, 2, dw, 2).sum((-3, -1))
        return ((s + 2) >> 2).to(torch.uint8)
    y = _taps_along(x.to(torch.float64), -1, *area_taps(w, dw))
    y = _taps_along(y, -2, *area_taps(h, dh))
    return y.round().clamp_(0, 255).to(torch.uint8)


def _resize_linear(x: torch.Tensor, dh: int, dw: int) -> torch.Tensor:
    h, w = x.shape[-2:]
    ix, cx = linear_taps(w, dw)
    iy, cy = linear_taps(h, dh)
    rows = _taps_along(x.to(torch.int32), -1, ix, cx.astype(np.int32)) >> 4
    dev = x.device
    out = None
    for t in range(2):
        b = _put(cy[:, t], dev, torch.int32)[:, None]
        term = (b * rows.index_select(-2, _put(iy[:, t], dev))) >> 16
        out = term if out is None else out + term
    return ((out + 2) >> 2).clamp_(0, 255).to(torch.uint8)


def _blur(x: torch.Tensor, mode: int, arg: float) -> torch.Tensor:
    if mode == 0:
        h, w = x.shape[-2:]
        small = _resize_area(x, max(1, round(h / arg)), max(1, round(w / arg)))
        return _resize_linear(small, h, w)
    k = int(arg)
    if mode == 1:
        return _gaussian(x, k, 0.0)
    xi = x.to(torch.int32)
    detail = (xi - _gaussian(x, k, float(k)).to(torch.int32)).clamp_(0, 255)
    return (xi + (2 * detail).clamp_(max=255)).clamp_(max=255).to(torch.uint8)


# --------------------------------------------------------------------------------- per-pixel ops (m, 3, H, W)
def _mean(x: torch.Tensor) -> torch.Tensor:
    """(m,) float64: cv2.mean's per-channel sum times 1/N, then numpy's mean of the three, in that order."""
    m = x.to(torch.float64).sum((-2, -1)) * (1.0 / (x.shape[-2] * x.shape[-1]))
    return ((m[:, 0] + m[:, 1]) + m[:, 2]) / 3.0


def _noise(x: torch.Tensor, p: np.ndarray, tab: dict) -> torch.Tensor:
    if (p[:, COL["noise_off"]] < 0).any():
        raise ValueError("photometric on the device: the image is larger than the noise table "
                         "(augment.photometric_on_device needs crops of at most 836 px)")
    m, c, h, w = x.shape
    n = c * h * w
    z = torch.stack([tab["noise"][o:o + n] for o in p[:, COL["noise_off"]].astype(np.int64)])
    z = z.view(m, h, w, c).permute(0, 3, 1, 2)
    sigma = (_mean(x) / 5.0 * _put(p[:, COL["noise_sign"]], x.device)).to(torch.float32)
    return (x.to(torch.float32) + z * sigma.view(-1, 1, 1, 1)).round_().clamp_(0, 255).to(torch.uint8)


def _contrast(x: torch.Tensor, p: np.ndarray) -> torch.Tensor:
    mean = _mean(x).view(-1, 1, 1, 1)
    b = 0.5 * mean * _on(p[:, COL["contrast_u"]], x)
    y = (x.to(torch.float64) - mean) * _on(p[:, COL["contrast_a"]], x) + mean + b
    return y.round_().clamp_(0, 255).to(torch.uint8)


def _rgb_to_hsv(x: torch.Tensor, tab: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """cv2.COLOR_RGB2HSV on uint8, exact: (h in [0, 180), s, v) as int32 (m, H, W)."""
    r, g, b = x.to(torch.int32).unbind(1)
    v = torch.maximum(torch.maximum(r, g), b)
    diff = v - torch.minimum(torch.minimum(r, g), b)
    half = 1 << (_SHIFT - 1)
    s = (diff * tab["sdiv"][v.long()] + half) >> _SHIFT
    h = torch.where(v == r, g - b, torch.where(v == g, b - r + 2 * diff, r - g + 4 * diff))
    h = (h * tab["hdiv"][diff.long()] + half) >> _SHIFT
    return torch.where(h < 0, h + 180, h), s, v


def _hsv_to_rgb(h: torch.Tensor, s: torch.Tensor, v: torch.Tensor, tab: dict) -> torch.Tensor:
    """cv2.COLOR_HSV2RGB on uint8 inputs with h < 180 -> uint8 (m, 3, H, W)."""
    f32 = torch.float32
    hh = h.to(f32) * _F_HSCALE
    sector = hh.floor()
    frac = hh - sector
    s32, v32 = s.to(f32) * _F_INV255, v.to(f32) * _F_INV255
    s64 = s32.to(torch.float64)
    t2 = v32 * (1.0 - s64 * frac.to(torch.float64)).to(f32)              # fma(-s, h, 1), rounded once
    t3 = v32 * (1.0 - s64 * (1.0 - frac).to(torch.float64)).to(f32)
    table = torch.stack([v32, v32 * (1.0 - s32), t2, t3], 1)               # (m, 4, H, W)
    index = tab["sectors"][sector.long()].permute(0, 3, 1, 2)              # (m, 3, H, W): r, g, b
    rgb = table.gather(1, index) * 255.0
    return rgb.trunc_().clamp_(0, 255).to(torch.uint8)        # the SIMD body truncates (module docstring)


def _hue(x: torch.Tensor, p: np.ndarray, tab: dict) -> torch.Tensor:
    h, s, v = _rgb_to_hsv(x, tab)
    shift = _on(p[:, COL["hue_shift"]], x, torch.int32).view(-1, 1, 1)
    h = torch.remainder(h + shift, 180)
    smax = s.amax((-2, -1), keepdim=True).to(torch.float64)
    k = _on(p[:, COL["hue_k"]], x).view(-1, 1, 1)
    s = (s.to(torch.float64) * k / (1.0 + smax) * 255.0).round_().clamp_(0, 255).to(torch.int32)
    return _hsv_to_rgb(h, s, v, tab)


def _channel(x: torch.Tensor, p: np.ndarray) -> torch.Tensor:
    m, _, h, w = x.shape
    c = p[:, COL["channel_c"]].astype(np.int64)
    copy = x.gather(1, _on(np.maximum(c, 0), x, torch.int64).expand(m, 1, h, w))
    wts = p[:, COL["channel_w0"]:COL["channel_w2"] + 1]
    r, g, b = x.to(torch.float64).unbind(1)
    w0, w1, w2 = (_on(wts[:, i], x).view(-1, 1, 1) for i in range(3))
    t = (g.to(torch.float32) * w1.to(torch.float32)).to(torch.float64)  # cv2.transform: g w1, then two fmas
    t = (r * w0 + t).to(torch.float32).to(torch.float64)
    grey = (b * w2 + t).to(torch.float32).round_().clamp_(0, 255).to(torch.uint8)[:, None]
    return torch.where(_on(c >= 0, x, torch.bool), copy, grey).expand(m, 3, h, w)


def _cutout(x: torch.Tensor, p: np.ndarray, tab: dict) -> torch.Tensor:
    out = x.clone()
    for i, row in enumerate(p):
        y0, y1, x0, x1 = (int(v) for v in row[COL["cut_y0"]:COL["cut_x1"] + 1])
        fill = int(row[COL["cut_fill"]])
        if fill == 1:
            off = int(row[COL["cut_off"]])
            if off < 0:
                raise ValueError("photometric on the device: the cutout is larger than the fill table")
            n = 3 * (y1 - y0) * (x1 - x0)
            out[i, :, y0:y1, x0:x1] = tab["fill"][off:off + n].view(y1 - y0, x1 - x0, 3).permute(2, 0, 1)
        elif fill == 2:
            rgb = row[COL["cut_r"]:COL["cut_b"] + 1].astype(np.uint8)
            out[i, :, y0:y1, x0:x1] = _put(rgb, x.device).view(3, 1, 1)
    return out


def _blur_groups(x: torch.Tensor, p: np.ndarray, tab: dict) -> torch.Tensor:
    out = x.clone()
    keys = p[:, [COL["blur_mode"], COL["blur_arg"]]]
    for mode, arg in np.unique(keys, axis=0):
        sel = np.flatnonzero((keys == (mode, arg)).all(1))
        idx = _put(sel, x.device)
        out[idx] = _blur(x[idx], int(mode), float(arg))
    return out


_OPS = (("blur", _blur_groups), ("noise", _noise), ("contrast", lambda x, p, tab: _contrast(x, p)),
        ("hue", _hue), ("channel", lambda x, p, tab: _channel(x, p)), ("cutout", _cutout))


def apply_photometric_torch(images: torch.Tensor, params) -> torch.Tensor:
    """uint8 (B, 3, S, S) RGB images (any device, any memory format) and their (B, P) parameter rows (a tensor
    or array, best on the host: the rows decide which samples each op touches) -> the augmented images, a new
    tensor; the input is not modified. Rows of zeros leave their image as it is."""
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be uint8 (B, 3, S, S), got {images.dtype} {tuple(images.shape)}")
    p = (params.detach().to("cpu", torch.float64).numpy() if torch.is_tensor(params)
         else np.asarray(params, np.float64))
    if p.shape[0] != images.shape[0]:
        raise ValueError(f"{p.shape[0]} parameter rows for {images.shape[0]} images")
    fires = p[:, [COL[name] for name, _ in _OPS]] != 0
    if not fires.any():
        return images
    tab = _tables(images.device)
    out = images.clone()
    flip = np.flatnonzero((p[:, COL["flip"]] != 0) & fires.any(1))
    if flip.size:
        fl = _put(flip, images.device)
        out[fl] = out[fl].flip(-1)
    for j, (name, fn) in enumerate(_OPS):
        sel = np.flatnonzero(fires[:, j])
        if sel.size:
            idx = _put(sel, images.device)
            out[idx] = fn(out[idx], p[sel], tab)
    if flip.size:
        out[fl] = out[fl].flip(-1)
    return out

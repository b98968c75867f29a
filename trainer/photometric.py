"""Photometric augmentations and cutout on uint8 RGB crops (the reference chain: docs/design.md §11).

Every function takes an (H, W, 3) uint8 RGB image and a seeded ``np.random.Generator`` and returns a new uint8
image of the same shape; the input is never modified. The reference's parameters are kept; per-pixel affine maps
(contrast/brightness, hue/saturation) are applied through 256-entry lookup tables, which is exact for uint8
inputs and several times faster than float arithmetic.
"""
from __future__ import annotations

from functools import lru_cache

import cv2
import numpy as np

__all__ = ["blur_sharpen", "gaussian_noise", "contrast_brightness", "hue_saturation", "channel_mix", "cutout",
           "photometric"]

_RESIZE_FACTORS = (8 / 5, 2.0, 8 / 3)
_BLUR_KERNELS = (7, 11, 15)
_SHARPEN_KERNELS = (3, 7, 11, 15)
_NOISE_BANK = 1 << 21


def _lut(table: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(table), 0, 255).astype(np.uint8)


def blur_sharpen(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One of: down-then-up resize (factor 8/5, 2 or 8/3), Gaussian blur (k 7/11/15, sigma from k), or unsharp
    masking (k 3/7/11/15, sigma = k) out = img + 2 (img - blur) with saturating uint8 subtraction (the
    reference adds only positive detail)."""
    mode = int(rng.integers(3))
    if mode == 0:
        h, w = img.shape[:2]
        f = _RESIZE_FACTORS[int(rng.integers(len(_RESIZE_FACTORS)))]
        small = cv2.resize(img, (max(1, round(w / f)), max(1, round(h / f))), interpolation=cv2.INTER_AREA)
        return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
    if mode == 1:
        k = _BLUR_KERNELS[int(rng.integers(len(_BLUR_KERNELS)))]
        return cv2.GaussianBlur(img, (k, k), 0)
    k = _SHARPEN_KERNELS[int(rng.integers(len(_SHARPEN_KERNELS)))]
    detail = cv2.subtract(img, cv2.GaussianBlur(img, (k, k), k))
    return cv2.add(img, cv2.add(detail, detail))


def _mean(img: np.ndarray) -> float:
    return float(np.mean(cv2.mean(img)[:img.shape[2] if img.ndim == 3 else 1]))


@lru_cache(maxsize=1)
def _noise_bank() -> np.ndarray:
    """_NOISE_BANK standard normals (float32, 8 MiB), the same in every process (a constant table, read-only)."""
    bank = np.random.default_rng(0x9E3779B9).standard_normal(_NOISE_BANK, np.float32)
    bank.flags.writeable = False
    return bank


def gaussian_noise(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Additive N(0, sigma) noise with sigma = mean(image) / 5, rounded and saturated to [0, 255].

    The noise is a window of a fixed table of 2^21 standard normals at an offset drawn from ``rng``, times
    +-sigma (sign drawn too): within an image it is i.i.d. N(0, sigma) as in the reference; across images the
    windows may overlap (shifted copies of the same values), which a network cannot exploit as a label cue.
    Drawing 196k fresh normals per 256² crop costs 0.6 ms (cv2.randn; numpy's sampler is slower still), eight
    times this. Images larger than the table draw fresh normals from ``rng``."""
    sigma = _mean(img) / 5.0
    bank = _noise_bank()
    if img.size <= bank.size:
        off = int(rng.integers(bank.size - img.size + 1))
        z = bank[off:off + img.size].reshape(img.shape)
    else:
        z = rng.standard_normal(img.shape, np.float32)
    if rng.uniform() < 0.5:
        sigma = -sigma
    return cv2.addWeighted(img, 1.0, z, sigma, 0.0, dtype=cv2.CV_8U)


def contrast_brightness(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """out = clip((img - mean) a + mean + b), a = 1.1 + 0.6 U(-1, 1) in [0.5, 1.7], b = 0.5 mean U(-1, 1)."""
    mean = _mean(img)
    a = 1.1 + 0.6 * rng.uniform(-1.0, 1.0)
    b = 0.5 * mean * rng.uniform(-1.0, 1.0)
    return cv2.LUT(img, _lut((np.arange(256) - mean) * a + mean + b))


def hue_saturation(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Hue shift int(U(-1,1) 40) in OpenCV HSV units (mod 180); saturation S -> S k / (1 + max S) 255, k ~ U(0,1)."""
    hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV)
    shift = int(rng.uniform(-1.0, 1.0) * 40)
    k = rng.uniform(0.0, 1.0)
    h, s, v = cv2.split(hsv)
    h = cv2.LUT(h, ((np.arange(256) + shift) % 180).astype(np.uint8))
    s = cv2.LUT(s, _lut(np.arange(256) * k / (1.0 + float(s.max())) * 255.0))
    return cv2.cvtColor(cv2.merge([h, s, v]), cv2.COLOR_HSV2RGB)


def channel_mix(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """50 %: one random channel copied to all three; 50 %: a random convex combination of the channels (grey)."""
    if rng.uniform() < 0.5:
        c = int(rng.integers(3))
        return np.repeat(img[..., c:c + 1], 3, axis=-1)
    w = rng.uniform(0.0, 1.0, 3) + 1e-6
    w = (w / w.sum()).astype(np.float32)
    grey = cv2.transform(img, w[None, :])          # (H, W, 1) weighted sum, saturating
    return np.repeat(grey.reshape(img.shape[:2] + (1,)), 3, axis=-1)


def cutout(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One rectangle of area H W (0.2 + 0.8 U) 0.4 (8-40 % of the crop), aspect U(0.3, 1/0.3), integer centre in
    [2, size-2], filled 50/50 with per-pixel uniform noise or one random RGB colour."""
    h, w = img.shape[:2]
    area = h * w * (0.2 + 0.8 * rng.uniform()) * 0.4
    aspect = rng.uniform(0.3, 1.0 / 0.3)
    ch, cw = int(round(np.sqrt(area * aspect))), int(round(np.sqrt(area / aspect)))
    cy, cx = int(rng.integers(2, h - 1)), int(rng.integers(2, w - 1))
    y0, y1 = max(0, cy - ch // 2), min(h, cy - ch // 2 + ch)
    x0, x1 = max(0, cx - cw // 2), min(w, cx - cw // 2 + cw)
    out = img.copy()
    if y1 > y0 and x1 > x0:
        if rng.uniform() < 0.5:
            out[y0:y1, x0:x1] = rng.integers(0, 256, (y1 - y0, x1 - x0, 3), dtype=np.uint8)
        else:
            out[y0:y1, x0:x1] = rng.integers(0, 256, 3, dtype=np.uint8)
    return out


def photometric(img: np.ndarray, rng: np.random.Generator, cfg) -> np.ndarray:
    """The reference chain in its order (blur/sharpen, noise, contrast/brightness, hue/saturation, channel), each
    with its own coin; ``cfg`` is an :class:`trainer.augment.AugmentConfig`."""
    for p, fn in ((cfg.blur_prob, blur_sharpen), (cfg.noise_prob, gaussian_noise),
                  (cfg.contrast_prob, contrast_brightness), (cfg.hue_prob, hue_saturation),
                  (cfg.channel_prob, channel_mix)):
        if rng.uniform() < p:
            img = fn(img, rng)
    return img

"""Photometric augmentations and cutout on uint8 RGB crops (the reference chain: docs/design.md §11).

Every op is split in two: *draw* its parameters from a seeded ``np.random.Generator`` into a fixed-width float64
vector (:data:`COLUMNS`), and *apply* that vector to an (H, W, 3) uint8 RGB image with numpy/cv2. The vector is
what lets the chain run elsewhere: with ``AugmentConfig.photometric_on_device`` the loader only draws it, the
batch carries it (``photo``) and :mod:`trainer.photometric_torch` applies it, batched, on the training device,
to the same bytes (tolerance and measurements there). The draws do not depend on the pixels (only on the image
shape), and both routes draw the same numbers in the same order, so switching the option changes where the
pixels are computed, never the data stream. Image statistics that the reference takes from the image being
augmented (the noise sigma, the contrast mean, the largest saturation) are computed at apply time, from the
image as it is at that point of the chain.

The reference's parameters are kept; per-pixel affine maps (contrast/brightness, hue/saturation) are applied
through 256-entry lookup tables, exact for uint8 inputs and several times faster than float arithmetic. The
per-op functions (``blur_sharpen(img, rng)`` ...) are draw + apply of one op; ``photometric`` is the chain.

Random tables. Gaussian noise and the cutout's noise fill are windows of fixed tables (2^21 standard normals,
2^21 uniform bytes, the same in every process) at offsets drawn from ``rng``: one integer per image instead of
196k fresh draws, and a window is what a device can index. Within an image the values are i.i.d. as in the
reference; across images windows may overlap (shifted copies), which a network cannot exploit as a label cue.
Images larger than a table (more than 2^21 values: crops above 836²) draw a seed instead and fill from
``np.random.default_rng(seed)`` (CPU only).

Behaviour change (issue 14): until then the cutout noise fill drew its bytes from ``rng`` directly, and noise for
images larger than the table drew its normals from ``rng``; both now draw one number (an offset or a seed), so
every later draw of the stream moves. The rest of the chain draws exactly as before and gives the same bytes
(tests/test_augment.py compares it with the former implementation).
"""
from __future__ import annotations

import math
from functools import lru_cache

import cv2
import numpy as np

__all__ = ["COLUMNS", "COL", "NUM_PARAMS", "TABLE_SIZE", "uniform", "noise_table", "fill_table", "draw_photometric",
           "apply_photometric", "blur_sharpen", "gaussian_noise", "contrast_brightness", "hue_saturation",
           "channel_mix", "cutout", "photometric"]

RESIZE_FACTORS = (8 / 5, 2.0, 8 / 3)
BLUR_KERNELS = (7, 11, 15)
SHARPEN_KERNELS = (3, 7, 11, 15)
TABLE_SIZE = 1 << 21

# One row per sample. An op fires when its flag column is 1. ``flip``: the image the vector will meet is already
# mirrored (set by augment_sample; the chain itself runs in the unflipped frame). blur_mode 0 resize down/up by
# blur_arg, 1 Gaussian blur with kernel blur_arg, 2 unsharp mask with kernel blur_arg. noise_off / cut_off are
# table offsets, -1 when the image is too large for the table (then *_seed). channel_c: copied channel, -1 for
# the grey mix with weights w0..w2 (float32 values). cut_fill: 0 none (empty rectangle), 1 table noise, 2 colour.
COLUMNS = ("flip", "blur", "blur_mode", "blur_arg", "noise", "noise_off", "noise_seed", "noise_sign",
           "contrast", "contrast_a", "contrast_u", "hue", "hue_shift", "hue_k",
           "channel", "channel_c", "channel_w0", "channel_w1", "channel_w2",
           "cutout", "cut_y0", "cut_y1", "cut_x0", "cut_x1", "cut_fill", "cut_off", "cut_seed", "cut_r", "cut_g",
           "cut_b")
COL = {name: i for i, name in enumerate(COLUMNS)}
NUM_PARAMS = len(COLUMNS)
_SEED_MAX = 1 << 53                     # float64 holds it exactly


def _lut(table: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(table), 0, 255).astype(np.uint8)


@lru_cache(maxsize=1)
def noise_table() -> np.ndarray:
    """TABLE_SIZE standard normals (float32, 8 MiB), the same in every process (a constant table, read-only)."""
    t = np.random.default_rng(0x9E3779B9).standard_normal(TABLE_SIZE, np.float32)
    t.flags.writeable = False
    return t


@lru_cache(maxsize=1)
def fill_table() -> np.ndarray:
    """TABLE_SIZE uniform bytes (2 MiB) for the cutout's noise fill, the same in every process, read-only."""
    t = np.random.default_rng(0x7F4A7C15).integers(0, 256, TABLE_SIZE, dtype=np.uint8)
    t.flags.writeable = False
    return t


def uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    """``rng.uniform(lo, hi)`` to the bit, state included (numpy computes ``lo + (hi - lo) * next_double``, and
    ``rng.random()`` is next_double; tested), for a third of its cost: the loader draws a dozen per sample."""
    return lo + (hi - lo) * rng.random()


def _draw_window(rng: np.random.Generator, p: np.ndarray, n: int, off: str, seed: str) -> None:
    if n <= TABLE_SIZE:
        p[COL[off]] = rng.integers(TABLE_SIZE - n + 1)
    else:
        p[COL[off]], p[COL[seed]] = -1, rng.integers(_SEED_MAX)


# ------------------------------------------------------------------------------------------------ draws
def _draw_blur(rng, p, shape) -> None:
    mode = int(rng.integers(3))
    kinds = (RESIZE_FACTORS, BLUR_KERNELS, SHARPEN_KERNELS)[mode]
    p[COL["blur"]], p[COL["blur_mode"]] = 1, mode
    p[COL["blur_arg"]] = kinds[int(rng.integers(len(kinds)))]


def _draw_noise(rng, p, shape) -> None:
    p[COL["noise"]] = 1
    _draw_window(rng, p, math.prod(shape), "noise_off", "noise_seed")
    p[COL["noise_sign"]] = -1.0 if rng.random() < 0.5 else 1.0


def _draw_contrast(rng, p, shape) -> None:
    p[COL["contrast"]] = 1
    p[COL["contrast_a"]] = 1.1 + 0.6 * uniform(rng, -1.0, 1.0)
    p[COL["contrast_u"]] = uniform(rng, -1.0, 1.0)


def _draw_hue(rng, p, shape) -> None:
    p[COL["hue"]] = 1
    p[COL["hue_shift"]] = int(uniform(rng, -1.0, 1.0) * 40)
    p[COL["hue_k"]] = rng.random()


def _draw_channel(rng, p, shape) -> None:
    p[COL["channel"]] = 1
    if rng.random() < 0.5:
        p[COL["channel_c"]] = int(rng.integers(3))
        return
    w = rng.uniform(0.0, 1.0, 3) + 1e-6
    p[COL["channel_c"]] = -1
    p[COL["channel_w0"]:COL["channel_w2"] + 1] = (w / w.sum()).astype(np.float32)


def _draw_cutout(rng, p, shape) -> None:
    h, w = shape[:2]
    area = h * w * (0.2 + 0.8 * rng.random()) * 0.4
    aspect = uniform(rng, 0.3, 1.0 / 0.3)
    ch, cw = int(round(math.sqrt(area * aspect))), int(round(math.sqrt(area / aspect)))   # == np.sqrt
    cy, cx = int(rng.integers(2, h - 1)), int(rng.integers(2, w - 1))
    y0, y1 = max(0, cy - ch // 2), min(h, cy - ch // 2 + ch)
    x0, x1 = max(0, cx - cw // 2), min(w, cx - cw // 2 + cw)
    p[COL["cutout"]] = 1
    p[COL["cut_y0"]:COL["cut_x1"] + 1] = y0, y1, x0, x1
    if y1 > y0 and x1 > x0:
        if rng.random() < 0.5:
            p[COL["cut_fill"]] = 1
            _draw_window(rng, p, (y1 - y0) * (x1 - x0) * 3, "cut_off", "cut_seed")
        else:
            p[COL["cut_fill"]] = 2
            p[COL["cut_r"]:COL["cut_b"] + 1] = rng.integers(0, 256, 3, dtype=np.uint8)


def draw_photometric(rng: np.random.Generator, shape: tuple, cfg, cutout: bool = True) -> np.ndarray:
    """The parameter vector (NUM_PARAMS,) float64 of the reference chain for an image of ``shape`` (H, W, 3):
    blur/sharpen, noise, contrast/brightness, hue/saturation, channel, each with its own coin, then (with
    ``cutout``) the cutout coin, in that order; ``cfg`` is an :class:`trainer.augment.AugmentConfig`."""
    p = np.zeros(NUM_PARAMS, np.float64)
    for prob, draw in ((cfg.blur_prob, _draw_blur), (cfg.noise_prob, _draw_noise),
                       (cfg.contrast_prob, _draw_contrast), (cfg.hue_prob, _draw_hue),
                       (cfg.channel_prob, _draw_channel)):
        if rng.random() < prob:
            draw(rng, p, shape)
    if cutout and rng.random() < cfg.cutout_prob:
        _draw_cutout(rng, p, shape)
    return p


# ------------------------------------------------------------------------------------------------ applies
def _mean(img: np.ndarray) -> float:
    return float(np.mean(cv2.mean(img)[:img.shape[2] if img.ndim == 3 else 1]))


def _apply_blur(img, p) -> np.ndarray:
    """Down-then-up resize (INTER_AREA, INTER_LINEAR), Gaussian blur (sigma from k), or unsharp masking
    (sigma = k) out = img + 2 (img - blur) with saturating uint8 subtraction (the reference adds only positive
    detail)."""
    mode, arg = int(p[COL["blur_mode"]]), p[COL["blur_arg"]]
    if mode == 0:
        h, w = img.shape[:2]
        small = cv2.resize(img, (max(1, round(w / arg)), max(1, round(h / arg))), interpolation=cv2.INTER_AREA)
        return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
    k = int(arg)
    if mode == 1:
        return cv2.GaussianBlur(img, (k, k), 0)
    detail = cv2.subtract(img, cv2.GaussianBlur(img, (k, k), k))
    return cv2.add(img, cv2.add(detail, detail))


def _apply_noise(img, p) -> np.ndarray:
    """Additive N(0, sigma) noise, sigma = mean(image) / 5, sign drawn; rounded and saturated to [0, 255]."""
    sigma = _mean(img) / 5.0 * p[COL["noise_sign"]]
    off = int(p[COL["noise_off"]])
    if off >= 0:
        z = noise_table()[off:off + img.size].reshape(img.shape)
    else:
        z = np.random.default_rng(int(p[COL["noise_seed"]])).standard_normal(img.shape, np.float32)
    return cv2.addWeighted(img, 1.0, z, sigma, 0.0, dtype=cv2.CV_8U)


def _apply_contrast(img, p) -> np.ndarray:
    """out = clip((img - mean) a + mean + b), a = 1.1 + 0.6 U(-1, 1) in [0.5, 1.7], b = 0.5 mean U(-1, 1)."""
    mean = _mean(img)
    b = 0.5 * mean * p[COL["contrast_u"]]
    return cv2.LUT(img, _lut((np.arange(256) - mean) * p[COL["contrast_a"]] + mean + b))


def _apply_hue(img, p) -> np.ndarray:
    """Hue shift int(U(-1,1) 40) in OpenCV HSV units (mod 180); saturation S -> S k / (1 + max S) 255, k ~ U(0,1)."""
    hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV)
    h, s, v = cv2.split(hsv)
    h = cv2.LUT(h, ((np.arange(256) + int(p[COL["hue_shift"]])) % 180).astype(np.uint8))
    s = cv2.LUT(s, _lut(np.arange(256) * p[COL["hue_k"]] / (1.0 + float(s.max())) * 255.0))
    return cv2.cvtColor(cv2.merge([h, s, v]), cv2.COLOR_HSV2RGB)


def _apply_channel(img, p) -> np.ndarray:
    """One channel copied to all three, or a convex combination of the channels (grey), saturating."""
    c = int(p[COL["channel_c"]])
    if c >= 0:
        return np.repeat(img[..., c:c + 1], 3, axis=-1)
    w = p[COL["channel_w0"]:COL["channel_w2"] + 1].astype(np.float32)
    grey = cv2.transform(img, w[None, :])          # (H, W, 1) weighted sum, saturating
    return np.repeat(grey.reshape(img.shape[:2] + (1,)), 3, axis=-1)


def _apply_cutout(img, p) -> np.ndarray:
    """The rectangle filled with uniform noise from the table or with one RGB colour."""
    y0, y1, x0, x1 = (int(v) for v in p[COL["cut_y0"]:COL["cut_x1"] + 1])
    fill, out = int(p[COL["cut_fill"]]), img.copy()
    shape = (y1 - y0, x1 - x0, 3)
    if fill == 1:
        off, n = int(p[COL["cut_off"]]), int(np.prod(shape))
        out[y0:y1, x0:x1] = (fill_table()[off:off + n].reshape(shape) if off >= 0 else
                             np.random.default_rng(int(p[COL["cut_seed"]])).integers(0, 256, shape, np.uint8))
    elif fill == 2:
        out[y0:y1, x0:x1] = p[COL["cut_r"]:COL["cut_b"] + 1].astype(np.uint8)
    return out


OPS = (("blur", _apply_blur), ("noise", _apply_noise), ("contrast", _apply_contrast), ("hue", _apply_hue),
       ("channel", _apply_channel), ("cutout", _apply_cutout))


def apply_photometric(img: np.ndarray, p: np.ndarray) -> np.ndarray:
    """The ops of parameter vector ``p`` that fire, in the reference order, on an unflipped (H, W, 3) uint8 RGB
    image (the ``flip`` column is for :mod:`trainer.photometric_torch`); the input is never modified."""
    for name, fn in OPS:
        if p[COL[name]]:
            img = fn(img, p)
    return img


# ------------------------------------------------------------------------------------------------ per-op API
def _one(name, draw, apply):
    def op(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        p = np.zeros(NUM_PARAMS, np.float64)
        draw(rng, p, img.shape)
        return apply(img, p)
    op.__name__ = op.__qualname__ = name
    op.__doc__ = f"Draw from ``rng`` and apply one op. {apply.__doc__}"
    return op


blur_sharpen = _one("blur_sharpen", _draw_blur, _apply_blur)
gaussian_noise = _one("gaussian_noise", _draw_noise, _apply_noise)
contrast_brightness = _one("contrast_brightness", _draw_contrast, _apply_contrast)
hue_saturation = _one("hue_saturation", _draw_hue, _apply_hue)
channel_mix = _one("channel_mix", _draw_channel, _apply_channel)
cutout = _one("cutout", _draw_cutout, _apply_cutout)


def photometric(img: np.ndarray, rng: np.random.Generator, cfg) -> np.ndarray:
    """The reference chain without cutout (blur/sharpen, noise, contrast/brightness, hue/saturation, channel),
    each with its own coin; ``cfg`` is an :class:`trainer.augment.AugmentConfig`."""
    return apply_photometric(img, draw_photometric(rng, img.shape, cfg, cutout=False))

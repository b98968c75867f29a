"""Exact ray-cast rendering of body volumes (capsules, ellipsoids) and random backgrounds for ``synth``.

The pixel convention is the toolkit's (docs/design.md §2): pixel centres at integer coordinates, so pixel (u, v) is
rendered by the ray ``K^-1 [u, v, 1]`` through its centre. A point P therefore lands exactly on the pixel grid
position ``(fx X/Z + cx, fy Y/Z + cy)``; labels need no half-pixel correction.

Rays are written ``d = (x, y, 1)`` (not normalised), so a hit's ray parameter ``t`` is its depth Z, which is what
the z-buffer compares. Each primitive is intersected only inside its exact projected bounding rectangle
(:func:`projected_extents`), vectorised with numpy over that rectangle.
"""
from __future__ import annotations

from dataclasses import dataclass
from statistics import NormalDist

import cv2
import numpy as np

from .synth_look import mark_colors

__all__ = ["Capsule", "Ellipsoid", "projected_extent", "projected_extents", "body_extent", "intersect",
           "surface_normals", "render_primitives", "render_background", "BACKGROUND_KINDS", "finish_image"]

BACKGROUND_KINDS = ("gradient", "blobs", "stripes", "checker", "horizon")


@dataclass(frozen=True)
class Capsule:
    """All points within ``radius`` of the segment a-b (camera frame, metres)."""
    a: np.ndarray
    b: np.ndarray
    radius: float
    color: np.ndarray      # RGB 0..255, the colour at full light
    part: int              # id written into the part map (0 = background)
    marks: tuple = ()      # surface marks (pipeline.synth_look): clothing edges, watch, strap, ...


@dataclass(frozen=True)
class Ellipsoid:
    """``{center + axes @ (radii * s) : |s| <= 1}``; ``axes`` columns are the local axes in the camera frame."""
    center: np.ndarray
    axes: np.ndarray
    radii: np.ndarray
    color: np.ndarray
    part: int
    marks: tuple = ()      # surface marks (pipeline.synth_look): face, chest print, ...


def _quadric_extents(c: np.ndarray, M: np.ndarray, K: np.ndarray) -> np.ndarray:
    """Exact image extents (N, 4) = (umin, umax, vmin, vmax) of the ellipsoids {p : (p-c)^T M^-1 (p-c) <= 1},
    c (N, 3), M (N, 3, 3); NaN rows where a volume reaches behind the plane z = 0 (no finite projection).

    The tangent planes through the camera centre that contain the image y axis are x = m z with
    (c_x - m c_z)^2 = n^T M n, n = (1, 0, -m): a quadratic in m; the same for v."""
    out = np.empty((len(c), 4))
    qa = c[:, 2] ** 2 - M[:, 2, 2]
    qa = np.where(qa > 1e-12, qa, np.nan)
    for i, f, p in ((0, K[0, 0], K[0, 2]), (1, K[1, 1], K[1, 2])):
        qb = c[:, i] * c[:, 2] - M[:, i, 2]
        s = np.sqrt(np.maximum(qb * qb - qa * (c[:, i] ** 2 - M[:, i, i]), 0.0))
        out[:, 2 * i], out[:, 2 * i + 1] = f * (qb - s) / qa + p, f * (qb + s) / qa + p
    return out


def projected_extents(prims, K: np.ndarray) -> np.ndarray:
    """(N, 4) (umin, umax, vmin, vmax) of each primitive's silhouette in continuous pixel coordinates; NaN rows
    for volumes that reach behind the camera. Exact: a capsule's silhouette is the convex hull of its two end
    spheres' silhouettes."""
    caps = [p for p in prims if isinstance(p, Capsule)]
    ells = [p for p in prims if not isinstance(p, Capsule)]
    out = np.empty((len(prims), 4))
    is_cap = np.array([isinstance(p, Capsule) for p in prims], bool)
    if caps:
        c = np.array([q for p in caps for q in (p.a, p.b)])
        r2 = np.repeat([p.radius ** 2 for p in caps], 2)
        e = _quadric_extents(c, r2[:, None, None] * np.eye(3), K).reshape(len(caps), 2, 4)
        out[is_cap] = np.stack([e[:, :, 0].min(1), e[:, :, 1].max(1), e[:, :, 2].min(1), e[:, :, 3].max(1)], 1)
    if ells:
        c = np.array([p.center for p in ells])
        M = np.array([(p.axes * p.radii ** 2) @ p.axes.T for p in ells])
        out[~is_cap] = _quadric_extents(c, M, K)
    return out


def projected_extent(prim, K: np.ndarray) -> np.ndarray | None:
    """The extent of one primitive, None when it reaches behind the camera."""
    e = projected_extents([prim], K)[0]
    return None if np.isnan(e).any() else e


def body_extent(prims, K: np.ndarray) -> np.ndarray | None:
    """Union extent of several primitives (the tight silhouette box, unclipped by the image); None when any
    reaches behind the camera."""
    e = projected_extents(prims, K)
    if np.isnan(e).any():
        return None
    return np.array([e[:, 0].min(), e[:, 1].max(), e[:, 2].min(), e[:, 3].max()])


def intersect(prim, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Depth t (= Z) of the first hit of the rays (x, y, 1) with the primitive, inf where missed.
    ``x`` (1, w) and ``y`` (h, 1) broadcast to the rectangle."""
    if isinstance(prim, Capsule):
        return _intersect_capsule(prim, x, y)
    return _intersect_ellipsoid(prim, x, y)


def surface_normals(prim, points: np.ndarray, with_axis: bool = False):
    """Unit outward normals (N, 3) at surface points (N, 3) of the primitive; with ``with_axis`` also the
    capsule axis parameter s in [0, 1] of each point (None for an ellipsoid)."""
    s = None
    if isinstance(prim, Capsule):
        ba = prim.b - prim.a
        s = np.clip((points - prim.a) @ ba / (ba @ ba), 0.0, 1.0)
        n = points - prim.a - s[:, None] * ba
    else:
        g = (points - prim.center) @ prim.axes / prim.radii ** 2      # gradient in local axes
        n = g @ prim.axes.T
    n = n / np.linalg.norm(n, axis=1, keepdims=True)
    return (n, s) if with_axis else n


def _intersect_capsule(cap: Capsule, x, y) -> np.ndarray:
    # Inigo Quilez's capsule intersection, generalised to an unnormalised ray direction and origin at 0: hit the
    # infinite cylinder; if that point lies beyond an end, the first hit can only be on that end's sphere.
    a, b, r = cap.a, cap.b, cap.radius
    ba = b - a
    baba, baoa = ba @ ba, -(ba @ a)
    rdrd = x * x + y * y + 1.0
    bard = ba[0] * x + ba[1] * y + ba[2]
    rda = a[0] * x + a[1] * y + a[2]
    qa = baba * rdrd - bard * bard
    qb = -baba * rda - baoa * bard
    qc = baba * (a @ a) - baoa * baoa - r * r * baba
    h = qb * qb - qa * qc
    hit_cyl = h >= 0
    t = (-qb - np.sqrt(np.where(hit_cyl, h, 0.0))) / qa
    along = baoa + t * bard
    # a ray parallel to the axis has no finite `along`: it meets end a first iff it runs along ba
    near_a = np.where(np.isfinite(along), along <= 0, bard > 0)
    rdb = b[0] * x + b[1] * y + b[2]
    cb = -np.where(near_a, rda, rdb)
    cc = np.where(near_a, a @ a, b @ b) - r * r
    hc = cb * cb - rdrd * cc
    t_cap = (-cb - np.sqrt(np.where(hc > 0, hc, 0.0))) / rdrd
    body = hit_cyl & (along > 0) & (along < baba)
    t = np.where(body, t, np.where(hit_cyl & (hc > 0), t_cap, np.inf))
    return np.where(t > 0, t, np.inf)


def _intersect_ellipsoid(e: Ellipsoid, x, y) -> np.ndarray:
    # in local coordinates scaled to the unit sphere: p_local = axes^T (p - c) / radii
    Q, r = e.axes, e.radii
    o = -(Q.T @ e.center) / r
    d = [(Q[0, k] * x + Q[1, k] * y + Q[2, k]) / r[k] for k in range(3)]
    qa = d[0] * d[0] + d[1] * d[1] + d[2] * d[2]
    qb = o[0] * d[0] + o[1] * d[1] + o[2] * d[2]
    h = qb * qb - qa * (o @ o - 1.0)
    t = (-qb - np.sqrt(np.where(h > 0, h, 0.0))) / qa
    return np.where((h > 0) & (t > 0), t, np.inf)


def _pixel_rect(ext: np.ndarray, width: int, height: int):
    """Integer pixel ranges [u0, u1) x [v0, v1) whose centres can fall inside the extent."""
    u0, u1 = max(int(np.ceil(ext[0])), 0), min(int(np.floor(ext[1])) + 1, width)
    v0, v1 = max(int(np.ceil(ext[2])), 0), min(int(np.floor(ext[3])) + 1, height)
    return u0, u1, v0, v1


def _draw(prim, rect, fxycxy, image, part, depth, light, ambient) -> None:
    """Intersect the primitive inside one pixel rectangle and write the hits that pass the z-test."""
    u0, u1, v0, v1 = rect
    fx, fy, cx, cy = fxycxy
    x = ((np.arange(u0, u1) - cx) / fx)[None, :]
    y = ((np.arange(v0, v1) - cy) / fy)[:, None]
    with np.errstate(invalid="ignore", divide="ignore"):  # inf * 0 on missed rays, masked below
        t = intersect(prim, x, y)
    zb = depth[v0:v1, u0:u1]
    front = t < zb
    if not front.any():
        return
    tf = t[front]
    pts = np.stack([np.broadcast_to(x, t.shape)[front] * tf, np.broadcast_to(y, t.shape)[front] * tf, tf], 1)
    n, s = surface_normals(prim, pts, with_axis=True)
    color = mark_colors(prim, pts, prim.color, s) if prim.marks else prim.color[None, :]
    zb[front] = tf
    part[v0:v1, u0:u1][front] = prim.part
    image[v0:v1, u0:u1][front] = np.clip(shading(n, pts, light, ambient, color) + 0.5, 0, 255).astype(np.uint8)


def shading(n: np.ndarray, pts: np.ndarray, light: np.ndarray, ambient: float, color: np.ndarray) -> np.ndarray:
    """RGB (N, 3) of surface points: hemisphere ambient (surfaces facing the image's up get more sky light),
    Lambert from ``light`` and a weak white Blinn-Phong highlight, so limbs read as round volumes."""
    sky = 0.7 + 0.3 * np.clip(-n[:, 1], -1.0, 1.0)          # camera y points down
    lam = np.maximum(n @ light, 0.0)
    view = -pts / np.linalg.norm(pts, axis=1, keepdims=True)
    half = light[None, :] + view
    half /= np.maximum(np.linalg.norm(half, axis=1, keepdims=True), 1e-12)
    spec = 40.0 * np.maximum((n * half).sum(1), 0.0) ** 24 * (lam > 0)
    return (ambient * sky + (1.0 - ambient) * lam)[:, None] * color + spec[:, None]


def render_primitives(image: np.ndarray, prims, K: np.ndarray, light: np.ndarray, ambient: float):
    """Draw the primitives over ``image`` (H, W, 3 uint8, modified in place) with a z-buffer and Lambert shading
    (``light`` = unit direction towards the light). Returns (part map int16 (H, W), depth float64 (H, W), inf
    where no body)."""
    height, width = image.shape[:2]
    depth = np.full((height, width), np.inf)
    part = np.zeros((height, width), np.int16)
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    for prim, ext in zip(prims, projected_extents(prims, K)):
        if np.isnan(ext).any():
            continue
        u0, u1, v0, v1 = _pixel_rect(ext, width, height)
        if u0 < u1 and v0 < v1:
            _draw(prim, (u0, u1, v0, v1), (fx, fy, cx, cy), image, part, depth, light, ambient)
    return part, depth


def _random_color(rng, lo=0, hi=256) -> tuple:
    return tuple(int(c) for c in rng.integers(lo, hi, 3))


def _warp_tile(tile: np.ndarray, M: np.ndarray, width: int, height: int, interp: int, border: int) -> np.ndarray:
    """Output pixel (u, v) takes the tile at M @ (u, v, 1) (cv2's inverse map), so small tiles make big images."""
    return cv2.warpAffine(tile, M, (width, height), flags=interp | cv2.WARP_INVERSE_MAP, borderMode=border)


def _gradient(rng, width, height) -> np.ndarray:
    """Bilinear blend of four random corner colours (computed on a 16 x 16 grid, then resized)."""
    corners = rng.integers(0, 256, (2, 2, 3)).astype(np.float32)
    s = np.linspace(0, 1, 16, dtype=np.float32)
    top = corners[0, 0] + s[:, None] * (corners[0, 1] - corners[0, 0])
    bottom = corners[1, 0] + s[:, None] * (corners[1, 1] - corners[1, 0])
    grid = top[None] + s[:, None, None] * (bottom - top)[None]
    return cv2.resize(np.round(grid).astype(np.uint8), (width, height), interpolation=cv2.INTER_LINEAR)


def _blobs(rng, width, height) -> np.ndarray:
    gw, gh = int(rng.integers(2, 10)), int(rng.integers(2, 10))
    low = rng.integers(0, 256, (gh, gw, 3)).astype(np.uint8)
    return cv2.resize(low, (width, height), interpolation=cv2.INTER_CUBIC)


def _stripes(rng, width, height, checker: bool = False) -> np.ndarray:
    """Stripes or a checkerboard at a random angle and period, by wrapping a 2-cell tile."""
    c0, c1 = _random_color(rng), _random_color(rng)
    tile = np.array([[c0, c1], [c1, c0]] if checker else [[c0, c1]], np.uint8)
    period, ang = rng.uniform(8, 80), rng.uniform(0, np.pi)
    c, s = np.cos(ang) / period, np.sin(ang) / period
    M = np.array([[c, s, rng.uniform(0, 2)], [-s, c, rng.uniform(0, 2)]])
    return _warp_tile(tile, M, width, height, cv2.INTER_NEAREST, cv2.BORDER_WRAP)


def _horizon(rng, width, height) -> np.ndarray:
    img = _gradient(rng, width, height)
    y = int(rng.uniform(0.2, 0.8) * height)
    img[y:] = _blobs(rng, width, height - y)
    return img


def _shapes(rng, img: np.ndarray) -> None:
    height, width = img.shape[:2]
    for _ in range(int(rng.integers(1, 12))):
        kind = int(rng.integers(0, 4))
        col = _random_color(rng)
        p = (int(rng.integers(-width // 4, width)), int(rng.integers(-height // 4, height)))
        size = int(rng.integers(5, max(6, min(width, height) // 2)))
        if kind == 0:
            cv2.rectangle(img, p, (p[0] + size, p[1] + int(rng.integers(5, size + 6))), col, -1)
        elif kind == 1:
            cv2.circle(img, p, size // 2, col, -1, cv2.LINE_AA)
        elif kind == 2:
            q = (int(rng.integers(0, width)), int(rng.integers(0, height)))
            cv2.line(img, p, q, col, int(rng.integers(1, 12)), cv2.LINE_AA)
        else:
            pts = rng.integers(-size, size, (int(rng.integers(3, 7)), 2)) + np.array(p)
            cv2.fillPoly(img, [pts.astype(np.int32)], col, cv2.LINE_AA)


def render_background(rng: np.random.Generator, width: int, height: int) -> tuple[np.ndarray, str]:
    """A random background (H, W, 3) RGB uint8 and its kind: gradient / smooth colour blobs / stripes / checker /
    horizon, optionally with random shapes on top and smoothed."""
    kind = BACKGROUND_KINDS[int(rng.integers(len(BACKGROUND_KINDS)))]
    if kind == "gradient":
        img = _gradient(rng, width, height)
    elif kind == "blobs":
        img = _blobs(rng, width, height)
    elif kind in ("stripes", "checker"):
        img = _stripes(rng, width, height, checker=kind == "checker")
    else:
        img = _horizon(rng, width, height)
    if rng.random() < 0.7:
        _shapes(rng, img)
    if rng.random() < 0.5:  # out-of-focus background
        img = cv2.GaussianBlur(img, (0, 0), float(rng.uniform(1.0, 4.0)))
    return np.ascontiguousarray(img), kind


def _gaussian_lut(sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """Byte -> (positive part, negative part) of a Gaussian quantile: uniform random bytes become N(0, sigma)
    noise rounded to integers, ~6x cheaper than drawing normals."""
    q = np.array([NormalDist(0.0, sigma).inv_cdf((k + 0.5) / 256) for k in range(256)])
    q = np.clip(np.round(q), -255, 255)
    return np.maximum(q, 0).astype(np.uint8), np.maximum(-q, 0).astype(np.uint8)


def finish_image(rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
    """Camera-like finishing that keeps labels exact (symmetric blur, zero-mean noise): softens the ray-cast
    edges and adds sensor noise."""
    if rng.random() < 0.6:
        img = cv2.GaussianBlur(img, (0, 0), float(rng.uniform(0.4, 0.9)))
    if rng.random() < 0.5:
        pos, neg = _gaussian_lut(float(rng.uniform(1.0, 5.0)))
        b = np.frombuffer(rng.bytes(img.size), np.uint8).reshape(img.shape)
        img = cv2.subtract(cv2.add(img, cv2.LUT(b, pos)), cv2.LUT(b, neg))
    return img

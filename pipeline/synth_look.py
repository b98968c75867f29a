"""How ``synth`` people look: clothing, face, hair, shoes and the left/right asymmetries of real people.

A body volume (:class:`pipeline.synth_render.Capsule` / ``Ellipsoid``) carries a base colour and a tuple of
*marks*: pure data that recolour the surface points they cover, applied in order (later marks win). Every mark
is a function of the 3D hit point in the part's own frame, so a cue is drawn exactly where the body's geometry
puts it (the face on the side the head faces, the watch on the left wrist), whatever the pose and the camera:

* :class:`Band`   -- along a capsule's axis, ``lo <= s <= hi`` with s = 0 at end a and 1 at end b (sleeve ends,
  a watch, rings on a sleeve, socks);
* :class:`Spot`   -- on an ellipsoid, where the direction of the point in the unit-sphere coordinates
  ``axes^T (p - centre) / radii`` lies within ``cos_radius`` of ``direction`` (eyes, mouth, brows, a chest print);
* :class:`Slab`   -- ``|n . (frame^T (p - origin)) - offset| <= half_width`` in a frame shared by several parts
  (a bag strap running over the chest and the back, from one shoulder to the other hip);
* :class:`Stripes` -- ``frac(v . (frame^T (p - origin)) / period) < duty`` (striped shirts), also in a shared frame.

Body frame (as :mod:`pipeline.synth_body`): x = the person's left, y = up, z = the direction the person faces.
Labels never depend on the look: only colours change.
"""
from __future__ import annotations

import colorsys
from dataclasses import dataclass

import numpy as np

__all__ = ["Band", "Spot", "Slab", "Stripes", "Look", "sample_look", "mark_colors", "FACE_DIRECTIONS",
           "WATCH_BAND", "STRAP_NORMAL"]


@dataclass(frozen=True)
class Band:
    lo: float
    hi: float
    color: np.ndarray


@dataclass(frozen=True)
class Spot:
    direction: np.ndarray      # unit vector in the ellipsoid's unit-sphere coordinates
    cos_radius: float
    color: np.ndarray


@dataclass(frozen=True)
class Slab:
    origin: np.ndarray         # camera frame, metres
    frame: np.ndarray          # columns: the shared frame's axes in the camera frame
    normal: np.ndarray         # unit, in the shared frame
    offset: float
    half_width: float
    color: np.ndarray


@dataclass(frozen=True)
class Stripes:
    origin: np.ndarray
    frame: np.ndarray
    direction: np.ndarray      # in the shared frame; stripes are the planes orthogonal to it
    period: float
    duty: float
    color: np.ndarray


# Face features on the head ellipsoid, as unit-sphere directions (x left, y up, z forward) and angular radii.
# The eyes sit on the person's left/right of the midline; everything is on the front half (z > 0).
def _unit(v) -> np.ndarray:
    v = np.asarray(v, float)
    return v / np.linalg.norm(v)


FACE_DIRECTIONS = {
    "l_eye": (_unit([0.36, 0.12, 0.92]), 0.13),
    "r_eye": (_unit([-0.36, 0.12, 0.92]), 0.13),
    "mouth": (_unit([0.0, -0.42, 0.9]), 0.17),
    "nose": (_unit([0.0, -0.08, 1.0]), 0.1),
}
WATCH_BAND = (0.80, 0.92)           # along the left forearm (elbow -> wrist)
# the strap runs from the right shoulder (-x, +y) to the left hip (+x, -y): a slab whose normal is (1, 1)/sqrt 2
STRAP_NORMAL = _unit([1.0, 1.0, 0.0])
_SKIN_TONES = ((255, 219, 172), (241, 194, 125), (224, 172, 105), (198, 134, 66), (141, 85, 36), (92, 58, 36))


def _hsv(h, s, v) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v)) * 255.0


def _contrast(rng, base: np.ndarray) -> np.ndarray:
    """A colour clearly different from ``base`` (its value flipped, a hue far away)."""
    h, _, v = colorsys.rgb_to_hsv(*(np.asarray(base) / 255.0))
    return _hsv(h + rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.9), 0.95 - 0.7 * v + rng.uniform(-0.05, 0.05))


@dataclass(frozen=True)
class Look:
    """A person's clothing and cues (colours RGB 0..255)."""
    skin: np.ndarray
    shirt: np.ndarray
    shirt_alt: np.ndarray            # stripes / sleeve rings / chest print
    pants: np.ndarray
    shoes: np.ndarray
    hair: np.ndarray | None          # None: no hair volume
    eyes: np.ndarray
    lips: np.ndarray
    long_sleeves: bool
    shorts: bool
    stripes: bool                    # horizontal stripes on the shirt
    chest_print: bool                # a print on the FRONT of the shirt only
    watch: np.ndarray | None         # on the LEFT wrist
    strap: np.ndarray | None         # bag strap over the RIGHT shoulder
    sleeve_rings: bool               # two rings on the LEFT sleeve only


def sample_look(rng: np.random.Generator) -> Look:
    skin = np.clip(np.array(_SKIN_TONES[int(rng.integers(len(_SKIN_TONES)))], float) * rng.uniform(0.9, 1.05), 0, 255)
    shirt = _hsv(rng.uniform(0, 1), rng.uniform(0.25, 0.9), rng.uniform(0.35, 0.95))
    pants = _hsv(rng.uniform(0.55, 0.7) if rng.random() < 0.5 else rng.uniform(0, 1), rng.uniform(0.1, 0.7),
                 rng.uniform(0.15, 0.6))
    shoes = _hsv(rng.uniform(0, 1), rng.uniform(0, 0.3), rng.uniform(0.05, 0.3) if rng.random() < 0.7 else 0.92)
    hair = _hsv(rng.uniform(0.03, 0.12), rng.uniform(0.3, 0.8), rng.uniform(0.05, 0.45))
    return Look(
        skin=skin, shirt=shirt, shirt_alt=_contrast(rng, shirt), pants=pants, shoes=shoes,
        hair=hair if rng.random() < 0.9 else None, eyes=np.array([30.0, 25.0, 20.0]),
        lips=np.clip(skin * np.array([0.75, 0.45, 0.45]), 0, 255),
        long_sleeves=bool(rng.random() < 0.5), shorts=bool(rng.random() < 0.3), stripes=bool(rng.random() < 0.35),
        chest_print=bool(rng.random() < 0.7),
        watch=np.array([235.0, 235.0, 240.0]) * rng.uniform(0.1, 1.0) if rng.random() < 0.6 else None,
        strap=_hsv(rng.uniform(0.02, 0.1), rng.uniform(0.4, 0.8), rng.uniform(0.1, 0.4)) if rng.random() < 0.4
        else None,
        sleeve_rings=bool(rng.random() < 0.4))


def mark_colors(prim, points: np.ndarray, base: np.ndarray, s: np.ndarray | None) -> np.ndarray:
    """Colours (N, 3) of surface points (N, 3) of ``prim``: ``base`` recoloured by its marks in order.
    ``s`` is the capsule axis parameter of each point (None for ellipsoids)."""
    colors = np.broadcast_to(base, (len(points), 3)).copy()
    for mark in prim.marks:
        if isinstance(mark, Band):
            hit = (s >= mark.lo) & (s <= mark.hi)
        elif isinstance(mark, Spot):
            q = (points - prim.center) @ prim.axes / prim.radii
            hit = q @ mark.direction >= mark.cos_radius * np.linalg.norm(q, axis=1)
        elif isinstance(mark, Slab):
            hit = np.abs((points - mark.origin) @ mark.frame @ mark.normal - mark.offset) <= mark.half_width
        else:  # Stripes
            t = (points - mark.origin) @ mark.frame @ mark.direction / mark.period
            hit = t - np.floor(t) < mark.duty
        colors[hit] = mark.color
    return colors

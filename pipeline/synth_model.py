"""The synthetic people's body model, in SMPL format: capsules and ellipsoids rigidly skinned to the SMPL-24 tree.

``synth`` renders people as exact capsules and ellipsoids (pipeline.synth_render). This module defines those volumes
as a function of 10 shape coefficients β and writes the same bodies as an SMPL-format model (the keys smplx.SMPL
reads: v_template, shapedirs, posedirs, J_regressor, weights, kintree_table, f), so that every synthetic person
carries θ, β and a mesh as labels and the HPS branch (IK, meshes, PVE) can be trained and tested without the
licence-gated SMPL files. The model is built from a fixed seed in 0.2 s; smplx reads files, so
:func:`body_model_path` writes it once to the user's cache under its content hash (never stale, never half-written)
rather than the repository carrying a generated binary. ``scripts/make_body_model.py`` writes the same bytes
anywhere.

Why the mesh equals the rendered surface exactly, for every β and pose:

* Every quantity of the rest body is affine in β: bone offset j is ``offset_j (1 + Σ_k β_k A_kj)`` (its direction
  never changes), capsule radii, ellipsoid centre offsets and radii likewise. So the rest joints J(β), and every
  vertex placed on a volume's surface at fixed parameters (ring height t, angle α; latitude, longitude) are affine
  in β: ``v_template + shapedirs β`` is exact.
* Each volume moves rigidly with one joint (a capsule a→b with joint a's rotation, an ellipsoid with its joint's):
  one-hot skinning weights and zero pose blend shapes make smplx's linear blend skinning a rigid motion per volume,
  which is what the renderer draws (``Capsule(P_a, P_b, r)``, ``Ellipsoid(P_j + G_j off, G_j, r)``).
* The joint regressor averages two marker vertices at ``J_j ± 1 cm x̂`` (rigid with joint j): J_regressor ·
  v_shaped = J(β) exactly. The 48 markers lie inside the body and belong to no face; PVE counts them like any
  vertex (48 of the model's vertices; ``MARKER_VERTICES`` says which).

Shape space (left/right symmetric, so a mirrored body is the same body mirrored): β0 overall size, β1 girth, β2 leg
length, β3 arm length, β4 torso length, β5 shoulder width, β6 hip width, β7 head size, β8 and β9 random symmetric
patterns of bone lengths and limb thickness drawn from the seed. β ~ N(0, 1) gives standing heights of about
1.75 ± 0.12 m. Body frame (as SMPL's template): x = the person's left, y = up, z = the direction the person faces;
T-pose at θ = 0, pelvis at the origin.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

__all__ = ["PARENTS", "CAPSULES", "ELLIPSOIDS", "MESH_ELLIPSOIDS", "NUM_BETAS", "TEMPLATE_HEIGHT", "ShapeModel",
           "shape_basis", "BodyShape", "body_shape", "rest_joints", "rest_height", "mesh_vertices", "mesh_faces",
           "build_body_model", "body_model_bytes", "body_model_path", "load_shape_model", "MARKER_VERTICES", "NUM_VERTICES", "BODY_MODEL_SEED"]

PARENTS = (-1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19, 20, 21)
NUM_BETAS = 10
TEMPLATE_HEIGHT = 1.75      # metres, standing height of the β = 0 body
BODY_MODEL_SEED = 0         # the seed of the model the toolkit uses (body_model_path)

# child - parent offsets in the body frame (template before scaling to TEMPLATE_HEIGHT), T-pose
_OFFSETS = np.array([
    [0.0, 0.0, 0.0],          # 0 pelvis
    [0.06, -0.09, 0.0],       # 1 l_hip
    [-0.06, -0.09, 0.0],      # 2 r_hip
    [0.0, 0.11, -0.02],       # 3 spine1
    [0.035, -0.38, 0.005],    # 4 l_knee
    [-0.035, -0.38, 0.005],   # 5 r_knee
    [0.0, 0.135, 0.01],       # 6 spine2
    [-0.01, -0.40, -0.04],    # 7 l_ankle
    [0.01, -0.40, -0.04],     # 8 r_ankle
    [0.0, 0.055, 0.0],        # 9 spine3
    [0.02, -0.055, 0.12],     # 10 l_foot
    [-0.02, -0.055, 0.12],    # 11 r_foot
    [0.0, 0.215, -0.03],      # 12 neck
    [0.075, 0.12, -0.01],     # 13 l_collar
    [-0.075, 0.12, -0.01],    # 14 r_collar
    [0.0, 0.09, 0.05],        # 15 head
    [0.10, 0.03, -0.01],      # 16 l_shoulder
    [-0.10, 0.03, -0.01],     # 17 r_shoulder
    [0.26, -0.01, -0.02],     # 18 l_elbow
    [-0.26, -0.01, -0.02],    # 19 r_elbow
    [0.25, 0.01, 0.0],        # 20 l_wrist
    [-0.25, 0.01, 0.0],       # 21 r_wrist
    [0.085, -0.01, -0.01],    # 22 l_hand
    [-0.085, -0.01, -0.01],   # 23 r_hand
])
# Capsules: (name, joint a, child joint b, radius, colour group); rigid with joint a.
CAPSULES = (
    ("neck", 12, 15, 0.055, "skin"),
    ("l_shoulder", 13, 16, 0.056, "shirt"), ("r_shoulder", 14, 17, 0.056, "shirt"),
    ("l_upper_arm", 16, 18, 0.05, "sleeve"), ("r_upper_arm", 17, 19, 0.05, "sleeve"),
    ("l_forearm", 18, 20, 0.04, "forearm"), ("r_forearm", 19, 21, 0.04, "forearm"),
    ("l_hand", 20, 22, 0.036, "skin"), ("r_hand", 21, 23, 0.036, "skin"),
    ("l_thigh", 1, 4, 0.075, "pants"), ("r_thigh", 2, 5, 0.075, "pants"),
    ("l_shin", 4, 7, 0.052, "shin"), ("r_shin", 5, 8, 0.052, "shin"),
    ("l_foot", 7, 10, 0.042, "shoes"), ("r_foot", 8, 11, 0.042, "shoes"),
)
# Ellipsoids: (name, joint whose frame and position they follow, centre offset, radii, colour group). The hair
# is part of the look, not of the body: it is rendered (when the person has hair) but is not in the mesh.
ELLIPSOIDS = (
    ("pelvis", 0, (0.0, -0.01, 0.0), (0.165, 0.12, 0.11), "pants"),
    ("abdomen", 3, (0.0, 0.07, 0.0), (0.145, 0.14, 0.10), "shirt"),
    ("chest", 9, (0.0, 0.05, -0.01), (0.175, 0.19, 0.115), "shirt"),
    ("head", 15, (0.0, 0.075, 0.02), (0.082, 0.112, 0.098), "skin"),
    ("hair", 15, (0.0, 0.09, -0.015), (0.088, 0.105, 0.098), "hair"),
)
MESH_ELLIPSOIDS = 4         # the first four ellipsoids are body; the fifth (hair) is not meshed

_LEFT_BONES = (1, 4, 7, 10, 13, 16, 18, 20, 22)          # + 1 is the right twin of each
_LEFT_CAPSULES = (1, 3, 5, 7, 9, 11, 13)                  # + 1 is the right twin of each
_RING_T = (0.0, 0.25, 0.5, 0.75, 1.0)                    # capsule cylinder rings along the axis
_RING_N = 10                                              # vertices per capsule ring
_CAP_PSI = np.pi / 4                                      # the cap ring's polar angle from the axis
_ELL_LAT = np.radians((-75.0, -45.0, -15.0, 15.0, 45.0, 75.0))
_ELL_LON = 12
_MARKER_DX = 0.01


@dataclass(frozen=True)
class ShapeModel:
    """The affine shape model: template quantities and their fractional change per unit β_k."""
    offsets: np.ndarray        # (24, 3) template bone offsets (pelvis row zero)
    capsule_radii: np.ndarray  # (C,)
    ell_offsets: np.ndarray    # (E, 3)
    ell_radii: np.ndarray      # (E, 3)
    d_bone: np.ndarray         # (10, 24) fractional change of each bone offset
    d_capsule: np.ndarray      # (10, C)
    d_ell_offset: np.ndarray   # (10, E)
    d_ell_radii: np.ndarray    # (10, E, 3)


@dataclass(frozen=True)
class BodyShape:
    """The rest body of one β: bone offsets (24, 3), rest joints (24, 3), capsule radii, ellipsoid offsets/radii."""
    offsets: np.ndarray
    joints: np.ndarray
    capsule_radii: np.ndarray
    ell_offsets: np.ndarray
    ell_radii: np.ndarray


def rest_joints(offsets: np.ndarray) -> np.ndarray:
    """T-pose joints (24, 3) from bone offsets (pelvis at offsets[0])."""
    J = np.zeros((24, 3))
    J[0] = offsets[0]
    for j in range(1, 24):
        J[j] = J[PARENTS[j]] + offsets[j]
    return J


def rest_height(offsets, capsule_radii, ell_radii, ell_offsets) -> float:
    """Standing height of the T-pose body: top of the head volume to the bottom of the feet (hair included)."""
    P = rest_joints(offsets)
    lo, hi = np.inf, -np.inf
    for (_, a, b, _, _), r in zip(CAPSULES, capsule_radii):
        lo, hi = min(lo, P[a, 1] - r, P[b, 1] - r), max(hi, P[a, 1] + r, P[b, 1] + r)
    for (_, j, _, _, _), r, off in zip(ELLIPSOIDS, ell_radii, ell_offsets):
        lo, hi = min(lo, P[j, 1] + off[1] - r[1]), max(hi, P[j, 1] + off[1] + r[1])
    return float(hi - lo)


def _pair(values: np.ndarray, left: tuple) -> np.ndarray:
    """Copy each left entry onto its right twin (index + 1): a symmetric pattern."""
    out = values.copy()
    out[[i + 1 for i in left]] = values[list(left)]
    return out


def shape_basis(seed: int = BODY_MODEL_SEED) -> ShapeModel:
    """The template scaled to TEMPLATE_HEIGHT and the 10 shape directions (β8, β9 random, from ``seed``)."""
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x5EED]))
    off0 = _OFFSETS.copy()
    cap0 = np.array([c[3] for c in CAPSULES], np.float64)
    eoff0 = np.array([e[2] for e in ELLIPSOIDS], np.float64)
    erad0 = np.array([e[3] for e in ELLIPSOIDS], np.float64)
    s = TEMPLATE_HEIGHT / rest_height(off0, cap0, erad0, eoff0)
    off0, cap0, eoff0, erad0 = off0 * s, cap0 * s, eoff0 * s, erad0 * s
    C, E = len(CAPSULES), len(ELLIPSOIDS)
    bone, cap = np.zeros((NUM_BETAS, 24)), np.zeros((NUM_BETAS, C))
    eoff, erad = np.zeros((NUM_BETAS, E)), np.zeros((NUM_BETAS, E, 3))
    bone[0], cap[0], eoff[0], erad[0] = 0.065, 0.065, 0.065, 0.065          # overall size
    cap[1], erad[1, :3, 0], erad[1, :3, 2] = 0.09, 0.09, 0.09                # girth (limbs, torso x/z)
    bone[2, [4, 5, 7, 8]] = 0.045                                            # legs
    bone[3, [18, 19, 20, 21]] = 0.045                                        # arms
    bone[4, [3, 6, 9, 12]], erad[4, 1:3, 1] = 0.045, 0.03                     # torso
    bone[5, [13, 14, 16, 17]], erad[5, 2, 0] = 0.06, 0.04                     # shoulder width
    bone[6, [1, 2]], erad[6, 0, 0] = 0.08, 0.05                              # hip width
    erad[7, 3:], eoff[7, 3:], bone[7, 15] = 0.045, 0.045, 0.03                # head
    for k in (8, 9):                                                         # random symmetric patterns
        bone[k, 1:] = rng.uniform(-0.025, 0.025, 23)
        cap[k] = rng.uniform(-0.035, 0.035, C)
        bone[k] = _pair(bone[k], _LEFT_BONES)
        cap[k] = _pair(cap[k], _LEFT_CAPSULES)
    return ShapeModel(off0, cap0, eoff0, erad0, bone, cap, eoff, erad)


def body_shape(model: ShapeModel, betas) -> BodyShape:
    """The rest body of ``betas`` (10,): every quantity affine in β."""
    b = np.asarray(betas, np.float64).reshape(NUM_BETAS)
    offsets = model.offsets * (1.0 + b @ model.d_bone)[:, None]
    return BodyShape(offsets, rest_joints(offsets), model.capsule_radii * (1.0 + b @ model.d_capsule),
                     model.ell_offsets * (1.0 + b @ model.d_ell_offset)[:, None],
                     model.ell_radii * (1.0 + np.einsum("k,kec->ec", b, model.d_ell_radii)))


def _capsule_frame(axis: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    e = axis / np.linalg.norm(axis)
    helper = np.array([1.0, 0.0, 0.0]) if abs(e[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    n1 = np.cross(e, helper)
    n1 /= np.linalg.norm(n1)
    return e, n1, np.cross(e, n1)


def _capsule_vertices(Ja, Jb, r, e, n1, n2) -> np.ndarray:
    """Pole a, cap ring a, cylinder rings, cap ring b, pole b: (2 + (len(_RING_T) + 2) * _RING_N, 3)."""
    alpha = 2 * np.pi * np.arange(_RING_N) / _RING_N
    radial = np.cos(alpha)[:, None] * n1 + np.sin(alpha)[:, None] * n2               # (N, 3) unit, ⊥ e
    sp, cp = np.sin(_CAP_PSI), np.cos(_CAP_PSI)
    rings = [Ja + r * (sp * radial - cp * e)]
    rings += [Ja + t * (Jb - Ja) + r * radial for t in _RING_T]
    rings += [Jb + r * (sp * radial + cp * e)]
    return np.concatenate([(Ja - r * e)[None], *rings, (Jb + r * e)[None]])


def _ellipsoid_vertices(centre, radii) -> np.ndarray:
    """South pole, latitude rings, north pole (pole axis y): (2 + len(_ELL_LAT) * _ELL_LON, 3)."""
    lon = 2 * np.pi * np.arange(_ELL_LON) / _ELL_LON
    unit = [np.array([0.0, -1.0, 0.0])]
    for lat in _ELL_LAT:
        unit += list(np.stack([np.cos(lat) * np.sin(lon), np.full_like(lon, np.sin(lat)),
                               np.cos(lat) * np.cos(lon)], 1))
    unit.append(np.array([0.0, 1.0, 0.0]))
    return centre + np.asarray(unit) * radii


def _ring_faces(base: int, rings: int, n: int) -> list:
    """Triangles of a closed tube: pole at ``base``, ``rings`` rings of ``n``, pole after them."""
    faces, first, last_pole = [], base + 1, base + 1 + rings * n
    for i in range(n):
        faces.append((base, first + (i + 1) % n, first + i))
    for k in range(rings - 1):
        a, b = first + k * n, first + (k + 1) * n
        for i in range(n):
            i1 = (i + 1) % n
            faces += [(a + i, a + i1, b + i), (a + i1, b + i1, b + i)]
    lastring = first + (rings - 1) * n
    for i in range(n):
        faces.append((last_pole, lastring + i, lastring + (i + 1) % n))
    return faces


_CAP_V = 2 + (len(_RING_T) + 2) * _RING_N
_ELL_V = 2 + len(_ELL_LAT) * _ELL_LON
NUM_VERTICES = len(CAPSULES) * _CAP_V + MESH_ELLIPSOIDS * _ELL_V + 48
MARKER_VERTICES = np.arange(NUM_VERTICES - 48, NUM_VERTICES)   # 2 per joint: J_j + dx, J_j - dx


def mesh_vertices(shape: BodyShape) -> np.ndarray:
    """Rest-pose vertices (V, 3) of a body shape: capsules, body ellipsoids, then the joint markers."""
    J, parts = shape.joints, []
    for (_, a, b, _, _), r in zip(CAPSULES, shape.capsule_radii):
        e, n1, n2 = _capsule_frame(_OFFSETS[b])            # fixed direction: the template bone's
        parts.append(_capsule_vertices(J[a], J[b], r, e, n1, n2))
    for (_, j, _, _, _), off, rad in list(zip(ELLIPSOIDS, shape.ell_offsets, shape.ell_radii))[:MESH_ELLIPSOIDS]:
        parts.append(_ellipsoid_vertices(J[j] + off, rad))
    dx = np.array([_MARKER_DX, 0.0, 0.0])
    parts.append(np.stack([J + dx, J - dx], 1).reshape(48, 3))
    return np.concatenate(parts)


def mesh_faces() -> np.ndarray:
    """Triangles (F, 3) of the capsules and body ellipsoids (markers belong to no face)."""
    faces, base = [], 0
    for _ in CAPSULES:
        faces += _ring_faces(base, len(_RING_T) + 2, _RING_N)
        base += _CAP_V
    for _ in range(MESH_ELLIPSOIDS):
        faces += _ring_faces(base, len(_ELL_LAT), _ELL_LON)
        base += _ELL_V
    return np.asarray(faces, np.int64)


def _skinning() -> tuple[np.ndarray, np.ndarray]:
    """One-hot weights (V, 24) and the marker regressor (24, V)."""
    owner = [a for (_, a, _, _, _) in CAPSULES for _ in range(_CAP_V)]
    owner += [j for (_, j, _, _, _) in ELLIPSOIDS[:MESH_ELLIPSOIDS] for _ in range(_ELL_V)]
    owner += [j for j in range(24) for _ in range(2)]
    weights = np.zeros((NUM_VERTICES, 24))
    weights[np.arange(NUM_VERTICES), owner] = 1.0
    reg = np.zeros((24, NUM_VERTICES))
    for j in range(24):
        reg[j, MARKER_VERTICES[2 * j:2 * j + 2]] = 0.5
    return weights, reg


def build_body_model(seed: int = BODY_MODEL_SEED) -> dict:
    """The SMPL-format model arrays (smplx.SMPL's keys) plus ``synth_*`` arrays the renderer reads (each volume
    quantity as [value at β = 0, change per unit β_k]) and ``synth_seed``."""
    sm = shape_basis(seed)
    zero = body_shape(sm, np.zeros(NUM_BETAS))
    v0 = mesh_vertices(zero)
    shapedirs = np.stack([mesh_vertices(body_shape(sm, np.eye(NUM_BETAS)[k])) - v0 for k in range(NUM_BETAS)], -1)
    weights, reg = _skinning()
    kintree = np.array([[2 ** 32 - 1] + list(PARENTS[1:]), list(range(24))], np.int64)
    return {"v_template": v0, "shapedirs": shapedirs, "posedirs": np.zeros((NUM_VERTICES, 3, 207)),
            "J_regressor": reg, "weights": weights, "kintree_table": kintree, "f": mesh_faces(),
            "synth_offsets": sm.offsets, "synth_capsule_radii": sm.capsule_radii,
            "synth_ell_offsets": sm.ell_offsets, "synth_ell_radii": sm.ell_radii, "synth_d_bone": sm.d_bone,
            "synth_d_capsule": sm.d_capsule, "synth_d_ell_offset": sm.d_ell_offset,
            "synth_d_ell_radii": sm.d_ell_radii, "synth_seed": np.int64(seed)}


@lru_cache(maxsize=1)
def body_model_bytes() -> bytes:
    """The model with the default seed as a deterministic .npz (stored, fixed dates: the same bytes every build)."""
    from .codec import npz_bytes
    return npz_bytes(build_body_model())


def _cache_dir() -> Path:
    """$PERSPOSE_CACHE, else $XDG_CACHE_HOME/perspose, else ~/.cache/perspose."""
    if os.environ.get("PERSPOSE_CACHE"):
        return Path(os.environ["PERSPOSE_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "perspose"


@lru_cache(maxsize=1)
def body_model_path() -> Path:
    """The model as a file for smplx: ``synth_body_model-<sha256>.npz`` in the cache directory (written atomically
    the first time; the name is its content's hash, so a changed model is a new file). Where the cache directory
    cannot be written, a per-user directory under the system's temporary directory; neither: InputError."""
    from .fsutil import atomic_write_bytes
    data = body_model_bytes()
    name = f"synth_body_model-{hashlib.sha256(data).hexdigest()[:16]}.npz"
    fallback = Path(tempfile.gettempdir()) / f"perspose-cache-{os.getuid() if hasattr(os, 'getuid') else 'user'}"
    for folder in (_cache_dir(), fallback):
        path = folder / name
        try:
            if not (path.is_file() and path.stat().st_size == len(data)):   # named by content, written whole
                atomic_write_bytes(path, data)
            return path
        except OSError:
            continue
    from .errors import InputError
    raise InputError(f"{_cache_dir()}: cannot write the synthetic body model there or in {fallback} "
                     "(set PERSPOSE_CACHE to a writable directory)")


@lru_cache(maxsize=1)
def load_shape_model() -> ShapeModel:
    """The shape model of :func:`body_model_path`'s file (what ``synth`` renders; the numbers its labels' mesh uses)."""
    with np.load(body_model_path(), allow_pickle=False) as z:
        return ShapeModel(z["synth_offsets"], z["synth_capsule_radii"], z["synth_ell_offsets"],
                          z["synth_ell_radii"], z["synth_d_bone"], z["synth_d_capsule"],
                          z["synth_d_ell_offset"], z["synth_d_ell_radii"])

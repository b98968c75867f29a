"""Articulated SMPL-24 bodies for ``synth``: shape (β of the synthetic SMPL-format body model, pipeline.synth_model),
pose (joint-angle limits), forward kinematics and the body volumes (capsules and ellipsoids) that are rendered.

Body frame (as SMPL's template): x = the person's left, y = up, z = the direction the person faces. A joint's
local rotation turns the bones to its children (SMPL convention); ``G[j] = G[parent] @ R_local[j]`` and
``P[j] = P[parent] + G[parent] @ offset[j]``. Everything here is a pure function of its arguments and the
generator it is handed.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .skeleton import get_skeleton
from .synth_model import (CAPSULES, ELLIPSOIDS, NUM_BETAS, body_shape, load_shape_model, rest_height)
from .synth_look import FACE_DIRECTIONS, STRAP_NORMAL, WATCH_BAND, Band, Look, Slab, Spot, Stripes, sample_look
from .synth_render import Capsule, Ellipsoid

__all__ = ["Body", "sample_body", "sample_pose", "root_rotation", "forward_kinematics", "body_primitives",
           "rest_height", "contains", "smpl_labels", "add_twist_labels"]

_SK = get_skeleton("smpl24")
PARENTS = np.array(_SK.parents)

# Joint limits in degrees about the body-frame axes (x: flex, y: twist/swing, z: abduct): (lo, hi, neutral)
# per axis, and the order the three rotations are composed in (applied right to left to the child bones).
# Signs: +x turns a downward bone backwards and an upward bone forwards; the left arm points +x, the right -x.
_Z = (0.0, 0.0, 0.0)
_LIMITS = {
    1: ("xzy", (-100, 25, -5), (-30, 30, 0), (-15, 45, 5)),       # l_hip: flexion forward is -x
    2: ("xzy", (-100, 25, -5), (-30, 30, 0), (-45, 15, -5)),      # r_hip
    3: ("xzy", (-15, 35, 0), (-20, 20, 0), (-12, 12, 0)),         # spine1
    4: ("xzy", (0, 140, 5), (-3, 3, 0), (-3, 3, 0)),              # l_knee: bends one way only
    5: ("xzy", (0, 140, 5), (-3, 3, 0), (-3, 3, 0)),              # r_knee
    6: ("xzy", (-10, 25, 0), (-20, 20, 0), (-12, 12, 0)),         # spine2
    7: ("xzy", (-25, 40, 0), (-15, 15, 0), (-15, 15, 0)),         # l_ankle
    8: ("xzy", (-25, 40, 0), (-15, 15, 0), (-15, 15, 0)),         # r_ankle
    9: ("xzy", (-10, 25, 0), (-20, 20, 0), (-10, 10, 0)),         # spine3
    12: ("xzy", (-30, 40, 0), (-40, 40, 0), (-25, 25, 0)),        # neck
    13: ("yzx", _Z, (-10, 10, 0), (-10, 15, 0)),                  # l_collar
    14: ("yzx", _Z, (-10, 10, 0), (-15, 10, 0)),                  # r_collar
    15: ("xzy", (-25, 25, 0), (-20, 20, 0), (-10, 10, 0)),        # head
    16: ("yzx", (-40, 40, 0), (-90, 30, -10), (-80, 70, -65)),    # l_shoulder: +z raises, -y swings forward
    17: ("yzx", (-40, 40, 0), (-30, 90, 10), (-70, 80, 65)),      # r_shoulder: -z raises, +y swings forward
    18: ("yzx", _Z, (-145, 0, -15), (-5, 5, 0)),                  # l_elbow: forearm bends forward only
    19: ("yzx", _Z, (0, 145, 15), (-5, 5, 0)),                    # r_elbow
    20: ("yzx", (-40, 40, 0), (-30, 30, 0), (-30, 30, 0)),        # l_wrist
    21: ("yzx", (-40, 40, 0), (-30, 30, 0), (-30, 30, 0)),        # r_wrist
}

# Body volumes (pipeline.synth_model): capsules (name, joint a, joint b, radius, colour group) and ellipsoids (name,
# joint whose frame and position they follow, centre offset, radii, colour group), template metres; each person's
# sizes come from their shape coefficients β. Every joint lies inside at least one volume, so its projection
# always hits the body.
_CAPSULES, _ELLIPSOIDS = CAPSULES, ELLIPSOIDS


@dataclass(frozen=True)
class Body:
    """A person's shape and look: SMPL-format shape coefficients β (10,) of the synthetic body model, the rest
    joints and bone offsets (24, 3) and volume sizes they give (metres), clothing and cues."""
    offsets: np.ndarray
    capsule_radii: np.ndarray          # (len(_CAPSULES),)
    ellipsoid_radii: np.ndarray        # (len(_ELLIPSOIDS), 3)
    ellipsoid_offsets: np.ndarray      # (len(_ELLIPSOIDS), 3)
    look: Look
    height: float
    betas: np.ndarray                  # (10,)
    rest_joints: np.ndarray            # (24, 3) T-pose joints, pelvis at the origin


def sample_body(rng: np.random.Generator, height_range=(1.5, 2.0)) -> Body:
    """β ~ N(0, 1) in the synthetic body model's shape space (pipeline.synth_model: size, girth, limb and torso
    lengths, shoulder and hip width, head size, two random patterns), redrawn until the standing height lies in
    ``height_range`` (metres; about 1.75 +- 0.12 m before the cut)."""
    model = load_shape_model()
    for _ in range(1000):
        betas = rng.standard_normal(NUM_BETAS)
        shape = body_shape(model, betas)
        height = rest_height(shape.offsets, shape.capsule_radii, shape.ell_radii, shape.ell_offsets)
        if height_range[0] <= height <= height_range[1]:
            break
    else:
        raise ValueError(f"no body of the synthetic shape space has a height in {height_range} m")
    return Body(shape.offsets, shape.capsule_radii, shape.ell_radii, shape.ell_offsets, sample_look(rng),
                float(height), betas, shape.joints)


def _axis_rotation(axis: str, deg) -> np.ndarray:
    """Rotation(s) by ``deg`` degrees (scalar or (N,)) about a coordinate axis -> (3, 3) or (N, 3, 3)."""
    t = np.radians(np.asarray(deg, dtype=np.float64))
    c, s = np.cos(t), np.sin(t)
    R = np.zeros(t.shape + (3, 3))
    i, j = {"x": (1, 2), "y": (2, 0), "z": (0, 1)}[axis]
    k = 3 - i - j
    R[..., k, k] = 1.0
    R[..., i, i], R[..., i, j], R[..., j, i], R[..., j, j] = c, -s, s, c
    return R


_LIMIT_JOINTS = np.array(list(_LIMITS))
_LIMIT_ORDERS = tuple(v[0] for v in _LIMITS.values())
_LIMIT_TABLE = np.array([v[1:] for v in _LIMITS.values()], dtype=np.float64)   # (joints, xyz, lo/hi/neutral)
_LIMIT_TABLE.setflags(write=False)


def sample_pose(rng: np.random.Generator) -> np.ndarray:
    """Local joint rotations (24, 3, 3) within the joint limits; the root's is identity (see ``root_rotation``).

    Each angle is ``neutral + activity * (uniform(lo, hi) - neutral)`` with one activity level per person, so
    calm (near-standing) and wild poses both occur and every angle stays within its limits."""
    lo, hi, neutral = _LIMIT_TABLE[..., 0], _LIMIT_TABLE[..., 1], _LIMIT_TABLE[..., 2]
    activity = rng.uniform(0.15, 1.0)
    ang = neutral + activity * (rng.uniform(lo, hi) - neutral)                       # (joints, 3) degrees
    axis_rot = {ax: _axis_rotation(ax, ang[:, n]) for n, ax in enumerate("xyz")}
    R = np.tile(np.eye(3), (24, 1, 1))
    for k, (j, order) in enumerate(zip(_LIMIT_JOINTS, _LIMIT_ORDERS)):
        # the first letter is the outermost rotation
        R[j] = axis_rot[order[0]][k] @ axis_rot[order[1]][k] @ axis_rot[order[2]][k]
    return R


def root_rotation(rng: np.random.Generator) -> np.ndarray:
    """Body frame -> camera frame: any heading, a small lean, and a camera pitch/roll, facing the camera at
    heading 0 (body y up -> camera y down, body z forward -> camera -z)."""
    body_to_cam = np.diag([1.0, -1.0, -1.0])
    heading = _axis_rotation("y", rng.uniform(0, 360))
    lean = _axis_rotation("x", rng.normal(0, 8)) @ _axis_rotation("z", rng.normal(0, 5))
    camera = _axis_rotation("x", rng.uniform(-30, 30)) @ _axis_rotation("z", rng.uniform(-10, 10))
    return camera @ body_to_cam @ heading @ lean


def forward_kinematics(offsets, local_rot, root_rot, root_pos):
    """Joint positions (24, 3) and global rotations (24, 3, 3) in the camera frame."""
    P = np.zeros((24, 3))
    G = np.zeros((24, 3, 3))
    P[0], G[0] = root_pos, root_rot @ local_rot[0]
    for j in range(1, 24):
        p = PARENTS[j]
        P[j] = P[p] + G[p] @ offsets[j]
        G[j] = G[p] @ local_rot[j]
    return P, G


def smpl_labels(body: Body, local_rot, root_rot, root_pos) -> dict:
    """The SMPL-format labels of a posed synthetic person (the manifest's ``smpl`` struct, but its ``twist``,
    which :func:`add_twist_labels` computes for many rows at once): betas (10), pose (72: axis-angle of the global
    orientation in the camera frame, then the 23 local rotations), transl (the root joint minus the rest pelvis,
    camera frame), gender 'neutral' (the one synthetic model)."""
    import cv2
    rots = np.asarray(local_rot, np.float64).copy()
    rots[0] = np.asarray(root_rot) @ rots[0]
    pose = np.concatenate([cv2.Rodrigues(r)[0][:, 0] for r in rots])
    return {"betas": body.betas.copy(), "pose": pose, "transl": np.asarray(root_pos, np.float64) - body.rest_joints[0],
            "gender": "neutral"}


def add_twist_labels(smpl: list[dict]) -> None:
    """Add ``twist`` (23: each bone's twist about its rest direction, NaN for the pelvis's three child bones;
    pipeline.ik.twist_labels) to :func:`smpl_labels` dicts, in one batched pass (per image it would cost more
    than the rest of a person's labels together)."""
    if not smpl:
        return
    import torch

    from .ik import rotations_from_axis_angle, twist_labels
    model = load_shape_model()
    rest = torch.from_numpy(np.stack([body_shape(model, s["betas"]).joints for s in smpl]))
    aa = torch.from_numpy(np.stack([np.asarray(s["pose"], np.float64).reshape(24, 3) for s in smpl]))
    tw = twist_labels(rotations_from_axis_angle(aa), rest).numpy()
    for s, t in zip(smpl, tw):
        s["twist"] = t


def _part_look(name: str, group: str, look: Look, torso_frame) -> tuple[np.ndarray, tuple]:
    """Base colour and marks of one body volume (see pipeline.synth_look for what each mark means)."""
    shirt_marks = ()
    if look.stripes:
        shirt_marks += (Stripes(*torso_frame, np.array([0.0, 1.0, 0.0]), 0.07, 0.45, look.shirt_alt),)
    if look.strap is not None:
        shirt_marks += (Slab(*torso_frame, STRAP_NORMAL, 0.0, 0.028, look.strap),)
    if group == "skin" and name == "head":
        marks = tuple(Spot(d, np.cos(r), look.eyes if "eye" in k else look.lips if k == "mouth"
                           else look.skin * 0.8) for k, (d, r) in FACE_DIRECTIONS.items())
        return look.skin, marks
    if group == "skin":
        return look.skin, ()
    if group == "hair":
        return look.hair, ()
    if group == "shoes":
        return look.shoes, ()
    if group == "pants":
        return look.pants, ()
    if group == "shin":        # shorts: bare shins, with a sock at the ankle
        return (look.skin, (Band(0.88, 1.0, look.shoes * 0.5 + 120.0),)) if look.shorts else (look.pants, ())
    if group == "shirt":
        if name == "chest" and look.chest_print:   # front only: z > 0 in the chest's own axes
            shirt_marks = (Spot(np.array([0.0, 0.1, 1.0]) / np.hypot(0.1, 1.0), np.cos(0.42), look.shirt_alt),
                           ) + shirt_marks
        return look.shirt, shirt_marks
    if group == "sleeve":      # short sleeves end at 60 % of the upper arm; rings on the LEFT sleeve only
        marks = () if look.long_sleeves else (Band(0.6, 1.0, look.skin),)
        if look.sleeve_rings and name.startswith("l_"):
            marks += (Band(0.25, 0.33, look.shirt_alt), Band(0.41, 0.49, look.shirt_alt))
        return look.shirt, marks
    # forearm: sleeve or skin; the watch on the LEFT wrist
    marks = (Band(*WATCH_BAND, look.watch),) if look.watch is not None and name.startswith("l_") else ()
    return (look.shirt if look.long_sleeves else look.skin), marks


def body_primitives(body: Body, joints: np.ndarray, G: np.ndarray, part_base: int = 1) -> list:
    """The renderable volumes of one posed body (capsules first, then ellipsoids; part ids from ``part_base``).
    Clothing patterns that run over several volumes (stripes, the strap) share the chest's frame."""
    torso_frame = (joints[9], G[9])
    prims = []
    for k, ((name, a, b, _, group), r) in enumerate(zip(_CAPSULES, body.capsule_radii)):
        color, marks = _part_look(name, group, body.look, torso_frame)
        prims.append(Capsule(joints[a], joints[b], float(r), color, part_base + k, marks))
    for k, ((name, j, _, _, group), r, off) in enumerate(zip(_ELLIPSOIDS, body.ellipsoid_radii,
                                                              body.ellipsoid_offsets)):
        if name == "hair" and body.look.hair is None:
            continue
        color, marks = _part_look(name, group, body.look, torso_frame)
        prims.append(Ellipsoid(joints[j] + G[j] @ off, G[j], r, color, part_base + len(_CAPSULES) + k, marks))
    return prims


def contains(prim, points: np.ndarray, tol: float = 1e-9) -> np.ndarray:
    """Whether each point (N, 3) lies inside the volume -> bool (N,)."""
    points = np.atleast_2d(points)
    if isinstance(prim, Capsule):
        ba = prim.b - prim.a
        s = np.clip((points - prim.a) @ ba / (ba @ ba), 0.0, 1.0)
        return np.linalg.norm(points - prim.a - s[:, None] * ba, axis=1) <= prim.radius + tol
    q = (points - prim.center) @ prim.axes / prim.radii
    return (q * q).sum(1) <= 1.0 + tol

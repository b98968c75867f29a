"""The synthetic people's cues are drawn where the body's geometry puts them: the face on the side the head faces,
the watch on the left wrist, the strap over the right shoulder, the chest print on the front, the rings on the
left sleeve; occluders hide joints without touching a label.

A cue's pixels are found by rendering the same posed body twice, once with the cue's colour changed: the pixels
that differ are exactly the cue's, and the depth map turns them into the 3D surface points they show."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from pipeline.geometry import intrinsics, project
from pipeline.synth import OCCLUDER_PART, SynthConfig, synth_sample
from pipeline.synth_body import body_primitives, forward_kinematics, sample_body, sample_pose
from pipeline.synth_look import FACE_DIRECTIONS, STRAP_NORMAL, WATCH_BAND
from pipeline.synth_render import render_primitives

W, H = 480, 640
K = intrinsics(700.0, 700.0, 239.5, 319.5)
FACING = np.diag([1.0, -1.0, -1.0])     # body x (the person's left) -> camera +x, up -> -y, facing -> -z
AWAY = np.diag([-1.0, -1.0, 1.0])
MARKER = np.array([3.0, 251.0, 7.0])    # a colour no look uses


def _yaw(deg: float) -> np.ndarray:
    a = np.radians(deg)
    return np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])


def _posed(seed: int, root_rot: np.ndarray, random_pose: bool = False):
    rng = np.random.default_rng(seed)
    body = sample_body(rng)
    local = sample_pose(rng) if random_pose else np.tile(np.eye(3), (24, 1, 1))
    joints, G = forward_kinematics(body.offsets, local, root_rot, np.array([0.0, 0.0, 3.2]))
    return body, joints, G


def _render(body, joints, G):
    img = np.zeros((H, W, 3), np.uint8)
    part, depth = render_primitives(img, body_primitives(body, joints, G), K, np.array([0.3, -0.5, -0.8]), 0.4)
    return img, part, depth


def _cue_points(body, joints, G, **look_changes):
    """(pixels (N, 2) as u, v; surface points (N, 3), camera frame) where recolouring the look changes the image."""
    a, _, depth = _render(body, joints, G)
    b, _, _ = _render(replace(body, look=replace(body.look, **look_changes)), joints, G)
    v, u = np.nonzero((a != b).any(-1))
    d = depth[v, u]
    pts = np.stack([(u - K[0, 2]) / K[0, 0] * d, (v - K[1, 2]) / K[1, 1] * d, d], 1)
    return np.stack([u, v], 1), pts


def _head(body, joints, G):
    head = next(p for p in body_primitives(body, joints, G) if p.part == 1 + 15 + 3)  # capsules, then ellipsoids
    assert np.allclose(head.axes, G[15])
    return head


@pytest.mark.parametrize("yaw", [0.0, 35.0, -50.0])
def test_face_is_on_the_side_the_head_faces(yaw):
    body, joints, G = _posed(1, _yaw(yaw) @ FACING)
    uv, pts = _cue_points(body, joints, G, eyes=MARKER)
    assert len(uv) > 5, "a face turned to the camera shows its eyes"
    head = _head(body, joints, G)
    q = (pts - head.center) @ head.axes / head.radii
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    # every eye pixel is within its eye's angular radius of one of the two eye directions (on the front, z > 0)
    cos_to = np.stack([q @ FACE_DIRECTIONS[k][0] for k in ("l_eye", "r_eye")], 1)
    radius = FACE_DIRECTIONS["l_eye"][1]
    assert (cos_to.max(1) >= np.cos(radius) - 1e-9).all()
    assert (q[:, 2] > 0).all()
    # the person's left eye is seen on the image's right when they face the camera
    left = cos_to[:, 0] > cos_to[:, 1]
    assert left.any() and (~left).any()
    assert uv[left, 0].mean() > uv[~left, 0].mean()
    eye_l = project((head.center + head.axes @ (FACE_DIRECTIONS["l_eye"][0] * head.radii))[None], K)[0]
    assert np.abs(uv[left].mean(0) - eye_l).max() < 4.0


def test_no_face_on_the_back_of_the_head():
    body, joints, G = _posed(1, AWAY)
    for cue in ("eyes", "lips"):
        uv, _ = _cue_points(body, joints, G, **{cue: MARKER})
        assert len(uv) == 0, f"{cue} drawn on the back of the head"
    uv, _ = _cue_points(*_posed(1, FACING), lips=MARKER)
    assert len(uv) > 5


@pytest.mark.parametrize("seed, root", [(2, FACING), (3, AWAY), (4, _yaw(60) @ FACING)])
def test_watch_is_on_the_left_wrist(seed, root):
    body, joints, G = _posed(seed, root, random_pose=True)
    if body.look.watch is None:
        body = replace(body, look=replace(body.look, watch=np.array([200.0, 200.0, 210.0])))
    uv, pts = _cue_points(body, joints, G, watch=MARKER)
    if len(uv) == 0:
        pytest.skip("the left forearm is hidden in this pose")
    elbow, wrist = joints[18], joints[20]
    s = (pts - elbow) @ (wrist - elbow) / np.sum((wrist - elbow) ** 2)
    assert (s >= WATCH_BAND[0] - 1e-6).all() and (s <= WATCH_BAND[1] + 1e-6).all()
    to_left = np.linalg.norm(pts - joints[20], axis=1)
    to_right = np.linalg.norm(pts - joints[21], axis=1)
    assert (to_left < to_right).all()


def test_strap_runs_from_the_right_shoulder_to_the_left_hip():
    body, joints, G = _posed(5, FACING)
    if body.look.strap is None:
        body = replace(body, look=replace(body.look, strap=np.array([120.0, 60.0, 20.0])))
    _, pts = _cue_points(body, joints, G, strap=MARKER)
    assert len(pts) > 20
    q = (pts - joints[9]) @ G[9]                       # chest frame: x left, y up, z front
    assert np.abs(q @ STRAP_NORMAL).max() <= 0.028 * 1.0001
    high, low = q[:, 1] > 0.08, q[:, 1] < -0.08
    assert high.any() and low.any()
    assert (q[high, 0] < 0).all() and (q[low, 0] > 0).all()   # right (-x) above, left (+x) below


def test_chest_print_only_on_the_front():
    body, joints, G = _posed(6, FACING)
    body = replace(body, look=replace(body.look, chest_print=True))
    uv, pts = _cue_points(body, joints, G, shirt_alt=MARKER)
    assert len(uv) > 20
    chest = next(p for p in body_primitives(body, joints, G) if p.part == 1 + 15 + 2)
    on_chest = np.abs(((pts - chest.center) @ chest.axes / chest.radii) ** 2).sum(1) < 1.01
    assert on_chest.any() and (((pts[on_chest] - chest.center) @ chest.axes)[:, 2] > 0).all()
    body_b, joints_b, G_b = _posed(6, AWAY)
    body_b = replace(body_b, look=replace(body_b.look, chest_print=True, stripes=False, sleeve_rings=False))
    uv_b, _ = _cue_points(body_b, joints_b, G_b, shirt_alt=MARKER)
    assert len(uv_b) == 0, "the chest print shows on the back"


def test_sleeve_rings_only_on_the_left_upper_arm():
    body, joints, G = _posed(7, FACING)
    body = replace(body, look=replace(body.look, sleeve_rings=True, stripes=False, chest_print=False))
    _, pts = _cue_points(body, joints, G, shirt_alt=MARKER)
    assert len(pts) > 10
    a, b = joints[16], joints[18]                      # left shoulder -> left elbow
    s = (pts - a) @ (b - a) / np.sum((b - a) ** 2)
    in_ring = ((s >= 0.25 - 1e-6) & (s <= 0.33 + 1e-6)) | ((s >= 0.41 - 1e-6) & (s <= 0.49 + 1e-6))
    assert in_ring.all()
    assert (np.linalg.norm(pts - joints[18], axis=1) < np.linalg.norm(pts - joints[19], axis=1)).all()


def test_occluders_hide_joints_and_leave_the_labels():
    with_occ = SynthConfig(second_person_prob=0.0, occluder_prob=1.0, image_size=(320, 240))
    without = replace(with_occ, occluder_prob=0.0)
    hidden, seen = 0, 0
    for i in range(8):
        a, b = synth_sample(21, "train", i, with_occ, finish=False), synth_sample(21, "train", i, without, False)
        la, lb = a["labels"][0], b["labels"][0]
        np.testing.assert_array_equal(la["joints_cam"], lb["joints_cam"])
        np.testing.assert_array_equal(la["bbox"], lb["bbox"])
        if not a["occluders"]:
            continue
        seen += 1
        assert (a["part"] == OCCLUDER_PART).any() and not (b["part"] == OCCLUDER_PART).any()
        px = np.floor(la["joints_2d"] + 0.5).astype(int)
        for j in np.nonzero(la["joints_vis"])[0]:
            u, v = np.clip(px[j], 0, [319, 239])
            if a["part"][v, u] == OCCLUDER_PART:
                assert la["occluded"][j] == 1
                hidden += 1
    assert seen >= 4 and hidden > 0

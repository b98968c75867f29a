"""The torch twin (trainer/geometry_torch.py) against the float64 numpy geometry: values, dtypes, gradients."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline import geometry as g
from trainer import geometry_torch as gt

SEEDS = st.integers(0, 2**32 - 1)


def random_batch(seed: int, B: int = 64, J: int = 17, S: int = 256, pr: bool = True) -> dict:
    """B random PR (or no-PR) samples: fx != fy cameras with 20-140 deg horizontal FOV, boxes anywhere, joints
    1-2 m around a root 2-30 m deep; returns the float64 numpy labels and the ground-truth joints."""
    rng = np.random.default_rng(seed)
    W = rng.integers(320, 4000, B).astype(float)
    H = W * rng.uniform(0.6, 1.6, B)
    fx = 0.5 * W / np.tan(0.5 * np.radians(rng.uniform(20, 140, B)))
    K = g.intrinsics(fx, fx * rng.uniform(0.8, 1.25, B), 0.5 * (W - 1), 0.5 * (H - 1))
    wh = rng.uniform(0.05, 0.4, (B, 2)) * np.stack([W, H], -1)
    centre = rng.uniform(-0.1, 1.1, (B, 2)) * np.stack([W, H], -1)
    bbox = np.concatenate([centre - 0.5 * wh, wh], -1)
    a = g.center_ray(bbox, K)
    R = g.rotation_to_optical_axis(a) if pr else np.broadcast_to(np.eye(3), (B, 3, 3)).copy()
    f = g.crop_focal(bbox, K, R, S)
    K_crop = g.crop_intrinsics(bbox, K, R, f, S)
    root = a / a[:, 2:] * rng.uniform(2, 30, (B, 1))
    P = root[:, None] + rng.uniform(-0.9, 0.9, (B, J, 3))
    P[:, 0] = root
    _, uvd, s = g.labels_from_joints(P, R, K_crop, 0)
    return dict(uvd=uvd, s=s, K_crop=K_crop, R=R, P=P, S=S)


def _t(b: dict, dtype) -> tuple[torch.Tensor, ...]:
    return tuple(torch.from_numpy(np.ascontiguousarray(b[k])).to(dtype) for k in ("uvd", "s", "K_crop", "R"))


@settings(max_examples=50, deadline=None)
@given(SEEDS, st.booleans())
def test_joints_from_uvd_float64_matches_numpy_and_roundtrips(seed, pr):
    b = random_batch(seed, pr=pr)
    cam, rot = gt.joints_from_uvd(*_t(b, torch.float64))
    cam_np, rot_np = g.joints_from_uvd(b["uvd"], b["s"], b["K_crop"], b["R"])
    assert cam.dtype == torch.float64
    np.testing.assert_allclose(cam.numpy(), cam_np, rtol=0, atol=1e-12)
    np.testing.assert_allclose(rot.numpy(), rot_np, rtol=0, atol=1e-12)
    assert np.abs(cam.numpy() - b["P"]).max() <= 1e-9


@settings(max_examples=50, deadline=None)
@given(SEEDS, st.booleans())
def test_joints_from_uvd_float32_roundtrip(seed, pr):
    b = random_batch(seed, pr=pr)
    cam, rot = gt.joints_from_uvd(*_t(b, torch.float32))
    assert cam.dtype == torch.float32 and rot.dtype == torch.float32
    assert np.abs(cam.double().numpy() - b["P"]).max() <= 1e-4


def test_joints_from_uvd_bf16_is_computed_in_float32():
    b = random_batch(1)
    uvd, s, K, R = _t(b, torch.bfloat16)
    cam, rot = gt.joints_from_uvd(uvd, s, K, R)
    assert cam.dtype == torch.float32 and rot.dtype == torch.float32
    ref, ref_rot = gt.joints_from_uvd(uvd.float(), s.float(), K.float(), R.float())
    torch.testing.assert_close(cam, ref, rtol=0, atol=0)
    torch.testing.assert_close(rot, ref_rot, rtol=0, atol=0)
    # mixed: bf16 network outputs with float32 camera tensors
    cam_mixed, _ = gt.joints_from_uvd(uvd, s, K.float(), R.float())
    assert cam_mixed.dtype == torch.float32
    torch.testing.assert_close(cam_mixed, ref, rtol=0, atol=0)


def test_joints_from_uvd_gradcheck():
    b = random_batch(2, B=3, J=4)
    uvd, s, K, R = (t.clone().requires_grad_(True) for t in _t(b, torch.float64))
    assert torch.autograd.gradcheck(lambda *x: gt.joints_from_uvd(*x)[0], (uvd, s, K, R))
    assert torch.autograd.gradcheck(lambda *x: gt.joints_from_uvd(*x, None)[0], (uvd, s, K))
    cam, _ = gt.joints_from_uvd(*(t.float().detach().requires_grad_(True) for t in (uvd, s, K, R)))
    cam.sum().backward()


@pytest.mark.parametrize("B,J", [(1, 1), (1, 17), (7, 24), (16, 28)])
def test_joints_from_uvd_batch_shapes(B, J):
    b = random_batch(3, B=B, J=J)
    uvd, s, K, R = _t(b, torch.float32)
    cam, rot = gt.joints_from_uvd(uvd, s, K, R)
    assert cam.shape == rot.shape == (B, J, 3)
    cam_none, rot_none = gt.joints_from_uvd(uvd, s, K, None)
    assert cam_none is rot_none or torch.equal(cam_none, rot_none)
    torch.testing.assert_close(rot_none, rot)


@settings(max_examples=50, deadline=None)
@given(SEEDS, st.booleans(), st.sampled_from([64, 256, 320]))
def test_pe_map_twin_agrees_with_numpy(seed, pr, S):
    b = random_batch(seed, B=8, S=S, pr=pr)
    ref = g.pe_map(b["K_crop"], S)
    m64 = gt.pe_map(torch.from_numpy(b["K_crop"]), S)
    assert m64.shape == (8, 2, S // 4, S // 4) and m64.dtype == torch.float64
    np.testing.assert_allclose(m64.numpy(), ref, rtol=0, atol=1e-12)
    m32 = gt.pe_map(torch.from_numpy(b["K_crop"]).float(), S)
    assert m32.dtype == torch.float32
    # float32 rounding of c_x, c_y (up to ~1e4 px without PR) divided by f: relative to the map's magnitude
    np.testing.assert_allclose(m32.double().numpy(), ref, rtol=0, atol=1e-6 * max(1.0, np.abs(ref).max()))


def test_pe_map_bf16_zeros_and_grad():
    b = random_batch(4, B=3)
    K = torch.from_numpy(b["K_crop"])
    K[1] = 0.0                                      # a COCO sample: no intrinsics -> all-zero map
    m16 = gt.pe_map(K.bfloat16(), 256)
    assert m16.dtype == torch.float32 and m16.shape == (3, 2, 64, 64)
    torch.testing.assert_close(m16, gt.pe_map(K.bfloat16().float(), 256), rtol=0, atol=0)
    m = gt.pe_map(K, 256)
    assert torch.count_nonzero(m[1]) == 0 and torch.count_nonzero(m[0]) > 0
    np.testing.assert_allclose(m[[0, 2]].numpy(), g.pe_map(b["K_crop"][[0, 2]], 256), rtol=0, atol=1e-12)
    Kg = K.clone().requires_grad_(True)
    gt.pe_map(Kg, 256).square().sum().backward()
    assert torch.isfinite(Kg.grad).all() and Kg.grad[1].abs().sum() == 0


def test_crop_pixel_grid_is_stride4_centres():
    grid = gt.crop_pixel_grid(256)
    assert grid.shape == (64,)
    torch.testing.assert_close(grid[:3], torch.tensor([1.5, 5.5, 9.5]))
    assert grid[-1].item() == 253.5 and (grid[0] + grid[-1]).item() == 255.0   # symmetric about (S-1)/2


def test_flip_intrinsics_twin_agrees_with_numpy_and_is_an_involution():
    b = random_batch(5, B=6)
    K = torch.from_numpy(b["K_crop"])
    for S in (64, 256):
        flipped = gt.flip_intrinsics(K, S)
        np.testing.assert_array_equal(flipped.numpy(), g.flip_intrinsics(b["K_crop"], S))
        torch.testing.assert_close(gt.flip_intrinsics(flipped, S), K, rtol=0, atol=0)
        assert torch.equal(flipped[:, :, :2], K[:, :, :2]) and torch.equal(flipped[:, 1:], K[:, 1:])

"""Exactness and determinism of trainer.augment / trainer.photometric."""
from __future__ import annotations

from dataclasses import replace

import cv2
import numpy as np
import pytest

from _geom import shift_intrinsics
from pipeline import geometry as g
from pipeline.skeleton import get_skeleton
from trainer import photometric as ph
from trainer.augment import AugmentConfig, GeometricParams, augment_sample, augmentation_homography

S, S_STORE = 128, 160
SKEL = "h36m17"
GEOM_ONLY = AugmentConfig(p_no_aug=0.0, rot_prob=0.8, zoom_prob=0.6, flip_prob=0.5, blur_prob=0, noise_prob=0,
                          contrast_prob=0, hue_prob=0, channel_prob=0, cutout_prob=0)


def _random_rotation(rng) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


def _synthetic_sample(rng, pr: bool = True, has_3d: bool = True, built_for: int = S, store: int = S_STORE) -> dict:
    """A decoded shard sample whose joints project to well separated points near the stored crop's centre."""
    sk = get_skeleton(SKEL)
    c0 = 0.5 * (store - 1)
    f = float(rng.uniform(150, 300)) * store / S_STORE
    c = np.array([c0, c0]) if pr else np.array([c0, c0]) + rng.uniform(-60, 60, 2)
    K = g.intrinsics(f, f, c[0], c[1])
    spacing = 16.0 * store / S_STORE
    grid = np.stack(np.meshgrid(np.arange(-3, 4), np.arange(-3, 4)), -1).reshape(-1, 2) * spacing
    grid = grid[np.linalg.norm(grid, axis=1) <= 2.8 * spacing]
    uv = c0 + grid[rng.choice(len(grid), sk.num_joints, replace=False)] + rng.uniform(-0.4, 0.4, (sk.num_joints, 2))
    z = rng.uniform(3.0, 5.0, sk.num_joints)
    P_rot = g.rays_from_pixels(uv, K, normalize=False) * z[:, None]
    R = _random_rotation(rng) if pr else np.eye(3)
    joints_cam = P_rot @ R            # P = R^T P'
    rot, uvd, scale = g.labels_from_joints(joints_cam, R, K, sk.root)
    if not has_3d:
        rot, scale = np.zeros_like(rot), 0.0
        uvd[:, 2] = 0.0
    img = np.zeros((store, store, 3), np.uint8)
    for u, v in uvd[:, :2].astype(np.float64):   # dots at the stored (float32) labels, 1/16 px precision
        cv2.circle(img, (int(round(u * 16)), int(round(v * 16))), 3 * 16, (255, 255, 255), -1, cv2.LINE_AA, 4)
    arrays = {"K_crop": K, "R": R, "joints_rot": rot.astype(np.float32), "uvd": uvd.astype(np.float32),
              "scale": np.float64(scale), "vis": np.ones(sk.num_joints, np.uint8)}
    meta = {"sample_id": "t/x/0", "dataset": "t", "skeleton": SKEL, "has_3d": has_3d, "has_intrinsics": True,
            "crop_size": built_for, "store_size": store, "pr": pr}
    return {"key": "t_x_0", "image": img, "arrays": arrays, "meta": meta}


def _centroids(img: np.ndarray, uv: np.ndarray, half: int = 5) -> np.ndarray:
    grey = img[..., 0].astype(np.float64)
    out = []
    for u, v in uv:
        x0, y0 = int(round(u)) - half, int(round(v)) - half
        win = grey[max(y0, 0):y0 + 2 * half + 1, max(x0, 0):x0 + 2 * half + 1]
        ys, xs = np.mgrid[max(y0, 0):max(y0, 0) + win.shape[0], max(x0, 0):max(x0, 0) + win.shape[1]]
        out.append([(win * xs).sum() / win.sum(), (win * ys).sum() / win.sum()])
    return np.array(out)


def _original_joints(sample) -> np.ndarray:
    return g.as_f64(sample["arrays"]["joints_rot"]) @ g.as_f64(sample["arrays"]["R"])


def _inverted(out, sample) -> np.ndarray:
    P, _ = g.joints_from_uvd(out["uvd"], out["scale"], out["K_crop"], out["R"])
    if out["flipped"]:
        P = P[list(get_skeleton(sample["meta"]["skeleton"]).flip_perm)]
    return P


@pytest.mark.parametrize("pr", [True, False])
def test_dots_follow_labels_and_labels_invert_exactly(pr):
    rng = np.random.default_rng(1 if pr else 2)
    flips, rolls = 0, 0
    for i in range(25):
        sample = _synthetic_sample(rng, pr=pr)
        out = augment_sample(sample, S, GEOM_ONLY, np.random.default_rng(100 + i))
        flips += out["flipped"]
        rolls += out["params"].roll != 0.0
        assert out["image"].shape == (S, S, 3) and out["image"].dtype == np.uint8
        found = _centroids(out["image"], out["uvd"][:, :2])
        assert np.abs(found - out["uvd"][:, :2]).max() < 0.25, (i, out["params"])
        np.testing.assert_allclose(g.project(out["joints"], out["K_crop"]), out["uvd"][:, :2], atol=1e-9)
        np.testing.assert_allclose(_inverted(out, sample), _original_joints(sample), atol=1e-9, rtol=0)
        if pr:
            np.testing.assert_allclose(out["K_crop"][:2, 2], [(S - 1) / 2] * 2, atol=1e-9)
        assert np.isclose(abs(np.linalg.det(out["R"])), 1.0) and np.sign(np.linalg.det(out["R"])) == (
            -1 if out["flipped"] else 1)
    assert 3 <= flips <= 22 and rolls >= 10


def test_three_d_labels_match_homography_of_stored_uv():
    rng = np.random.default_rng(3)
    for i in range(10):
        sample = _synthetic_sample(rng, pr=bool(i % 2))
        params = GeometricParams(roll=rng.uniform(-0.5, 0.5), zoom=rng.uniform(0.7, 1.1))
        H, K, R_aug = augmentation_homography(sample["arrays"]["K_crop"], S_STORE, S, params)
        uv_h = g.apply_homography(H, g.as_f64(sample["arrays"]["uvd"][:, :2]))
        P = g.as_f64(sample["arrays"]["joints_rot"]) @ R_aug.T
        np.testing.assert_allclose(g.project(P, K), uv_h, atol=2e-3)   # stored uv is float32
        # the similarity about the stored crop centre: it maps to the final crop centre for any roll/zoom
        np.testing.assert_allclose(g.apply_homography(H, np.full((1, 2), (S_STORE - 1) / 2)), [[(S - 1) / 2] * 2],
                                   atol=1e-9)


def test_homography_equals_the_general_crop_from_image_form():
    rng = np.random.default_rng(15)
    for i in range(50):
        K = g.intrinsics(*rng.uniform(100, 400, 2), *rng.uniform(20, 140, 2))
        params = GeometricParams(roll=rng.uniform(-0.6, 0.6), zoom=rng.uniform(0.7, 1.1),
                                 tilt=(0.0, 0.0) if i % 2 else tuple(rng.uniform(-0.01, 0.01, 2)), flip=False)
        base_zoom = 1.0 if i % 3 else 0.5
        H, K_final, R_aug = augmentation_homography(K, S_STORE, S, params, base_zoom)
        zoom = params.zoom * base_zoom
        R_roll = g.rotation_about_z(params.roll)
        ax, ay = params.tilt
        Rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
        Ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
        c = (S - 1) / 2 + zoom * (R_roll[:2, :2] @ (K[:2, 2] - (S_STORE - 1) / 2))
        K_ref = g.intrinsics(K[0, 0] * zoom, K[1, 1] * zoom, c[0], c[1])
        H_ref = g.crop_from_image(K, Rx @ Ry @ R_roll, K_ref)
        np.testing.assert_allclose(R_aug, Rx @ Ry @ R_roll, atol=1e-15)
        np.testing.assert_allclose(K_final, K_ref, atol=1e-12)
        uv = rng.uniform(0, S_STORE, (20, 2))
        np.testing.assert_allclose(g.apply_homography(H, uv), g.apply_homography(H_ref, uv), atol=1e-12)


def test_two_d_only_samples_follow_the_image():
    rng = np.random.default_rng(4)
    for i in range(10):
        sample = _synthetic_sample(rng, pr=bool(i % 2), has_3d=False)
        out = augment_sample(sample, S, GEOM_ONLY, np.random.default_rng(i))
        assert out["scale"] == 0.0 and not out["joints"].any() and not out["uvd"][:, 2].any()
        found = _centroids(out["image"], out["uvd"][:, :2])
        assert np.abs(found - out["uvd"][:, :2]).max() < 0.25


def test_two_d_only_labels_are_exactly_the_homography_of_the_stored_uv_then_the_flip():
    rng = np.random.default_rng(14)
    perm = list(get_skeleton(SKEL).flip_perm)
    flips = 0
    for i in range(16):
        pr = bool(i % 2)
        sample = _synthetic_sample(rng, pr=pr, has_3d=False)
        out = augment_sample(sample, S, GEOM_ONLY, np.random.default_rng(200 + i))
        H, K, _ = augmentation_homography(sample["arrays"]["K_crop"], S_STORE, S, out["params"])
        uv = g.apply_homography(H, g.as_f64(sample["arrays"]["uvd"][:, :2]))
        if out["flipped"]:
            uv = np.stack([(S - 1) - uv[:, 0], uv[:, 1]], 1)[perm]
            flips += 1
        np.testing.assert_allclose(out["uvd"][:, :2], uv, atol=1e-9, rtol=0)
        # the same sample with its 3D labels gives the same uv (up to the stored float32 uv)
        three_d = _synthetic_sample(np.random.default_rng(0), pr=pr)
        three_d["arrays"] = dict(three_d["arrays"], **{k: sample["arrays"][k] for k in ("K_crop", "R", "uvd")})
        three_d["arrays"]["joints_rot"] = (g.rays_from_pixels(g.as_f64(sample["arrays"]["uvd"][:, :2]),
                                                              sample["arrays"]["K_crop"], normalize=False) * 4.0)
        out3 = augment_sample(three_d, S, GEOM_ONLY, np.random.default_rng(200 + i))
        np.testing.assert_allclose(out3["uvd"][:, :2], out["uvd"][:, :2], atol=1e-6)
    assert 3 <= flips <= 13


@pytest.mark.parametrize("pr", [True, False])
def test_jitter_and_larger_built_crop_stay_exact(pr):
    rng = np.random.default_rng(5)
    cfg = replace(GEOM_ONLY, jitter_px=0.5)
    for i in range(8):
        sample = _synthetic_sample(rng, pr=pr, built_for=2 * S, store=2 * S_STORE)   # built for 2S: zoom 0.5
        out = augment_sample(sample, S, cfg, np.random.default_rng(i))
        assert out["params"].tilt != (0.0, 0.0)
        found = _centroids(out["image"], out["uvd"][:, :2])
        assert np.abs(found - out["uvd"][:, :2]).max() < 0.25
        np.testing.assert_allclose(_inverted(out, sample), _original_joints(sample), atol=1e-9, rtol=0)


def test_no_augmentation_is_an_exact_integer_slice():
    rng = np.random.default_rng(6)
    for pr in (True, False):
        sample = _synthetic_sample(rng, pr=pr)
        sample["image"] = rng.integers(0, 256, sample["image"].shape, dtype=np.uint8)
        out = augment_sample(sample, S, AugmentConfig(enabled=False), np.random.default_rng(0))
        off = (S_STORE - S) // 2
        assert np.array_equal(out["image"], sample["image"][off:off + S, off:off + S])
        np.testing.assert_array_equal(out["K_crop"], shift_intrinsics(sample["arrays"]["K_crop"], off, off))
        np.testing.assert_allclose(out["uvd"][:, :2], sample["arrays"]["uvd"][:, :2] - off, atol=1e-3)
        np.testing.assert_allclose(out["uvd"][:, 2], sample["arrays"]["uvd"][:, 2], atol=1e-6)
        np.testing.assert_allclose(out["R"], sample["arrays"]["R"])
        assert not out["flipped"] and not out["do_aug"]


def test_same_seed_same_output_and_different_seed_differs():
    sample = _synthetic_sample(np.random.default_rng(7))
    sample["image"] = np.random.default_rng(8).integers(0, 256, sample["image"].shape, dtype=np.uint8)
    cfg = replace(AugmentConfig(), p_no_aug=0.0, blur_prob=1, noise_prob=1, contrast_prob=1, hue_prob=1,
                  channel_prob=1, cutout_prob=1)
    a = augment_sample(sample, S, cfg, np.random.default_rng(42))
    b = augment_sample(sample, S, cfg, np.random.default_rng(42))
    c = augment_sample(sample, S, cfg, np.random.default_rng(43))
    for k in ("image", "K_crop", "R", "uvd", "joints"):
        assert np.array_equal(a[k], b[k]), k
    assert not np.array_equal(a["image"], c["image"])


@pytest.mark.parametrize("pr", [True, False])
def test_rgbx_input_gives_the_same_bytes_as_rgb(pr):
    """The loader decodes stored crops as RGBX (faster 4-channel warps); the result must not change."""
    sample = _synthetic_sample(np.random.default_rng(9), pr=pr)
    sample["image"] = cv2.GaussianBlur(np.random.default_rng(10).integers(0, 256, sample["image"].shape,
                                                                          dtype=np.uint8), (5, 5), 1.5)
    rgbx = dict(sample, image=cv2.cvtColor(sample["image"], cv2.COLOR_RGB2RGBA))
    cfg = replace(AugmentConfig(), jitter_px=0.5)            # perspective warps too, not only affine ones
    warped = 0
    for seed in range(12):
        a = augment_sample(sample, S, cfg, np.random.default_rng(seed))
        b = augment_sample(rgbx, S, cfg, np.random.default_rng(seed))
        assert b["image"].shape == (S, S, 3) and b["image"].flags.c_contiguous
        for k in ("image", "K_crop", "R", "uvd", "joints"):
            assert np.array_equal(a[k], b[k]), (seed, k)
        warped += not a["params"].is_identity
    assert 3 <= warped <= 10                                 # both the warp and the slice path were taken


def test_do_aug_coin_rate():
    sample = _synthetic_sample(np.random.default_rng(9))
    rng = np.random.default_rng(10)
    n = 400
    do = sum(augment_sample(sample, S, AugmentConfig(), rng)["do_aug"] for _ in range(n))
    assert abs(do / n - 0.8) < 0.07


@pytest.mark.parametrize("fn", [ph.blur_sharpen, ph.gaussian_noise, ph.contrast_brightness, ph.hue_saturation,
                                ph.channel_mix, ph.cutout])
def test_photometric_keeps_dtype_shape_and_is_seeded(fn):
    img = np.random.default_rng(11).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    ref = img.copy()
    outs = [fn(img, np.random.default_rng(s)) for s in (1, 1, 2, 3, 4, 5)]
    assert np.array_equal(img, ref)                       # input untouched
    for o in outs:
        assert o.dtype == np.uint8 and o.shape == img.shape
    assert np.array_equal(outs[0], outs[1])
    assert any(not np.array_equal(o, img) for o in outs)


def test_channel_mix_gives_grey_and_cutout_covers_8_to_40_percent():
    img = np.random.default_rng(12).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    for s in range(6):
        o = ph.channel_mix(img, np.random.default_rng(s))
        assert np.array_equal(o[..., 0], o[..., 1]) and np.array_equal(o[..., 1], o[..., 2])
    black = np.zeros((256, 256, 3), np.uint8)
    for s in range(30):
        frac = (ph.cutout(black, np.random.default_rng(s)).max(-1) > 0).mean()
        assert frac <= 0.41


def test_photometric_chain_uint8_full_probability():
    img = np.random.default_rng(13).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    cfg = replace(AugmentConfig(), blur_prob=1, noise_prob=1, contrast_prob=1, hue_prob=1, channel_prob=1)
    out = ph.photometric(img, np.random.default_rng(0), cfg)
    assert out.dtype == np.uint8 and out.shape == img.shape and not np.array_equal(out, img)


def test_gaussian_noise_has_the_reference_sigma_on_every_channel():
    img = np.full((128, 128, 3), 100, np.uint8)
    diff = ph.gaussian_noise(img, np.random.default_rng(0)).astype(np.float64) - 100
    np.testing.assert_allclose(diff.std(axis=(0, 1)), [20.0] * 3, rtol=0.03)   # sigma = mean / 5
    assert abs(diff.mean()) < 0.5


@pytest.mark.parametrize("side", [256, 900])                # 900² x 3 is larger than the noise table
def test_gaussian_noise_is_independent_per_pixel_and_differs_per_draw(side):
    img = np.full((side, side, 3), 100, np.uint8)
    rng = np.random.default_rng(1)
    a, b = (ph.gaussian_noise(img, rng).astype(np.float64) - 100 for _ in range(2))
    assert not np.array_equal(a, b)
    flat = a.reshape(-1)
    for lag in (1, 3, 3 * side):                             # neighbouring channel, pixel, row
        assert abs(np.corrcoef(flat[:-lag], flat[lag:])[0, 1]) < 0.02
    assert abs(np.corrcoef(a.reshape(-1), b.reshape(-1))[0, 1]) < 0.02


def test_contrast_brightness_keeps_the_mean_up_to_the_brightness_shift():
    img = np.random.default_rng(1).integers(50, 200, (64, 64, 3), dtype=np.uint8)
    for s in range(5):
        out = ph.contrast_brightness(img, np.random.default_rng(s)).astype(np.float64)
        assert abs(out.mean() - img.mean()) <= 0.5 * img.mean() + 1


# --------------------------------------------------------------------------- the chain before issue 14 (draw + apply
# interleaved), kept here to show that splitting draws from applies changed no byte and no draw of it
def _legacy_chain(img, rng, cfg):
    def blur(img):
        mode = int(rng.integers(3))
        if mode == 0:
            f = (8 / 5, 2.0, 8 / 3)[int(rng.integers(3))]
            small = cv2.resize(img, (max(1, round(img.shape[1] / f)), max(1, round(img.shape[0] / f))),
                               interpolation=cv2.INTER_AREA)
            return cv2.resize(small, img.shape[1::-1], interpolation=cv2.INTER_LINEAR)
        if mode == 1:
            k = (7, 11, 15)[int(rng.integers(3))]
            return cv2.GaussianBlur(img, (k, k), 0)
        k = (3, 7, 11, 15)[int(rng.integers(4))]
        detail = cv2.subtract(img, cv2.GaussianBlur(img, (k, k), k))
        return cv2.add(img, cv2.add(detail, detail))

    def mean(img):
        return float(np.mean(cv2.mean(img)[:3]))

    def noise(img):
        sigma, off = mean(img) / 5.0, int(rng.integers(ph.TABLE_SIZE - img.size + 1))
        z = ph.noise_table()[off:off + img.size].reshape(img.shape)
        return cv2.addWeighted(img, 1.0, z, -sigma if rng.uniform() < 0.5 else sigma, 0.0, dtype=cv2.CV_8U)

    def contrast(img):
        m = mean(img)
        a, b = 1.1 + 0.6 * rng.uniform(-1.0, 1.0), 0.5 * m * rng.uniform(-1.0, 1.0)
        return cv2.LUT(img, np.clip(np.rint((np.arange(256) - m) * a + m + b), 0, 255).astype(np.uint8))

    def hue(img):
        h, s, v = cv2.split(cv2.cvtColor(img, cv2.COLOR_RGB2HSV))
        shift, k = int(rng.uniform(-1.0, 1.0) * 40), rng.uniform(0.0, 1.0)
        h = cv2.LUT(h, ((np.arange(256) + shift) % 180).astype(np.uint8))
        lut = np.clip(np.rint(np.arange(256) * k / (1.0 + float(s.max())) * 255.0), 0, 255).astype(np.uint8)
        return cv2.cvtColor(cv2.merge([h, cv2.LUT(s, lut), v]), cv2.COLOR_HSV2RGB)

    def channel(img):
        if rng.uniform() < 0.5:
            c = int(rng.integers(3))
            return np.repeat(img[..., c:c + 1], 3, axis=-1)
        w = rng.uniform(0.0, 1.0, 3) + 1e-6
        grey = cv2.transform(img, (w / w.sum()).astype(np.float32)[None, :])
        return np.repeat(grey.reshape(img.shape[:2] + (1,)), 3, axis=-1)

    for p, fn in ((cfg.blur_prob, blur), (cfg.noise_prob, noise), (cfg.contrast_prob, contrast),
                  (cfg.hue_prob, hue), (cfg.channel_prob, channel)):
        if rng.uniform() < p:
            img = fn(img)
    return img


@pytest.mark.parametrize("probs", [None, 0.7])
def test_photometric_chain_gives_the_bytes_and_draws_of_the_former_chain(probs):
    cfg = AugmentConfig() if probs is None else replace(AugmentConfig(), blur_prob=probs, noise_prob=probs,
                                                        contrast_prob=probs, hue_prob=probs, channel_prob=probs)
    src = np.random.default_rng(16)
    for seed in range(40):
        img = cv2.GaussianBlur(src.integers(0, 256, (48, 48, 3), dtype=np.uint8), (3, 3), 0)
        a, b = np.random.default_rng(seed), np.random.default_rng(seed)
        np.testing.assert_array_equal(ph.photometric(img, a, cfg), _legacy_chain(img, b, cfg), err_msg=str(seed))
        assert a.uniform() == b.uniform()


def test_photometric_on_device_draws_the_same_and_leaves_the_pixels_to_the_device():
    """Same seed, option on or off: the same labels, parameters and rng state afterwards; the CPU chain applied to
    the option's (unflipped) image gives the option-off image."""
    sample = _synthetic_sample(np.random.default_rng(17))
    sample["image"] = cv2.GaussianBlur(np.random.default_rng(18).integers(0, 256, sample["image"].shape,
                                                                          dtype=np.uint8), (5, 5), 1.5)
    cfg = replace(AugmentConfig(), blur_prob=0.5, noise_prob=0.5, channel_prob=0.3)
    dev_cfg = replace(cfg, photometric_on_device=True)
    fired = 0
    for seed in range(16):
        ra, rb = np.random.default_rng(seed), np.random.default_rng(seed)
        a, b = augment_sample(sample, S, cfg, ra), augment_sample(sample, S, dev_cfg, rb)
        assert ra.uniform() == rb.uniform()
        for k in ("K_crop", "R", "uvd", "joints", "photo"):
            assert np.array_equal(a[k], b[k]), (seed, k)
        assert b["photo"][ph.COL["flip"]] == b["flipped"]
        img = b["image"][:, ::-1] if b["flipped"] else b["image"]
        img = ph.apply_photometric(np.ascontiguousarray(img), b["photo"])
        np.testing.assert_array_equal(img[:, ::-1] if b["flipped"] else img, a["image"])
        fired += not np.array_equal(a["image"], b["image"])
    assert fired >= 8

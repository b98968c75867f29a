"""trainer.photometric_torch: the device chain gives the CPU chain's images from the same parameters.

Tolerance (the module docstring says why): per op at most 1 grey level and at most 0.1 % of the values
differing; the whole chain at most 2 levels, 0.1 %. With OpenCV 5.1 the differences measured here are zero.
"""
from __future__ import annotations

from dataclasses import replace

import cv2
import numpy as np
import pytest
import torch

from _fixtures import require_real
from trainer import photometric as ph
from trainer.augment import AugmentConfig
from trainer.photometric_torch import apply_photometric_torch, gaussian_kernel_int

OFF = replace(AugmentConfig(), blur_prob=0, noise_prob=0, contrast_prob=0, hue_prob=0, channel_prob=0,
              cutout_prob=0)
ONLY = {"blur": replace(OFF, blur_prob=1), "noise": replace(OFF, noise_prob=1),
        "contrast": replace(OFF, contrast_prob=1), "hue": replace(OFF, hue_prob=1),
        "channel": replace(OFF, channel_prob=1), "cutout": replace(OFF, cutout_prob=1)}
CHAIN = replace(OFF, blur_prob=0.4, noise_prob=0.5, contrast_prob=0.6, hue_prob=0.6, channel_prob=0.35,
                cutout_prob=0.5)
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Small tensors: on a busy 2-core machine torch's second thread costs 50x more than it gives here."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def drawn_image(S: int, rng) -> np.ndarray:
    """Gradients, smooth colour, sharp edges, saturated and grey regions, black and white, sensor-like noise."""
    yy, xx = np.mgrid[0:S, 0:S] / (S - 1)
    img = np.stack([255 * xx, 255 * yy, 128 + 100 * np.sin(6 * xx + 3 * yy)], -1)
    low = cv2.resize(rng.uniform(0, 255, (6, 6, 3)), (S, S), interpolation=cv2.INTER_CUBIC)
    img = 0.5 * img + 0.5 * low + rng.normal(0, 6, (S, S, 3))
    img = np.clip(img, 0, 255).astype(np.uint8)
    q = S // 8
    cv2.rectangle(img, (q, q), (3 * q, 3 * q), (250, 20, 10), -1)
    cv2.rectangle(img, (4 * q, q), (6 * q, 2 * q), (128, 128, 128), -1)
    cv2.circle(img, (5 * q, 5 * q), 2 * q, (10, 200, 240), -1, cv2.LINE_AA)
    img[-q:, :q] = 0
    img[-q:, q:2 * q] = 255
    return img


def _batch(imgs) -> torch.Tensor:
    return torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2)


def _device_images(imgs, params, device: str = "cpu") -> np.ndarray:
    out = apply_photometric_torch(_batch(imgs).to(device), torch.from_numpy(np.stack(params)))
    return out.permute(0, 2, 3, 1).cpu().numpy()


def _assert_within(out: np.ndarray, ref: np.ndarray, levels: int, what) -> None:
    d = np.abs(out.astype(np.int16) - ref.astype(np.int16))
    assert d.max() <= levels and (d > 0).mean() <= 1e-3, (what, int(d.max()), float((d > 0).mean()))


def _draws(cfg, n: int, S: int, seed: int):
    rng = np.random.default_rng(seed)
    imgs = [drawn_image(S, rng) for _ in range(n)]
    return imgs, [ph.draw_photometric(rng, im.shape, cfg) for im in imgs]


@pytest.mark.parametrize("S", [64, 128])
@pytest.mark.parametrize("op", sorted(ONLY))
def test_each_op_matches_the_cpu_op(op, S):
    imgs, params = _draws(ONLY[op], 20 if op == "blur" else 12, S, seed=len(op) + S)
    if op == "blur":                       # every mode and kernel, twice, not only those drawn
        variants = ([(0, f) for f in ph.RESIZE_FACTORS] + [(1, k) for k in ph.BLUR_KERNELS]
                    + [(2, k) for k in ph.SHARPEN_KERNELS])
        for p, (mode, arg) in zip(params, variants * 2):
            p[ph.COL["blur_mode"]], p[ph.COL["blur_arg"]] = mode, arg
    if op in ("channel", "cutout"):        # both modes / fills
        kinds = {int(p[ph.COL["channel_c"]] >= 0) if op == "channel" else int(p[ph.COL["cut_fill"]])
                 for p in params}
        assert len(kinds) == 2, kinds
    ref = np.stack([ph.apply_photometric(im, p) for im, p in zip(imgs, params)])
    _assert_within(_device_images(imgs, params), ref, 1, op)


@pytest.mark.parametrize("device", DEVICES)
def test_whole_chain_with_flips_matches_the_cpu_chain(device):
    """Batches arrive flipped (the CPU chain runs before the flip); the device chain undoes and redoes it."""
    imgs, params = _draws(CHAIN, 24, 128, seed=7)
    rng = np.random.default_rng(8)
    for p in params:
        p[ph.COL["flip"]] = rng.uniform() < 0.5
    flipped = [im[:, ::-1] if p[ph.COL["flip"]] else im for im, p in zip(imgs, params)]
    ref = [ph.apply_photometric(im, p) for im, p in zip(imgs, params)]
    ref = np.stack([r[:, ::-1] if p[ph.COL["flip"]] else r for r, p in zip(ref, params)])
    fired = np.stack(params)[:, [ph.COL[k] for k in ONLY]].sum(0)
    assert fired.min() >= 3, fired
    _assert_within(_device_images(flipped, params, device), ref, 2, device)


def test_real_frame_whole_chain():
    frame = cv2.imread(str(sorted(require_real("h36m").glob("*.jpg"))[0]))
    h, w = frame.shape[:2]
    side = min(h, w)
    crop = cv2.resize(frame[(h - side) // 2:(h + side) // 2, (w - side) // 2:(w + side) // 2], (256, 256),
                      interpolation=cv2.INTER_AREA)[..., ::-1]
    rng = np.random.default_rng(9)
    params = [ph.draw_photometric(rng, crop.shape, CHAIN) for _ in range(6)]
    for p, (mode, arg) in zip(params, ((0, 8 / 5), (1, 15), (2, 11))):
        p[ph.COL["blur"]], p[ph.COL["blur_mode"]], p[ph.COL["blur_arg"]] = 1, mode, arg
    ref = np.stack([ph.apply_photometric(np.ascontiguousarray(crop), p) for p in params])
    _assert_within(_device_images([crop] * 6, params), ref, 2, "real frame")


def test_hue_on_widths_off_the_simd_block_differs_only_in_the_row_tails():
    """The documented difference: OpenCV converts HSV -> RGB in blocks of 64 pixels per row (AVX-512; 32 with
    AVX2) with truncation and the rest of each row with rounding; the device truncates everywhere."""
    imgs, params = _draws(ONLY["hue"], 4, 100, seed=10)
    ref = np.stack([ph.apply_photometric(im, p) for im, p in zip(imgs, params)])
    d = np.abs(_device_images(imgs, params).astype(np.int16) - ref)
    assert d.max() <= 1 and not d[:, :, :64].any()


def test_zero_rows_and_inputs_are_left_alone_and_layouts_agree():
    imgs, params = _draws(CHAIN, 6, 64, seed=11)
    x = _batch(imgs)
    before = x.clone()
    assert apply_photometric_torch(x, np.zeros((6, ph.NUM_PARAMS))) is x
    params[2][:] = 0
    params[2][ph.COL["flip"]] = 1                         # a flip alone is not an op
    params[3][ph.COL["blur"]:ph.COL["blur_arg"] + 1] = 1, 0, 2.0   # the area fast path views its input
    out = apply_photometric_torch(x, np.stack(params))
    assert torch.equal(x, before) and out.dtype == torch.uint8 and out.shape == x.shape
    assert torch.equal(out[2], x[2])
    cl = apply_photometric_torch(x.contiguous(memory_format=torch.channels_last), torch.from_numpy(np.stack(params)))
    assert torch.equal(cl, out)
    with pytest.raises(ValueError, match="uint8"):
        apply_photometric_torch(x.float(), np.stack(params))
    with pytest.raises(ValueError, match="rows"):
        apply_photometric_torch(x, np.stack(params)[:5])


def test_flip_column_is_what_makes_spatial_ops_line_up():
    """Noise windows and cutout rectangles are drawn in the unflipped frame: without the flip column the
    device would put them in the mirrored place."""
    img = drawn_image(64, np.random.default_rng(12))
    p = ph.draw_photometric(np.random.default_rng(13), img.shape, replace(OFF, noise_prob=1, cutout_prob=1))
    want = ph.apply_photometric(img, p)[:, ::-1]
    p[ph.COL["flip"]] = 1
    np.testing.assert_array_equal(_device_images([img[:, ::-1]], [p])[0], want)
    p[ph.COL["flip"]] = 0
    assert not np.array_equal(_device_images([img[:, ::-1]], [p])[0], want)


def test_same_parameters_same_bytes_and_images_too_large_for_the_table_are_refused():
    imgs, params = _draws(CHAIN, 8, 64, seed=14)
    assert np.array_equal(_device_images(imgs, params), _device_images(imgs, params))
    p = ph.draw_photometric(np.random.default_rng(0), (900, 900, 3), ONLY["noise"])
    assert p[ph.COL["noise_off"]] == -1
    with pytest.raises(ValueError, match="noise table"):
        apply_photometric_torch(torch.zeros((1, 3, 900, 900), dtype=torch.uint8), p[None])


def test_gaussian_kernels_are_opencv_fixed_point():
    for k, sigma in [(k, 0.0) for k in ph.BLUR_KERNELS] + [(k, float(k)) for k in ph.SHARPEN_KERNELS]:
        taps = gaussian_kernel_int(k, sigma)
        assert len(taps) == k and sum(taps) == 256 and taps == taps[::-1]
        impulse = np.zeros((1, 64), np.uint8)         # a constant column: one separable pass, taps / 256 * 256
        impulse[0, 32] = 255
        row = cv2.GaussianBlur(np.repeat(impulse, 64, 0), (k, k), sigma)[32, 32 - k // 2:32 + k // 2 + 1]
        np.testing.assert_array_equal(row, (255 * np.array(taps) + 128) >> 8)

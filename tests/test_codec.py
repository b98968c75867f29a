"""pipeline.codec: the JPEG decoders agree bit for bit, RGBX is RGB plus 255, odd inputs still decode."""
from __future__ import annotations

import io
import zipfile

import cv2
import numpy as np
import pytest

from _fixtures import require_real
from pipeline import codec
from pipeline.codec import decode_jpeg_rgb, encode_jpeg

# Mean |decoded - cv2's own round trip of the same image|, in grey levels over pixels and channels. Two correct
# decoders may round a few pixels differently; a swapped channel order or a one-pixel shift costs >= 1.4 even on
# the smooth rendered image (33.9 / 3.7 on the real frame), so 0.5 separates right from wrong on both.
ROUND_TRIP_TOL = 0.5


def _h36m_frame() -> np.ndarray:
    """A real frame's texture, cropped like a stored crop (320 x 320 around the person)."""
    frames = sorted(require_real("h36m").glob("*.jpg"))
    assert frames, "the real h36m fixture has no .jpg frames"
    return cv2.cvtColor(cv2.imread(str(frames[0])), cv2.COLOR_BGR2RGB)[300:620, 340:660].copy()


def _rendered_crop(size: int = 320) -> np.ndarray:
    """What a synthetic crop looks like (no fixtures needed): a colour gradient with flat coloured shapes and
    antialiased edges. Smooth like a photo, so q95 JPEG is nearly lossless on it, unlike blurred noise, whose
    round trip is ~6.6 grey levels off; coloured and edged, so a channel swap or a shift shows."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / (size - 1)
    img = np.stack([60 + 140 * x, 90 + 80 * y, 200 - 120 * x * y], -1).astype(np.uint8)
    cv2.ellipse(img, (160, 120), (50, 70), 15, 0, 360, (200, 60, 40), -1, cv2.LINE_AA)
    cv2.rectangle(img, (40, 200), (140, 290), (30, 160, 70), -1, cv2.LINE_AA)
    cv2.circle(img, (240, 230), 45, (240, 220, 60), -1, cv2.LINE_AA)
    cv2.line(img, (20, 40), (300, 300), (20, 20, 120), 6, cv2.LINE_AA)
    return cv2.GaussianBlur(img, (3, 3), 0.7)


@pytest.fixture(params=["h36m_frame", "rendered"])
def image(request) -> np.ndarray:
    """Both images everywhere: the rendered one always runs, the real frame where the fixtures are."""
    return _h36m_frame() if request.param == "h36m_frame" else _rendered_crop()


def _cv2_round_trip(img_rgb: np.ndarray, quality: int) -> np.ndarray:
    """cv2's own JPEG encode + decode of the image, independent of pipeline.codec: the per-image reference."""
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(img_rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def assert_round_trip(decoded: np.ndarray, img: np.ndarray, quality: int) -> None:
    """decoded is img after a correct quality-q JPEG round trip. The bound is relative to what cv2 itself gets
    for this image, not a fixed error against img: a textured image loses more to JPEG than a smooth one."""
    ref = _cv2_round_trip(img, quality)
    assert decoded.shape == img.shape and decoded.dtype == np.uint8, (decoded.shape, decoded.dtype)
    gap = np.abs(decoded.astype(int) - ref).mean()
    own = np.abs(ref.astype(int) - img).mean()
    assert gap <= ROUND_TRIP_TOL, \
        f"mean |decoded - cv2's own q{quality} round trip| = {gap:.2f} > {ROUND_TRIP_TOL} (that round trip is " \
        f"{own:.2f} off the image, the decoded one {np.abs(decoded.astype(int) - img).mean():.2f})"


@pytest.mark.parametrize("with_simplejpeg", [True, False])
def test_decoders_agree_and_rgbx_is_rgb_plus_255(monkeypatch, image, with_simplejpeg):
    if with_simplejpeg and codec.simplejpeg is None:
        pytest.skip("simplejpeg is not installed")
    if not with_simplejpeg:
        monkeypatch.setattr(codec, "simplejpeg", None)
    jpg = encode_jpeg(image, 95)
    ref = cv2.cvtColor(cv2.imdecode(np.frombuffer(jpg, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    rgb, rgbx = decode_jpeg_rgb(jpg), decode_jpeg_rgb(jpg, rgbx=True)
    assert np.array_equal(rgb, ref)
    assert rgbx.shape == image.shape[:2] + (4,) and np.array_equal(rgbx[..., :3], ref) and (rgbx[..., 3] == 255).all()
    assert_round_trip(rgb, image, 95)


@pytest.mark.parametrize("breakage", ["bgr_order", "shifted_1px_right", "shifted_1px_down"])
def test_round_trip_check_catches_swapped_channels_and_shifts(image, breakage):
    """The check above must fail for a decoder that is wrong in the usual ways, on either image."""
    decoded = decode_jpeg_rgb(encode_jpeg(image, 95))
    assert_round_trip(decoded, image, 95)  # the unbroken decode passes, so the failure below is the breakage's
    broken = {"bgr_order": lambda a: a[..., ::-1],
              "shifted_1px_right": lambda a: np.roll(a, 1, axis=1),
              "shifted_1px_down": lambda a: np.roll(a, 1, axis=0)}[breakage](decoded)
    with pytest.raises(AssertionError, match="cv2's own q95 round trip"):
        assert_round_trip(np.ascontiguousarray(broken), image, 95)


def test_png_bytes_and_garbage(image):
    png = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))[1].tobytes()
    assert np.array_equal(decode_jpeg_rgb(png), image)      # simplejpeg refuses it; cv2 reads it exactly
    assert decode_jpeg_rgb(b"not an image") is None


def _zipfile_npz(arrays: dict) -> bytes:
    """The previous writer (zipfile + np.lib.format.write_array), as the reference for the bytes."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for name in sorted(arrays):
            arr = io.BytesIO()
            a = np.asarray(arrays[name])
            np.lib.format.write_array(arr, a if a.flags.c_contiguous else np.ascontiguousarray(a), allow_pickle=False)
            info = zipfile.ZipInfo(name + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            zf.writestr(info, arr.getvalue())
    return buf.getvalue()


def test_npz_bytes_are_exactly_zipfiles_and_round_trip():
    rng = np.random.default_rng(3)
    arrays = {"K_crop": rng.normal(size=(3, 3)), "uvd": rng.normal(size=(17, 3)).astype(np.float32),
              "scale": np.float64(0.0123), "vis": rng.integers(0, 2, 17).astype(np.uint8), "dist": np.zeros(0),
              "f": np.asfortranarray(rng.normal(size=(4, 5))), "i": np.arange(7, dtype=np.int64),
              "b": np.array([True, False]), "big": rng.normal(size=(6890, 3)), "s": np.int32(5)}
    blob = codec.npz_bytes(arrays)
    assert blob == _zipfile_npz(arrays)
    with np.load(io.BytesIO(blob), allow_pickle=False) as z:
        assert sorted(z.files) == sorted(arrays)
        for k, v in arrays.items():
            assert np.array_equal(z[k], v) and z[k].dtype == np.asarray(v).dtype
    fast = codec.read_npz(blob)
    assert all(np.array_equal(fast[k], v) for k, v in arrays.items())
    with pytest.raises(ValueError, match="object"):
        codec.npz_bytes({"o": np.array([object()])})
    first_member = 30 + len("K_crop.npy") + 128 + 9 * 8           # local header + name + npy header + data
    with pytest.raises((zipfile.BadZipFile, ValueError, OSError)):  # cut at a member boundary: no directory
        codec.read_npz(codec.npz_bytes({"K_crop": arrays["K_crop"], "uvd": arrays["uvd"]})[:first_member])

"""pipeline.codec: the JPEG decoders agree bit for bit, RGBX is RGB plus 255, odd inputs still decode."""
from __future__ import annotations

import io
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest

from pipeline import codec
from pipeline.codec import decode_jpeg_rgb, encode_jpeg

REAL = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "real" / "h36m"


def _image() -> np.ndarray:
    frames = sorted(REAL.glob("*.jpg"))
    if frames:                                             # a real frame's texture, cropped like a stored crop
        return cv2.cvtColor(cv2.imread(str(frames[0])), cv2.COLOR_BGR2RGB)[300:620, 340:660].copy()
    rng = np.random.default_rng(0)
    return cv2.GaussianBlur(rng.integers(0, 256, (320, 320, 3), dtype=np.uint8), (5, 5), 1.0)


@pytest.mark.parametrize("with_simplejpeg", [True, False])
def test_decoders_agree_and_rgbx_is_rgb_plus_255(monkeypatch, with_simplejpeg):
    if with_simplejpeg and codec.simplejpeg is None:
        pytest.skip("simplejpeg is not installed")
    if not with_simplejpeg:
        monkeypatch.setattr(codec, "simplejpeg", None)
    img = _image()
    jpg = encode_jpeg(img, 95)
    ref = cv2.cvtColor(cv2.imdecode(np.frombuffer(jpg, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    rgb, rgbx = decode_jpeg_rgb(jpg), decode_jpeg_rgb(jpg, rgbx=True)
    assert np.array_equal(rgb, ref)
    assert rgbx.shape == img.shape[:2] + (4,) and np.array_equal(rgbx[..., :3], ref) and (rgbx[..., 3] == 255).all()
    assert np.abs(rgb.astype(int) - img).mean() < 3          # q95 round trip


def test_png_bytes_and_garbage():
    img = _image()
    png = cv2.imencode(".png", cv2.cvtColor(img, cv2.COLOR_RGB2BGR))[1].tobytes()
    assert np.array_equal(decode_jpeg_rgb(png), img)        # simplejpeg refuses it; cv2 reads it exactly
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

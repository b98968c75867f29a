"""pipeline.codec: the JPEG decoders agree bit for bit, RGBX is RGB plus 255, odd inputs still decode."""
from __future__ import annotations

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

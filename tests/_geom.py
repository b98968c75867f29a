"""Geometry helpers only the tests need (kept out of pipeline/geometry.py, whose functions all have users)."""
from __future__ import annotations

import numpy as np

from pipeline.geometry import as_f64


def shift_intrinsics(K, du: float, dv: float) -> np.ndarray:
    """K of the same camera after cropping the image at offset (du, dv): c -> c - (du, dv)."""
    K2 = as_f64(K).copy()
    K2[..., 0, 2] -= du
    K2[..., 1, 2] -= dv
    return K2

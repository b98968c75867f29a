"""Fast decoding of shard samples for the training loader (same result as :func:`pipeline.shard.decode_sample`).

``np.load`` on a sample's .npz costs ~0.3 ms per array (zipfile + an ``ast.literal_eval`` of every .npy header),
more than decoding the stored JPEG. The shard writer (:func:`pipeline.shard.npz_bytes`) stores the arrays
uncompressed with fixed headers, so we walk the zip's local headers and view each array with ``np.frombuffer``;
parsed .npy headers are cached (they repeat across samples). Only plain numeric dtypes are accepted (never
objects, so nothing can be unpickled); anything unexpected falls back to ``np.load(allow_pickle=False)``.
The arrays returned by the fast path are read-only views of the sample bytes.
"""
from __future__ import annotations

import io
import json
import re
import struct
from functools import lru_cache

import cv2
import numpy as np

__all__ = ["read_npz", "decode_raw"]

_HEADER = re.compile(r"\{'descr': '([<>|=]?[biuf]\d+)', 'fortran_order': (False|True), 'shape': \(([\d, ]*)\), *\}")
_LOCAL = struct.Struct("<HHHHIIIHH")      # zip local file header after the 4-byte signature and version
_IMREAD_RGB = getattr(cv2, "IMREAD_COLOR_RGB", None)


@lru_cache(maxsize=4096)
def _npy_header(raw: bytes):
    m = _HEADER.fullmatch(raw.decode("latin1").rstrip(" \n"))
    if m is None:
        return None
    shape = tuple(int(x) for x in m.group(3).split(",") if x.strip())
    n = 1
    for s in shape:
        n *= s
    return np.dtype(m.group(1)), shape, n, "F" if m.group(2) == "True" else "C"


def _fast_npz(b: bytes) -> dict | None:
    out, pos = {}, 0
    while b[pos:pos + 4] == b"PK\x03\x04":
        flags, method, _, _, _, csize, _, nlen, xlen = _LOCAL.unpack_from(b, pos + 6)
        start = pos + 30 + nlen + xlen
        if method != 0 or flags & 0x08 or b[start:start + 7] != b"\x93NUMPY\x01":
            return None                                   # compressed / streamed / npy v2+: use np.load
        name = b[pos + 30:pos + 30 + nlen].decode()
        (hlen,) = struct.unpack_from("<H", b, start + 8)
        head = _npy_header(b[start + 10:start + 10 + hlen])
        if head is None or not name.endswith(".npy"):
            return None
        dtype, shape, n, order = head
        if 10 + hlen + n * dtype.itemsize != csize:
            return None
        out[name[:-4]] = np.frombuffer(b, dtype, count=n, offset=start + 10 + hlen).reshape(shape, order=order)
        pos = start + csize
    return out if out else None


def read_npz(b: bytes) -> dict:
    """.npz bytes -> {name: array}; never unpickles."""
    fast = _fast_npz(b)
    if fast is not None:
        return fast
    with np.load(io.BytesIO(b), allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def decode_raw(members: dict) -> dict:
    """{'jpg','npz','json'} bytes (other members ignored) -> {'key', 'image' RGB uint8, 'arrays', 'meta'}."""
    buf = np.frombuffer(members["jpg"], np.uint8)
    if _IMREAD_RGB is not None:
        img = cv2.imdecode(buf, _IMREAD_RGB)
    else:
        img = cv2.imdecode(buf, cv2.IMREAD_COLOR)
        img = None if img is None else cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    if img is None:
        raise ValueError(f"sample {members.get('__key__')}: cannot decode jpg")
    return {"key": members.get("__key__"), "image": img, "arrays": read_npz(members["npz"]),
            "meta": json.loads(members["json"])}

"""Byte codecs of a shard sample: the stored crop's JPEG and the arrays' .npz (never pickled).

JPEG decoding uses simplejpeg (libjpeg-turbo) when it is installed: on this project's stored 320² crops it is
bit-identical to ``cv2.imdecode`` and 0-25 % faster in this project's runs (scripts/bench_loader.py prints
both), and the stored crop's decode is the largest single cost of the training loader. cv2 remains the fallback and reads anything
simplejpeg refuses (a PNG saved under .jpg, a CMYK JPEG). Dataset frames are read with cv2 (shard.load_image):
cv2 applies a JPEG's EXIF orientation and simplejpeg does not, and the labels refer to the oriented image; the
stored crops are our own JPEGs without EXIF.

``np.load`` on a sample's .npz costs ~0.3 ms per array (zipfile + an ``ast.literal_eval`` of every .npy header),
more than decoding the stored JPEG. :func:`npz_bytes` stores the arrays uncompressed with fixed headers, so
:func:`read_npz` walks the zip's local headers and views each array with ``np.frombuffer``; parsed .npy headers
are cached (they repeat across samples). Only plain numeric dtypes are accepted (never objects, so nothing can be
unpickled); anything unexpected falls back to ``np.load(allow_pickle=False)``. Arrays from the fast path are
read-only views of the sample bytes.

The samples of a shard share one layout: the same names, dtypes and shapes, hence the same bytes everywhere but in
the CRCs and the array data. Walking that layout once per sample cost about as much as the rest of the sample's
labels, so :func:`read_npz` remembers the last layouts per byte length: when every byte of a sample outside the
CRCs and the data equals the remembered one (one gathered comparison), the walk would find exactly the remembered
arrays, and they are viewed directly; anything else is walked as before.
"""
from __future__ import annotations

import io
import re
import struct
import zlib
from functools import lru_cache

import cv2
import numpy as np

try:
    import simplejpeg
except ImportError:  # optional speed-up; cv2 decodes the same bytes
    simplejpeg = None

__all__ = ["encode_jpeg", "decode_jpeg_rgb", "npz_bytes", "read_npz"]

_HEADER = re.compile(r"\{'descr': '([<>|=]?[biuf]\d+)', 'fortran_order': (False|True), 'shape': \(([\d, ]*)\), *\}")
_ZIP_LOCAL = struct.Struct("<4sHHHHHIIIHH")   # signature, version, flags, method, time, date, crc, sizes, name/extra
_ZIP_CENTRAL = struct.Struct("<4sHHHHHHIIIHHHHHII")
_ZIP_END = struct.Struct("<4sHHHHIIH")
_DOS_1980 = (0 << 9) | (1 << 5) | 1        # MS-DOS date 1980-01-01 (time 00:00:00 is 0)


# ------------------------------------------------------------------------------------------- JPEG
def encode_jpeg(img_rgb: np.ndarray, quality: int) -> bytes:
    """RGB uint8 -> JPEG bytes (cv2, so builds stay byte-identical for a pinned OpenCV); ValueError on failure."""
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(img_rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return buf.tobytes()


def decode_jpeg_rgb(data: bytes, rgbx: bool = False) -> np.ndarray | None:
    """Image bytes -> RGB uint8 (H, W, 3), or (H, W, 4) RGBX with ``rgbx`` (X = 255), or None when they do not
    decode. RGBX costs the same to decode, and OpenCV's bilinear warp of a 4-channel image is about twice as fast
    here as of a 3-channel one (0.21 vs 0.41-0.45 ms for a 256² output), with bit-identical RGB results (tested)."""
    if simplejpeg is not None:
        try:
            return simplejpeg.decode_jpeg(data, colorspace="RGBX" if rgbx else "RGB", fastdct=False,
                                          fastupsample=False)   # the accurate paths: the same pixels as cv2
        except ValueError:
            pass                                          # not a (baseline RGB/grey) JPEG: let cv2 try
    buf = np.frombuffer(data, np.uint8)
    img = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    if img is None:
        return None
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGBA if rgbx else cv2.COLOR_BGR2RGB)


# ------------------------------------------------------------------------------------------- npz
def npz_bytes(arrays: dict) -> bytes:
    """Deterministic .npz (np.savez stamps the current time into the zip): stored, sorted names, dates 1980-01-01.

    Written directly rather than through zipfile + np.lib.format.write_array, which cost ~0.5 ms per sample of a
    dozen arrays; the bytes are exactly those zipfile writes for ``ZipInfo(name, (1980, 1, 1, 0, 0, 0))`` with
    mode 0644 (tested), so np.load and :func:`read_npz` read them. Object arrays are refused (no pickles)."""
    parts, central, offset = [], [], 0
    for name in sorted(arrays):
        a = np.asarray(arrays[name])
        if a.dtype.hasobject:
            raise ValueError(f"npz array {name!r}: object arrays would need pickle")
        if not a.flags.c_contiguous:
            a = np.ascontiguousarray(a)
        head = io.BytesIO()
        np.lib.format.write_array_header_1_0(head, np.lib.format.header_data_from_array_1_0(a))
        payload = head.getvalue() + a.tobytes()
        fname = (name + ".npy").encode("ascii")
        crc, n = zlib.crc32(payload), len(payload)
        local = _ZIP_LOCAL.pack(b"PK\x03\x04", 20, 0, 0, 0, _DOS_1980, crc, n, n, len(fname), 0) + fname
        central.append(_ZIP_CENTRAL.pack(b"PK\x01\x02", 0x0314, 20, 0, 0, 0, _DOS_1980, crc, n, n, len(fname),
                                         0, 0, 0, 0, 0o644 << 16, offset) + fname)
        parts += [local, payload]
        offset += len(local) + n
    cd = b"".join(central)
    end = _ZIP_END.pack(b"PK\x05\x06", 0, 0, len(central), len(central), len(cd), offset, 0)
    return b"".join(parts) + cd + end


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
    """The arrays of stored, plain-dtype .npz bytes as views, or None where np.load must read them."""
    for where, expect, views in _LAYOUTS.get(len(b), ()):
        if np.frombuffer(b, np.uint8)[where].tobytes() == expect:
            return {name: np.frombuffer(b, dtype, count=n, offset=off).reshape(shape, order=order)
                    for name, dtype, n, off, shape, order in views}
    out, views, spans, pos = {}, [], [], 0
    while b[pos:pos + 4] == b"PK\x03\x04":
        _, _, flags, method, _, _, _, csize, _, nlen, xlen = _ZIP_LOCAL.unpack_from(b, pos)
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
        views.append((name[:-4], dtype, n, start + 10 + hlen, shape, order))
        spans += [(pos, pos + 14), (pos + 18, start + 10 + hlen)]     # the local header but its CRC, the .npy header
        pos = start + csize
    if not out or b[pos:pos + 4] not in (b"PK\x01\x02", b"PK\x05\x06"):   # no central directory: cut short
        return None
    spans.append((pos, pos + 4))
    _remember(b, spans, views)
    return out


# byte length -> the last layouts walked at that length: (positions of the layout's bytes, their values, the views)
_LAYOUTS: dict[int, list[tuple[np.ndarray, bytes, tuple]]] = {}
_MAX_LENGTHS, _PER_LENGTH = 256, 4


def _remember(b: bytes, spans: list[tuple[int, int]], views: list[tuple]) -> None:
    """Every byte the walk read (all but the CRCs and the data) fixes its outcome: keep them, with the views the
    walk made, for the next samples of this byte length (a few layouts per length: mixed sources alternate)."""
    if len(_LAYOUTS) >= _MAX_LENGTHS and len(b) not in _LAYOUTS:
        _LAYOUTS.clear()                                  # a stream of ever new layouts: start over
    where = np.concatenate([np.arange(s, e) for s, e in spans]).astype(np.intp)
    known = _LAYOUTS.setdefault(len(b), [])
    known.insert(0, (where, np.frombuffer(b, np.uint8)[where].tobytes(), tuple(views)))
    del known[_PER_LENGTH:]


def read_npz(b: bytes) -> dict:
    """.npz bytes -> {name: array}; never unpickles."""
    fast = _fast_npz(b)
    if fast is not None:
        return fast
    with np.load(io.BytesIO(b), allow_pickle=False) as z:
        return {k: z[k] for k in z.files}

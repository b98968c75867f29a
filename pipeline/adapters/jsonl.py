"""Bring your own dataset: one JSON object per line with exactly the manifest's column names.

Fixed-size lists are written flat: ``K`` 9 numbers row-major (or null: no intrinsics), ``bbox`` 4 (x, y, w, h),
``joints_cam`` J*3 metres in the camera frame (or null), ``joints_2d`` J*2 pixels (or null), ``joints_vis`` J.
``sample_id`` may be omitted: it is then ``dataset/split/sequence/frame/person``.
"""
from __future__ import annotations

import json
from pathlib import Path

from ..errors import InputError
from ..manifest import SCHEMA, make_sample_id

ADAPTER_VERSION = "1"
_REQUIRED = ("dataset", "split", "sequence", "frame", "person", "image_path", "image_w", "image_h", "bbox",
             "skeleton", "joints_vis")
_KNOWN = {f.name for f in SCHEMA}


def read_jsonl(path) -> list[dict]:
    """Parse the file into manifest rows. A malformed line raises InputError naming the file and line number
    (nothing is written by the caller then)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    rows = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise InputError(f"{path}:{lineno}: invalid JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(obj, dict):
                raise InputError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
            missing = [k for k in _REQUIRED if k not in obj]
            if missing:
                raise InputError(f"{path}:{lineno}: missing field(s) {', '.join(missing)}")
            unknown = sorted(set(obj) - _KNOWN)
            if unknown:
                raise InputError(f"{path}:{lineno}: unknown field(s) {', '.join(unknown)} "
                                 f"(allowed: {', '.join(sorted(_KNOWN))})")
            try:
                row = _coerce(obj)
            except (TypeError, ValueError) as e:
                raise InputError(f"{path}:{lineno}: {e}") from None
            rows.append(row)
    return rows


def _floats(v, name, n=None):
    if v is None:
        return None
    if not isinstance(v, list) or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v):
        raise ValueError(f"{name} must be a flat list of numbers")
    if n is not None and len(v) != n:
        raise ValueError(f"{name} must have {n} numbers, got {len(v)}")
    return [float(x) for x in v]


def _coerce(o: dict) -> dict:
    r = {k: o.get(k) for k in _KNOWN}
    for k in ("dataset", "split", "sequence", "image_path", "skeleton"):
        if not isinstance(o[k], str):
            raise ValueError(f"{k} must be a string")
    for k in ("frame", "person", "image_w", "image_h"):
        if not isinstance(o[k], int) or isinstance(o[k], bool):
            raise ValueError(f"{k} must be an integer")
    r["K"] = _floats(o.get("K"), "K", 9)
    r["dist"] = _floats(o.get("dist") or [], "dist")
    r["bbox"] = _floats(o["bbox"], "bbox", 4)
    r["joints_cam"] = _floats(o.get("joints_cam"), "joints_cam")
    r["joints_2d"] = _floats(o.get("joints_2d"), "joints_2d")
    vis = o["joints_vis"]
    if not isinstance(vis, list) or not all(isinstance(x, (int, bool)) and 0 <= int(x) <= 255 for x in vis):
        raise ValueError("joints_vis must be a list of integers 0..255")
    r["joints_vis"] = [int(x) for x in vis]
    if o.get("meta") is not None and not isinstance(o["meta"], str):
        r["meta"] = json.dumps(o["meta"], sort_keys=True)
    if not r.get("sample_id"):
        r["sample_id"] = make_sample_id(o["dataset"], o["split"], o["sequence"], o["frame"], o["person"])
    return r

"""Manifest: one parquet row per person-frame (docs/design.md §5), its validation and atomic writing.

Every adapter produces rows in this schema; everything downstream (shards, show, eval) reads only this schema.
``K`` is null for samples without intrinsics (COCO); ``joints_cam`` is null for 2D-only samples.
Image paths are relative to the ``image_root`` stored in the file metadata (absolute paths are allowed too).
"""
from __future__ import annotations

import json
import logging
import math
from collections import Counter
from pathlib import Path
from typing import Iterable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .errors import InputError
from .fsutil import atomic_path
from .skeleton import SKELETONS

log = logging.getLogger(__name__)

__all__ = ["SCHEMA", "REJECTED_SCHEMA", "REQUIRED", "rows_to_table", "validate_row", "validate_rows",
           "write_manifest", "read_manifest", "manifest_metadata", "rejected_path_for", "image_root_of",
           "make_sample_id", "MANIFEST_VERSION"]

MANIFEST_VERSION = 1

SMPL_TYPE = pa.struct([
    ("betas", pa.list_(pa.float32())),
    ("pose", pa.list_(pa.float32())),      # 72 axis-angle values, root orientation in the camera frame
    ("transl", pa.list_(pa.float32())),    # 3, camera frame, metres
    ("gender", pa.string()),               # 'male' | 'female' | 'neutral'
    ("twist", pa.list_(pa.float32())),     # 23 twist angles (rad) of the bones parent(c) -> c, c = 1..23, about
                                           # their rest direction (pipeline.ik.bone_twists); NaN = undefined
])

SCHEMA = pa.schema([
    pa.field("sample_id", pa.string(), nullable=False),
    pa.field("dataset", pa.string(), nullable=False),
    pa.field("split", pa.string(), nullable=False),
    pa.field("sequence", pa.string(), nullable=False),
    pa.field("frame", pa.int32(), nullable=False),
    pa.field("person", pa.int16(), nullable=False),
    pa.field("image_path", pa.string(), nullable=False),
    pa.field("image_w", pa.int32(), nullable=False),
    pa.field("image_h", pa.int32(), nullable=False),
    pa.field("K", pa.list_(pa.float64(), 9)),                  # row-major 3x3; null = no intrinsics
    pa.field("dist", pa.list_(pa.float64())),                  # OpenCV k1 k2 p1 p2 [k3]; empty = none
    pa.field("bbox", pa.list_(pa.float64(), 4), nullable=False),  # x y w h, original pixels
    pa.field("skeleton", pa.string(), nullable=False),
    pa.field("joints_cam", pa.list_(pa.float32())),            # J*3 metres, original camera; null = 2D only
    pa.field("joints_2d", pa.list_(pa.float32())),             # J*2 pixels; nullable
    pa.field("joints_vis", pa.list_(pa.uint8()), nullable=False),  # J
    pa.field("smpl", SMPL_TYPE),
    pa.field("meta", pa.string()),                             # free-form JSON string
])
REQUIRED = [f.name for f in SCHEMA if not f.nullable] + ["K", "dist"]
OPTIONAL = ["joints_cam", "joints_2d", "smpl", "meta"]

REJECTED_SCHEMA = pa.schema([("sample_id", pa.string()), ("reason", pa.string())])


def make_sample_id(dataset: str, split: str, sequence: str, frame: int, person: int) -> str:
    return f"{dataset}/{split}/{sequence}/{int(frame)}/{int(person)}"


def rows_to_table(rows: list[dict]) -> pa.Table:
    """Python dict rows (fixed-size lists flat, numpy arrays allowed) -> a table in :data:`SCHEMA`."""
    cols = {f.name: [] for f in SCHEMA}
    for r in rows:
        for f in SCHEMA:
            v = r.get(f.name)
            if isinstance(v, np.ndarray):
                v = v.reshape(-1).tolist()
            elif f.name == "smpl" and v is not None:
                v = {k: (np.asarray(x).reshape(-1).tolist() if k != "gender" and x is not None else x)
                     for k, x in v.items()}
            cols[f.name].append(v)
    if "dist" in cols:
        cols["dist"] = [[] if v is None else v for v in cols["dist"]]
    return pa.Table.from_pydict(cols, schema=SCHEMA)


def _finite(x) -> bool:
    return x is None or all(math.isfinite(v) for v in x)


def validate_row(r: dict, image_root: Path | None, check_images: bool = True) -> str | None:
    """Return the rejection reason for one row (dict of python values), or None if the row is usable."""
    sk = SKELETONS.get(r.get("skeleton"))
    if sk is None:
        return f"unknown skeleton {r.get('skeleton')!r}"
    J = sk.num_joints
    for name, n in (("joints_cam", 3 * J), ("joints_2d", 2 * J)):
        if r.get(name) is not None and len(r[name]) != n:
            return f"{name} has {len(r[name])} values, skeleton {sk.name} needs {n}"
    if len(r.get("joints_vis") or []) != J:
        return f"joints_vis has {len(r.get('joints_vis') or [])} values, skeleton {sk.name} needs {J}"
    for name in ("K", "dist", "bbox", "joints_cam", "joints_2d"):
        if not _finite(r.get(name)):
            return f"non-finite values in {name}"
    if not ((r.get("image_w") or 0) > 0 and (r.get("image_h") or 0) > 0):
        return "image size <= 0"
    K = r.get("K")
    if K is not None:
        if len(K) != 9:
            return f"K has {len(K)} values, needs 9"
        if K[0] <= 0 or K[4] <= 0:
            return "focal length <= 0"
        if K[1] != 0 or K[3] != 0:
            return "non-zero skew in K"
        if K[6] != 0 or K[7] != 0 or K[8] != 1:
            return "K last row is not (0, 0, 1)"
    if r.get("dist") and len(r["dist"]) not in (4, 5):
        return f"dist has {len(r['dist'])} values, needs 4 or 5 (OpenCV k1 k2 p1 p2 [k3])"
    if r.get("joints_cam") is not None:
        if K is None:
            return "3D joints without intrinsics K"
        z = np.asarray(r["joints_cam"], dtype=np.float64).reshape(J, 3)[:, 2]
        if np.any(z <= 0):
            return "joints behind the camera (z <= 0)"
    b = r.get("bbox")
    if b is None or len(b) != 4 or not (b[2] > 1e-6 and b[3] > 1e-6):
        return "degenerate bbox (w or h <= 0)"
    if check_images:
        p = Path(r["image_path"])
        p = p if p.is_absolute() or image_root is None else image_root / p
        if not p.is_file():
            return "missing image"
    return None


def validate_rows(rows: list[dict], image_root: Path | None, check_images: bool = True):
    """Split rows into (kept rows, rejected [(sample_id, reason)]). Duplicate sample_ids are rejected too."""
    kept, rejected, seen = [], [], set()
    for r in rows:
        reason = validate_row(r, image_root, check_images)
        if reason is None and r["sample_id"] in seen:
            reason = "duplicate sample_id"
        if reason is None:
            kept.append(r)
            seen.add(r["sample_id"])
        else:
            rejected.append((r.get("sample_id", "?"), reason))
    return kept, rejected


def manifest_metadata(adapter: str, adapter_version: str, image_root, dataset_root=None,
                      source_checksums: dict | None = None, extra: dict | None = None) -> dict:
    return {"manifest_version": MANIFEST_VERSION, "adapter": adapter, "adapter_version": adapter_version,
            "image_root": str(Path(image_root).resolve()) if image_root else "",
            "dataset_root": str(dataset_root or image_root or ""),
            "source_checksums": source_checksums or {}, **(extra or {})}


def rejected_path_for(out: Path) -> Path:
    out = Path(out)
    return out.with_name(out.stem + ".rejected.parquet")


def write_manifest(rows_or_table, out, metadata: dict, rejected: Iterable[tuple[str, str]] = ()) -> pa.Table:
    """Atomically write the manifest (sorted by sample_id) and its rejection side table next to it."""
    table = rows_or_table if isinstance(rows_or_table, pa.Table) else rows_to_table(rows_or_table)
    table = table.sort_by("sample_id")
    table = table.replace_schema_metadata({b"perspose": json.dumps(metadata, sort_keys=True).encode()})
    out = Path(out)
    with atomic_path(out, ".parquet") as tmp:
        pq.write_table(table, tmp)
    rej = list(rejected)
    rej_table = pa.Table.from_pydict({"sample_id": [s for s, _ in rej], "reason": [r for _, r in rej]},
                                     schema=REJECTED_SCHEMA)
    with atomic_path(rejected_path_for(out), ".parquet") as tmp:
        pq.write_table(rej_table, tmp)
    counts = Counter(r for _, r in rej)
    log.info("wrote %s: %d rows, %d rejected %s", out, table.num_rows, len(rej), dict(counts))
    return table


def read_manifest(path) -> tuple[pa.Table, dict]:
    """Read and check a manifest: returns (table, metadata). Raises InputError naming the file when it is missing
    or does not have the manifest schema."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: manifest file not found")
    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises several types for non-parquet input
        raise InputError(f"{path}: not a parquet manifest ({type(e).__name__}: {str(e).splitlines()[0]})") from None
    missing = [c for c in REQUIRED if c not in table.column_names]
    if missing:
        raise InputError(f"{path}: not a manifest, missing columns {', '.join(missing)}")
    for name in OPTIONAL:
        if name not in table.column_names:
            table = table.append_column(SCHEMA.field(name), pa.nulls(table.num_rows, SCHEMA.field(name).type))
    raw = (table.schema.metadata or {}).get(b"perspose")
    meta = json.loads(raw) if raw else {}
    table = _complete_smpl_struct(table)
    try:
        table = table.select([f.name for f in SCHEMA]).cast(SCHEMA)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as e:  # a column of the wrong type
        raise InputError(f"{path}: not a manifest, column types do not match the schema "
                         f"({str(e).splitlines()[0]})") from None
    return table, meta


def _complete_smpl_struct(table: pa.Table) -> pa.Table:
    """Manifests written before a field joined the ``smpl`` struct (``twist``) read with that field null."""
    col = table.column("smpl")
    typ = col.type
    if not pa.types.is_struct(typ) or {typ.field(i).name for i in range(typ.num_fields)} >= set(SMPL_TYPE.names):
        return table
    chunks = []
    for chunk in col.chunks:
        have = {typ.field(i).name: chunk.field(i) for i in range(typ.num_fields)}
        fields = [have.get(f.name, pa.nulls(len(chunk), f.type)) for f in SMPL_TYPE]
        chunks.append(pa.StructArray.from_arrays(fields, fields=list(SMPL_TYPE), mask=chunk.is_null()))
    return table.set_column(table.schema.get_field_index("smpl"), pa.field("smpl", SMPL_TYPE),
                            pa.chunked_array(chunks, SMPL_TYPE))


def image_root_of(meta: dict, manifest_path) -> Path:
    """The directory image paths are relative to: the metadata's image_root, else the manifest's directory."""
    root = meta.get("image_root") or ""
    return Path(root) if root else Path(manifest_path).resolve().parent


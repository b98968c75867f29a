"""The build plan (docs/design.md §7): which manifest row goes to which shard, and what a rerun reuses.

A pure function of the manifests and the options: the rows of all manifests are concatenated and sorted by
``sample_id`` (a later row whose webdataset key duplicates an earlier one is rejected as "duplicate sample
key"), then cut into consecutive runs of ``shard_size``. Shard ``n`` is ``{prefix}-{n:06d}.tar``. Each shard
carries a plan hash: the format version, the crop options, the cv2/numpy versions (they decide the encoded
bytes), and the full content of every manifest row of the shard with its resolved image path (not the image
bytes: replace an image in place and you must delete the shard or its sidecar). A shard is reused when its
sidecar exists, the plan hash matches and the tar's sha256 matches the sidecar.

The runner (:mod:`pipeline.build`) executes the plan; nothing here touches a backend or writes a file.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from .errors import InputError
from .fsutil import sha256_file
from .manifest import image_root_of, read_manifest
from .shard import FORMAT_VERSION, BuildOptions, sample_key

__all__ = ["ShardTask", "BuildPlan", "load_rows", "plan_hash", "plan_shards", "reusable_sidecar", "plan_build"]


@dataclass(frozen=True)
class ShardTask:
    index: int
    name: str           # file stem, e.g. shard-000003
    rows: tuple         # manifest rows (dicts) of this shard, sorted, with "_image" = resolved image path
    plan_hash: str


@dataclass(frozen=True)
class BuildPlan:
    tasks: tuple[ShardTask, ...]         # every shard of the plan, in order
    todo: tuple[ShardTask, ...]          # those to (re)build
    reused: dict                         # shard index -> the sidecar of a finished, identical shard
    rejected: tuple                      # (sample_id, reason) decided by the plan (duplicate keys)
    manifests: tuple                     # per-manifest info for build.json
    rows: int                            # planned samples


def load_rows(manifests) -> tuple[list[dict], list[tuple[str, str]], list[dict]]:
    """Read manifests -> (rows sorted by sample_id, duplicate-key rejections, per-manifest info for build.json).
    Raises InputError for a missing manifest or a missing image root."""
    rows, infos = [], []
    for m_index, path in enumerate(manifests):
        path = Path(path)
        table, meta = read_manifest(path)
        root = image_root_of(meta, path)
        if not root.is_dir():
            raise InputError(f"{path}: image_root {root} does not exist (move the images there or rewrite the "
                             f"manifest)")
        part = table.to_pylist()
        for r in part:
            p = Path(r["image_path"])
            r["_image"] = str(p if p.is_absolute() else root / p)
            r["_manifest"] = m_index
        rows.extend(part)
        infos.append({"path": str(path.resolve()), "sha256": sha256_file(path), "rows": len(part),
                      "image_root": str(root), "adapter": meta.get("adapter", "")})
    rows.sort(key=lambda r: (r["sample_id"], r["_manifest"]))
    kept, rejected, seen = [], [], set()
    for r in rows:
        k = sample_key(r["sample_id"])
        if k in seen:
            rejected.append((r["sample_id"], "duplicate sample key"))
            continue
        seen.add(k)
        kept.append(r)
    return kept, rejected, infos


def _feed(h, v) -> None:
    """Hash a manifest value unambiguously (type tag + bytes); numeric lists go through numpy (fast, exact)."""
    if v is None:
        h.update(b"N")
    elif isinstance(v, str):
        b = v.encode()
        h.update(b"S%d:" % len(b) + b)
    elif isinstance(v, (bool, int, float)):
        h.update(b"V" + repr(v).encode() + b";")
    elif isinstance(v, dict):
        h.update(b"D%d:" % len(v))
        for k in sorted(v):
            _feed(h, k)
            _feed(h, v[k])
    else:
        a = np.asarray(v, dtype=np.float64)
        h.update(b"A%d:" % a.size + a.tobytes())


def plan_hash(rows, opts: BuildOptions) -> str:
    """sha256 of the format version, the crop options, the cv2 / numpy versions and every row's full content
    (with its resolved image path); the manifest a row came from does not matter."""
    h = hashlib.sha256()
    head = {"format_version": FORMAT_VERSION, "options": dataclasses.asdict(opts), "cv2": cv2.__version__,
            "numpy": np.__version__}
    h.update(json.dumps(head, sort_keys=True).encode())
    for r in rows:
        _feed(h, {k: v for k, v in r.items() if k != "_manifest"})
    return h.hexdigest()


def plan_shards(rows: list[dict], shard_size: int, prefix: str, opts: BuildOptions) -> list[ShardTask]:
    """Cut sorted rows into consecutive shards of ``shard_size`` (a pure function of rows and options)."""
    tasks = []
    for i, start in enumerate(range(0, len(rows), shard_size)):
        part = tuple(rows[start:start + shard_size])
        tasks.append(ShardTask(i, f"{prefix}-{i:06d}", part, plan_hash(part, opts)))
    return tasks


def reusable_sidecar(task: ShardTask, out_dir) -> dict | None:
    """The sidecar of a finished shard identical to the plan, or None if the shard must be (re)built."""
    out_dir = Path(out_dir)
    side_path, tar = out_dir / f"{task.name}.json", out_dir / f"{task.name}.tar"
    try:
        side = json.loads(side_path.read_text())
        if side.get("plan_hash") != task.plan_hash or not tar.is_file():
            return None
        if tar.stat().st_size != side.get("bytes") or sha256_file(tar) != side.get("sha256"):
            return None
        return side
    except (OSError, ValueError):
        return None


def plan_build(manifests, out_dir, shard_size: int, prefix: str, opts: BuildOptions) -> BuildPlan:
    """Read the manifests, cut the shards and look up what ``out_dir`` already holds of them."""
    rows, dup_rejected, infos = load_rows(manifests)
    tasks = plan_shards(rows, shard_size, prefix, opts)
    reused, todo = {}, []
    for t in tasks:
        side = reusable_sidecar(t, out_dir)
        if side is None:
            todo.append(t)
        else:
            reused[t.index] = side
    return BuildPlan(tuple(tasks), tuple(todo), reused, tuple(dup_rejected), tuple(infos), len(rows))

"""Tiny synthetic manifests for the shard / build / verify tests: images with a Gaussian dot at every projected
joint (so label exactness can be checked by finding the dots in the crop), written in the manifest schema."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from pipeline import geometry as g
from pipeline.manifest import make_sample_id, manifest_metadata, rows_to_table, write_manifest


def dot_image(w: int, h: int, points, sigma: float = 1.5, background=None) -> np.ndarray:
    """RGB uint8 image with an exact sub-pixel Gaussian dot (peak 255) at every point (N, 2)."""
    img = np.zeros((h, w), np.float64) if background is None else background.astype(np.float64)
    yy, xx = np.mgrid[0:h, 0:w]
    for u, v in np.asarray(points, np.float64):
        r = int(4 * sigma + 2)
        x0, x1, y0, y1 = max(0, int(u) - r), min(w, int(u) + r + 1), max(0, int(v) - r), min(h, int(v) + r + 1)
        if x0 >= x1 or y0 >= y1:
            continue
        sub = np.exp(-((xx[y0:y1, x0:x1] - u) ** 2 + (yy[y0:y1, x0:x1] - v) ** 2) / (2 * sigma ** 2))
        img[y0:y1, x0:x1] = np.maximum(img[y0:y1, x0:x1], 255 * sub)
    g1 = np.clip(np.round(img), 0, 255).astype(np.uint8)
    g2 = (g1 // 2 + 64 * (g1 > 0)).astype(np.uint8)
    return np.stack([g1, g2, g1], -1)


def spread_joints(rng, center_xyz, extent: float, J: int = 17) -> np.ndarray:
    """J joints on a jittered 3D grid (well separated, so each dot can be found on its own)."""
    n = int(np.ceil(np.sqrt(J)))
    ij = np.stack(np.meshgrid(np.arange(n), np.arange(n)), -1).reshape(-1, 2)[:J]
    xy = (ij - (n - 1) / 2) / ((n - 1) / 2) * extent * 0.5 + rng.uniform(-0.03, 0.03, (J, 2)) * extent
    z = rng.uniform(-0.1, 0.1, J) * extent
    return np.asarray(center_xyz, np.float64) + np.concatenate([xy, z[:, None]], -1)


def bbox_of(points, pad: float = 0.15) -> list[float]:
    lo, hi = points.min(0), points.max(0)
    w, h = hi - lo
    return [lo[0] - pad * w, lo[1] - pad * h, w * (1 + 2 * pad), h * (1 + 2 * pad)]


def make_row(sample_id_parts, image_path, w, h, K, joints_cam, bbox, skeleton="h36m17", dist=(), joints_2d=None):
    J = 17 if joints_cam is None else len(joints_cam)
    ds, split, seq, frame, person = sample_id_parts
    return {"sample_id": make_sample_id(ds, split, seq, frame, person), "dataset": ds, "split": split,
            "sequence": seq, "frame": frame, "person": person, "image_path": str(image_path), "image_w": w,
            "image_h": h, "K": None if K is None else np.asarray(K).reshape(-1).tolist(), "dist": list(dist),
            "bbox": list(map(float, bbox)), "skeleton": skeleton,
            "joints_cam": None if joints_cam is None else np.asarray(joints_cam, np.float32).reshape(-1).tolist(),
            "joints_2d": None if joints_2d is None else np.asarray(joints_2d, np.float32).reshape(-1).tolist(),
            "joints_vis": [1] * J}


def make_dataset(root: Path, n: int, seed: int = 0, size=(320, 240), dataset="toy", split="train",
                 shared_image: bool = False) -> tuple[list[dict], Path]:
    """n rows with 3D joints and a dot image each (or all rows on one image if shared_image). Returns
    (rows, image_dir); rows' image paths are relative to image_dir."""
    rng = np.random.default_rng(seed)
    w, h = size
    img_dir = Path(root) / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    K = g.intrinsics(0.9 * w, 0.9 * w, (w - 1) / 2 + 3.0, (h - 1) / 2 - 2.0)
    rows = []
    for i in range(n):
        z = rng.uniform(3.0, 5.0)
        c = [rng.uniform(-0.25, 0.25) * z * w / K[0, 0], rng.uniform(-0.2, 0.2) * z * h / K[1, 1], z]
        joints = spread_joints(rng, c, rng.uniform(0.8, 1.4))
        uv = g.project(joints, K)
        name = "shared.jpg" if shared_image else f"{dataset}_{split}_{i:04d}.jpg"
        if not shared_image or i == 0:
            img = dot_image(w, h, uv)
            cv2.imwrite(str(img_dir / name), cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
        rows.append(make_row((dataset, split, f"seq{i % 3}", i, 0), name, w, h, K, joints, bbox_of(uv)))
    return rows, img_dir


def write(rows, path: Path, image_root: Path, validate: bool = True) -> Path:
    """Write a manifest (the real writer, or with validate=False the raw table, bypassing validation)."""
    meta = manifest_metadata("test", "1", image_root)
    if validate:
        write_manifest(rows, path, meta)
    else:
        import json

        import pyarrow.parquet as pq
        t = rows_to_table(rows).sort_by("sample_id")
        pq.write_table(t.replace_schema_metadata({b"perspose": json.dumps(meta).encode()}), path)
    return path

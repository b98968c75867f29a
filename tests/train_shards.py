"""Tiny generated shards for the trainer tests (not a test module): random cameras and joints, images with a
coloured disc at every visible joint, cropped and encoded by pipeline.shard like a real build."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

from pipeline.shard import FORMAT_VERSION, BuildOptions, Rejected, encode_sample, process_row, write_tar
from pipeline.skeleton import get_skeleton


def _row(rng, i: int, skeleton: str, split: str, w: int, h: int) -> tuple[dict, np.ndarray]:
    sk = get_skeleton(skeleton)
    J = sk.num_joints
    f = rng.uniform(0.8, 1.2) * w
    K = np.array([[f, 0, (w - 1) / 2], [0, f, (h - 1) / 2], [0, 0, 1.0]])
    root = np.array([rng.uniform(-0.6, 0.6), rng.uniform(-0.3, 0.3), rng.uniform(3.5, 6.0)])
    offs = rng.uniform(-0.5, 0.5, (J, 3)) * np.array([0.6, 1.0, 0.4])
    if sk.root is not None:
        offs[sk.root] = 0.0
    joints = root + offs
    uv = joints[:, :2] / joints[:, 2:] * f + K[:2, 2]
    lo, hi = uv.min(0) - 4, uv.max(0) + 4
    img = np.full((h, w, 3), 40, np.uint8)
    for j, (u, v) in enumerate(uv):
        color = tuple(int(c) for c in (255 * np.array([j % 3 == 0, j % 3 == 1, j % 3 == 2]) * 0.8 + 30))
        cv2.circle(img, (int(round(u)), int(round(v))), 3, color, -1)
    three_d = sk.has_3d
    row = {"sample_id": f"gen/{split}/seq{i // 10}/{i}/0", "dataset": "gen", "split": split,
           "sequence": f"seq{i // 10}", "frame": i, "person": 0, "image_path": f"{i}.jpg", "image_w": w,
           "image_h": h, "K": K.ravel().tolist() if three_d else None, "dist": [],
           "bbox": [lo[0], lo[1], hi[0] - lo[0], hi[1] - lo[1]], "skeleton": skeleton,
           "joints_cam": joints.astype(np.float32).ravel().tolist() if three_d else None,
           "joints_2d": None if three_d else uv.astype(np.float32).ravel().tolist(),
           "joints_vis": [1] * J, "smpl": None, "meta": None}
    return row, img


def make_shards(out_dir, n: int = 24, crop_size: int = 64, skeleton: str = "smpl24", split: str = "train",
                seed: int = 0, per_shard: int = 8, w: int = 160, h: int = 120, format_version=FORMAT_VERSION) -> Path:
    """Write ceil(n / per_shard) shards + build.json into out_dir; returns out_dir."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    opts = BuildOptions(crop_size=crop_size)
    encoded = []
    for i in range(n):
        row, img = _row(rng, i, skeleton, split, w, h)
        try:
            encoded.append(encode_sample(process_row(row, img, opts)))
        except Rejected:
            continue
    shards = []
    for k in range(0, len(encoded), per_shard):
        name = f"shard-{k // per_shard:06d}"
        count = write_tar(out_dir / f"{name}.tar", encoded[k:k + per_shard])
        shards.append({"name": name, "file": name + ".tar", "samples": count})
    build = {"format_version": format_version, "options": {"crop_size": crop_size, "store_size": opts.store_size},
             "shards": shards}
    (out_dir / "build.json").write_text(json.dumps(build))
    return out_dir

"""A manifest row of one person in front of a small camera, in the real schema: the generated data that the loader
tests build their shard sets from (tests/test_data.py, tests/test_loader_exact.py)."""
from __future__ import annotations

import numpy as np

from pipeline import geometry as g
from pipeline.skeleton import get_skeleton


def person_row(rng: np.random.Generator, dataset: str, i: int, skeleton: str, W: int, H: int) -> tuple[dict, np.ndarray]:
    """Row ``i`` (every joint visible; a 2D-only row without intrinsics for ``coco17``) and its joints' pixels."""
    J = get_skeleton(skeleton).num_joints
    K = g.intrinsics(150.0, 150.0, 81.0, 58.0)
    centre = np.array([rng.uniform(-0.3, 0.3), rng.uniform(-0.2, 0.2), rng.uniform(3.5, 5.0)])
    joints = centre + rng.uniform(-0.4, 0.4, (J, 3)) * [1.0, 2.0, 0.3]
    uv = g.project(joints, K)
    lo, hi = uv.min(0), uv.max(0)
    row = {"sample_id": f"{dataset}/train/seq{i % 2}/{i}/0", "dataset": dataset, "split": "train",
           "sequence": f"seq{i % 2}", "frame": i, "person": 0, "image_path": f"{i}.jpg", "image_w": W, "image_h": H,
           "K": K.reshape(-1).tolist(), "dist": [], "bbox": [lo[0], lo[1], hi[0] - lo[0], hi[1] - lo[1]],
           "skeleton": skeleton, "joints_cam": joints.reshape(-1).tolist(), "joints_2d": None,
           "joints_vis": [1] * J}
    if skeleton == "coco17":     # 2D-only, no intrinsics
        row.update(K=None, joints_cam=None, joints_2d=uv.reshape(-1).tolist())
    return row, uv

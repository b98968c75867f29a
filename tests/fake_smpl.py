"""Test helper: a full-size, random, SMPL-structured model (never a real one; written to tmp dirs only)."""
from __future__ import annotations

import numpy as np

SMPL_PARENTS = (-1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19, 20, 21)
V, F = 6890, 13776


def random_smpl_model(seed: int = 0, num_betas: int = 11) -> dict:
    """Arrays with the official shapes: v_template (V,3), shapedirs (V,3,B), posedirs (V,3,207), J_regressor
    (24,V) rows summing to 1, weights (V,24) rows summing to 1, kintree_table (2,24), f (F,3)."""
    rng = np.random.default_rng(seed)
    v = rng.uniform([-0.3, -0.9, -0.15], [0.3, 0.9, 0.15], size=(V, 3))
    jreg = np.zeros((24, V))
    for j in range(24):
        idx = rng.choice(V, 6, replace=False)
        w = rng.uniform(0.5, 1.0, 6)
        jreg[j, idx] = w / w.sum()
    weights = rng.uniform(0, 1, (V, 24)) ** 8
    weights /= weights.sum(1, keepdims=True)
    kintree = np.array([[4294967295] + list(SMPL_PARENTS[1:]), list(range(24))], dtype=np.int64)
    return {"v_template": v, "shapedirs": rng.normal(0, 0.01, (V, 3, num_betas)),
            "posedirs": rng.normal(0, 0.001, (V, 3, 207)), "J_regressor": jreg, "weights": weights,
            "kintree_table": kintree, "f": rng.integers(0, V, (F, 3)).astype(np.uint32)}


def write_model_npz(path, seed: int = 0, num_betas: int = 11) -> dict:
    m = random_smpl_model(seed, num_betas)
    np.savez(path, **m)
    return m


def random_regressor(seed: int = 1, joints: int = 17) -> np.ndarray:
    rng = np.random.default_rng(seed)
    reg = np.zeros((joints, V))
    for j in range(joints):
        idx = rng.choice(V, 5, replace=False)
        reg[j, idx] = 1.0 / 5
    return reg

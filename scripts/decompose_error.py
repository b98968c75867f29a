#!/usr/bin/env python
"""Where a checkpoint's MPJPE comes from: evaluate it with parts of its prediction replaced by the ground truth.

Rows: the model as is; true uv; true relative depth d; true scale s-hat; true uv + s-hat; true uv + s-hat with
d = 0 (the best a model that learns no depth can do); true uv + d. Every row goes through perspose-eval's own
decoding (UVD -> XYZ, R^T back to the original camera), without the flip test. docs/learning.md section 2-3.

    .venv/bin/python scripts/decompose_error.py RUN/best.pt demo_out/shards/val
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ROWS = (("model", {}), ("true uv", {"uv": True}), ("true d", {"d": True}), ("true s-hat", {"s": True}),
        ("true uv + s-hat", {"uv": True, "s": True}), ("true uv + s-hat, d = 0", {"uv": True, "s": True, "zero_d": True}),
        ("true uv + d", {"uv": True, "d": True}))


def main(argv=None) -> None:
    import numpy as np
    import torch

    from pipeline.report import print_table
    from trainer.checkpoint import load_checkpoint
    from trainer.eval_cli import build_from_checkpoint
    from trainer.evaluate import evaluate, model_predict_fn
    from trainer.shards import resolve_shards

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("ckpt", type=Path)
    ap.add_argument("shards", nargs="+")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    model, cfg = build_from_checkpoint(load_checkpoint(a.ckpt), a.ckpt, "cpu")
    predict = model_predict_fn(model, tuple(cfg.skeletons), "cpu", flip_test=False)

    def swapped(uv=False, d=False, s=False, zero_d=False):
        def fn(batch):
            out = predict(batch)
            uvd, scale = out["uvd"].clone(), out["scale"].clone()
            truth = torch.as_tensor(batch["uvd"], dtype=torch.float32)
            if uv:
                uvd[..., :2] = truth[..., :2]
            if d or zero_d:
                uvd[..., 2] = truth[..., 2] if d else 0.0
            if s:
                scale = torch.as_tensor(batch["scale"], dtype=torch.float32).reshape(-1)
            return {"uvd": uvd, "scale": scale}
        return fn

    shards, rows = resolve_shards(a.shards, cfg.crop_size, skeletons=cfg.skeletons), []
    for name, kw in ROWS:
        rec = evaluate(swapped(**kw), shards, crop_size=cfg.crop_size, skeletons=cfg.skeletons, progress=False)["records"]
        rows.append([name, float(np.mean(rec["mpjpe"])), float(np.mean(rec["pa_mpjpe"])), float(np.mean(rec["depth_err"]))])
    print_table(["prediction", "MPJPE", "PA-MPJPE", "depth err"], rows, title=f"error decomposition: {a.ckpt}")


if __name__ == "__main__":
    from pipeline.errors import InputError
    try:
        main()
    except InputError as e:     # bad checkpoint or shards: one line naming the file, exit 2
        sys.exit(print(f"error: {e}", file=sys.stderr) or 2)

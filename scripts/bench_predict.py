#!/usr/bin/env python
"""People per second of perspose-predict's model path, batched against one person per call (measured in the
same run), on this machine's CPU (and CUDA when present).

It times what perspose-predict does per person after reading the image: the crop through the shards' functions
(PR, K_crop, warp) and the model with the flip test, through trainer.predict. The model is the demo preset with
random weights unless --ckpt is given (the speed does not depend on the weights).

    .venv/bin/python scripts/bench_predict.py [--ckpt RUN/best.pt] [--people 64] [--batch-size 32] [--threads 2]
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch


def main(argv=None) -> None:
    from pipeline.report import print_table
    from trainer.config import load_config
    from trainer.evaluate import model_predict_fn
    from trainer.model import build_model
    from trainer.predict import intrinsics_for, person_record, predict_people

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ckpt", default=None)
    ap.add_argument("--people", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    if a.ckpt:
        from pathlib import Path

        from trainer.eval_cli import build_from_checkpoint, load_checkpoint
        model, cfg = build_from_checkpoint(load_checkpoint(Path(a.ckpt)), Path(a.ckpt), "cpu")
    else:
        cfg = load_config("demo").model
        model = build_model(cfg).eval()
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)
    K, _ = intrinsics_for(640, 480)
    boxes = [[float(rng.uniform(0, 500)), float(rng.uniform(0, 250)), 80.0, 200.0] for _ in range(a.people)]
    rows = []
    for device in devices:
        m = model.to(device)
        fn = model_predict_fn(m, tuple(cfg.skeletons), device, flip_test=True)
        for bs, label in ((1, "one per call (baseline)"), (a.batch_size, f"batches of {a.batch_size}")):
            best = float("inf")
            for _ in range(a.rounds):
                t0 = time.perf_counter()
                recs = [person_record(image, K, b, cfg.crop_size, cfg.skeletons[0], str(i))
                        for i, b in enumerate(boxes)]
                predict_people(fn, recs, bs)
                if device == "cuda":
                    torch.cuda.synchronize()
                best = min(best, time.perf_counter() - t0)
            rows.append([device, label, round(a.people / best, 1), round(1000 * best / a.people, 2)])
        base = rows[-2][2]
        rows[-1].append(f"x{rows[-1][2] / base:.2f}")
        rows[-2].append("x1.00")
    print_table(["device", "model calls", "people/s", "ms/person", "vs baseline"], rows,
                title=f"perspose-predict model path: {cfg.crop_size} px crops, width {cfg.width}, flip test, "
                      f"{a.threads} threads")


if __name__ == "__main__":
    main()

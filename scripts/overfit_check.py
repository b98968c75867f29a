#!/usr/bin/env python
"""Whole-chain check on one batch: can the model memorise N training samples, decoded exactly as evaluation does?

Takes the first N 3D samples of the given shards, trains the chosen preset (default ``demo``, augmentation off)
on that one fixed batch, and every ``--every`` steps evaluates the same samples through ``perspose-eval``'s own
path (``trainer.evaluate.evaluate``: UVD -> XYZ in the crop camera, R^T back to the original camera, root-aligned
MPJPE) plus the uv error in crop pixels. It passes when MPJPE < ``--mpjpe-mm`` and uv < ``--uv-px`` (defaults:
15 mm, 1 crop pixel). If a model cannot memorise 64 samples, labels, loss, decoding and augmentation disagree
somewhere: a bug, not a learning-rate problem. Exit code 0 = passed, 1 = not reached within ``--steps``.

    .venv/bin/python scripts/overfit_check.py demo_out/shards/train [-n 64] [--steps 1500] [--set model.width=16]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from itertools import islice
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def first_samples(shards: list[Path], n: int) -> list[dict]:
    """The first n encoded samples, in shard order (2D-only ones train uv but are not in the 3D metrics)."""
    from pipeline.tario import iter_tar
    out = []
    for path in shards:
        out.extend(islice(iter_tar(path), n - len(out)))
        if len(out) == n:
            break
    return out


def run(shard_dir: str, n: int, steps: int, every: int, lr: float, preset: str, overrides: list[str],
        mpjpe_mm: float, uv_px: float, threads: int, log=print) -> dict:
    import numpy as np
    import torch

    from pipeline.shard import write_tar
    from trainer.config import load_config
    from trainer.data import first_batch
    from trainer.evaluate import evaluate, model_predict_fn
    from trainer.shards import resolve_shards
    from trainer.train import Dist, build, loader_config, param_groups, resolve_data, to_device, train_step

    torch.set_num_threads(threads)
    samples = first_samples([Path(u) for u in resolve_shards(shard_dir).urls], n)
    if len(samples) < n:
        from pipeline.errors import InputError
        raise InputError(f"{shard_dir}: only {len(samples)} samples, need {n}")
    with tempfile.TemporaryDirectory(prefix="overfit_") as tmp_dir:   # the one-shard copy goes with the run
        tmp = Path(tmp_dir)
        write_tar(tmp / "overfit-000000.tar", samples)
        data = {"train": [{"name": "overfit", "paths": [str(tmp)]}], "val": [str(tmp)], "num_workers": 0}
        cfg = load_config(preset, ["augment.enabled=false", f"batch_size={n}", "max_steps=0", *overrides], data)
        cpu = Dist(0, 1, 0, torch.device("cpu"))
        raw, model = build(cfg, cpu)
        opt = torch.optim.AdamW(param_groups(raw, cfg.optim.weight_decay), lr=lr, betas=cfg.optim.betas)
        _, val = resolve_data(cfg)
        batch = to_device(first_batch(val[0], loader_config(cfg, cpu, 0, None), n), cpu.device, False)
        predict = model_predict_fn(raw, tuple(cfg.model.skeletons), "cpu", flip_test=False)
        history, t0 = [], time.perf_counter()
        for step in range(1, steps + 1):
            raw.train()
            warm = min(1.0, step / 50)                     # a short warm-up keeps the first Adam steps sane
            decay = 0.1 if step > 0.8 * steps else 1.0     # a last low-lr stretch settles batch-norm statistics
            terms = train_step(model, opt, batch, cfg, lr * warm * decay)
            if step % every and step != steps:
                continue
            raw.eval()
            with torch.no_grad():
                out = raw(batch["image"], batch["K_crop"], batch["has_intrinsics"])
            mask = batch["mask_uv"] > 0
            uv_err = float((out["uvd"][..., :2] - batch["uvd"][..., :2].float()).norm(dim=-1)[mask].mean())
            rec = evaluate(predict, [tmp / "overfit-000000.tar"], batch_size=n, crop_size=cfg.model.crop_size,
                           skeletons=cfg.model.skeletons, progress=False)["records"]
            row = {"step": step, "loss": float(terms["total"]), "mpjpe_mm": float(np.mean(rec["mpjpe"])),
                   "pa_mpjpe_mm": float(np.mean(rec["pa_mpjpe"])), "depth_err_mm": float(np.mean(rec["depth_err"])),
                   "uv_px": uv_err, "seconds": time.perf_counter() - t0}
            history.append(row)
            log(f"step {step:5d}  loss {row['loss']:8.3f}  MPJPE {row['mpjpe_mm']:7.2f} mm  PA {row['pa_mpjpe_mm']:6.2f}"
                f"  depth {row['depth_err_mm']:6.2f} mm  uv {uv_err:5.2f} px  ({row['seconds']:.0f} s)")
            if row["mpjpe_mm"] < mpjpe_mm and row["uv_px"] < uv_px:
                break
        last = history[-1]
        return {"passed": last["mpjpe_mm"] < mpjpe_mm and last["uv_px"] < uv_px, "history": history, "n": n,
                "samples": len(rec["mpjpe"])}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("shards", help="Training shard directory (or .tar).")
    ap.add_argument("-n", type=int, default=64, help="Samples to memorise (one fixed batch).")
    ap.add_argument("--steps", type=int, default=1500, help="Most optimizer steps.")
    ap.add_argument("--every", type=int, default=100, help="Evaluate every this many steps.")
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--config", default="demo", help="Preset or YAML (its model section is used).")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--mpjpe-mm", type=float, default=15.0)
    ap.add_argument("--uv-px", type=float, default=1.0)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args(argv)
    res = run(a.shards, a.n, a.steps, a.every, a.lr, a.config, a.overrides, a.mpjpe_mm, a.uv_px, a.threads)
    last = res["history"][-1]
    verdict = "PASSED" if res["passed"] else "NOT REACHED"
    print(f"\noverfit check {verdict}: {res['samples']} samples, step {last['step']}: MPJPE {last['mpjpe_mm']:.2f} mm "
          f"(< {a.mpjpe_mm:g}), uv {last['uv_px']:.2f} crop px (< {a.uv_px:g}), decoded as perspose-eval "
          f"(R^T to the original camera), {last['seconds']:.0f} s")
    return 0 if res["passed"] else 1


if __name__ == "__main__":
    from pipeline.errors import InputError
    try:
        sys.exit(main())
    except InputError as e:     # bad shards: one line naming the file, exit 2, like the console scripts
        sys.exit(print(f"error: {e}", file=sys.stderr) or 2)

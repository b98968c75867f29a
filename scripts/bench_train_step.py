#!/usr/bin/env python
"""Training-step throughput: images/s of a PersPose training step (HRNet-W48, batch 96, crop 256, bf16 autocast,
channels_last; optionally torch.compile) and the data-wait fraction when fed by the real shard loader.

The step is the trainer's own code: the paper preset (trainer/configs/paper.yaml) loaded like perspose-train loads
it, ``trainer.train.build`` (model, channels_last, compile), AdamW over ``param_groups``, ``train_batches`` (the
real ``make_train_loader`` stream: decode, augmentation, collate, worker processes, pinned memory), ``to_device``
(uint8 to the device, normalised there) and ``train_step`` (autocast forward, losses, backward, clipping, step).

Data-wait fraction = time spent getting the next batch (loader + ``to_device``, as perspose-train's
``data_wait_frac``) / total time of the measured steps. With ``--synthetic-batch`` one fixed random uint8 batch
is reused, so the figure is the pure step (no loader).

    .venv/bin/python scripts/bench_train_step.py --shards SHARD_DIR [--compile]     # on a CUDA machine
    .venv/bin/python scripts/bench_train_step.py --synthetic-batch                  # the step alone
    .venv/bin/python scripts/bench_train_step.py --device cpu --batch-size 2 --width 18 --steps 3 --synthetic-batch

Without CUDA (and without ``--device cpu``) it prints one line and exits 0.
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch

NO_CUDA = ("no CUDA device: this benchmark measures GPU training; run it on a CUDA machine "
           "(use --device cpu --batch-size 2 --width 18 for a CPU smoke run)")


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group()  # one of the two is required (checked after the CUDA check)
    src.add_argument("--shards", nargs="+", metavar="DIR", help="training shard dir(s) / .tar / globs (real loader)")
    src.add_argument("--synthetic-batch", action="store_true", help="reuse one fixed random uint8 batch (no loader)")
    ap.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto",
                    help="auto (default), cuda: the current CUDA device (exit 0 with a message if there is none)")
    ap.add_argument("--config", default="paper", help="trainer preset name or YAML file (default: paper)")
    ap.add_argument("--batch-size", type=int, default=None, help="per-step batch (default 96; 2 on --device cpu)")
    ap.add_argument("--width", type=int, default=None, help="HRNet width (default 48; 18 on --device cpu)")
    ap.add_argument("--crop", type=int, default=256,
                    help="crop size S (default 256; the shards must be built for >= S)")
    ap.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto",
                    help="auto (default): bf16 autocast on CUDA, fp32 on the CPU (as perspose-train)")
    ap.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True,
                    help="channels_last model and images (default on; CUDA only, as perspose-train)")
    ap.add_argument("--compile", action="store_true", help="torch.compile the model (compile time is in warm-up)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 10; 1 on --device cpu)")
    ap.add_argument("--steps", type=int, default=None, help="timed steps (default 50; 3 on --device cpu)")
    ap.add_argument("--num-workers", type=int, default=None, help="loader workers (default: the preset's)")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (CPU runs)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="extra trainer config override, e.g. --set data.shuffle_buffer=200 (repeatable)")
    args = ap.parse_args(argv)
    args.error = ap.error
    return args


def synthetic_batch(cfg, seed: int = 0) -> dict:
    """A fixed random batch in the loader's contract (trainer/data.py): uint8 channels_last images, each sample
    supervising its own skeleton's slice (skeletons taken in turn)."""
    from pipeline.skeleton import get_skeleton, joint_slices

    B, S = cfg.batch_size, cfg.model.crop_size
    g = torch.Generator().manual_seed(seed)
    slices = joint_slices(cfg.model.skeletons)
    J = max(sl.stop for sl in slices.values())
    names = [cfg.model.skeletons[i % len(cfg.model.skeletons)] for i in range(B)]
    has_3d = torch.tensor([get_skeleton(n).has_3d for n in names])
    f = 1.2 * S
    K = torch.tensor([[f, 0, (S - 1) / 2], [0, f, (S - 1) / 2], [0, 0, 1]], dtype=torch.float32).expand(B, 3, 3)
    uvd = torch.cat([torch.rand(B, J, 2, generator=g) * (S - 1), (torch.rand(B, J, 1, generator=g) - 0.5) * 0.6], -1)
    mask_uv, mask_d = torch.zeros(B, J), torch.zeros(B, J)
    for i, n in enumerate(names):
        mask_uv[i, slices[n]] = 1.0
        mask_d[i, slices[n]] = float(has_3d[i])
    uvd = uvd * mask_uv[..., None]
    joints = torch.randn(B, J, 3, generator=g) * 0.3 * mask_d[..., None]
    return {"image": torch.randint(0, 256, (B, S, S, 3), dtype=torch.uint8, generator=g).permute(0, 3, 1, 2),
            "K_crop": K.contiguous(), "R": torch.eye(3, dtype=torch.float64).expand(B, 3, 3).contiguous(),
            "uvd": uvd, "joints": joints, "mask_uv": mask_uv, "mask_d": mask_d,
            "scale": torch.where(has_3d, torch.full((B,), 4.5 / f), torch.zeros(B)),
            "has_3d": has_3d, "has_intrinsics": torch.ones(B, dtype=torch.bool),
            "flipped": torch.zeros(B, dtype=torch.bool),
            "dataset": ["synthetic"] * B, "sample_id": [f"synthetic/{i}" for i in range(B)], "skeleton": names,
            "meta": [{}] * B}


def main(argv=None) -> int:
    args = parse_args(argv)
    cuda = torch.cuda.is_available()
    if args.device != "cpu" and not cuda:
        print(NO_CUDA)
        return 0
    if not (args.shards or args.synthetic_batch):
        args.error("give --shards DIR (the real loader) or --synthetic-batch (the step alone)")
    on_cpu = args.device == "cpu"
    device = torch.device("cpu") if on_cpu else torch.device("cuda", torch.cuda.current_device())
    batch_size = args.batch_size or (2 if on_cpu else 96)
    width = args.width or (18 if on_cpu else 48)
    warmup = args.warmup if args.warmup is not None else (1 if on_cpu else 10)
    steps = args.steps if args.steps is not None else (3 if on_cpu else 50)
    if batch_size <= 0 or width <= 0 or steps <= 0 or warmup < 0:
        sys.exit("--batch-size, --width and --steps must be positive, --warmup >= 0")
    if args.threads:
        torch.set_num_threads(args.threads)

    from pipeline.errors import InputError
    from trainer.config import load_config
    from trainer.train import (Dist, build, configure_backends, get_lr, param_groups, resolve_data, to_device,
                               train_batches, train_step)

    overrides = [f"batch_size={batch_size}", f"model.width={width}", f"model.crop_size={args.crop}",
                 f"precision={args.precision}", f"channels_last={str(args.channels_last).lower()}",
                 f"compile={str(args.compile).lower()}", "max_steps=0", *args.overrides]
    if args.num_workers is not None:
        overrides.append(f"data.num_workers={args.num_workers}")
    data = {"train": [{"name": "bench", "paths": list(args.shards), "ratio": 1.0}]} if args.shards else None
    try:
        cfg = load_config(args.config, overrides, data)
        train_sets = resolve_data(cfg)[0] if args.shards else None
    except (InputError, ValueError) as e:
        print(f"Error: {e}", file=sys.stderr)
        return 2

    dist = Dist(0, 1, 0, device)
    configure_backends(cfg, dist)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    raw, model = build(cfg, dist)
    optimizer = torch.optim.AdamW(param_groups(raw, cfg.optim.weight_decay), lr=cfg.optim.lr,
                                  betas=cfg.optim.betas, eps=cfg.optim.eps)
    total = warmup + steps
    if train_sets is not None:
        batches = train_batches(cfg, dist, train_sets, 0, 0, total)
    else:
        fixed = synthetic_batch(cfg)
        if device.type == "cuda":
            fixed = {k: (v.pin_memory() if torch.is_tensor(v) else v) for k, v in fixed.items()}
        batches = (fixed for _ in range(total))

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    wait = warm_s = 0.0
    terms = None
    sync()
    t_start = time.perf_counter()
    for step in range(total):
        if step == warmup:
            sync()
            warm_s = time.perf_counter() - t_start
            wait, t_meas = 0.0, time.perf_counter()
        t0 = time.perf_counter()
        batch = next(batches, None)
        if batch is None:
            sys.exit(f"Error: the loader ended after {step} batches (expected {total})")
        batch = to_device(batch, device, cfg.channels_last)
        wait += time.perf_counter() - t0
        terms = train_step(model, optimizer, batch, cfg, get_lr(step, cfg))
    sync()
    elapsed = time.perf_counter() - t_meas
    loss = float(terms["total"])
    del batches

    if cfg.precision == "fp32" or (cfg.precision == "auto" and device.type != "cuda"):
        precision = "fp32"
    else:
        precision = "bf16 autocast"
    n_params = sum(p.numel() for p in raw.parameters())
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    rows = [["device", name],
            ["model", f"HRNet-W{width}, crop {cfg.model.crop_size}, {n_params / 1e6:.1f} M params"],
            ["batch", batch_size],
            ["precision", precision],
            ["channels_last", cfg.channels_last and device.type == "cuda"],
            ["compile", cfg.compile],
            ["data", "synthetic fixed batch" if train_sets is None else
             f"shard loader, {cfg.data.num_workers} workers, {sum(s.num_samples for s in train_sets)} samples"],
            ["warm-up steps", f"{warmup} ({warm_s:.1f} s)"],
            ["measured steps", steps],
            ["ms / step", f"{1e3 * elapsed / steps:.1f}"],
            ["images / s", f"{steps * batch_size / elapsed:.1f}"],
            ["data-wait fraction", f"{wait / elapsed:.3f}"],
            ["final loss", f"{loss:.3f}"]]
    if device.type == "cuda":
        gib = 2.0 ** 30
        rows.append(["peak memory", f"{torch.cuda.max_memory_allocated(device) / gib:.2f} GiB allocated, "
                                    f"{torch.cuda.max_memory_reserved(device) / gib:.2f} GiB reserved"])
    else:
        rows.append(["peak memory", "n/a (CUDA only)"])
    if not np.isfinite(loss):
        rows.append(["WARNING", "non-finite loss"])
    key_w = max(len(r[0]) for r in rows)
    print("bench_train_step: one PersPose training step (trainer.train.train_step)")
    for k, v in rows:
        print(f"  {k:<{key_w}}  {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

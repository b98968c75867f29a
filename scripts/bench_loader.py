#!/usr/bin/env python
"""Samples/s per core: the shard loader (decode stored crop + exact augmentation + collate) against, in the same
run, the on-the-fly route the official code takes (decode the full 1920x1080 frame, warp it with the PR homography
straight to the S crop with the same augmentation, collate). Both routes decode with the same function
(pipeline.codec.decode_jpeg_rgb: simplejpeg when installed, else cv2), so the decoder choice does not enter the
ratio; the decode costs of both decoders are printed too.

Everything is generated in a temporary directory: 1920x1080 JPEG q95 frames (built from the real H36M fixture
frames when ../shared/fixtures/real is present, else a synthetic texture), manifest-like rows with 3D joints, and
shards written with pipeline.shard directly. Both routes run single-threaded in this process (cv2 and torch
limited to 1 thread), alternating in rounds; the medians are reported.

    .venv/bin/python scripts/bench_loader.py [--frames 64] [--samples 512] [--rounds 3] [--crop 256]
"""
from __future__ import annotations

import argparse
import ctypes
import os
import platform
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import torch

from pipeline import geometry as g
from pipeline.codec import decode_jpeg_rgb
from pipeline.shard import BuildOptions, encode_sample, process_row, write_tar
from pipeline.skeleton import get_skeleton, joint_slices
from trainer.augment import AugmentConfig, augmentation_homography, sample_geometric
from trainer.data import DataSource, LoaderConfig, collate, make_train_loader
from trainer.photometric import cutout, photometric

REAL = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "real" / "h36m"
W, H = 1920, 1080
SKELETONS = ("smpl24", "h36m17", "mpi_inf_3dhp17", "coco17")


def _frames(n: int, rng) -> list[np.ndarray]:
    """n distinct 1920x1080 RGB frames with natural-image statistics where possible."""
    real = sorted(REAL.glob("*.jpg")) if REAL.is_dir() else []
    bases = [cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB) for p in real]
    out = []
    for i in range(n):
        if bases:
            b = bases[i % len(bases)]
            scale = H / b.shape[0] * rng.uniform(1.0, 1.15)
            big = cv2.resize(b, None, fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC)
            frame = np.concatenate([big, big[:, ::-1]], axis=1)
            y0, x0 = int(rng.integers(0, big.shape[0] - H + 1)), int(rng.integers(0, frame.shape[1] - W + 1))
            out.append(np.ascontiguousarray(frame[y0:y0 + H, x0:x0 + W]))
        else:
            low = rng.integers(0, 256, (H // 24, W // 24, 3), dtype=np.uint8)
            img = cv2.resize(low, (W, H), interpolation=cv2.INTER_CUBIC).astype(np.int16)
            img += rng.integers(-12, 13, (H, W, 3), dtype=np.int16)
            out.append(np.clip(img, 0, 255).astype(np.uint8))
    return out


def _rows(n: int, rng) -> list[dict]:
    K = g.intrinsics(1145.0, 1144.0, 960.5, 539.5)
    rows = []
    sk = get_skeleton("h36m17")
    for i in range(n):
        root = np.array([rng.uniform(-1.2, 1.2), rng.uniform(-0.3, 0.3), rng.uniform(3.5, 6.0)])
        joints = root + rng.uniform(-0.3, 0.3, (sk.num_joints, 3)) * [1.0, 3.0, 0.5]
        uv = g.project(joints, K)
        lo, hi = uv.min(0), uv.max(0)
        rows.append({"sample_id": f"bench/train/s{i % 4}/{i}/0", "dataset": "bench", "split": "train",
                     "sequence": f"s{i % 4}", "frame": i, "person": 0, "image_path": f"{i}.jpg", "image_w": W,
                     "image_h": H, "K": K.reshape(-1).tolist(), "dist": [], "skeleton": sk.name,
                     "bbox": [lo[0], lo[1], hi[0] - lo[0], hi[1] - lo[1]], "joints_cam": joints.reshape(-1).tolist(),
                     "joints_2d": None, "joints_vis": [1] * sk.num_joints})
    return rows


def on_the_fly_record(jpg: bytes, row: dict, sample: dict, crop: int, aug: AugmentConfig, rng, layout) -> dict:
    """The official route: full-frame decode, then ONE warp original -> S crop (PR, zoom, roll composed), same
    photometric chain, labels, flip. ``sample`` holds the precomputed PR crop geometry of this row."""
    img = decode_jpeg_rgb(jpg, rgbx=True)           # the loader's 4-channel trick helps this route's warp too
    a = sample["arrays"]
    K_store, R = a["K_crop"], a["R"]
    params, do_aug = sample_geometric(aug, rng, float(K_store[0, 0]))
    H_aug, K_final, R_aug = augmentation_homography(K_store, sample["image"].shape[0], crop, params)
    out = cv2.cvtColor(cv2.warpPerspective(img, H_aug @ a["H"], (crop, crop), flags=cv2.INTER_LINEAR,
                                           borderMode=cv2.BORDER_CONSTANT), cv2.COLOR_RGBA2RGB)
    joints = np.asarray(row["joints_cam"], np.float64).reshape(-1, 3)
    rot, uvd, scale = g.labels_from_joints(joints, R_aug @ R, K_final, 0)
    if do_aug:
        out = photometric(out, rng, aug)
        if rng.uniform() < aug.cutout_prob:
            out = cutout(out, rng)
    J = max(s.stop for s in layout.values())
    full = np.zeros((J, 3), np.float32)
    full[layout["h36m17"]] = uvd
    m = np.zeros(J, np.float32)
    m[layout["h36m17"]] = 1
    if params.flip:
        out = np.ascontiguousarray(out[:, ::-1])
    return {"image": out, "K_crop": K_final.astype(np.float32), "R": R_aug @ R, "uvd": full, "joints": full,
            "mask_uv": m, "mask_d": m, "scale": np.float32(scale), "has_3d": True, "has_intrinsics": True,
            "flipped": params.flip, "dataset": "bench", "sample_id": row["sample_id"], "skeleton": "h36m17",
            "meta": {}}


def _timed(fn) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of fn()."""
    w0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w0, time.process_time() - c0


def run_shards(loader, n_batches: int) -> tuple[float, float]:
    """(samples per wall second, samples per CPU second) of the shard loader."""
    it = iter(loader)
    next(it)                                         # warm-up (opens the shard streams, fills the buffer)
    count = [0]

    def go():
        for _ in range(n_batches):
            count[0] += len(next(it)["sample_id"])
    wall, cpu = _timed(go)
    return count[0] / wall, count[0] / cpu


def run_on_the_fly(jpgs, rows, samples, crop, aug, n, batch, seed, layout) -> tuple[float, float]:
    rng = np.random.default_rng(seed)

    def go():
        done = 0
        while done < n:
            recs = []
            for _ in range(batch):
                i = int(rng.integers(len(rows)))
                recs.append(on_the_fly_record(jpgs[i], rows[i], samples[i], crop, aug, rng, layout))
            collate(recs)
            done += batch
    wall, cpu = _timed(go)
    return n / wall, n / cpu


def _set_malloc() -> bool:
    """glibc mallopt(M_MMAP_THRESHOLD, 64 MiB) and (M_TRIM_THRESHOLD, 256 MiB): see platform notes."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(-3, 64 << 20) and libc.mallopt(-1, 256 << 20))
    except OSError:
        return False


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--frames", type=int, default=64)
    ap.add_argument("--samples", type=int, default=512, help="samples per measurement and route")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--crop", type=int, default=256)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--no-malloc", action="store_true", help="leave glibc malloc thresholds at their defaults")
    args = ap.parse_args()
    malloc = False if args.no_malloc else _set_malloc()
    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    opts = BuildOptions(crop_size=args.crop)
    aug = AugmentConfig()
    layout = joint_slices(SKELETONS)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        frames, rows = _frames(args.frames, rng), _rows(args.frames, rng)
        jpgs = [cv2.imencode(".jpg", cv2.cvtColor(f, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()
                for f in frames]
        t0 = time.perf_counter()
        samples = [process_row(r, f, opts) for r, f in zip(rows, frames)]
        enc = [encode_sample(s) for s in samples]
        build_ms = (time.perf_counter() - t0) / len(rows) * 1e3
        (tmp / "shards").mkdir()
        half = len(enc) // 2
        write_tar(tmp / "shards" / "bench-000000.tar", enc[:half])
        write_tar(tmp / "shards" / "bench-000001.tar", enc[half:])
        configs = {"full reference chain": AugmentConfig(),
                   "geometric only": replace(AugmentConfig(), blur_prob=0, noise_prob=0, contrast_prob=0,
                                             hue_prob=0, channel_prob=0, cutout_prob=0)}
        n_batches = max(1, args.samples // args.batch)
        results = {}
        for name, aug in configs.items():
            cfg = LoaderConfig(crop_size=args.crop, skeletons=SKELETONS, batch_size=args.batch, num_workers=0,
                               shuffle_buffer=64, samples_per_epoch=10 ** 9, seed=0, augment=aug)
            loader = make_train_loader([DataSource("bench", (str(tmp / "shards"),))], cfg)
            shard, fly = [], []
            for r in range(args.rounds):             # alternate the routes so load changes hit both
                shard.append(run_shards(loader, n_batches))
                fly.append(run_on_the_fly(jpgs, rows, samples, args.crop, aug, n_batches * args.batch,
                                          args.batch, r, layout))
            results[name] = [tuple(statistics.median(x[k] for x in rates) for k in (0, 1)) for rates in (shard, fly)]
        print(f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} cpus, load average "
              f"{' '.join(f'{x:.2f}' for x in os.getloadavg())} (after the run); {time.strftime('%Y-%m-%d %H:%M')}")
        print(f"frames {W}x{H} JPEG q95 mean {np.mean([len(j) for j in jpgs]) / 1e3:.0f} KB "
              f"({'real H36M fixture frames' if REAL.is_dir() else 'synthetic texture'}); stored crops "
              f"{opts.store_size}^2 JPEG mean {np.mean([len(e['jpg']) for e in enc]) / 1e3:.0f} KB; crop {args.crop}; "
              f"batch {args.batch}; {args.rounds} rounds x {n_batches * args.batch} samples per route; malloc "
              f"thresholds {'set' if malloc else 'default'}; cv2/torch 1 thread, 1 process")
        print(f"one-off shard build: {build_ms:.1f} ms/sample (PR crop + encode; image already decoded)")
        print("| augmentation | route | samples/s (wall) | samples per CPU-second | ratio per core |")
        print("|---|---|---|---|---|")
        for name, ((sw, sc), (fw, fc)) in results.items():
            print(f"| {name} | shards: decode stored crop + exact aug + collate | {sw:.0f} | {sc:.0f} | "
                  f"**{sc / fc:.1f}x** |")
            print(f"| {name} | on the fly: decode 1080p + PR warp + aug + collate | {fw:.0f} | {fc:.0f} | 1.0x |")


if __name__ == "__main__":
    main()

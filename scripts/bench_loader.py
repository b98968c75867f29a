#!/usr/bin/env python
"""Samples/s per core: the shard loader (decode stored crop + exact augmentation + collate) against, in the same
run, the on-the-fly route the official code takes (decode the full 1920x1080 frame, warp it with the PR homography
straight to the S crop with the same augmentation, collate). Both routes decode with the same function
(pipeline.codec.decode_jpeg_rgb: simplejpeg when installed, else cv2), so the decoder choice does not enter the
ratio.

A third route adds what the official code does besides, per sample, for its SMPL-labelled datasets (3DPW, H36M,
BEDLAM: HumanMesh.__getitem__ in its datasets/humanmesh.py; docs/design.md §11): the SMPL forward pass in
float64 (24 joints, 6890 vertices, the H36M-17 regressor, the tight projected-vertex box), and the normalisation
to float32 CHW in the loader worker (transform.py). The shards store those labels, and our batches stay uint8 and
are normalised on the device. The SMPL model is random with the official shapes (the licensed files are not
needed to time it). The official __getitem__ also computes the ortho twists and the rest-pose height (two more
SMPL passes) and decodes an RLE mask; they are left out, so this route is a lower bound of the official cost.

A fourth route is the shard loader with ``augment.photometric_on_device``: it draws the photometric chain's and
cutout's parameters from the same generator but leaves the pixels to the training device (trainer.photometric_torch,
batched, after the copy). It is reported against the minimal on-the-fly route with the full chain (what that route
pays on the CPU), and against the minimal route with geometric augmentation only (the like-for-like figure, had
that route moved its chain too). The torch chain itself is timed per batch on this CPU, next to the cv2 chain on
the same batches; in training it runs on the GPU, where this script does not measure it.

Everything is generated in a temporary directory: 1920x1080 JPEG q95 frames (built from the real H36M fixture
frames when the real fixtures are present, located as tests/_fixtures.py does; else a synthetic texture),
manifest-like rows with 3D joints, and
shards written with pipeline.shard directly. Both routes run single-threaded in this process (cv2 and torch
limited to 1 thread), alternating in rounds; the medians are reported.

    .venv/bin/python scripts/bench_loader.py [--frames 64] [--samples 512] [--rounds 3] [--crop 256]
        [--max-workers 2]
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
from trainer.batch import collate
from trainer.data import DataSource, LoaderConfig, make_train_loader
from trainer.hps_labels import empty_hps_labels
from trainer.photometric import COL, apply_photometric, cutout, photometric
from trainer.photometric_torch import apply_photometric_torch

REAL = Path(os.environ.get("PERSPOSE_REAL_FIXTURES")
            or Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "real") / "h36m"
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


_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
_STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)


def smpl_layer():
    """smplx.SMPL (float64, as the official HumanMesh loader) on a random model with the official shapes, and a
    17 x 6890 regressor."""
    import smplx
    from smplx.utils import Struct
    rng = np.random.default_rng(5)
    V, parents = 6890, [-1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19, 20, 21]
    jreg = np.zeros((24, V))
    for j in range(24):
        jreg[j, rng.choice(V, 6, replace=False)] = 1 / 6
    weights = rng.uniform(0, 1, (V, 24)) ** 8
    data = Struct(v_template=rng.uniform(-0.3, 0.3, (V, 3)), shapedirs=rng.normal(0, 0.01, (V, 3, 10)),
                  posedirs=rng.normal(0, 0.001, (V, 3, 207)), J_regressor=jreg,
                  weights=weights / weights.sum(1, keepdims=True), f=rng.integers(0, V, (13776, 3)),
                  kintree_table=np.array([[2 ** 32 - 1] + parents[1:], list(range(24))]))
    layer = smplx.SMPL(model_path="unused", data_struct=data, num_betas=10, dtype=torch.float64)
    return layer, torch.from_numpy(rng.uniform(0, 1 / 6, (17, V)))


def smpl_labels(layer, regressor, K, rng) -> tuple[np.ndarray, np.ndarray]:
    """What the official loader recomputes per sample: joints, H36M-17 and the tight projected-vertex box."""
    with torch.no_grad():
        out = layer(betas=torch.from_numpy(rng.normal(0, 1, (1, 10))),
                    body_pose=torch.from_numpy(rng.normal(0, 0.2, (1, 69))),
                    global_orient=torch.from_numpy(rng.normal(0, 0.2, (1, 3))),
                    transl=torch.tensor([[0.0, 0.0, 4.0]], dtype=torch.float64))
        verts = out.vertices[0]
        h36m = regressor @ verts
    uv = g.project(verts.numpy(), K)
    return np.concatenate([out.joints[0, :24].numpy(), h36m.numpy()]), np.r_[uv.min(0), uv.max(0)]


def on_the_fly_record(jpg: bytes, row: dict, sample: dict, crop: int, aug: AugmentConfig, rng, layout,
                      official=None) -> dict:
    """The official route: full-frame decode, then ONE warp original -> S crop (PR, zoom, roll composed), same
    photometric chain, labels, flip. ``sample`` holds the precomputed PR crop geometry of this row. With
    ``official`` = (smpl layer, regressor) also the per-sample SMPL labels and the float normalisation."""
    if official is not None:
        smpl_labels(*official, g.as_f64(row["K"]).reshape(3, 3), rng)
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
    if official is not None:                         # transform.py:359-362, in the worker; the fastest torch form
        out = torch.from_numpy(out).permute(2, 0, 1).contiguous().float().div_(255).sub_(_MEAN).div_(_STD).numpy()
    return {"image": out, "K_crop": K_final.astype(np.float32), "R": R_aug @ R, "uvd": full, "joints": full,
            "mask_uv": m, "mask_d": m, "scale": np.float32(scale), "has_3d": True, "has_intrinsics": True,
            "flipped": params.flip, "dataset": "bench", "sample_id": row["sample_id"], "skeleton": "h36m17",
            "meta": {}, **empty_hps_labels()}


def _per_call_ms(fn, n: int) -> float:
    fn()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n * 1e3


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


def run_workers(loader, n_batches: int) -> float:
    """Samples per wall second through DataLoader workers, after the workers have started and filled the queue."""
    it = iter(loader)
    for _ in range(2 * loader.num_workers):
        next(it)
    t0, n = time.perf_counter(), 0
    for _ in range(n_batches):
        n += len(next(it)["sample_id"])
    return n / (time.perf_counter() - t0)


def run_on_the_fly(jpgs, rows, samples, crop, aug, n, batch, seed, layout, official=None) -> tuple[float, float]:
    rng = np.random.default_rng(seed)

    def go():
        done = 0
        while done < n:
            recs = []
            for _ in range(batch):
                i = int(rng.integers(len(rows)))
                recs.append(on_the_fly_record(jpgs[i], rows[i], samples[i], crop, aug, rng, layout, official))
            collate(recs)
            done += batch
    wall, cpu = _timed(go)
    return n / wall, n / cpu


def time_chains(loader, n_batches: int) -> tuple[float, float, int]:
    """(CPU ms per batch of the torch chain on this CPU, CPU ms per batch of the cv2 chain, batch size): the same
    batches and parameters (a device-photometric loader's), medians over ``n_batches``; CPU time, like the
    routes' samples per CPU-second, so that other load on the machine does not count."""
    it = iter(loader)
    torch_ms, cv2_ms = [], []
    for _ in range(n_batches):
        b = next(it)
        t0 = time.process_time()
        apply_photometric_torch(b["image"], b["photo"])
        torch_ms.append((time.process_time() - t0) * 1e3)
        imgs, params = b["image"].permute(0, 2, 3, 1).numpy(), b["photo"].numpy()
        t0 = time.process_time()
        for img, p in zip(imgs, params):   # the CPU route's chain, in the unflipped frame it runs in
            apply_photometric(np.ascontiguousarray(img[:, ::-1] if p[COL["flip"]] else img), p)
        cv2_ms.append((time.process_time() - t0) * 1e3)
    return statistics.median(torch_ms), statistics.median(cv2_ms), len(b["sample_id"])


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
    ap.add_argument("--max-workers", type=int, default=2, help="also time 1..N DataLoader workers (0: skip)")
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
        official = smpl_layer()
        smpl_ms = _per_call_ms(lambda: smpl_labels(*official, g.as_f64(rows[0]["K"]).reshape(3, 3), rng), 50)
        crop = np.ascontiguousarray(frames[0][:args.crop, :args.crop])
        norm_ms = _per_call_ms(lambda: torch.from_numpy(crop).permute(2, 0, 1).contiguous().float().div_(255)
                               .sub_(_MEAN).div_(_STD), 200)
        dec_ms = [_per_call_ms(lambda: fn(b), n) for b, n in ((jpgs[0], 20), (enc[0]["jpg"], 200))
                  for fn in (lambda b: decode_jpeg_rgb(b, rgbx=True),
                             lambda b: cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_COLOR))]
        def loader_for(aug, workers=0):
            cfg = LoaderConfig(crop_size=args.crop, skeletons=SKELETONS, batch_size=args.batch,
                               num_workers=workers, shuffle_buffer=64, samples_per_epoch=10 ** 9, seed=0,
                               augment=aug)
            return make_train_loader([DataSource("bench", (str(tmp / "shards"),))], cfg)

        on_device = replace(AugmentConfig(), photometric_on_device=True)
        results, moved = {}, []
        for name, aug in configs.items():
            loader = loader_for(aug)
            extra = loader_for(on_device) if name == "full reference chain" else None
            shard, fly, full = [], [], []
            for r in range(args.rounds):             # alternate the routes so load changes hit all of them
                shard.append(run_shards(loader, n_batches))
                if extra is not None:
                    moved.append(run_shards(extra, n_batches))
                fly.append(run_on_the_fly(jpgs, rows, samples, args.crop, aug, n_batches * args.batch,
                                          args.batch, r, layout))
                full.append(run_on_the_fly(jpgs, rows, samples, args.crop, aug, n_batches * args.batch,
                                           args.batch, r, layout, official))
            results[name] = [tuple(statistics.median(x[k] for x in rates) for k in (0, 1))
                             for rates in (shard, fly, full)]
        mw, mc = (statistics.median(x[k] for x in moved) for k in (0, 1))
        torch_ms, cv2_ms, chain_batch = time_chains(loader_for(on_device), max(4, n_batches))
        workers = {}
        for w in range(1, min(args.max_workers, os.cpu_count() or 1) + 1):
            cfg = LoaderConfig(crop_size=args.crop, skeletons=SKELETONS, batch_size=args.batch, num_workers=w,
                               shuffle_buffer=64, samples_per_epoch=10 ** 9, seed=0, augment=AugmentConfig())
            workers[w] = (run_workers(make_train_loader([DataSource("bench", (str(tmp / "shards"),))], cfg),
                                      n_batches * w),
                          run_workers(loader_for(on_device, w), n_batches * w))
        print(f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} cpus, load average "
              f"{' '.join(f'{x:.2f}' for x in os.getloadavg())} (after the run); {time.strftime('%Y-%m-%d %H:%M')}")
        print(f"frames {W}x{H} JPEG q95 mean {np.mean([len(j) for j in jpgs]) / 1e3:.0f} KB "
              f"({'real H36M fixture frames' if REAL.is_dir() else 'synthetic texture'}); stored crops "
              f"{opts.store_size}^2 JPEG mean {np.mean([len(e['jpg']) for e in enc]) / 1e3:.0f} KB; crop {args.crop}; "
              f"batch {args.batch}; {args.rounds} rounds x {n_batches * args.batch} samples per route; malloc "
              f"thresholds {'set' if malloc else 'default'}; cv2/torch 1 thread, 1 process")
        print(f"one-off shard build: {build_ms:.1f} ms/sample (PR crop + encode; image already decoded)")
        print(f"inside the official route, per sample: SMPL labels {smpl_ms:.2f} ms, float normalisation "
              f"{norm_ms:.2f} ms; decode of one frame {dec_ms[0]:.2f} ms (cv2 {dec_ms[1]:.2f} ms), of one stored "
              f"crop {dec_ms[2]:.2f} ms (cv2 {dec_ms[3]:.2f} ms)")
        print("| augmentation | route | samples/s (wall) | samples per CPU-second | shards are, per core |")
        print("|---|---|---|---|---|")
        for name, ((sw, sc), (fw, fc), (ow, oc)) in results.items():
            print(f"| {name} | shards: decode stored crop + exact aug + collate | {sw:.0f} | {sc:.0f} | |")
            print(f"| {name} | on the fly, minimal: decode 1080p + PR warp + aug + collate | {fw:.0f} | {fc:.0f} | "
                  f"**{sc / fc:.1f}x** faster |")
            print(f"| {name} | on the fly as the official code: + SMPL labels + float normalisation | {ow:.0f} | "
                  f"{oc:.0f} | **{sc / oc:.1f}x** faster |")
        (_, fc), (_, oc) = results["full reference chain"][1:]
        geo_fc = results["geometric only"][1][1]
        print(f"| full reference chain | shards, photometric chain drawn here, applied on the device | {mw:.0f} | "
              f"{mc:.0f} | **{mc / fc:.1f}x** the minimal route, **{mc / oc:.1f}x** the official one; "
              f"{mc / geo_fc:.1f}x the minimal route with geometric augmentation only (like for like) |")
        print(f"\nthe photometric chain + cutout per batch of {chain_batch} (the same batches and parameters, 1 "
              f"thread, CPU time): cv2 chain on the CPU {cv2_ms:.1f} ms ({cv2_ms / chain_batch:.2f} ms/sample); torch chain "
              f"on this CPU {torch_ms:.1f} ms ({torch_ms / chain_batch:.2f} ms/sample) - in training it runs on the "
              f"GPU after the copy (not measured here)")
        if workers:
            print("\nshard loader through torch DataLoader worker processes (full reference chain, wall clock; the "
                  "main process only receives batches):")
            print("| workers | samples/s, chain on the CPU | vs 1 worker | samples/s, chain on the device |\n"
                  "|---|---|---|---|")
            for w, (rate, dev_rate) in workers.items():
                print(f"| {w} | {rate:.0f} | {rate / workers[1][0]:.2f}x | {dev_rate:.0f} |")


if __name__ == "__main__":
    main()

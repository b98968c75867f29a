"""Throughput of ``perspose-build synth`` at a fixed image size: images/s end to end (render, JPEG q95, atomic
writes, manifest) for 1 and 2 jobs, the 2-job speed-up over the 1-job baseline measured in the same run, and a
single-process breakdown (render / encode / write, ms per image).

    .venv/bin/python scripts/bench_synth.py [-n 200] [--size 640 480] [--jobs 1 2]
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from pipeline.codec import encode_jpeg
from pipeline.synth import SynthConfig, synth_sample, write_replace
from pipeline.synth_cli import run_synth


def breakdown(cfg: SynthConfig, n: int, tmp: Path) -> tuple[float, float, float, float]:
    """Wall ms per image for render / encode / write, and CPU ms per image for all three (load-independent)."""
    render = encode = write = 0.0
    cpu = time.process_time()
    for i in range(n):
        t0 = time.perf_counter()
        s = synth_sample(0, "train", i, cfg)
        t1 = time.perf_counter()
        data = encode_jpeg(s["image"], cfg.jpeg_quality)
        t2 = time.perf_counter()
        write_replace(tmp / f"{i}.jpg", data)
        t3 = time.perf_counter()
        render, encode, write = render + t1 - t0, encode + t2 - t1, write + t3 - t2
    return 1e3 * render / n, 1e3 * encode / n, 1e3 * write / n, 1e3 * (time.process_time() - cpu) / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=200)
    ap.add_argument("--size", type=int, nargs=2, default=(640, 480), metavar=("W", "H"))
    ap.add_argument("--jobs", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    cfg = SynthConfig(image_size=tuple(args.size))
    with tempfile.TemporaryDirectory() as d:
        synth_sample(0, "train", 0, cfg)  # warm imports and caches
        r, e, w, cpu = breakdown(cfg, min(args.n, 50), Path(d))
        print(f"load average before: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
        print(f"single process, {args.size[0]}x{args.size[1]}: render {r:.1f} ms, JPEG encode {e:.1f} ms, "
              f"atomic write {w:.1f} ms per image (wall) -> {1e3 / (r + e + w):.1f} images/s; "
              f"CPU {cpu:.1f} ms per image -> {1e3 / cpu:.1f} images/s per free core")
        base = None
        for jobs in args.jobs:
            # the first run with a new worker count pays for starting the loky workers (imports), the second
            # reuses them: both are reported, the speed-up is taken on the warm runs
            for phase in ("cold", "warm"):
                rows, rejected, seconds = run_synth(Path(d) / f"j{jobs}{phase}", args.n, args.seed, "train", cfg,
                                                    jobs)
                rate = args.n / seconds
                if phase == "warm":
                    base = base or rate
                ratio = f" ({rate / base:.2f}x jobs={args.jobs[0]} warm)" if phase == "warm" else ""
                print(f"jobs={jobs} {phase}: {args.n} images ({len(rows)} rows, {len(rejected)} rejected) in "
                      f"{seconds:.2f} s = {rate:.1f} images/s{ratio}")
        print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()

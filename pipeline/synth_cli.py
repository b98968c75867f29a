"""``perspose-build synth``: write the built-in synthetic dataset exactly like a real one (images + manifest)."""
from __future__ import annotations

import os
import time
from collections import Counter
from pathlib import Path

import click
import numpy as np

from .errors import InputError
from .manifest import manifest_metadata, rejected_path_for, validate_rows, write_manifest
from .report import print_table

MANIFEST_NAME = "manifest.parquet"


def make_config(n: int, fov_range, image_size, second_person_prob: float, frames_per_sequence: int,
                occluder_prob: float = 0.2, min_box_inside: float = 0.4, image_scale: float = 1.0):
    """Check the options (InputError with a one-line message) and build the frozen config."""
    from .synth import DEFAULT_IMAGE_SIZES, SynthConfig
    if n <= 0:
        raise InputError(f"-n must be a positive number of images, got {n}")
    lo, hi = fov_range
    if not (0 < lo <= hi < 180):
        raise InputError(f"--fov-range needs 0 < MIN <= MAX < 180 degrees, got {lo:g} {hi:g}")
    if image_size is not None and min(image_size) < 64:
        raise InputError(f"--image-size needs W and H >= 64 pixels, got {image_size[0]} {image_size[1]}")
    if not 0 <= second_person_prob <= 1:
        raise InputError(f"--second-person-prob must lie in [0, 1], got {second_person_prob:g}")
    if frames_per_sequence <= 0:
        raise InputError(f"--frames-per-sequence must be positive, got {frames_per_sequence}")
    if not 0 <= occluder_prob <= 1:
        raise InputError(f"--occluder-prob must lie in [0, 1], got {occluder_prob:g}")
    if not 0 < min_box_inside <= 1:
        raise InputError(f"--min-box-inside must lie in (0, 1], got {min_box_inside:g}")
    sizes = tuple((2 * round(w * image_scale / 2), 2 * round(h * image_scale / 2)) for w, h in DEFAULT_IMAGE_SIZES)
    if not 0 < image_scale <= 4 or min(min(s) for s in sizes) < 64:
        raise InputError(f"--image-scale {image_scale:g}: the image sizes must stay >= 64 pixels (scale in "
                         f"({64 / 300:.2f}, 4])")
    return SynthConfig(fov_range=(float(lo), float(hi)), image_size=tuple(image_size) if image_size else None,
                       second_person_prob=float(second_person_prob), frames_per_sequence=int(frames_per_sequence),
                       occluder_prob=float(occluder_prob), min_box_inside=float(min_box_inside), image_sizes=sizes)


def summary_rows(rows: list[dict], n_images: int, seconds: float) -> list[tuple]:
    """The end-of-run table: counts and the label statistics worth eyeballing."""
    from .synth import fov_horizontal
    K = np.array([r["K"] for r in rows]).reshape(-1, 3, 3)
    wh = np.array([(r["image_w"], r["image_h"]) for r in rows])
    fov = np.array([fov_horizontal(k, w) for k, (w, _) in zip(K, wh)])
    z = np.array([r["joints_cam"][2] for r in rows])
    bb = np.array([r["bbox"] for r in rows])
    cut = ((bb[:, 0] < -0.5) | (bb[:, 1] < -0.5) | (bb[:, 0] + bb[:, 2] > wh[:, 0] - 0.5)
           | (bb[:, 1] + bb[:, 3] > wh[:, 1] - 0.5))
    vis = np.concatenate([r["joints_vis"] for r in rows])
    per_image = {r["image_path"]: (r["image_w"], r["image_h"]) for r in rows}
    sizes = Counter(per_image.values())
    shapes = Counter("landscape" if w > h else "portrait" if h > w else "square" for w, h in per_image.values())
    return [
        ("images", n_images),
        ("people (rows)", len(rows)),
        ("image sizes", f"{len(sizes)} ({', '.join(f'{v} {k}' for k, v in sorted(shapes.items()))})"),
        ("horizontal FOV deg (min / max)", f"{fov.min():.1f} / {fov.max():.1f}"),
        ("pelvis depth m (min / median / max)", f"{z.min():.2f} / {np.median(z):.2f} / {z.max():.2f}"),
        ("box height px (median)", f"{np.median(bb[:, 3]):.0f}"),
        ("boxes crossing the image border", f"{cut.mean():.1%}"),
        ("joints inside the image", f"{vis.mean():.1%}"),
        ("seconds / images per second", f"{seconds:.1f} / {n_images / max(seconds, 1e-9):.1f}"),
    ]


def run_synth(out_dir: Path, n: int, seed: int, split: str, cfg, jobs: int = -1, progress: bool = False):
    """Images + validated manifest (OUT/manifest.parquet). Returns (rows written, rejected, seconds)."""
    from .synth import SYNTH_VERSION, generate
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    rows = generate(out_dir, n, seed, split, cfg, jobs=jobs, progress=progress)
    if hasattr(os, "sync"):  # one flush of all images before the manifest (written with fsync) commits them
        os.sync()
    kept, rejected = validate_rows(rows, out_dir)
    meta = manifest_metadata("synth", SYNTH_VERSION, out_dir.resolve(), dataset_root=out_dir.resolve(), extra={
        "synth": {"seed": seed, "n": n, "split": split, "fov_range": list(cfg.fov_range),
                  "image_size": list(cfg.image_size) if cfg.image_size else None,
                  "image_sizes": [list(s) for s in cfg.image_sizes],
                  "second_person_prob": cfg.second_person_prob, "occluder_prob": cfg.occluder_prob,
                  "min_box_inside": cfg.min_box_inside,
                  "frames_per_sequence": cfg.frames_per_sequence,
                  "distance_range": list(cfg.distance_range), "height_range": list(cfg.height_range)}})
    write_manifest(kept, out_dir / MANIFEST_NAME, meta, rejected)
    return kept, rejected, time.perf_counter() - start


@click.command("synth")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), required=True,
              help="Output directory: manifest.parquet and images/SPLIT/SEQUENCE/FRAME.jpg.")
@click.option("-n", "n", type=int, required=True, help="Number of images.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed; the same seed gives the same bytes.")
@click.option("--split", type=click.Choice(["train", "val", "test"]), default="train", show_default=True,
              help="Split name: changes the sample ids and the random stream.")
@click.option("--fov-range", type=(float, float), default=(30.0, 120.0), show_default=True, metavar="MIN MAX",
              help="Horizontal field of view range in degrees (uniform).")
@click.option("--image-size", type=(int, int), default=None, metavar="W H",
              help="Fixed image size; default: a mix of landscape, portrait and square sizes.")
@click.option("--image-scale", type=float, default=1.0, show_default=True,
              help="Scale of the default mix of image sizes (0.5: 320x240 ... 480x270; faster to render and "
                   "crop, the same cameras' fields of view).")
@click.option("--second-person-prob", type=float, default=0.2, show_default=True,
              help="Probability of a second person in an image (one manifest row per person).")
@click.option("--occluder-prob", type=float, default=0.2, show_default=True,
              help="Probability of a pole or a ball in front of the first person (hidden joints: meta.occluded).")
@click.option("--min-box-inside", type=float, default=0.4, show_default=True,
              help="Least fraction of a person's box inside the image (1: nobody is cut by the border).")
@click.option("--frames-per-sequence", type=int, default=50, show_default=True,
              help="Images grouped under one sequence id (seq000, seq001, ...).")
@click.option("--jobs", type=int, default=-1, show_default=True, help="Worker processes (-1: all cores).")
@click.option("--no-progress", is_flag=True, help="Do not show the progress bar.")
def synth(out_dir: Path, n: int, seed: int, split: str, fov_range, image_size, image_scale: float,
          second_person_prob: float, occluder_prob: float, min_box_inside: float, frames_per_sequence: int, jobs: int,
          no_progress: bool):
    """Render N images of articulated SMPL-24 people with exact labels (3D joints, 2D joints, box, K) and write
    OUT/manifest.parquet (adapter "synth", skeleton smpl24), ready for `perspose-build shards`."""
    cfg = make_config(n, fov_range, image_size, second_person_prob, frames_per_sequence, occluder_prob,
                      min_box_inside, image_scale)
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"{out_dir}: --out exists and is not a directory")
    if jobs == 0:
        raise InputError("--jobs must be a positive number of workers or negative (-1: all cores), got 0")
    kept, rejected, seconds = run_synth(out_dir, n, seed, split, cfg, jobs, progress=not no_progress)
    out = out_dir / MANIFEST_NAME
    table = summary_rows(kept, n, seconds) + [("rejected rows", len(rejected))]
    print_table(["", "value"], table, title=f"synth {split}: {out}")
    if rejected:
        click.echo(f"rejections: {rejected_path_for(out)}")

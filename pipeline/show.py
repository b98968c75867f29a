"""``perspose-build show DIR``: a contact sheet of random stored crops with their projected skeletons, and the
distribution of the PR angle per dataset (the paper's Fig. 7) from index.parquet.

Random access: samples are picked from index.parquet with a seeded generator and only their shards are opened;
inside a shard only the members of the picked keys are read.
"""
from __future__ import annotations

import math
import tarfile
from pathlib import Path

import click
import cv2
import numpy as np
import pyarrow.parquet as pq

from .errors import InputError
from .fsutil import atomic_path
from .shard import decode_sample
from .skeleton import SKELETONS
from .tario import iter_tar

__all__ = ["pick_samples", "read_samples", "draw_sample", "contact_sheet", "sheet_size", "pr_angle_histogram",
           "show_cmd", "LABEL_H"]

LABEL_H = 34  # pixels of caption under every tile
# RGB: the person's left, right, and central joints / bones
SIDE_COLOURS = {"l": (60, 160, 255), "r": (255, 110, 50), "c": (70, 220, 90)}


def _read_index(out_dir: Path, tars=None) -> list[dict]:
    """index.parquet rows of a shard directory (of the shard files ``tars`` only, when given), each with its
    directory under ``_dir``."""
    p = out_dir / "index.parquet"
    if not p.is_file():
        raise InputError(f"{p}: not found (is {out_dir} a shard directory?)")
    try:
        rows = pq.read_table(p).to_pylist()
    except (OSError, ValueError) as e:  # pyarrow's ArrowInvalid is a ValueError
        raise InputError(f"{p}: unreadable index ({str(e).splitlines()[0][:200]})") from None
    names = None if tars is None else {Path(t).stem for t in tars}
    return [{**r, "_dir": out_dir} for r in rows if names is None or r["shard"] in names]


def read_index(specs) -> list[dict]:
    """The index rows of the shards named by shard specs (:mod:`pipeline.shardspec`), in spec order."""
    from .remote import is_url
    from .shardspec import shard_groups
    remote = [s for s in ([specs] if isinstance(specs, (str, Path)) else specs) if is_url(str(s))]
    if remote:
        raise InputError(f"{remote[0]}: show reads local shard directories (copy the shards here first)")
    return [r for g in shard_groups(specs) for r in _read_index(g.directory, g.tars)]


def select(index: list[dict], split: str | None = None, dataset: str | None = None) -> list[dict]:
    return [r for r in index if (split is None or r["split"] == split) and (dataset is None or r["dataset"] == dataset)]


def pick_samples(index: list[dict], n: int, seed: int, split: str | None = None,
                 dataset: str | None = None) -> list[dict]:
    rows = select(index, split, dataset)
    if not rows:
        return []
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(rows), size=min(n, len(rows)), replace=False)
    return [rows[i] for i in pick]


def read_samples(out_dir: Path | None, picked: list[dict]) -> list[dict]:
    """Decode the picked samples (of ``out_dir``, or of each row's ``_dir``), opening only their shards and
    reading only their members."""
    by_shard: dict[tuple, set] = {}
    for r in picked:
        by_shard.setdefault((str(r.get("_dir", out_dir)), r["shard"]), set()).add(r["key"])
    found: dict[tuple, dict] = {}
    for (directory, shard), keys in sorted(by_shard.items()):
        members: dict[str, dict] = {}
        tar = Path(directory) / f"{shard}.tar"
        try:
            for sample in iter_tar(tar):
                if sample["__key__"] in keys:
                    members[sample["__key__"]] = sample
        except (OSError, tarfile.TarError) as e:
            raise InputError(f"{tar}: unreadable shard ({e}); run perspose-build verify {directory}") from None
        for key, mem in members.items():
            found[(directory, key)] = decode_sample(mem)
    keys = [(str(r.get("_dir", out_dir)), r["key"]) for r in picked]
    return [found[k] for k in keys if k in found]


def draw_sample(sample: dict, tile: int) -> np.ndarray:
    """The stored crop resized to tile² with bones (skeleton.edges) and joints drawn; vis = 0 joints dimmer (3D
    samples) or not drawn (2D-only samples, where vis = 0 means unlabelled)."""
    img = cv2.resize(sample["image"], (tile, tile), interpolation=cv2.INTER_AREA)
    a, m = sample["arrays"], sample["meta"]
    sk = SKELETONS.get(m.get("skeleton"))
    if sk is None:
        return img
    f = tile / sample["image"].shape[1]
    uv = (a["uvd"][:, :2].astype(np.float64) + 0.5) * f - 0.5   # pixel centres at integers, before and after
    vis = a["vis"]
    has_uv = m.get("has_3d") or np.any(a["uvd"][:, :2] != 0)
    if not has_uv:
        return img
    # a 2D-only sample's vis = 0 joint is unlabelled: its stored uv is no location (COCO writes (0, 0) for it),
    # so it is not drawn; with 3D labels every joint has its exact place and vis = 0 ones are drawn dimmer
    known = np.ones(sk.num_joints, bool) if m.get("has_3d") else vis > 0
    shift = 4  # sub-pixel drawing

    def pt(i):
        return tuple(int(round(c * (1 << shift))) for c in uv[i])

    def colour(i, dim):
        c = np.array(SIDE_COLOURS[sk.side(i)], np.float64)
        return tuple(int(v) for v in (c * 0.35 if dim else c))

    for p, c in sk.edges:
        if known[p] and known[c]:
            cv2.line(img, pt(p), pt(c), colour(c, vis[p] == 0 or vis[c] == 0), 2, cv2.LINE_AA, shift)
    for i in np.flatnonzero(known):
        cv2.circle(img, pt(i), 3 << shift, colour(i, vis[i] == 0), -1, cv2.LINE_AA, shift)
    return img


def sheet_size(n: int, tile: int) -> tuple[int, int]:
    """(width, height) of the contact sheet for n samples."""
    cols = max(1, math.ceil(math.sqrt(n)))
    rows = max(1, math.ceil(n / cols))
    return cols * tile, rows * (tile + LABEL_H)


def contact_sheet(samples: list[dict], tile: int = 256) -> np.ndarray:
    """RGB sheet: tiles in rows, each with its key and "dataset  PR x.x deg" underneath."""
    W, H = sheet_size(len(samples), tile)
    cols = W // tile
    sheet = np.full((H, W, 3), 30, np.uint8)
    for k, s in enumerate(samples):
        r, c = divmod(k, cols)
        y, x = r * (tile + LABEL_H), c * tile
        sheet[y:y + tile, x:x + tile] = draw_sample(s, tile)
        key = s["key"]
        max_chars = max(4, tile // 7)
        if len(key) > max_chars:
            key = "..." + key[-(max_chars - 3):]
        line2 = f"{s['meta'].get('dataset', '?')}  {_angle_caption(s)}"
        for j, text in enumerate((key, line2)):
            cv2.putText(sheet, text, (x + 3, y + tile + 13 + 15 * j), cv2.FONT_HERSHEY_SIMPLEX, 0.38,
                        (235, 235, 235), 1, cv2.LINE_AA)
    return sheet


def _write_png(path: Path, rgb: np.ndarray) -> None:
    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise InputError(f"{path}: PNG encoding failed")
    with atomic_path(path, ".png") as tmp:
        Path(tmp).write_bytes(buf.tobytes())


def _angle_caption(s: dict) -> str:
    """'PR 12.3 deg' for a rotated crop; 'no PR (12.3 deg)' when R = I (the --no-pr ablation); '2D only' for a
    sample without intrinsics, whose angle comes from a stand-in camera and means nothing."""
    if not s["meta"].get("has_intrinsics", True):
        return "2D only, no PR"
    phi = math.degrees(float(s["arrays"]["pr_angle"]))
    if phi > 1e-6 and np.allclose(s["arrays"]["R"], np.eye(3)):
        return f"no PR ({phi:.1f} deg)"
    return f"PR {phi:.1f} deg"


def pr_angle_histogram(index: list[dict], path: Path, bins: int = 36) -> None:
    """Distribution of the PR angle (degrees) per dataset, each normalised to a density (paper Fig. 7). Samples
    without intrinsics are left out: their angle comes from a stand-in camera."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    by_ds: dict[str, list] = {}
    for r in index:
        if r.get("has_intrinsics", True):
            by_ds.setdefault(r["dataset"], []).append(math.degrees(r["pr_angle"]))
    hi = max((max(v) for v in by_ds.values()), default=1.0)
    edges = np.linspace(0.0, max(1.0, math.ceil(hi)), bins + 1)
    for ds, v in sorted(by_ds.items()):
        ax.hist(v, bins=edges, density=True, histtype="step", linewidth=1.5, label=f"{ds} (n={len(v)})")
    ax.set_xlabel("PR angle φ (degrees)")
    ax.set_ylabel("density")
    ax.set_title("Perspective-rotation angle per dataset")
    if by_ds:
        ax.legend()
    fig.tight_layout()
    with atomic_path(path, ".png") as tmp:
        fig.savefig(tmp, format="png")


@click.command("show")
@click.argument("shards", nargs=-1, required=True)
@click.option("-n", "n", default=16, show_default=True, help="Number of samples on the sheet.")
@click.option("--split", default=None, help="Only samples of this split.")
@click.option("--dataset", default=None, help="Only samples of this dataset.")
@click.option("--seed", default=0, show_default=True, help="Seed of the random pick.")
@click.option("--tile", default=256, show_default=True, help="Tile size in pixels.")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Contact sheet PNG.")
@click.option("--hist", type=click.Path(path_type=Path), default=None, help="PR-angle histogram PNG.")
def show_cmd(shards, n, split, dataset, seed, tile, out, hist):
    """Contact sheet of random crops with their skeletons (--out) and/or the PR-angle histogram (--hist); both
    honour --split and --dataset.

    SHARDS: shard directories, .tar files, quoted globs or brace patterns."""
    if out is None and hist is None:
        raise InputError("nothing to do: give --out sheet.png and/or --hist pr_angle.png")
    if n < 1 or tile < 32:
        raise InputError("-n must be >= 1 and --tile >= 32")
    index = read_index(shards)
    if out is not None:
        picked = pick_samples(index, n, seed, split, dataset)
        if not picked:
            raise InputError(f"{' '.join(shards)}: no samples" + (f" in split {split!r}" if split else "")
                             + (f" of dataset {dataset!r}" if dataset else ""))
        samples = read_samples(None, picked)
        _write_png(out, contact_sheet(samples, tile))
        click.echo(f"wrote {out} ({len(samples)} samples)")
    if hist is not None:
        pr_angle_histogram(select(index, split, dataset), hist)
        click.echo(f"wrote {hist}")

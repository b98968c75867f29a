"""``perspose-build manifest``: one subcommand per dataset format, all writing the manifest schema."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import click

from .errors import InputError
from .manifest import manifest_metadata, rejected_path_for, validate_rows, write_manifest
from .report import print_table


@click.group()
def manifest():
    """Read a dataset in its native format into a parquet manifest (one row per person-frame)."""


def finish_manifest(rows, rejected, out, meta, image_root, check_images=True) -> None:
    """Shared tail of every adapter: validate, write atomically, print the summary table."""
    kept, bad = validate_rows(rows, Path(image_root) if image_root else None, check_images)
    rejected = list(rejected) + bad
    write_manifest(kept, out, meta, rejected)
    counts = Counter(r for _, r in rejected)
    table = [("rows written", len(kept))] + [(f"rejected: {k}", v) for k, v in sorted(counts.items())]
    print_table(["", "count"], table, title=f"manifest {out}")
    click.echo(f"rejections: {rejected_path_for(Path(out))}")


@manifest.command("jsonl")
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--image-root", type=click.Path(path_type=Path), required=True,
              help="Directory the image_path fields are relative to.")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Output manifest (.parquet).")
@click.option("--no-check-images", is_flag=True, help="Do not check that every image file exists.")
def jsonl_cmd(file: Path, image_root: Path, out: Path, no_check_images: bool):
    """Bring your own dataset: FILE has one JSON object per line with the manifest's columns (see README)."""
    from .adapters.jsonl import ADAPTER_VERSION, read_jsonl
    if not image_root.is_dir():
        raise InputError(f"{image_root}: --image-root is not a directory")
    rows = read_jsonl(file)
    meta = manifest_metadata("jsonl", ADAPTER_VERSION, image_root, source_checksums={})
    finish_manifest(rows, [], out, meta, image_root, not no_check_images)


# ------------------------------------------------------------------------------------ dataset adapters
def _adapter_options(splits):
    """The options every adapter command shares."""
    def deco(f):
        f = click.option("--no-check-images", is_flag=True, help="Do not check that every image file exists.")(f)
        f = click.option("--limit", type=click.IntRange(min=1), default=None, help="Stop after N rows (quick look).")(f)
        f = click.option("--out", type=click.Path(path_type=Path), required=True,
                         help="Output manifest (.parquet).")(f)
        f = click.option("--split", type=click.Choice(splits), required=True, help="Dataset split.")(f)
        f = click.option("--root", type=click.Path(path_type=Path), required=True, help="Dataset root directory.")(f)
        return f
    return deco


def run_and_finish(adapter: str, root: Path, split: str, out: Path, no_check_images: bool, **options) -> None:
    """Run one adapter and write its manifest (validation, atomic write, summary): the body of every command."""
    from .adapters.registry import output_metadata, run_adapter
    if not root.is_dir():
        raise InputError(f"{root}: --root is not a directory")
    result = run_adapter(adapter, root, split, **options)
    meta = output_metadata(result, {"split": split, **options})
    finish_manifest(result.rows, result.rejected, out, meta, result.image_root, not no_check_images)


_SMPL_DIR_HELP = "SMPL model directory (SMPL_{NEUTRAL,MALE,FEMALE}.npz or .pkl) or a model file."


@manifest.command("3dpw")
@_adapter_options(["train", "validation", "test"])
@click.option("--smpl-dir", type=click.Path(path_type=Path), default=None,
              help=_SMPL_DIR_HELP + " Enables mesh boxes (the official crop box).")
@click.option("--regressor", type=click.Path(path_type=Path), default=None,
              help="J_regressor_h36m_correct.npy (17x6890): adds H36M-17 rows regressed from the mesh.")
@click.option("--require-poses2d", is_flag=True, help="Also drop frames whose poses2d are all zero (3dpw-eval).")
def pw3d_cmd(root, split, out, limit, no_check_images, smpl_dir, regressor, require_poses2d):
    """3DPW sequenceFiles/<split>/*.pkl (read without running pickle code)."""
    run_and_finish("3dpw", root, split, out, no_check_images, limit=limit, smpl_dir=smpl_dir,
                   regressor=regressor, require_poses2d=require_poses2d)


@manifest.command("h36m")
@_adapter_options(["train", "test"])
@click.option("--interval", type=click.IntRange(min=1), default=None,
              help="Keep frame_idx % N == 0 (default 5).")
@click.option("--test-stride", type=click.IntRange(min=1), default=None,
              help="Then keep every N-th entry (default 4 for test, 1 for train).")
@click.option("--subjects", type=str, default=None, help="Comma-separated subject numbers (default: by split).")
def h36m_cmd(root, split, out, limit, no_check_images, interval, test_stride, subjects):
    """Human3.6M, Moon-style JSONs (annotations/Human36M_subject{N}_*.json; I2L / PersPose)."""
    subj = [int(s) for s in subjects.split(",")] if subjects else None
    run_and_finish("h36m", root, split, out, no_check_images, limit=limit, interval=interval,
                   test_stride=test_stride, subjects=subj)


@manifest.command("mpi_inf_3dhp")
@_adapter_options(["train", "test"])
@click.option("--source", type=click.Choice(["json", "native"]), default="json", show_default=True,
              help="HybrIK jsons or the native .mat files.")
@click.option("--joints", type=click.Choice(["28", "17"]), default="28", show_default=True,
              help="Train: keep the 28 native joints or select the 17 test joints.")
@click.option("--interval", type=click.IntRange(min=1), default=None,
              help="Native only: every N-th frame (default 10 train, 1 test).")
@click.option("--univ", is_flag=True, help="Native test: use univ_annot3 instead of annot3.")
def mpi_inf_3dhp_cmd(root, split, out, limit, no_check_images, source, joints, interval, univ):
    """MPI-INF-3DHP (HybrIK jsons or native annot.mat / annot_data.mat)."""
    run_and_finish("mpi_inf_3dhp", root, split, out, no_check_images, limit=limit, source=source,
                   joints=int(joints), interval=interval, univ=univ)


@manifest.command("bedlam")
@_adapter_options(["train", "val"])
@click.option("--smpl-dir", type=click.Path(path_type=Path), required=True, help=_SMPL_DIR_HELP)
@click.option("--interval", type=click.IntRange(min=1), default=None, help="Every N-th frame (default 3).")
def bedlam_cmd(root, split, out, limit, no_check_images, smpl_dir, interval):
    """BEDLAM processed_labels/*.npz (SMPL flavour; PersPose re-split: val = sorted files 21-26)."""
    run_and_finish("bedlam", root, split, out, no_check_images, limit=limit, smpl_dir=smpl_dir, interval=interval)


@manifest.command("coco")
@_adapter_options(["train", "val"])
def coco_cmd(root, split, out, limit, no_check_images):
    """COCO person keypoints (2D-only rows)."""
    run_and_finish("coco", root, split, out, no_check_images, limit=limit)

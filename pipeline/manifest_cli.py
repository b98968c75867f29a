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

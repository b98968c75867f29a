"""``perspose-build shards``: manifests -> webdataset shards (see :mod:`pipeline.build` for the rules)."""
from __future__ import annotations

import os
import re
from collections import Counter
from pathlib import Path

import click

from .errors import InputError
from .report import print_table


def _parse_vars(items) -> dict:
    out = {}
    for it in items:
        k, sep, v = it.partition("=")
        if not sep or not k:
            raise InputError(f"--var {it!r}: expected KEY=VALUE")
        out[k] = v
    return out


def _recipe_manifests(recipe: Path, variables: dict, out: Path, progress: bool) -> list[Path]:
    """Run a recipe's adapters into OUT/manifests/<split>/<source>.parquet (a ``manifest`` source is used in
    place) and return all its manifests; every sample keeps its own dataset and split columns."""
    from .recipe import load_recipe, recipe_manifests
    rec = load_recipe(recipe, variables)
    return [Path(p) for p in recipe_manifests(rec, out / "manifests", progress=progress)]


@click.command("shards")
@click.argument("manifests", nargs=-1, type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Output directory.")
@click.option("--recipe", type=click.Path(path_type=Path), default=None,
              help="Dataset recipe (YAML): build its manifests, then the shards, then verify them.")
@click.option("--var", "variables", multiple=True, metavar="K=V", help="Recipe variable (repeatable).")
@click.option("--shard-size", default=1000, show_default=True, help="Samples per shard.")
@click.option("--crop", "crop_size", default=256, show_default=True, help="Final crop size S (pixels).")
@click.option("--context", default=1.25, show_default=True, help="Stored crop = round(S * context) pixels.")
@click.option("--margin", default=0.0, show_default=True, help="Extra room around the box (fraction).")
@click.option("--no-pr", is_flag=True, help="Ablation: no perspective rotation (R = I).")
@click.option("--max-pr-angle", default=75.0, show_default=True, help="Reject samples whose PR angle exceeds this (deg).")
@click.option("--jpeg-quality", default=95, show_default=True, type=click.IntRange(1, 100))
@click.option("--jobs", default=-1, show_default=True, help="Parallel shard workers (-1: all cores).")
@click.option("--backend", type=click.Choice(["loky", "threading", "dask", "ray"]), default="loky",
              show_default=True, help="joblib backend; dask / ray need the optional extras.")
@click.option("--scheduler", default=None, metavar="ADDRESS", help="Existing dask scheduler / ray cluster address.")
@click.option("--prefix", default="shard", show_default=True, help="Shard file name prefix.")
@click.option("--strict", is_flag=True, help="Exit with status 1 if any sample was rejected.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def shards(manifests, out, recipe, variables, shard_size, crop_size, context, margin, no_pr, max_pr_angle,
           jpeg_quality, jobs, backend, scheduler, prefix, strict, no_progress):
    """Crop every manifest row around its person (perspective rotation), write MANIFEST(s) into webdataset
    shards in OUT with index.parquet, rejected.parquet and build.json. Rerunning resumes: finished shards that
    match the plan are reused. Several manifests (e.g. all splits of a dataset) go into one output."""
    from .build import MALLOC_ENV, BuildConfig, build_shards
    from .shard import BuildOptions

    if recipe is not None:
        manifests = tuple(manifests) + tuple(_recipe_manifests(recipe, _parse_vars(variables), out, not no_progress))
    elif variables:
        raise InputError("--var is only used with --recipe")
    if not manifests:
        raise InputError("no manifest given (pass MANIFEST paths or --recipe FILE)")
    if shard_size < 1 or crop_size < 8 or context < 1.0 or margin < 0 or jobs == 0:
        raise InputError("invalid option: need --shard-size >= 1, --crop >= 8, --context >= 1, --margin >= 0, "
                         "--jobs != 0")
    if not re.fullmatch(r"[A-Za-z0-9_-]+", prefix):
        raise InputError(f"--prefix {prefix!r}: use only letters, digits, '_' and '-'")
    for k, v in MALLOC_ENV.items():  # inherited by the worker processes started below
        os.environ.setdefault(k, v)
    opts = BuildOptions(crop_size=crop_size, context=context, margin=margin, pr=not no_pr,
                        max_pr_angle_deg=max_pr_angle, jpeg_quality=jpeg_quality)
    cfg = BuildConfig(shard_size=shard_size, prefix=prefix, opts=opts, jobs=jobs, backend=backend,
                      scheduler=scheduler)
    res = build_shards(list(manifests), out, cfg, progress=not no_progress)
    if res.reused:
        click.echo(f"reused {res.reused} shards")
    _print_summary(res)
    if recipe is not None:
        from .verify import verify_dir
        report = verify_dir(out, progress=not no_progress)
        if report.failures:
            for f in report.failures[:20]:
                click.echo(f"FAIL {f}", err=True)
            raise SystemExit(1)
        click.echo(f"verified {report.samples} samples in {report.shards} shards")
    if strict and res.rejected:
        click.echo(f"--strict: {len(res.rejected)} samples rejected (see {out / 'rejected.parquet'})", err=True)
        raise SystemExit(1)


def _print_summary(res) -> None:
    info = res.build_json
    rows = [("samples written", info["counts"]["written"]), ("shards", info["counts"]["shards"]),
            ("shards reused", info["counts"]["shards_reused"])]
    rows += [(f"rejected: {k}", v) for k, v in info["rejected_by_reason"].items()]
    rows += [("rejected total", info["counts"]["rejected"]), ("MB", info["mb"]),
             ("elapsed s", info["timings"]["elapsed_s"])]
    if info["timings"]["samples_per_s"]:
        rows.append(("samples/s (built shards)", info["timings"]["samples_per_s"]))
    print_table(["", "value"], rows, title=f"shards -> {res.out_dir}")
    by_ds = Counter((r["dataset"], r["split"]) for r in res.index_rows)
    if len(by_ds) > 1:
        print_table(["dataset", "split", "samples"], [(d, s, n) for (d, s), n in sorted(by_ds.items())])

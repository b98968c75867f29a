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


@click.command("shards")
@click.argument("manifests", nargs=-1, type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Output directory.")
@click.option("--recipe", type=click.Path(path_type=Path), default=None,
              help="Dataset recipe (YAML): build its manifests, then one shard set per source (OUT/SPLIT/SOURCE), "
                   "verify them, and write OUT/recipe.yaml for perspose-train / perspose-eval --recipe.")
@click.option("--var", "variables", multiple=True, metavar="K=V", help="Recipe variable (repeatable).")
@click.option("--shard-size", default=1000, show_default=True, help="Samples per shard.")
@click.option("--crop", "crop_size", default=256, show_default=True, help="Final crop size S (pixels).")
@click.option("--context", default=1.25, show_default=True, help="Stored crop = round(S * context) pixels.")
@click.option("--margin", default=0.0, show_default=True, help="Extra room around the box (fraction).")
@click.option("--no-pr", is_flag=True, help="Ablation: no perspective rotation (R = I).")
@click.option("--max-pr-angle", default=75.0, show_default=True, help="Reject samples whose PR angle exceeds this (deg).")
@click.option("--jpeg-quality", default=95, show_default=True, type=click.IntRange(1, 100))
@click.option("--jobs", default=-1, show_default=True, help="Parallel shard workers (-1: all cores; with dask or ray, all workers of the cluster).")
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

    if recipe is not None and manifests:
        raise InputError("pass MANIFEST paths or --recipe FILE, not both")
    if recipe is None and variables:
        raise InputError("--var is only used with --recipe")
    if recipe is None and not manifests:
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
    if recipe is not None:
        _build_recipe(recipe, _parse_vars(variables), out, cfg, progress=not no_progress, strict=strict)
        return
    res = build_shards(list(manifests), out, cfg, progress=not no_progress)
    _finish(res, out, strict)


def _finish(res, out: Path, strict: bool) -> None:
    if res.reused:
        click.echo(f"reused {res.reused} shards")
    _print_summary(res)
    if strict and res.rejected:
        click.echo(f"--strict: {len(res.rejected)} samples rejected (see {out / 'rejected.parquet'})", err=True)
        raise SystemExit(1)


def _build_recipe(recipe: Path, variables: dict, out: Path, cfg, progress: bool, strict: bool) -> None:
    """Manifests into OUT/manifests/SPLIT/SOURCE.parquet, shards into OUT/SPLIT/SOURCE/ (one shard set per source,
    so the trainer mixes sources by ratio without filtering), verify each, then OUT/recipe.yaml."""
    import yaml

    from .build import build_shards
    from .fsutil import atomic_write_text
    from .recipe import load_recipe, recipe_source_manifests
    from .training_recipe import write_training_recipe
    from .verify import verify_dir

    rec = load_recipe(recipe, variables)
    built, rejected = [], 0
    for source, manifest in recipe_source_manifests(rec, out / "manifests", progress=progress):
        shard_dir = out / source.target / source.name
        res = build_shards([manifest], shard_dir, cfg, progress=progress)
        _finish(res, shard_dir, strict=False)
        report = verify_dir(shard_dir, progress=progress)
        if report.failures:
            for f in report.failures[:20]:
                click.echo(f"FAIL {f}", err=True)
            raise SystemExit(1)
        click.echo(f"verified {report.samples} samples in {report.shards} shards ({shard_dir})")
        built.append((source, shard_dir))
        rejected += len(res.rejected)
    doc = write_training_recipe([(s.name, s.target, s.ratio, d) for s, d in built], out, rec.name)
    header = (f"# Written by perspose-build shards --recipe {recipe}: the shard sets of recipe '{rec.name}'.\n"
              f"# perspose-train --recipe {out / 'recipe.yaml'}  /  perspose-eval --recipe {out / 'recipe.yaml'}\n")
    atomic_write_text(out / "recipe.yaml", header + yaml.safe_dump(doc, sort_keys=False))
    click.echo(f"wrote {out / 'recipe.yaml'}")
    if strict and rejected:
        click.echo(f"--strict: {rejected} samples rejected (see OUT/SPLIT/SOURCE/rejected.parquet)", err=True)
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

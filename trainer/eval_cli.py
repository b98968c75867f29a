"""``perspose-eval``: evaluate a checkpoint on held-out shards, in the original camera frame.

    perspose-eval --ckpt RUN/best.pt --out REPORT_DIR --shards DIR [DIR ...] [--recipe FILE]

Shards: every ``--shards`` value plus any positional paths (so ``--shards A B`` works), then the recipe's.

Writes REPORT_DIR/report.json, report.md, predictions.parquet, per_joint_error.png, error_vs_pr_angle.png and
prints the per-dataset table; an HPS checkpoint (model.hps) adds PVE beside the constant-mean-mesh reference,
mesh_overlay.png and, with --save-vertices, vertices.npz (trainer/hps.py). Under ``torchrun`` each rank evaluates its share and rank 0 writes the report.
A user error (missing file, a checkpoint that does not fit the shards) prints one line and exits with code 2.

``--recipe`` is a training recipe (pipeline/training_recipe.py, e.g. the ``recipe.yaml`` written by
``perspose-build shards --recipe``); its ``eval`` section (else ``test``, else ``val``) lists the shards:
``test: [{name: 3dpw, shards: DIR}, ...]`` or plain specs, relative to the recipe file.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import logging
import os
import time
from pathlib import Path

import click

from pipeline.errors import InputError, InputErrorCommand
from pipeline.provenance import software_versions

log = logging.getLogger(__name__)


def load_checkpoint(path: Path) -> dict:
    """trainer.checkpoint.load_checkpoint (weights_only=True), checked for the keys the evaluator needs."""
    from .checkpoint import load_checkpoint as _load

    return _load(path, require=("model", "config"))


def model_config_from(ck: dict, path: Path):
    from .configtools import from_dict
    from .model import ModelConfig

    try:
        return from_dict(ModelConfig, ck["config"]["model"], "model.")
    except InputError as e:
        raise InputError(f"{path}: checkpoint {e}") from None


def build_from_checkpoint(ck: dict, path: Path, device):
    from .model import build_model

    cfg = model_config_from(ck, path)
    model = build_model(cfg)
    try:
        model.load_state_dict(ck["model"], strict=True)
    except RuntimeError as e:
        raise InputError(f"{path}: weights do not fit the model config ({str(e).splitlines()[0][:200]})") from None
    return model.to(device).eval(), cfg


def _init_distributed(device: str):
    import torch

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or torch.distributed.is_initialized():
        return False
    backend = "nccl" if device.startswith("cuda") else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    torch.distributed.init_process_group(backend)
    return True


@click.command(cls=InputErrorCommand, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--ckpt", "ckpt_path", required=True, type=click.Path(path_type=Path), help="Checkpoint (.pt).")
@click.option("--shards", "shard_paths", multiple=True,
              help="Shard directory, .tar file, quoted glob or brace pattern (repeatable).")
@click.argument("more_shards", nargs=-1)
@click.option("--recipe", type=click.Path(path_type=Path), default=None, help="YAML listing eval shards.")
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path), help="Report directory.")
@click.option("--batch-size", default=64, show_default=True, type=click.IntRange(min=1))
@click.option("--workers", default=4, show_default=True, type=click.IntRange(min=0),
              help="Decoding processes per rank (0: decode in the main process).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--flip-test/--no-flip-test", default=True, show_default=True,
              help="Average with the prediction on the mirrored crop.")
@click.option("--amp/--no-amp", default=False, show_default=True, help="bf16 autocast on CUDA.")
@click.option("--skip-nonfinite", is_flag=True,
              help="Leave out (and list) samples whose prediction has a NaN or inf, instead of stopping.")
@click.option("--body-model", default=None,
              help="HPS checkpoints: the SMPL-format body model of the meshes ('synthetic', a model file, or a "
                   "directory of SMPL_{NEUTRAL,MALE,FEMALE} files); default: the checkpoint's model.body_model.")
@click.option("--save-vertices", is_flag=True,
              help="HPS checkpoints: also write vertices.npz (every predicted mesh, original camera, metres).")
@click.option("--progress/--no-progress", default=True, show_default=True)
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
def main(ckpt_path, shard_paths, more_shards, recipe, out_dir, batch_size, workers, device, flip_test, amp,
         skip_nonfinite, body_model, save_vertices, progress, verbose):
    """Evaluate a PersPose checkpoint on held-out shards (metrics in mm, original camera frame).

    MORE_SHARDS: further shard specs, like --shards."""
    import torch

    from pipeline.fsutil import sha256_file
    from pipeline.remote import is_url
    from pipeline.report import print_table

    from pipeline.training_recipe import read_training_recipe

    from .evaluate import evaluate, model_predict_fn, protocol_for
    from .shards import resolve_shards
    from .report import REFERENCE_HEADERS, TABLE_HEADERS, reference_table_rows, table_rows, write_report

    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    paths = list(shard_paths) + list(more_shards) + (read_training_recipe(recipe).eval_shards() if recipe else [])
    if not paths:
        raise InputError("no shards given (pass --shards DIR, .tar files, a quoted glob, or --recipe)")
    ck = load_checkpoint(ckpt_path)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"--device {device}: CUDA is not available on this machine")
    ddp = _init_distributed(device)
    if ddp and device == "cuda":
        device = f"cuda:{torch.cuda.current_device()}"
    rank = torch.distributed.get_rank() if ddp else 0
    model, cfg = build_from_checkpoint(ck, ckpt_path, device)
    shards = resolve_shards(paths, cfg.crop_size)
    amp_dtype = torch.bfloat16 if amp and device.startswith("cuda") else None
    predict = model_predict_fn(model, tuple(cfg.skeletons), device, flip_test=flip_test, amp_dtype=amp_dtype)
    mesh = None
    if cfg.hps:
        from .hps import MeshScorer
        mesh = MeshScorer(body_model or cfg.body_model, keep_vertices=save_vertices)
        mesh.models.get("neutral")     # a missing or malformed body model is a one-line error before the run
    elif save_vertices or body_model:
        raise InputError(f"{ckpt_path}: --save-vertices/--body-model need an HPS checkpoint (model.hps: true)")

    t0 = time.perf_counter()
    try:
        res = evaluate(predict, shards, batch_size=batch_size, crop_size=cfg.crop_size, skeletons=cfg.skeletons,
                       progress=progress, total=shards.num_samples, workers=workers, skip_nonfinite=skip_nonfinite,
                       mesh=mesh)
    finally:
        if ddp:
            torch.distributed.destroy_process_group()
    seconds = time.perf_counter() - t0
    if rank != 0:
        return
    rec = res["records"]
    if not rec and not res["nonfinite"]:   # (all left out as non-finite: still a report that says so)
        raise InputError(f"{', '.join(map(str, paths))}: no 3D samples to evaluate "
                         f"({res['counts']['skipped_2d_only']} 2D-only samples skipped, "
                         f"{res['counts']['skipped_nonfinite']} with a non-finite prediction)")
    from .report import summarize

    summary = summarize(rec)
    report = {
        "format_version": 1,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "checkpoint": {"path": str(ckpt_path.resolve()), "sha256": sha256_file(ckpt_path), "step": ck.get("step")},
        "model_config": dataclasses.asdict(cfg),
        "shards": [{"path": u, "sha256": None} if is_url(u) else
                   {"path": str(Path(u).resolve()), "sha256": sha256_file(u)} for u in shards.urls],
        "options": {"flip_test": flip_test, "skip_nonfinite": skip_nonfinite, "batch_size": batch_size,
                    "workers": workers, "device": device, "amp": amp_dtype is not None,
                    "world_size": torch.distributed.get_world_size() if ddp else 1},
        "frame": "original camera (R^T applied); metrics in mm, PCK/AUC in %",
        "protocols": {p.name: p.as_dict() for p in sorted({protocol_for(s) for s in set(rec["skeleton"])},
                                                          key=lambda p: p.name)},
        "counts": res["counts"], "nonfinite": res["nonfinite"], "seconds": round(seconds, 3),
        "samples_per_second": round(res["counts"]["evaluated"] / max(seconds, 1e-9), 2),
        "versions": software_versions(("torch", "numpy", "cv2", "simplejpeg")), "metrics": summary,
    }
    files = write_report(out_dir, report, rec)
    if mesh is not None:
        files += _mesh_files(out_dir, rec, model, shards, cfg, mesh, device, flip_test, save_vertices)
    print_table(TABLE_HEADERS, table_rows(summary["datasets"]), title=f"perspose-eval: {ckpt_path.name}")
    print_table(REFERENCE_HEADERS, reference_table_rows(summary["references"]),
                title="reference: a model that learned nothing (same samples)")
    if summary.get("mesh"):
        from .hps_report import MESH_HEADERS, mesh_table_rows
        print_table(MESH_HEADERS, mesh_table_rows(summary["mesh"]), title="meshes (HPS): PVE, mm")
    if res["nonfinite"]:
        click.echo(f"left out {len(res['nonfinite'])} sample(s) with a non-finite prediction (listed in report.md)")
    click.echo(f"{res['counts']['evaluated']} samples in {seconds:.1f} s; wrote {', '.join(f.name for f in files)} "
               f"to {out_dir}")


def _mesh_files(out_dir, rec, model, shards, cfg, mesh, device, flip_test, save_vertices) -> list[Path]:
    """vertices.npz (with --save-vertices) and mesh_overlay.png for an HPS checkpoint."""
    from .hps import mesh_overlay
    from .hps_report import write_vertices

    files = []
    if save_vertices:
        p = write_vertices(Path(out_dir) / "vertices.npz", rec)
        files += [p] if p else []
    p = mesh_overlay(model, shards, cfg.crop_size, cfg.skeletons, mesh.models.get("neutral"), device,
                     Path(out_dir) / "mesh_overlay.png", flip_test=flip_test)
    return files + ([p] if p else [])


if __name__ == "__main__":
    main()

"""``perspose-train``: train PersPose on shards.

    perspose-train --config paper --recipe shards/3dpw/recipe.yaml --out runs/w48 [--set k=v ...]
    perspose-train --config demo --train demo_out/shards/train --val demo_out/shards/val --out runs/demo
    perspose-train --out runs/w48 --resume                  # continue exactly where RUN/last.pt stopped
    torchrun --nproc_per_node=8 -m trainer.train_cli ...    # DDP (also multi-node: --nnodes, --rdzv-endpoint)

``--config`` is a YAML file or a packaged preset name (paper, demo). ``--train`` / ``--val`` take shard
directories, .tar files or globs and may be repeated. ``--recipe`` takes the ``recipe.yaml`` that
``perspose-build shards --recipe`` writes (sources with mix ratios, val shards). ``--set a.b=v`` overrides one config value (type-checked).
Writes RUN/config.yaml (the resolved config), RUN/last.pt, RUN/best.pt, RUN/metrics.csv, RUN/loss_curve.png.
A user error (bad path, bad key, incompatible shards) prints one line and exits with code 2.
"""
from __future__ import annotations

import logging
from pathlib import Path

import click

from pipeline.errors import InputError, InputErrorCommand

log = logging.getLogger(__name__)


def _abs(paths) -> list[str]:
    return [str(Path(p).expanduser().resolve()) for p in paths]


FIXED_ON_RESUME = ("batch_size", "epoch_samples", "checkpoint_every_steps", "seed")


def recipe_data_section(path) -> dict:
    """The ``data`` section of a training recipe (pipeline/training_recipe.py): train sources and val shards."""
    from pipeline.training_recipe import read_training_recipe

    r = read_training_recipe(path)
    if not r.train:
        raise InputError(f"{path}: the recipe lists no training sources under 'train'")
    out = {"train": [{"name": s.name, "paths": list(s.shards), "ratio": s.ratio} for s in r.train]}
    if r.val:
        out["val"] = r.val_shards()
    return out


def init_model_section(path) -> dict:
    """The ``model`` section of a perspose checkpoint given to --init (e.g. a converted official one)."""
    from .checkpoint import load_checkpoint

    return load_checkpoint(path, require=("model", "config"))["config"]["model"]


def resolve_config(config_path, recipe, train_paths, val_paths, overrides, run_dir: Path, resume: bool,
                   init: Path | None = None):
    """The run's TrainConfig: from the checkpoint on --resume (plus --set), else preset <- data <- --set; with
    --init the model section is the init checkpoint's (``--set model.*`` may still change what fits the weights,
    e.g. nothing; anything else is refused when the weights load)."""
    from .checkpoint import load_checkpoint
    from .config import config_from_dict, load_config
    from .configtools import apply_overrides, config_to_dict

    last = run_dir / "last.pt"
    if resume:
        if not last.is_file():
            raise InputError(f"{last}: nothing to resume (no last.pt in the run directory)")
        if config_path or recipe or train_paths or val_paths:
            log.warning("--resume: using the config stored in %s; --config/--recipe/--train/--val are ignored", last)
        stored = load_checkpoint(last, require=("config",))["config"]
        cfg = config_from_dict(apply_overrides(stored, overrides))
        if config_to_dict(cfg.model) != stored["model"]:
            raise InputError(f"--set: model keys cannot change on --resume (the checkpoint {last} fixes them)")
        changed = [k for k in FIXED_ON_RESUME if getattr(cfg, k) != stored.get(k)]
        if changed:  # each of these redefines what a step is or which samples it reads: resume would not be exact
            raise InputError(f"--set {changed[0]}: cannot change on --resume (the checkpoint {last} fixes it)")
        return cfg
    if last.is_file():
        raise InputError(f"{run_dir}: already holds a run (last.pt); pass --resume or choose another --out")
    if recipe and train_paths:
        raise InputError("--recipe and --train are alternatives; give one of them")
    data = recipe_data_section(recipe) if recipe else {}
    if train_paths:
        data["train"] = [{"name": "train", "paths": _abs(train_paths), "ratio": 1.0}]
    if val_paths:
        data["val"] = _abs(val_paths)
    if init is not None:
        overrides = [f"init={Path(init).resolve()}", *overrides]
    cfg = load_config(config_path, overrides, data, model_section=init_model_section(init) if init else None)
    if not cfg.data.train:
        raise InputError("no training data: give --recipe FILE or --train DIR (or data.train in the config)")
    return cfg


@click.command(cls=InputErrorCommand, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_path", default=None, help="YAML config file or preset name (paper, demo).")
@click.option("--recipe", type=click.Path(path_type=Path), default=None,
              help="Dataset recipe YAML (train sources with mix ratios, val shards).")
@click.option("--train", "train_paths", multiple=True, help="Training shard dir / .tar / glob (repeatable).")
@click.option("--val", "val_paths", multiple=True, help="Validation shard dir / .tar / glob (repeatable).")
@click.option("--out", "run_dir", required=True, type=click.Path(path_type=Path), help="Run directory.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a config value, e.g. --set optim.lr=1e-3 (repeatable).")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last.pt.")
@click.option("--init", "init", type=click.Path(path_type=Path), default=None,
              help="Start from the whole model of a perspose checkpoint (e.g. from perspose-convert official); "
                   "the run takes its model config.")
@click.option("--progress/--no-progress", default=True, show_default=True, help="tqdm progress bar.")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
def main(config_path, recipe, train_paths, val_paths, run_dir, overrides, resume, init, progress, verbose):
    """Train PersPose (HRNet + Perspective Encoding) on webdataset shards."""
    from .logging_utils import is_primary

    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO if is_primary() else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    from pipeline.report import print_table

    from .train import train

    cfg = resolve_config(config_path, recipe, train_paths, val_paths, overrides, run_dir, resume, init)
    summary = train(cfg, run_dir, resume=resume, progress=progress)
    if is_primary():
        print_table(["item", "value"], [[k, v] for k, v in summary.items()], title=f"perspose-train: {run_dir}")


if __name__ == "__main__":
    main()

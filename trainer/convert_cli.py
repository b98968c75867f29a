"""``perspose-convert``: checkpoints from elsewhere -> checkpoints of this toolkit.

    perspose-convert official ckpt_3dpw_16epochs.pth --out runs/official_3dpw.pt
    perspose-eval --ckpt runs/official_3dpw.pt --shards shards/3dpw_test --out reports/official_3dpw

The converted file is an ordinary checkpoint of this project (``model``, ``config``; loadable with
``weights_only=True``): ``perspose-eval`` evaluates it and ``perspose-train --init`` starts from it. What is
mapped, kept aside and dropped, and why the pixel convention needs no change: :mod:`trainer.convert`.
"""
from __future__ import annotations

import logging
from pathlib import Path

import click

from pipeline.errors import InputError, invoke_reporting_input_errors

log = logging.getLogger(__name__)

PIXEL_CONVENTION = ("pixel centres at integer coordinates (this toolkit); the official weights need no change: "
                    "its 0.5 px larger principal point and its (j + 0.5) * 4 grids cancel (trainer/convert.py)")


class _Group(click.Group):
    def invoke(self, ctx):
        return invoke_reporting_input_errors(super().invoke, ctx)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
def main(verbose: bool) -> None:
    """Convert checkpoints of other code bases into checkpoints of this toolkit."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")


@main.command("official")
@click.argument("ckpt", type=click.Path(path_type=Path))
@click.option("--out", "out_path", required=True, type=click.Path(path_type=Path), help="Converted checkpoint (.pt).")
def official(ckpt: Path, out_path: Path) -> None:
    """An official PersPose checkpoint (ckpt_3dpw_16epochs.pth, ckpt_w_be_3dhp_35epochs.pth: {'model': ...},
    optionally with 'module.' prefixes, or a plain state dict) -> a perspose checkpoint predicting the 24 SMPL
    joints, as the official network does."""
    from pipeline.fsutil import sha256_file
    from pipeline.report import print_table

    from .checkpoint import load_checkpoint, save_checkpoint
    from .configtools import config_to_dict
    from .convert import convert_official, official_state_dict

    obj = load_checkpoint(ckpt)   # weights_only=True; a missing or unreadable file is a one-line error
    sd = official_state_dict(obj, ckpt)
    ours, cfg, extra, notes = convert_official(sd, ckpt)
    source = {"file": ckpt.name, "sha256": sha256_file(ckpt), "layout": "official PersPose (KenAdamsJoseph/PersPose)",
              "epoch": obj.get("epoch") if isinstance(obj, dict) and isinstance(obj.get("epoch"), int) else None}
    save_checkpoint(out_path, {"model": ours, "config": {"model": config_to_dict(cfg)}, "step": None,
                               "converted_from": source, "pixel_convention": PIXEL_CONVENTION, "notes": notes,
                               **extra})
    rows = [("official tensors", len(sd)), ("mapped into the model", len(ours)),
            ("kept aside (HPS heads, pelvis row)", len(extra["official_heads"]) + len(extra["official_extra"])),
            ("dropped (smpl.* buffers)", sum(k.startswith("smpl.") for k in sd)),
            ("model", f"HRNet-W{cfg.width}, {cfg.crop_size} px, skeleton smpl24, PE {'on' if cfg.use_pe else 'off'}")]
    print_table(["", "value"], rows, title=f"perspose-convert official: {ckpt.name} -> {out_path}")
    for n in notes:
        click.echo(f"note: {n}")


if __name__ == "__main__":
    main()

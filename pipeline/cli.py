"""``perspose-build``: the offline stage (manifests, shards, verify, synthetic data, contact sheets).

Subcommands are imported lazily so ``--help`` stays fast and nothing heavy happens at import time.
A user error (:class:`pipeline.errors.InputError`) ends with a one-line message and exit code 2.
"""
from __future__ import annotations

import importlib
import logging

import click

from .errors import invoke_reporting_input_errors

# name -> "module:attribute"; each module defines one click command or group
_COMMANDS = {
    "manifest": "pipeline.manifest_cli:manifest",
    "shards": "pipeline.build_cli:shards",
    "verify": "pipeline.verify:verify_cmd",
    "synth": "pipeline.synth_cli:synth",
    "show": "pipeline.show:show_cmd",
    "smpl-convert": "pipeline.smpl_convert:smpl_convert_cmd",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx):
        return sorted(n for n in _COMMANDS if self._load(n) is not None)

    def get_command(self, ctx, name):
        return self._load(name)

    @staticmethod
    def _load(name):
        target = _COMMANDS.get(name)
        if target is None:
            return None
        mod, attr = target.split(":")
        try:
            return getattr(importlib.import_module(mod), attr)
        except ModuleNotFoundError as e:
            if e.name == mod:  # command not built yet
                return None
            raise

    def invoke(self, ctx):
        return invoke_reporting_input_errors(super().invoke, ctx)


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
def main(verbose: bool) -> None:
    """PersPose offline stage: datasets -> parquet manifests -> verified webdataset shards."""
    setup_logging(verbose)


if __name__ == "__main__":
    main()

"""User-facing errors: the CLI turns them into a one-line message and exit code 2."""
import sys

import click


class InputError(ValueError):
    """Bad user input (path, option, malformed file). The message names the file and what is wrong."""


def invoke_reporting_input_errors(invoke, ctx):
    """Run click's ``invoke(ctx)``; an InputError becomes ``Error: <message>`` on stderr and exit code 2."""
    try:
        return invoke(ctx)
    except InputError as e:
        click.echo(f"Error: {e}", err=True)
        sys.exit(2)


class InputErrorCommand(click.Command):
    """A click command whose InputErrors end as a one-line message and exit code 2 (never a traceback)."""

    def invoke(self, ctx):
        return invoke_reporting_input_errors(super().invoke, ctx)

"""User-facing errors: the CLI turns them into a one-line message and exit code 2."""


class InputError(ValueError):
    """Bad user input (path, option, malformed file). The message names the file and what is wrong."""

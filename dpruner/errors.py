"""The one exception type users see: a message naming the bad key, file, value, step or layer."""


class DprunerError(Exception):
    """A user-facing error; the CLI prints its message without a traceback and exits 2."""


class ConfigError(DprunerError):
    """A config key, value or file is wrong."""


class DataError(DprunerError):
    """A data source, field or template is wrong, or a source is empty."""


class NonFiniteError(DprunerError):
    """A loss, gradient or score became NaN or infinite (a diverged fine-tuning)."""


def exit_with(message) -> None:
    """Print one `error: ...` message and exit 1: the Snakefile's way to stop on a bad config
    without Snakemake's traceback of the Snakefile."""
    import sys

    print(f"error: {message}", file=sys.stderr)
    sys.exit(1)

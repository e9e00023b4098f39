"""User-facing errors: one line that names the problem and the fix, and a non-zero exit."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator

EXIT_USER_ERROR = 2


class FtexpError(Exception):
    """A mistake in the user's config, data or environment, explained in one line."""


class ConfigError(FtexpError):
    """The composed config is invalid: unknown key or option, wrong type, contradiction."""


class DataError(FtexpError):
    """The data file is missing, unreadable or does not fit the config."""


def debug_requested(debug_flag: bool = False) -> bool:
    """Full tracebacks when `debug=true` or FTEXP_DEBUG / HYDRA_FULL_ERROR is set."""
    return bool(debug_flag) or any(os.environ.get(v) for v in ("FTEXP_DEBUG", "HYDRA_FULL_ERROR"))


@contextlib.contextmanager
def reported_as_one_line(debug: bool = False, exit_on_error: bool = True) -> Iterator[None]:
    """Turn an FtexpError into `ftexp: error: …` on stderr and exit code 2 (unless debugging).
    With `exit_on_error=False` the line is written and the error re-raised (sweep jobs)."""
    try:
        yield
    except FtexpError as err:
        if debug_requested(debug):
            raise
        sys.stderr.write(f"ftexp: error: {err}\n")
        if not exit_on_error:
            raise
        sys.exit(EXIT_USER_ERROR)

"""The one exception type for errors a user can act on.

Raised anywhere in the project with a message that names the file and the problem; caught once
at each command-line edge and printed as one line (exit code 1, no traceback).
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable


class UserError(Exception):
    """A failure the user can act on: a bad file, a missing GPU, a bad argument value."""


def cli_entry(main: Callable[[list[str] | None], int | None]) -> Callable[[list[str] | None], int]:
    """Wrap a CLI `main(argv)`: UserError becomes one line on stderr and exit status 1."""

    @functools.wraps(main)
    def wrapper(argv: list[str] | None = None) -> int:
        try:
            return main(argv) or 0
        except UserError as err:
            print(f"error: {err}", file=sys.stderr)
            return 1

    return wrapper


def first_line(err: BaseException, default: str | None = None) -> str:
    """The first line of an exception's message (libraries' messages run to several lines),
    or `default` (the exception's type name) when it has none."""
    text = str(err).strip()
    return text.splitlines()[0] if text else (default or type(err).__name__)

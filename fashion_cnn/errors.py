"""The one exception type for errors a user can act on.

Raised anywhere in the project with a message that names the file and the problem; caught once
at each command-line edge and printed as one line (exit code 1, no traceback).
"""

from __future__ import annotations

import functools
import re
import sys
import unicodedata
from collections.abc import Callable

# ANSI/VT100 escape sequences: CSI (ESC [ … final byte), OSC (ESC ] … BEL or ESC \\), and the
# two-character ones (ESC followed by one byte). Libraries colour their messages with them.
_ANSI = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)?|[@-_])")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


class UserError(Exception):
    """A failure the user can act on: a bad file, a missing GPU, a bad argument value."""


def cli_entry(main: Callable[[list[str] | None], int | None]) -> Callable[[list[str] | None], int]:
    """Wrap a CLI `main(argv)`: UserError becomes one line on stderr and exit status 1."""

    @functools.wraps(main)
    def wrapper(argv: list[str] | None = None) -> int:
        try:
            return main(argv) or 0
        except UserError as err:
            print(f"error: {one_line(str(err))}", file=sys.stderr)
            return 1
        except (MemoryError, RecursionError) as err:  # past every budget: still one line
            print(f"error: the input needs more than this process can give "
                  f"({type(err).__name__})", file=sys.stderr)
            return 1

    return wrapper


def first_line(err: BaseException, default: str | None = None) -> str:
    """The first line of an exception's message (libraries' messages run to several lines),
    or `default` (the exception's type name) when it has none."""
    text = str(err).strip()
    return text.splitlines()[0] if text else (default or type(err).__name__)


def _escape(char: str) -> str:
    if char in _NAMED:
        return _NAMED[char]
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def one_line(text: str) -> str:
    """`text` as one printable line: ANSI escape sequences removed, and every control, format or
    line/paragraph-separator character (a newline in a state_dict key, a lone surrogate from an
    undecodable file name) written as a Python-style escape, so nothing from a file can break
    the line or steer the terminal."""
    text = _ANSI.sub("", text)
    return "".join(
        _escape(c) if unicodedata.category(c) in ("Cc", "Cf", "Cs", "Zl", "Zp") else c for c in text
    )

"""JSON from files we did not write — bounded in size and nesting depth.

`json.loads` recurses once per nesting level, so `[[[[…]]]]` a hundred thousand deep ends in a
RecursionError (a traceback, not a message), and a large text is held whole in memory. Every JSON
the project reads from a user's file (a `.keras` archive's config.json and metadata.json, a legacy
`.h5` file's model_config attribute, a trainer's history.json) goes through `loads` here: the size
is checked first, then the depth by one scan of the text (no recursion), and only then is it
parsed. Each failure is a UserError naming the source and the problem.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

from fashion_cnn.errors import UserError, first_line

# Generous for what the project reads (the book's config.json is 6 KB, nested 8 deep; a 20-epoch
# history.json is 3 KB, nested 3 deep) and far below what the parser or memory would mind.
MAX_JSON_BYTES = 1 << 20
MAX_JSON_DEPTH = 64

# The characters that matter for nesting: brackets, and the quotes and backslashes that say
# whether a bracket is inside a string.
_SPECIAL = re.compile(r'[\[\]{}"\\]')


def nesting_depth(text: str) -> int:
    """The deepest nesting of [ and { in a JSON text, outside strings: one linear scan, no
    recursion. (An invalid text gets some number; the parser reports its errors.)"""
    depth = deepest = 0
    in_string = False
    escaped = -1  # the position a backslash in a string escapes
    for match in _SPECIAL.finditer(text):
        i, char = match.start(), match.group()
        if i == escaped:
            continue
        if in_string:
            if char == "\\":
                escaped = i + 1
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest


def loads(
    raw: bytes | str,
    what: str,
    source: str,
    *,
    max_bytes: int = MAX_JSON_BYTES,
    max_depth: int = MAX_JSON_DEPTH,
) -> object:
    """Parse JSON text `raw` (the `what` of file `source`), refusing oversized or deep input."""
    import json

    if len(raw) > max_bytes:
        raise UserError(f"{source}: {what} is {len(raw)} bytes, more than {max_bytes} allowed")
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            raise UserError(f"{source}: {what} is not UTF-8 text ({err})") from None
    if not isinstance(raw, str):
        raise UserError(f"{source}: {what} is a {type(raw).__name__}, not JSON text")
    depth = nesting_depth(raw)
    if depth > max_depth:
        raise UserError(
            f"{source}: {what} nests {depth} levels deep, more than {max_depth} allowed"
        )
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as err:  # JSONDecodeError is a ValueError
        raise UserError(f"{source}: {what} is not valid JSON ({first_line(err)})") from None


def read_json(
    path: str | os.PathLike,
    what: str | None = None,
    *,
    max_bytes: int = MAX_JSON_BYTES,
    max_depth: int = MAX_JSON_DEPTH,
) -> object:
    """Read and parse a JSON file with the limits of `loads`.

    Only a regular file is read (a FIFO or a device is refused at once, never waited on), and no
    more than `max_bytes` + 1 bytes of it.
    """
    path = Path(path)
    what = what or "the JSON text"
    try:
        # O_NONBLOCK: opening a FIFO for reading returns at once instead of waiting for a writer.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except OSError as err:
        raise UserError(f"{path}: cannot read: {err.strerror}") from None
    with os.fdopen(fd, "rb") as file:
        info = os.fstat(file.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise UserError(f"{path}: not a regular file")
        if info.st_size > max_bytes:
            raise UserError(
                f"{path}: {what} is {info.st_size} bytes, more than {max_bytes} allowed"
            )
        try:
            raw = file.read(max_bytes + 1)
        except OSError as err:
            raise UserError(f"{path}: cannot read: {err.strerror}") from None
    return loads(raw, what, str(path), max_bytes=max_bytes, max_depth=max_depth)

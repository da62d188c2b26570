"""Files written whole or not at all: a temporary name beside the destination, then a rename."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from fashion_cnn.errors import UserError


def atomic_write(dst: str | os.PathLike, write, *, force: bool = False) -> Path:
    """Call `write(tmp_path)` on a temporary file beside `dst`, then rename it to `dst`.

    Without `force` an existing `dst` is refused; on any failure `dst` is left as it was.
    """
    dst = Path(dst)
    if dst.exists() and not force:
        raise UserError(f"{dst}: already exists (use --force to overwrite)")
    if not dst.parent.is_dir():
        raise UserError(f"{dst}: folder {dst.parent} does not exist")
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        # mkstemp makes the file private (0600); give it the mode a plain open() would.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)
    return dst

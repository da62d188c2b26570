"""Where the commands write: destinations checked before the work, files written whole or not at
all, and one run per output folder.

- `check_destination(dst, force)`: refuse a file that could not be written — a folder, under a
  file, in a missing or read-only folder, existing without --force, no room — before anything is
  read or computed (a real probe: a temporary file is created in the folder and removed).
- `atomic_write(dst, write, force)`: a temporary file beside `dst`, fsynced, renamed over `dst`,
  then the folder fsynced; an OSError on the way (disk full, read-only) is one line, and the
  temporary file is removed.
- `output_folder(path, lock)`: the folder a command fills, checked and created before the work;
  with `lock`, an exclusive flock on DIR/.lock for the whole run (the kernel drops it when the
  process dies, so a killed run never blocks the next one).
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from fashion_cnn.errors import UserError, first_line

LOCK_FILE = ".lock"


def _reason(err: OSError) -> str:
    """The errno's meaning ("No space left on device"), or the message when there is no errno."""
    return os.strerror(err.errno) if err.errno else first_line(err)


def _file_in_the_way(folder: Path) -> Path | None:
    """The file standing where `folder` or one of its parents should be, if any."""
    existing = next((p for p in (folder, *folder.parents) if os.path.lexists(p)), None)
    return existing if existing is not None and not existing.is_dir() else None


def _folder_problem(folder: Path) -> str | None:
    """Why `folder` cannot hold files (it is missing, or a file stands in its way), or None."""
    if folder.is_dir():
        return None
    blocker = _file_in_the_way(folder)
    if blocker is not None:
        return f"{blocker} is a file, not a folder"
    return f"folder {folder} does not exist"


# The part of DST's name a temporary name keeps: with its dot, the random part and ".tmp" it
# stays within NAME_MAX (255 bytes on every common file system) for any legal DST name.
_TMP_NAME_BYTES = 200


def _tmp_prefix(dst: Path) -> str:
    name = dst.name
    while len(os.fsencode(name)) > _TMP_NAME_BYTES:
        name = name[:-1]
    return f".{name}."


def _check_path(dst: Path, force: bool) -> None:
    """The checks that need no writing: DST not a folder, its folder there, --force if it exists,
    and not a symbolic link to something other than a regular file (replacing the link would
    take a device, a FIFO or a folder's name out of the file system's hands)."""
    try:
        _check_path_at(dst, force)
    except OSError as err:  # a name too long for the file system (ENAMETOOLONG), say
        raise UserError(f"{dst}: {_reason(err)}") from None


def _check_path_at(dst: Path, force: bool) -> None:
    if os.path.islink(dst):
        try:
            target = os.stat(dst)  # what the link leads to (a device, a pipe, a folder, …)
        except OSError:
            target = None  # a dangling link: replaced by the new file, as a missing DST
        if target is not None and not stat.S_ISREG(target.st_mode):
            raise UserError(f"{dst}: is a symbolic link to {os.readlink(dst)}, not to a regular "
                            f"file; refused (writing would replace the link)")
    if dst.is_dir():
        raise UserError(f"{dst}: is a folder, not a file")
    problem = _folder_problem(dst.parent)
    if problem:
        raise UserError(f"{dst}: {problem}")
    if os.path.lexists(dst) and not force:
        raise UserError(f"{dst}: already exists (use --force to overwrite)")


def check_not_input(dst: str | os.PathLike, *inputs: str | os.PathLike) -> None:
    """Refuse an output that is one of the command's inputs (the same path, or the same file
    under another name): writing it would destroy what is being read."""
    dst = Path(dst)
    for src in inputs:
        src = Path(src)
        try:
            same = dst.resolve() == src.resolve() or (
                os.path.exists(dst) and os.path.exists(src) and os.path.samefile(dst, src))
        except OSError:  # a name the file system cannot take: not the input, and refused later
            same = False
        if same:
            raise UserError(f"{dst}: is the input file {src}; choose another name")


def _probe(folder: Path, prefix: str) -> None:
    """Create and remove a temporary file in `folder` (OSError if it cannot be done): the one
    test of writability that holds for every user — root too: a read-only mount refuses root —
    and every file system."""
    fd, name = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=folder)
    os.close(fd)
    os.unlink(name)


def _check_space(folder: Path, what: Path, need_bytes: int) -> None:
    """Refuse `what` when the file system of `folder` has less than `need_bytes` free."""
    if need_bytes <= 0:
        return
    try:
        vfs = os.statvfs(folder)
    except OSError:
        return  # no statistics on this file system: the write itself will tell
    free = vfs.f_bavail * vfs.f_frsize
    if free < need_bytes:
        where = "" if what == folder else f" in {folder}"
        raise UserError(f"{what}: no room{where}: {free:,} bytes free, about {need_bytes:,} needed")


def check_destination(dst: str | os.PathLike, *, force: bool = False, need_bytes: int = 0) -> Path:
    """Refuse, in one UserError, a destination file that could not be written — before any work.

    DST must not be a folder; its folder must exist (not a file on the way) and take a new file
    (probed by creating one); an existing DST needs `force`; with `need_bytes`, the file system
    must have that much room. Returns DST as a Path.
    """
    dst = Path(dst)
    _check_path(dst, force)
    try:
        _probe(dst.parent, _tmp_prefix(dst))
    except OSError as err:
        raise UserError(f"{dst}: cannot write in {dst.parent}: {_reason(err)}") from None
    _check_space(dst.parent, dst, need_bytes)
    return dst


def _new_file_mode() -> int:
    """The mode a plain open() gives a new file: 0666 less the umask."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as err:
        # Some file systems cannot fsync a folder (EINVAL); the rename is then as durable as
        # they make it.
        if not (path.is_dir() and err.errno in (errno.EINVAL, errno.ENOTSUP)):
            raise
    finally:
        os.close(fd)


def atomic_write(dst: str | os.PathLike, write, *, force: bool = False) -> Path:
    """Call `write(tmp_path)` on a temporary file beside `dst`, then rename it to `dst`.

    Without `force` an existing `dst` is refused. The file is fsynced before the rename and the
    folder after it, so a crash leaves the old file or the new one, never a torn one. With
    `force`, a replaced file keeps its mode; a new file gets 0666 less the umask. An OSError
    (disk full, read-only file system) becomes a one-line UserError naming `dst`; on any
    failure `dst` is left as it was and no temporary file remains.
    """
    dst = Path(dst)
    _check_path(dst, force)
    try:
        mode = stat.S_IMODE(os.stat(dst).st_mode)
    except FileNotFoundError:
        mode = _new_file_mode()
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=_tmp_prefix(dst), suffix=".tmp", dir=dst.parent)
    except OSError as err:
        raise UserError(f"{dst}: cannot write in {dst.parent}: {_reason(err)}") from None
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        os.chmod(tmp, mode)  # mkstemp made it 0600
        _fsync(tmp)
        os.replace(tmp, dst)
        _fsync(dst.parent)
    except OSError as err:
        raise UserError(f"{dst}: cannot write: {_reason(err)}") from None
    finally:
        tmp.unlink(missing_ok=True)
    return dst


@contextmanager
def writing(path: str | os.PathLike) -> Iterator[None]:
    """Around a library that writes `path` itself (Keras's savers): an OSError on the way (disk
    full, read-only) becomes one line naming the file."""
    try:
        yield
    except OSError as err:
        raise UserError(f"{path}: cannot write: {_reason(err)}") from None


# --- output folders ----------------------------------------------------------------------------


def _make_folder(folder: Path) -> list[Path]:
    """Create `folder` and any missing parents; return those created, deepest first."""
    blocker = _file_in_the_way(folder)
    if blocker == folder:
        raise UserError(f"{folder}: is a file, not a folder")
    if blocker is not None:
        raise UserError(f"{folder}: {blocker} is a file, not a folder")
    missing = [p for p in (folder, *folder.parents) if not os.path.lexists(p)]
    created: list[Path] = []
    try:
        for p in reversed(missing):
            p.mkdir()
            created.insert(0, p)
    except OSError as err:
        _remove_empty(created)
        raise UserError(f"{folder}: cannot create the folder: {_reason(err)}") from None
    return created


def _remove_empty(folders: list[Path]) -> None:
    """rmdir each folder (deepest first) while they are empty."""
    for p in folders:
        try:
            p.rmdir()
        except OSError:
            return


class _FolderLock:
    """An exclusive, non-blocking flock on DIR/.lock holding the holder's pid."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / LOCK_FILE
        self.fd: int | None = None

    def acquire(self) -> None:
        for _ in range(10):
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as err:
                raise UserError(f"{self.path}: cannot create the lock: {_reason(err)}") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                pid = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
                os.close(fd)
                raise UserError(
                    f"{self.path.parent}: another run (pid {pid}) is writing to this folder; "
                    f"wait for it to end or choose another --out"
                ) from None
            except OSError as err:
                os.close(fd)
                raise UserError(f"{self.path}: cannot lock: {_reason(err)}") from None
            # The holder before us may have removed the file between our open and our flock:
            # then we hold a lock on a file no one else will find. Start again.
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
                self.fd = fd
                return
            os.close(fd)
        raise UserError(f"{self.path}: the lock file keeps changing; is another run starting?")

    def release(self) -> None:
        if self.fd is None:
            return
        # Removed while still held, so no other run can be holding it (see acquire).
        self.path.unlink(missing_ok=True)
        os.close(self.fd)
        self.fd = None


@contextmanager
def output_folder(
    path: str | os.PathLike, *, lock: bool = False, need_bytes: int = 0
) -> Iterator[Path]:
    """The folder a command writes its files into, made ready before the work.

    Refuses (UserError, one line) a path that is a file or lies under one, a folder that cannot
    be created or written (probed with a real temporary file), and, with `need_bytes`, a file
    system without that much room. With `lock`, holds an exclusive lock on DIR/.lock for the
    whole block: a second run on the same folder is refused, naming the holder's pid. If the
    block fails, the folders this call created are removed again while they are empty.
    """
    folder = Path(path)
    created = _make_folder(folder)
    folder_lock = _FolderLock(folder) if lock else None
    try:
        try:
            _probe(folder, ".probe.")
        except OSError as err:
            raise UserError(f"{folder}: cannot write in the folder: {_reason(err)}") from None
        _check_space(folder, folder, need_bytes)
        if folder_lock is not None:
            folder_lock.acquire()
        try:
            yield folder
        finally:
            if folder_lock is not None:
                folder_lock.release()
    except BaseException:
        _remove_empty(created)
        raise

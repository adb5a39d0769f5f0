"""Writing a result file without ever destroying what was there: the one way `lem results export` and
`lem results report` write.

``check_target`` refuses, before any work, a target that is not a regular file (a device such as /dev/full, a
FIFO, a socket, a folder) and a missing parent folder (nothing is created: a typo in a path never makes folders).
``write_atomically`` writes into a temporary file beside the target, fsyncs it, gives it the mode the target had
(a new file: 0666 less the umask) and renames it over the target with ``os.replace``; when anything fails the
temporary file is removed and the target is left exactly as it was. A symlink is followed: the file it points
to is replaced, the link stays.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


class OutputError(Exception):
    """A target that cannot be written; ``exit_code`` is what the command exits with."""

    exit_code = 1


class BadTarget(OutputError):
    """The path itself is wrong (not a regular file, no such folder): the user's to fix, exit 2."""

    exit_code = 2


class WriteFailed(OutputError):
    """Writing failed (disk full, no permission, I/O error); the target is left as it was. Exit 1."""

    exit_code = 1


def check_target(path: Path) -> Path:
    """The file to replace (``path``, or where its symlink points); ``BadTarget`` naming the problem and the fix."""
    target = Path(os.path.realpath(path)) if path.is_symlink() else path
    try:
        st = os.stat(target)
    except OSError:  # no such file, or a parent that is a regular file (ENOTDIR): see the parents below
        st = None
    if st is not None:
        if stat.S_ISDIR(st.st_mode):
            raise BadTarget(f"cannot write {path}: it is a folder, not a regular file; give a file name")
        if not stat.S_ISREG(st.st_mode):
            kind = (
                "a device"
                if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)
                else "a FIFO"
                if stat.S_ISFIFO(st.st_mode)
                else "a socket"
                if stat.S_ISSOCK(st.st_mode)
                else "not a plain file"
            )
            raise BadTarget(f"cannot write {path}: it is {kind}, not a regular file; give the path of a file")
        return target
    parent = target.parent
    if parent.is_dir():
        return target
    # the nearest existing ancestor says whether a folder is missing or a file stands where a folder should
    ancestor = parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if ancestor.exists() and not ancestor.is_dir():
        raise BadTarget(f"cannot write {path}: {ancestor} is not a folder (it is a file); give a path in a folder")
    raise BadTarget(
        f"cannot write {path}: the folder {parent} does not exist; create it first (`mkdir -p "
        f"{parent}`) or give a path in an existing folder"
    )


def _new_file_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def write_atomically(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Call ``write`` with a binary file that becomes ``path`` only once it is complete and on disk."""
    target = check_target(path)
    try:
        mode = stat.S_IMODE(os.stat(target).st_mode)
    except FileNotFoundError:
        mode = _new_file_mode()
    temporary: str | None = None
    try:
        fd, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(temporary, mode)
        os.replace(temporary, target)
        temporary = None
        _fsync_folder(target.parent)
    except OSError as exc:
        raise WriteFailed(f"cannot write {path}: {exc.strerror or exc}; the file there (if any) is unchanged") from None
    finally:
        if temporary is not None:
            with contextlib.suppress(OSError):
                os.unlink(temporary)


def _fsync_folder(folder: Path) -> None:
    """Make the rename itself durable (best effort: not every file system lets a folder be opened)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

"""Atomic file replacement with the permissions the user's umask gives.

Every file tilesegd writes atomically (model files, checkpoints, GeoPackages, CSVs, rasters) is
written to a temporary name beside its destination and renamed into place. Some of those
temporary files are created with a fixed mode: :func:`tempfile.mkstemp` makes them ``0600`` and
SQLite (GeoPackages) ``0644``, so on a shared cluster the group could not read a model file, nor
write into a run's GeoPackages, whatever the umask said. :func:`new_temporary` creates a
temporary file with ``0666`` less the umask, as ``open()`` does, and :func:`replace` gives a
temporary file that mode before renaming it onto its destination.
"""

from __future__ import annotations

import os
import secrets
import threading
from pathlib import Path

_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """The process's umask (e.g. ``0o022``), read from ``/proc/self/status`` where Linux
    gives it, else by setting and restoring it (under a lock)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode a plain ``open(path, "w")`` gives a new file: ``0o666`` less the umask."""
    return 0o666 & ~current_umask()


def new_temporary(path: str | os.PathLike[str], suffix: str = ".tmp") -> Path:
    """Create an empty, uniquely named temporary file beside ``path``
    (``.<name>.<random><suffix>``) with :func:`file_mode`, for writing and then
    :func:`replace`-ing onto ``path``.

    Raises:
        OSError: the folder cannot be written (it is not created here).
    """
    path = Path(path)
    for _ in range(100):
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}{suffix}")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # umask applies
        except FileExistsError:
            continue
        os.close(fd)
        return tmp
    raise FileExistsError(f"{path.parent}: no free temporary name for {path.name}")


def replace(tmp: str | os.PathLike[str], path: str | os.PathLike[str]) -> None:
    """Give ``tmp`` :func:`file_mode` (whatever mode its writer created it with), then
    ``os.replace`` it onto ``path`` (atomic on one filesystem).

    Raises:
        OSError: the chmod or the rename failed (``tmp`` is left for the caller to remove).
    """
    os.chmod(tmp, file_mode())
    os.replace(tmp, path)


def write_text(path: str | os.PathLike[str], text: str, *, fsync: bool = False) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically: a :func:`new_temporary` file beside it,
    flushed (and with ``fsync`` synced to disk), then :func:`replace`-d onto ``path``; the
    temporary file is removed on any failure, so ``path`` keeps its previous content.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        OSError: the folder cannot be written, the disk is full.
    """
    path = Path(path)
    tmp = new_temporary(path)
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path

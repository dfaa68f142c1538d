"""The tilesegd error tree.

Every error tilesegd raises on purpose derives from :class:`TilesegdError`; each leaf is also a
standard exception (``ValueError``, ``OSError``...) so callers that catch those keep working.
Every message says what was wrong, which file, and how to fix it. The CLI turns these into a
one-line message and the exit code in :data:`EXIT_CODES` (never a traceback).

Exit codes (documented in the README):

==== ==========================================================================
code meaning
==== ==========================================================================
0    every scene finished
1    a usage or configuration error, or an unexpected internal error
2    click's own usage errors (unknown option, missing argument)
3    the model file is missing, corrupt or breaks the model-file contract
4    at least one scene failed (the others finished; see run.json)
5    the output directory is locked by another run
6    an output could not be written (disk full, permissions)
75   interrupted by SIGTERM / SIGINT: rerun the same command to resume (EX_TEMPFAIL)
==== ==========================================================================

A write that fails on an output (a full disk, a read-only filesystem, permissions) is classified
in one place, :func:`output_failure`, and writers wrap their writes in :func:`writing`.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator
from pathlib import Path

EXIT_OK = 0
EXIT_USAGE = 1
EXIT_MODEL = 3
EXIT_SCENES_FAILED = 4
EXIT_LOCKED = 5
EXIT_OUTPUT = 6
EXIT_INTERRUPTED = 75


class TilesegdError(Exception):
    """Root of every error tilesegd raises on purpose.

    Attributes:
        exit_code: the process exit code the CLI uses for this error.
    """

    exit_code: int = EXIT_USAGE


class ConfigError(TilesegdError, ValueError):
    """A configuration file or option is invalid (bad key, type or range)."""


class ModelFileError(TilesegdError, ValueError):
    """A model file is missing, corrupt, or breaks the model-file contract."""

    exit_code = EXIT_MODEL


class InputError(TilesegdError, ValueError):
    """An input scene cannot be processed (unreadable, bad georeferencing, too large...)."""


class IncompatibleInputError(InputError):
    """A scene's band count or dtype does not fit the model (found before any inference)."""


class OutputError(TilesegdError, OSError):
    """An output could not be written (disk full, permission denied...)."""

    exit_code = EXIT_OUTPUT


class LockedError(TilesegdError, OSError):
    """Another run holds the lock on the output directory."""

    exit_code = EXIT_LOCKED


class DatasetError(TilesegdError, ValueError):
    """A training / evaluation dataset is malformed (unmatched pairs, unknown mask values)."""


class DeviceError(TilesegdError, RuntimeError):
    """The requested device or precision is not available on this machine."""


class Interrupted(TilesegdError):
    """The run was stopped by SIGTERM / SIGINT; finished work is kept, rerun to resume."""

    exit_code = EXIT_INTERRUPTED


# --------------------------------------------------------------------- output failures

#: errnos of a full disk or quota, and of an output that may not be written
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
NOT_WRITABLE_ERRNOS = frozenset({errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG})
#: a failed write whose filesystem has less free space than this is a full disk: GDAL's
#: "Write failed" carries no errno (libtiff prints "No space left on device" and GDAL raises
#: "TIFFAppendToStrip:Write error")
FULL_BELOW_BYTES = 16 << 20
_FULL_TEXT = ("no space left", "free disk space", "disk quota", "disk is full", "disk full")
_WRITE_TEXT = ("write failed", "write error", "failed to write", "cannot write", "unable to write")


def free_bytes(path: str | os.PathLike[str]) -> int | None:
    """Bytes an unprivileged user may still write on the filesystem of ``path`` (its nearest
    existing parent), from ``os.statvfs``; ``None`` where that cannot be known."""
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        st = os.statvfs(p)
    except (OSError, AttributeError):
        return None
    return st.f_bavail * st.f_frsize


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and its causes / contexts (rasterio puts GDAL's message in the cause)."""
    out: list[BaseException] = []
    e: BaseException | None = exc
    while e is not None and e not in out and len(out) < 8:
        out.append(e)
        e = e.__cause__ or e.__context__
    return out


def _under(name: object, root: Path) -> bool:
    if not isinstance(name, (str, bytes, os.PathLike)):
        return False
    try:
        return Path(os.fsdecode(name)).resolve().is_relative_to(root.resolve())
    except (OSError, ValueError):
        return False


def _is_library_io(e: BaseException) -> bool:
    """An OSError, or an error of GDAL (rasterio's ``CPLE_*``), pyogrio or SQLite."""
    module = type(e).__module__ or ""
    return isinstance(e, OSError) or module.startswith(("rasterio", "pyogrio", "sqlite3"))


def output_failure(
    exc: BaseException, path: str | os.PathLike[str], *, writing: bool = False
) -> OutputError | None:
    """The :class:`OutputError` (exit 6) for ``exc``, if it is an output that could not be
    written, else ``None`` (``exc`` is something else: a bad input, a bug).

    Call it before a failed write's temporary file is removed: a full disk whose error carries
    no errno (GDAL's "Write failed") is recognised by the free space left on ``path``'s
    filesystem (:func:`free_bytes` under :data:`FULL_BELOW_BYTES`).

    Args:
        exc: the exception raised.
        path: the file being written (named in the message), or the output directory.
        writing: ``exc`` was raised by a write of ``path`` (:func:`writing`), so any I/O error
            (OSError, GDAL, pyogrio, SQLite) counts; otherwise only a full disk, a read-only
            filesystem, a refused write under ``path``, or GDAL's write-failure messages do.

    Returns:
        ``exc`` itself if it is an OutputError already; ``None`` for any other tilesegd error.
    """
    if isinstance(exc, OutputError):
        return exc
    if isinstance(exc, TilesegdError) or not isinstance(exc, Exception):
        return None
    chain = _chain(exc)
    errnos = {e.errno for e in chain if isinstance(e, OSError) and e.errno is not None}
    text = " ".join(" ".join(str(e).split()) for e in chain)
    low = text.lower()
    names = [getattr(e, a, None) for e in chain for a in ("filename", "filename2")]
    full = bool(errnos & DISK_FULL_ERRNOS) or any(m in low for m in _FULL_TEXT)
    free = free_bytes(path)
    if not full:
        io_error = any(_is_library_io(e) for e in chain)
        named = any(_under(n, Path(path)) for n in names) or str(Path(path)) in text
        refused = bool(errnos & NOT_WRITABLE_ERRNOS) and (writing or errno.EROFS in errnos or named)
        output = any(m in low for m in _WRITE_TEXT) or any(_under(n, Path(path)) for n in names)
        if not (refused or output or (writing and io_error)):
            return None
        full = not errnos and free is not None and free < FULL_BELOW_BYTES
    if Path(path).is_dir():  # name the file that failed, where the error says which
        path = next((Path(os.fsdecode(n)) for n in names if _under(n, Path(path))), path)
    return OutputError(_output_message(Path(path), text, full, free))


def _output_message(path: Path, text: str, full: bool, free: int | None) -> str:
    detail = text[:200] + ("..." if len(text) > 200 else "")
    if full:
        low = free is not None and free < FULL_BELOW_BYTES
        left = f"{free / 2**20:.1f} MiB free on its filesystem; " if low else ""
        return (
            f"{path}: disk full, cannot write ({left}{detail}); free some space "
            "(or choose another --output), then rerun the same command to resume: finished "
            "scenes and blocks are kept"
        )
    return (
        f"{path}: cannot be written ({detail}); check the output directory's permissions and "
        "free space, then rerun the same command to resume: finished scenes and blocks are kept"
    )


@contextlib.contextmanager
def writing(path: str | os.PathLike[str]) -> Iterator[None]:
    """Within the block, ``path`` is being written: an I/O error raised there becomes the
    :class:`OutputError` of :func:`output_failure` (naming ``path``; the original chained),
    before any cleanup outside the block frees the space again.

    Raises:
        OutputError: a write of ``path`` failed (disk full, read-only, permissions).
    """
    try:
        yield
    except Exception as exc:
        err = output_failure(exc, path, writing=True)
        if err is None or err is exc:
            raise
        raise err from exc

"""A run's output folder on a local filesystem: atomic writes, the lock, stale files, work
folders and publication (the layout is :mod:`tilesegd.batch.layout`).

* **atomic**: ``run.json``, ``summary.csv`` and ``work.json`` are written through a temporary
  file and a rename (:func:`write_json_atomic`); a scene's outputs appear in one directory
  rename (:func:`publish`).
* **resume**: a scene's work folder is reused when its ``work.json`` records the same marker
  (fingerprint and input size / mtime); otherwise, or with ``--overwrite``, it is removed first
  (:func:`prepare_work`).
* **one writer**: a run holds ``DIR/.tilesegd/lock`` (:func:`output_lock`).

Never imports torch or the engine.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tilesegd import atomic
from tilesegd.batch.layout import DONE_LOG, WORK_DIR, WORK_JSON, work_dir
from tilesegd.errors import LockedError, OutputError, output_failure

log = logging.getLogger(__name__)


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to ``path`` through a temporary file and an atomic rename.

    Raises:
        OSError: the file cannot be written (the temporary file is removed; ``path`` keeps
            its previous content).
    """
    atomic.write_text(path, json.dumps(data, indent=2, default=str), fsync=True)


def output_error(output: Path, exc: OSError) -> OutputError:
    """The :class:`OutputError` (exit 6) for a file under ``output`` that could not be written
    (:func:`tilesegd.errors.output_failure`)."""
    return output_failure(exc, output, writing=True) or OutputError(
        f"{output}: cannot be written ({' '.join(str(exc).split())[:160]}); check its "
        "permissions and free space, then rerun the same command to resume"
    )


def make_output_dir(output: Path) -> None:
    """Create ``output`` and check that it is writable.

    Raises:
        OutputError: it cannot be created or written (exit 6).
    """
    try:
        output.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{output}: cannot create the output directory ({exc})") from None
    if not os.access(output, os.W_OK | os.X_OK):
        raise OutputError(
            f"{output}: the output directory is not writable; fix its permissions or choose "
            "another --output"
        )


@contextlib.contextmanager
def output_lock(output: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``DIR/.tilesegd/lock`` (released by the OS on a kill).

    Raises:
        LockedError: another run holds it. OutputError: the lock cannot be created.
    """
    lock_dir = output / WORK_DIR
    try:
        lock_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock_dir / "lock", os.O_RDWR | os.O_CREAT, 0o666)  # less the umask
    except OSError as exc:
        raise output_error(output, exc) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LockedError(
                f"{output}: another tilesegd run is writing to this output directory; wait for "
                "it to finish or choose another --output"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        os.close(fd)


def clean_stale(output: Path) -> None:
    """Remove what a killed run left behind: ``DIR/.*.tmp-*`` and ``DIR/.*.tmp``
    (:func:`tilesegd.atomic.write_text`: run.json, catalog.json, summary.csv), ``.*.tmp*``
    files in the scenes' work folders (half-written GeoTIFFs) and folders replaced by a publish
    (``DIR/.tilesegd/trash/``). Work stores are kept: they are how a half-done scene
    resumes."""
    stale = [*output.glob(".*.tmp-*"), *output.glob(".*.tmp")]
    stale += output.glob(f"{WORK_DIR}/work/*/.*.tmp*")
    stale += output.glob(f"{WORK_DIR}/trash/*")
    for p in stale:
        log.debug("removing stale %s", p)
        with contextlib.suppress(OSError):
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()


def prepare_work(output: Path, name: str, marker: dict[str, Any], discard: bool) -> Path:
    """The scene's work folder, ready to resume or start: kept when its ``work.json`` records
    ``marker`` (and not ``discard``, i.e. ``--overwrite``); otherwise removed first and started
    afresh with ``marker`` in ``work.json``.

    Raises:
        OSError: the folder or ``work.json`` cannot be written.
    """
    work = work_dir(output, name)
    if work.exists():
        try:
            kept = json.loads((work / WORK_JSON).read_text()) == marker and not discard
        except (OSError, ValueError):
            kept = False
        if kept:
            return work
        log.info("%s: discarding the half-done work (input, model or settings changed)", name)
        shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    write_json_atomic(work / WORK_JSON, marker)
    return work


def publish(work: Path, final: Path) -> Path:
    """Make a scene's finished work folder its final folder ``final`` in one directory rename.

    ``final`` never holds a mix of old and new outputs: a new folder is renamed in whole; an
    existing one (``--overwrite``, or left by a run killed before ``run.json`` recorded the
    scene) is swapped with the work folder atomically (Linux ``renameat2(RENAME_EXCHANGE)``), or,
    where that is not available, first moved to ``DIR/.tilesegd/trash/`` (then ``final`` is
    briefly absent, never partial). The old folder, ``work.json`` and ``blocks.done`` are then
    removed. The scene only counts as done once ``run.json`` says so (written after this).

    Raises:
        OSError: a rename failed (the work folder is left intact, so a rerun resumes).
    """
    if final.exists():
        if not exchange(work, final):
            trash = final.parent / WORK_DIR / "trash"
            trash.mkdir(parents=True, exist_ok=True)
            old = trash / f"{final.name}.{os.getpid()}"
            os.replace(final, old)
            os.replace(work, final)
            work = old
        shutil.rmtree(work, ignore_errors=True)  # after an exchange, ``work`` is the old folder
    else:
        os.replace(work, final)
    for bookkeeping in (DONE_LOG, WORK_JSON):
        (final / bookkeeping).unlink(missing_ok=True)
    return final


def exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux ``renameat2`` with ``RENAME_EXCHANGE``); False when the
    platform or filesystem cannot."""
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    rc = fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange)
    return rc == 0

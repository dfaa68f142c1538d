"""Where a scene's ``pred.zarr`` lives (a local folder or an object-storage prefix) and its
``blocks.done`` log: which blocks are finished, with their class-id pixel counts.

* **local**: ``blocks.done`` is an append-only file next to the store, one
  ``"<block id> <class-id pixels>"`` line per finished block, flushed and fsynced (a kill loses
  at most a half-written last line, cut off on reopening: :meth:`FileDoneLog.repair`);
* **object storage** (no append): ``blocks.done/`` is a prefix next to the store holding one
  empty object per finished block, named ``<block id>-<class-id pixels>``; one listing reads the
  whole log, and writers on other machines never touch each other's objects.

Either way a block is logged after its chunks are written, so a logged block is complete.
Never imports torch.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import shutil
import threading
from pathlib import Path
from typing import Any

from tilesegd.errors import writing
from tilesegd.storage.urls import STORES, RemotePath, parse_location

DONE_LOG = "blocks.done"


class FileDoneLog:
    """``blocks.done`` as an append-only local file (see the module docstring).

    Args:
        path: the log file.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()

    def clear(self) -> None:
        """Remove the log (a new store starts with no block done)."""
        self.path.unlink(missing_ok=True)

    def repair(self) -> None:
        """Cut a half-written last line (a kill or a full disk in mid-append) off the log, so
        the next id appended is not glued to it."""
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            with open(self.path, "r+b") as f:
                f.truncate(data.rfind(b"\n") + 1)

    def counts(self) -> dict[int, int | None]:
        """``{block id: class-id pixels}`` of the newline-terminated lines (``None`` for a line
        of an older log without a count)."""
        if not self.path.exists():
            return {}
        done: dict[int, int | None] = {}
        for line in self.path.read_text().split("\n")[:-1]:
            parts = line.split()
            if not parts or not all(p.isdigit() for p in parts) or len(parts) > 2:
                continue
            done[int(parts[0])] = int(parts[1]) if len(parts) == 2 else None
        return done

    def add(self, block_id: int, pixels: int) -> None:
        """Append one finished block (thread-safe), flushed to disk.

        Raises:
            OutputError: the log cannot be written.
        """
        with writing(self.path), self._lock, open(self.path, "a") as f:
            f.write(f"{block_id} {pixels}\n")
            f.flush()
            os.fsync(f.fileno())


class ObjectDoneLog:
    """``blocks.done/`` as one empty object per block on object storage (see the module
    docstring).

    Args:
        folder: the :class:`~tilesegd.storage.objects.ObjectFolder` of the log's prefix.
    """

    def __init__(self, folder: Any) -> None:
        self.folder = folder

    def clear(self) -> None:
        """Remove every entry."""
        self.folder.remove("", recursive=True)

    def repair(self) -> None:
        """Nothing to repair: an object is written whole or not at all."""

    def counts(self) -> dict[int, int | None]:
        """``{block id: class-id pixels}`` from one listing."""
        done: dict[int, int | None] = {}
        for key in self.folder.find(""):
            block, _, pixels = key.rpartition("/")[2].partition("-")
            if block.isdigit() and pixels.isdigit():
                done[int(block)] = int(pixels)
        return done

    def add(self, block_id: int, pixels: int) -> None:
        """Record one finished block (one object; safe from any thread or machine).

        Raises:
            OutputError: it cannot be written.
        """
        self.folder.put_bytes(f"{block_id}-{pixels}", b"")


_CLOSING: list[bool] = []


def close_at_exit() -> None:
    """Once per process, close zarr's object-store sessions at exit, before zarr stops its
    event loop (``atexit`` runs the later registration first)."""
    if not _CLOSING:
        import atexit

        from zarr.core.sync import sync

        from tilesegd.storage.objects import close_sessions

        _CLOSING.append(True)
        atexit.register(close_sessions, lambda coro: sync(coro, timeout=5))


class StorePlace:
    """Where one ``pred.zarr`` lives: a local folder, or a prefix on object storage.

    Args:
        path: the store's folder or URL (``s3://bucket/run/.tilesegd/work/scene/pred.zarr``).

    Attributes:
        remote: the store's :class:`~tilesegd.storage.urls.RemotePath`, or ``None`` (local).
        log: the store's ``blocks.done`` (next to the store).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        where = parse_location(path)
        self.remote = where if where is not None and where.scheme in STORES else None
        if self.remote is not None:
            from tilesegd.storage.objects import ObjectFolder

            parent = posixpath.dirname(self.remote.url.rstrip("/"))
            self.folder: Any = ObjectFolder(self.remote)
            self.log: FileDoneLog | ObjectDoneLog = ObjectDoneLog(
                ObjectFolder(RemotePath(f"{parent}/{DONE_LOG}/"))
            )
            self.path: Path | str = self.remote.url.rstrip("/")
        else:
            self.path = Path(path)
            self.log = FileDoneLog(self.path.parent / DONE_LOG)

    def __str__(self) -> str:
        return str(self.remote) if self.remote is not None else str(self.path)

    def zarr_store(self) -> Any:
        """What ``zarr.open_group`` takes: the folder, or a zarr ``FsspecStore`` on the
        store's filesystem (one object per chunk)."""
        if self.remote is None:
            return self.path
        from zarr.storage import FsspecStore

        from tilesegd.storage.objects import shared_filesystem

        fs = shared_filesystem(self.remote.scheme, asynchronous=True)
        close_at_exit()
        return FsspecStore(fs, path=self.folder.path().rstrip("/"), read_only=False)

    def writing(self) -> Any:
        """A context in which a failed write of the store becomes an
        :class:`~tilesegd.errors.OutputError` naming it (:func:`tilesegd.errors.writing` for a
        folder; for a URL, the request's fault: denied, missing bucket, unreachable...)."""
        return writing(self.path) if self.remote is None else self.folder.failing("")

    def exists(self) -> bool:
        """Whether a store's root metadata (``zarr.json``) is there."""
        if self.remote is None:
            return (self.path / "zarr.json").is_file()  # type: ignore[operator]
        return self.folder.read_bytes("zarr.json") is not None

    def remove(self, with_log: bool = False) -> None:
        """Remove the store (``with_log``: its ``blocks.done`` too, and the local folder that
        held both when it is left empty); a missing store is not an error."""
        if self.remote is None:
            shutil.rmtree(self.path, ignore_errors=True)
        else:
            self.folder.remove("", recursive=True)
        if with_log:
            self.log.clear()
            if self.remote is None:
                with contextlib.suppress(OSError):
                    self.path.parent.rmdir()  # type: ignore[union-attr]

"""A folder on object storage (``s3://bucket/prefix/``, ``gs://``, ``az://``) as a run's output
location: whole objects put, read, listed, copied and deleted through fsspec (s3fs, gcsfs,
adlfs), with tilesegd's timeouts and retries (:func:`tilesegd.storage.env.storage_options`).

Object stores have no rename and no append, so everything here writes one whole object at a time;
:meth:`ObjectFolder.create` is a conditional write (S3 ``If-None-Match: *``; gcsfs and adlfs
have their own), the one primitive a lock needs. Every failure is an
:class:`~tilesegd.errors.OutputError` naming the URL (secrets masked,
:func:`tilesegd.storage.faults.location_error`). Never imports torch.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tilesegd.errors import ConfigError, OutputError, TilesegdError
from tilesegd.storage.env import endpoint_text, storage_options
from tilesegd.storage.faults import detail, kind_of, location_error
from tilesegd.storage.urls import STORES, RemotePath, parse_location

log = logging.getLogger(__name__)


def output_location(value: Any) -> RemotePath | None:
    """The object-storage prefix ``--output`` names (``s3://bucket/prefix/``, with or without
    the trailing ``/``), or ``None`` for a local folder.

    Raises:
        ConfigError: a URL that cannot hold outputs (``https://``, a ``/vsi`` path, a bucket
            missing from the URL).
    """
    where = parse_location(value)
    if where is None:
        return None
    if where.scheme not in STORES or not where.bucket:
        raise ConfigError(
            f"{where}: --output must be a local folder or an object-storage prefix "
            "(s3://bucket/prefix/, gs://bucket/prefix/, az://container/prefix/); HTTP(S) URLs "
            "and GDAL /vsi paths are read-only"
        )
    return where.as_prefix()


_FILESYSTEMS: dict[str, Any] = {}
_FS_LOCK = threading.Lock()
_CLEANER: list[Any] = []  # the background deleter of ObjectFolder.remove_later


def shared_filesystem(scheme: str, asynchronous: bool = False) -> Any:
    """This process's fsspec filesystem for ``scheme`` with tilesegd's settings
    (:func:`tilesegd.storage.env.storage_options`), made once per set of settings and kept: its
    connections are reused by every request, and a changed environment (other credentials or
    endpoint) gets a new one. ``asynchronous``: the variant zarr's ``FsspecStore`` needs.

    Raises:
        ImportError: its package is missing (``tilesegd[gcs]``, ``tilesegd[azure]``).
    """
    import fsspec

    opts = {**storage_options(scheme), "asynchronous": asynchronous}
    key = json.dumps([scheme, opts, os.getpid()], sort_keys=True, default=str)
    with _FS_LOCK:
        if key not in _FILESYSTEMS:
            protocol = {"s3": "s3", "gs": "gcs", "az": "az"}[scheme]
            _FILESYSTEMS[key] = fsspec.get_filesystem_class(protocol)(**opts)
        return _FILESYSTEMS[key]


def close_sessions(run: Any) -> None:
    """Close the HTTP sessions of this process's asynchronous filesystems (s3fs's aiobotocore
    client), so that aiohttp does not report "Unclosed client session" at exit.

    Args:
        run: runs a coroutine to completion on the event loop the sessions were made on
            (for zarr's stores: ``zarr.core.sync.sync``).
    """
    with _FS_LOCK:
        found = [fs for fs in _FILESYSTEMS.values() if getattr(fs, "asynchronous", False)]
    for fs in found:
        client = getattr(fs, "_s3", None)  # s3fs; gcsfs / adlfs close theirs themselves
        if client is not None:
            try:
                run(client.close())
                fs._s3 = None
            except Exception as exc:  # exiting anyway: say why, never raise
                log.debug("closing %s session: %s", fs.protocol, exc)


class ObjectFolder:
    """A prefix on object storage, used like a folder of whole objects.

    Args:
        root: the prefix (``s3://bucket/prefix/``).

    Keys passed to the methods are relative to ``root`` (``"scene/mask.tif"``); :meth:`url`
    gives their full URL.
    """

    def __init__(self, root: RemotePath) -> None:
        self.root = root.as_prefix()
        self.scheme = self.root.scheme
        self._fs: Any = None

    @property
    def fs(self) -> Any:
        """The fsspec filesystem (made on first use; see
        :func:`tilesegd.storage.env.storage_options`).

        Raises:
            OutputError: its package is missing (``tilesegd[gcs]``, ``tilesegd[azure]``).
        """
        if self._fs is None:
            with self.failing(""):
                self._fs = shared_filesystem(self.scheme)
        return self._fs

    def __getstate__(self) -> dict[str, Any]:  # Dask pickles it: never the filesystem
        return {"root": self.root, "scheme": self.scheme, "_fs": None}

    def url(self, key: str = "") -> str:
        """``scheme://bucket/prefix/key``."""
        return self.root.url + key

    def path(self, key: str = "") -> str:
        """``bucket/prefix/key``: the path fsspec takes."""
        return self.root.store_path + key

    @contextmanager
    def failing(self, key: str, cls: type[TilesegdError] = OutputError) -> Iterator[None]:
        """Within the block, a failed request on ``key`` becomes a ``cls`` naming its URL."""
        try:
            yield
        except TilesegdError:
            raise
        except FileExistsError:
            raise
        except Exception as exc:
            where, kind = RemotePath(self.url(key)), kind_of(exc)
            if kind == "other":
                err = cls(
                    f"{where}: a request to {endpoint_text(self.scheme)} failed after its retries "
                    f"({type(exc).__name__}: {detail(exc)}); rerun the same command to resume"
                )
            else:
                err = location_error(where, exc, cls, option="--output")
            err.kind = kind  # type: ignore[attr-defined]
            raise err from exc

    def check(self) -> None:
        """Check that the bucket exists and the prefix can be listed and written (one small
        object put and deleted), before any scene.

        Raises:
            ConfigError: a missing bucket, access denied, an unreachable endpoint, a missing
                extra (exit 1).
        """
        probe = f".tilesegd/probe-{os.getpid()}"
        with self.failing("", ConfigError):
            self.fs.ls(self.root.bucket, detail=False)
            self.fs.pipe_file(self.path(probe), b"")
            self.fs.rm_file(self.path(probe))

    def read_bytes(self, key: str) -> bytes | None:
        """The object's bytes, or ``None`` when there is none.

        Raises:
            OutputError: it cannot be read (access denied, unreachable).
        """
        with self.failing(key):
            try:
                return self.fs.cat_file(self.path(key))
            except FileNotFoundError:
                return None

    def read_json(self, key: str) -> Any:
        """The object parsed as JSON, or ``None`` when it is missing or not JSON."""
        data = self.read_bytes(key)
        try:
            return None if data is None else json.loads(data)
        except ValueError:
            return None

    def put_bytes(self, key: str, data: bytes) -> None:
        """Write (replace) one whole object.

        Raises:
            OutputError: it cannot be written.
        """
        with self.failing(key):
            self.fs.pipe_file(self.path(key), data)

    def put_json(self, key: str, doc: Any) -> None:
        """Write ``doc`` as one whole JSON object (indented, as the local files are)."""
        self.put_bytes(key, json.dumps(doc, indent=2, default=str).encode())

    def create(self, key: str, data: bytes) -> bool:
        """Write the object only if there is none (a conditional put).

        Returns:
            ``False`` when an object is already there (nothing written).
        """
        path = self.path(key)
        try:
            with self.failing(key):
                try:
                    self.fs.pipe_file(path, data, mode="create")
                except TypeError:  # a filesystem without conditional writes: check, then put
                    if self.fs.exists(path):
                        raise FileExistsError(path) from None
                    self.fs.pipe_file(path, data)
        except FileExistsError:
            return False
        return True

    def put_file(self, local: Path, key: str) -> None:
        """Upload one local file whole (multipart for large files, s3fs's default)."""
        with self.failing(key):
            self.fs.put_file(str(local), self.path(key))

    def put_files(self, files: dict[str, Path]) -> None:
        """Upload local files whole, concurrently (fsspec's batched ``put``).

        Args:
            files: ``{key: local file}``.

        Raises:
            OutputError: an upload failed after its retries.
        """
        if files:
            keys = sorted(files)
            with self.failing(keys[0] if len(keys) == 1 else ""):
                self.fs.put([str(files[k]) for k in keys], [self.path(k) for k in keys])

    def exists(self, key: str) -> bool:
        """Whether the object (or a prefix with objects under it) exists."""
        with self.failing(key):
            return bool(self.fs.exists(self.path(key)))

    def find(self, key: str) -> list[str]:
        """Keys (relative to ``root``) of every object under ``key`` (a prefix), sorted."""
        with self.failing(key):
            self.fs.invalidate_cache()
            found = self.fs.find(self.path(key))
        base = self.path()
        return sorted(k[len(base) :] for k in found if k.startswith(base))

    def copy_tree(self, src: str, dst: str) -> None:
        """Server-side copy of every object under prefix ``src`` to prefix ``dst``, concurrently
        (fsspec's batched ``copy`` of two lists: no listing or directory check per object).

        Raises:
            OutputError: a copy failed after its retries.
        """
        keys = self.find(src)
        if keys:
            with self.failing(src):
                self.fs.copy([self.path(k) for k in keys],
                             [self.path(dst + k[len(src) :]) for k in keys])  # fmt: skip

    def remove_later(self, key: str) -> None:
        """Delete every object under prefix ``key`` in a background thread (one per process,
        joined at exit), off the caller's path: for clean-ups nothing waits for. A failure is
        logged, not raised; what it leaves is garbage under ``.tilesegd/``, never an output."""

        def remove() -> None:
            try:
                self.remove(key, recursive=True)
            except Exception as exc:
                log.warning("%s: could not remove it (%s); it is safe to delete", self.url(key),
                            exc)  # fmt: skip

        with _FS_LOCK:
            if not _CLEANER:
                from concurrent.futures import ThreadPoolExecutor

                _CLEANER.append(ThreadPoolExecutor(1, thread_name_prefix="tilesegd-cleanup"))
        _CLEANER[0].submit(remove)

    def remove(self, key: str, recursive: bool = False) -> None:
        """Delete one object (``recursive``: every object under the prefix); a missing one is
        not an error."""
        with self.failing(key):
            try:
                if recursive:
                    keys = [self.path(k) for k in self.find(key)]
                    if keys:
                        self.fs.rm(keys)
                else:
                    self.fs.rm_file(self.path(key))
            except FileNotFoundError:
                pass

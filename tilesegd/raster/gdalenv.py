"""GDAL settings for tilesegd's own raster I/O (a bounded block cache), opens of scenes local
or remote (:func:`open_raster`), and opens of plain frames without rasterio's
not-georeferenced warning."""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
import warnings
from collections.abc import Iterator
from typing import Any

from tilesegd.storage.env import OPEN_SETTINGS, configure_gdal
from tilesegd.storage.urls import parse_location
from tilesegd.warnfilter import WARNINGS_LOCK

log = logging.getLogger(__name__)

# GDAL's block cache defaults to 5 % of RAM and fills up as a large scene streams through it:
# peak RSS at 16384^2 and 32768^2 was 2.2 GB with the default (24 GB machine) and 1.0-1.3 GB
# with 256 MB, at the same throughput (benchmarks/RESULTS.md). Blocks are read once, so a small
# cache loses little: it only keeps halo tiles shared by neighbouring blocks.
GDAL_CACHE_MB = 256


def gdal_env(**options: Any):
    """A ``rasterio.Env`` with ``options`` and a ``GDAL_CACHEMAX`` of :data:`GDAL_CACHE_MB`
    megabytes, unless the user set ``GDAL_CACHEMAX`` in the environment (then theirs holds)."""
    import rasterio

    if "GDAL_CACHEMAX" not in os.environ:
        options.setdefault("GDAL_CACHEMAX", GDAL_CACHE_MB)
    return rasterio.Env(**options)


_OPEN_LOCK = threading.Lock()  # GDAL_DISABLE_READDIR_ON_OPEN is process-wide


def open_raster(path: Any) -> Any:
    """``rasterio.open(path)`` for reading a scene: a local file, or a location
    (:class:`~tilesegd.storage.urls.RemotePath`, ``s3://``, ``/vsis3/``...) read by range
    requests with the COG settings of :mod:`tilesegd.storage.env`.

    A remote scene is opened with ``GDAL_DISABLE_READDIR_ON_OPEN=EMPTY_DIR`` (GDAL lists no
    "directory" and probes no side-car file: one or two requests per open), set only while it
    opens: a local scene keeps its ``.tfw`` / ``.aux.xml`` side-cars. That setting is
    process-wide, so scene opens take turns (a lock; an open is short).

    Raises:
        rasterio.errors.RasterioIOError: GDAL cannot open it.
    """
    import rasterio
    from rasterio._env import del_gdal_config
    from rasterio.env import get_gdal_config, set_gdal_config

    location = parse_location(path)
    if location is None:
        with _OPEN_LOCK:
            return rasterio.open(path)
    configure_gdal()
    own = {k: v for k, v in OPEN_SETTINGS.items() if k not in os.environ}
    with _OPEN_LOCK:
        before = {k: get_gdal_config(k, normalize=False) for k in own}
        for k, v in own.items():
            set_gdal_config(k, v)
        try:
            return open_retrying(location)
        finally:
            for k, v in before.items():
                if v is None:
                    del_gdal_config(k)
                else:
                    set_gdal_config(k, v)


#: GDAL / curl messages of a failed open worth another try: a dropped connection, a timeout,
#: throttling or a server error (GDAL retries HTTP 5xx reads itself, not an open whose first
#: request got no answer)
TRANSIENT_OPEN_ERRORS = ("Empty reply from server", "Connection reset", "Recv failure",
                         "Send failure", "timed out", "Operation too slow",
                         "HTTP response code: 5", "HTTP response code: 429")  # fmt: skip
OPEN_ATTEMPTS = 4
OPEN_BACKOFF_S = 0.5


def open_retrying(location: Any) -> Any:
    """``rasterio.open(location)`` of a remote scene, tried again (:data:`OPEN_ATTEMPTS` in
    all, backoff :data:`OPEN_BACKOFF_S` doubled each time) when it fails on a transient fault
    (:data:`TRANSIENT_OPEN_ERRORS`); a retry bypasses GDAL's cache of the failed answer
    (:func:`forget_cached`). Called with the open lock held.

    Raises:
        rasterio.errors.RasterioIOError: it still fails, or fails for another reason.
    """
    import rasterio
    from rasterio.errors import RasterioIOError

    for attempt in range(OPEN_ATTEMPTS):
        try:
            return rasterio.open(location)
        except RasterioIOError as exc:
            if attempt == OPEN_ATTEMPTS - 1 or not any(
                t in str(exc) for t in TRANSIENT_OPEN_ERRORS
            ):
                raise
            log.info("%s: %s; opening it again", location, exc)
            time.sleep(OPEN_BACKOFF_S * 2**attempt)
            forget_cached(os.fspath(location))
    raise AssertionError("unreachable")  # pragma: no cover


def forget_cached(vsi_path: str) -> None:
    """Drop what GDAL's ``/vsicurl/``-family cache holds of ``vsi_path`` (its size, its
    regions: after a failed open, the empty answer), with GDAL's
    ``VSICurlPartialClearCache``, which rasterio does not wrap: called through ctypes on the
    GDAL library rasterio loaded (its wheel's ``rasterio.libs``, else the system's). Does
    nothing when that library cannot be found."""
    import ctypes
    import ctypes.util
    import glob

    import rasterio

    libs = glob.glob(os.path.join(os.path.dirname(os.path.dirname(rasterio.__file__)),
                                  "rasterio.libs", "libgdal*.so*"))  # fmt: skip
    name = libs[0] if libs else ctypes.util.find_library("gdal")
    if name is None:
        return
    try:
        fn = ctypes.CDLL(name).VSICurlPartialClearCache
    except (OSError, AttributeError):
        return
    fn.argtypes, fn.restype = [ctypes.c_char_p], None
    fn(vsi_path.encode())


@contextlib.contextmanager
def quiet_georef() -> Iterator[list[warnings.WarningMessage]]:
    """Open rasters inside the block without rasterio's ``NotGeoreferencedWarning``.

    A plain JPEG / PNG frame (or a GeoTIFF run with ``--allow-no-georef``) has no
    georeferencing by design, and rasterio warned at every open of it and of each output written
    without a CRS: 7 lines a frame under ``-q``. The run says once instead that such inputs get
    pixel coordinates (:func:`tilesegd.batch.runner.plan_scene`). Keep only opens inside the block:
    it holds :data:`tilesegd.warnfilter.WARNINGS_LOCK`, since :func:`warnings.catch_warnings`
    changes process-wide state.

    Yields:
        The ``NotGeoreferencedWarning`` messages caught (a list, filled when the block exits);
        every other warning is shown as usual.
    """
    from rasterio.errors import NotGeoreferencedWarning

    caught: list[warnings.WarningMessage] = []
    with WARNINGS_LOCK:
        seen: list[warnings.WarningMessage] = []
        try:
            with warnings.catch_warnings(record=True) as seen:
                warnings.simplefilter("always", NotGeoreferencedWarning)
                yield caught
        finally:
            for w in seen:
                if issubclass(w.category, NotGeoreferencedWarning):
                    caught.append(w)
                else:
                    warnings.showwarning(
                        w.message, w.category, w.filename, w.lineno, w.file, w.line
                    )

"""GDAL settings for tilesegd's own raster I/O (a bounded block cache), and opens of plain
frames without rasterio's not-georeferenced warning."""

from __future__ import annotations

import contextlib
import os
import threading
import warnings
from collections.abc import Iterator
from typing import Any

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


_WARNINGS_LOCK = threading.RLock()  # warnings.catch_warnings swaps process-wide state


@contextlib.contextmanager
def quiet_georef() -> Iterator[list[warnings.WarningMessage]]:
    """Open rasters inside the block without rasterio's ``NotGeoreferencedWarning``.

    A plain JPEG / PNG frame (or a GeoTIFF run with ``--allow-no-georef``) has no
    georeferencing by design, and rasterio warned at every open of it and of each output written
    without a CRS: 7 lines a frame under ``-q``. The run says once instead that such inputs get
    pixel coordinates (:func:`tilesegd.batch.runner.plan_scene`). Keep only opens inside the block:
    it holds a lock, since :func:`warnings.catch_warnings` changes process-wide state.

    Yields:
        The ``NotGeoreferencedWarning`` messages caught (a list, filled when the block exits);
        every other warning is shown as usual.
    """
    from rasterio.errors import NotGeoreferencedWarning

    caught: list[warnings.WarningMessage] = []
    with _WARNINGS_LOCK:
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

"""GDAL settings for tilesegd's own raster I/O (a bounded block cache)."""

from __future__ import annotations

import os
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

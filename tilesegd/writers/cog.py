"""Cloud-Optimized GeoTIFF masks, built block by block in bounded memory.

The finished Zarr mask is copied block by block into a tiled temporary GeoTIFF (with the colour
table, class names and the run's config as tags), nearest-neighbour overviews are built, and
GDAL's COG driver (``rasterio.shutil.copy(driver="COG")``) lays it out as a COG, which is then
renamed into place. GDAL streams every step through its block cache, so memory does not grow
with the scene.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tilesegd.gdalenv import gdal_env
from tilesegd.spec import NODATA, ClassInfo
from tilesegd.tiling import Block

# Fastest DEFLATE / ZSTD levels: class-id masks compress well at any level, and on a 8192^2
# 23-class mask DEFLATE level 1 took 0.66 s against 2.9 s at GDAL's default 6, for a file 16 %
# larger (2 threads; benchmarks/RESULTS.md). The compression is lossless either way.
COMPRESSION_LEVEL = {"DEFLATE": 1, "ZSTD": 1}


def overview_factors(height: int, width: int, tile: int = 512) -> list[int]:
    """Powers of two until the smaller overview fits in one ``tile``-pixel block."""
    factors, f = [], 2
    while max(height, width) / f >= tile / 2 and f <= 2**16:
        factors.append(f)
        f *= 2
    return factors


def write_cog(
    path: str | os.PathLike[str],
    blocks: Iterable[Block],
    read_block: Callable[[Block], np.ndarray],
    *,
    height: int,
    width: int,
    crs: Any,
    transform: Any,
    classes: Sequence[ClassInfo],
    tags: dict[str, Any] | None = None,
    compress: str = "deflate",
    on_block: Callable[[Block, np.ndarray], None] | None = None,
) -> Path:
    """Write a uint8 class-id COG (nodata 255, colour table, class names) atomically.

    Args:
        path: final ``mask.tif`` path (written as ``.<name>.tmp*`` beside it, then renamed).
        blocks: the scene's blocks (windows in pixels).
        read_block: returns a block's (h, w) uint8 ids.
        height, width: scene size in pixels.
        crs, transform: the input's georeferencing (``None`` for plain images).
        classes: names and colours for the colour table and tags.
        tags: extra GeoTIFF metadata (values JSON-encoded when not strings).
        compress: ``deflate``, ``zstd``, ``lzw`` or ``none``.
        on_block: also called with each block and its ids (e.g. to count areas in this pass).

    Raises:
        rasterio.errors.RasterioIOError / OSError: the file cannot be written (disk full).
    """
    import rasterio
    import rasterio.shutil
    from rasterio.enums import Resampling

    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-gtiff")
    tmp_cog = path.with_name(f".{path.name}.tmp-cog")
    comp = None if compress.lower() == "none" else compress.upper()
    profile = dict(
        driver="GTiff",
        height=height,
        width=width,
        count=1,
        dtype="uint8",
        nodata=NODATA,
        tiled=True,
        blockxsize=512,
        blockysize=512,
        BIGTIFF="IF_SAFER",
    )  # uncompressed: the COG step below compresses once (DEFLATE twice cost ~2x here)
    if crs is not None:
        profile.update(crs=crs, transform=transform)
    all_tags = {"CLASS_NAMES": json.dumps([c.name for c in classes])}
    all_tags.update({f"CLASS_{c.id}": c.name for c in classes})
    for k, v in (tags or {}).items():
        all_tags[k] = v if isinstance(v, str) else json.dumps(v)
    try:
        with gdal_env(GDAL_TIFF_INTERNAL_MASK=True):
            with rasterio.open(tmp, "w", **profile) as dst:
                for block in blocks:
                    ids = read_block(block)
                    dst.write(ids, 1, window=block.window.to_rasterio())
                    if on_block is not None:
                        on_block(block, ids)
                cmap = {i: (0, 0, 0, 0) for i in range(256)}
                cmap.update({c.id: (*c.color, 255) for c in classes})
                dst.write_colormap(1, cmap)
                dst.update_tags(**all_tags)
                dst.set_band_description(1, "class id")
            factors = overview_factors(height, width)
            if factors:
                with rasterio.open(tmp, "r+") as dst:
                    dst.build_overviews(factors, Resampling.nearest)
            opts = dict(
                BLOCKSIZE=512,
                OVERVIEWS="AUTO",
                OVERVIEW_RESAMPLING="NEAREST",
                BIGTIFF="IF_SAFER",
                COMPRESS=comp or "NONE",
                NUM_THREADS="ALL_CPUS",  # parallel block compression
            )
            if comp in COMPRESSION_LEVEL:
                opts["LEVEL"] = COMPRESSION_LEVEL[comp]
            rasterio.shutil.copy(tmp, tmp_cog, driver="COG", **opts)
        os.replace(tmp_cog, path)
    finally:
        for p in (tmp, tmp_cog):
            if p.exists():
                p.unlink()
    return path

"""Cloud-Optimized GeoTIFFs (class masks, confidence), built block by block in bounded memory.

A finished Zarr array is copied block by block into a tiled temporary GeoTIFF (with the run's
config as tags), overviews are built, and GDAL's COG driver (``rasterio.shutil.copy(driver=
"COG")``) lays it out as a COG, which is then renamed into place. GDAL streams every step
through its block cache, so memory does not grow with the scene.

Two kinds of raster (:data:`KINDS`) share this code:

- ``"mask"`` (``mask.tif``): uint8 class ids; a colour table, class-name tags, a raster
  attribute table in ``mask.tif.aux.xml`` and a paletted QGIS style ``mask.qml``
  (:mod:`tilesegd.outputs.style`); overviews by MODE (the majority class), so a zoomed-out mask
  keeps its classes instead of turning to speckle.
- ``"confidence"`` (``confidence.tif``): uint8 0-100 (the top class's probability in %); a
  magma QGIS style ``confidence.qml``; overviews by AVERAGE.

Both have nodata 255 (GDAL leaves it out of MODE and AVERAGE overviews). The sidecars are
written to temporary names and renamed into place just before the raster, so a finished
raster always has its sidecars.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tilesegd import atomic
from tilesegd.errors import writing
from tilesegd.model.spec import NODATA, ClassInfo
from tilesegd.outputs.readahead import read_ahead
from tilesegd.outputs.style import class_qml, ramp_qml, rat_aux_xml
from tilesegd.raster.gdalenv import gdal_env, quiet_georef
from tilesegd.raster.tiling import Block

# Fastest DEFLATE / ZSTD levels: class-id masks compress well at any level, and on a 8192^2
# 23-class mask DEFLATE level 1 took 0.66 s against 2.9 s at GDAL's default 6, for a file 16 %
# larger (2 threads; benchmarks/RESULTS.md). The compression is lossless either way.
COMPRESSION_LEVEL = {"DEFLATE": 1, "ZSTD": 1}


@dataclass(frozen=True)
class RasterKind:
    """How one kind of output raster is written.

    Attributes:
        resampling: GDAL overview resampling (``MODE``, ``AVERAGE``...).
        description: the band description.
        classes: class colour table, class-name tags, RAT and paletted style (else a 0-100
            colour-ramp style).
    """

    resampling: str
    description: str
    classes: bool


KINDS = {
    "mask": RasterKind("MODE", "class id", True),
    "confidence": RasterKind("AVERAGE", "confidence (%)", False),
}


def sidecar_paths(path: str | os.PathLike[str], kind: str = "mask") -> list[Path]:
    """The files :func:`write_cog` writes beside ``path`` for ``kind``: ``<stem>.qml`` and, for
    class masks, ``<name>.aux.xml`` (the raster attribute table)."""
    path = Path(path)
    files = [path.with_suffix(".qml")]
    if KINDS[kind].classes:
        files.append(path.with_name(path.name + ".aux.xml"))
    return files


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
    classes: Sequence[ClassInfo] = (),
    tags: dict[str, Any] | None = None,
    compress: str = "deflate",
    on_block: Callable[[Block, np.ndarray], None] | None = None,
    kind: str = "mask",
) -> Path:
    """Write a uint8 COG (nodata 255) and its style sidecars atomically.

    Args:
        path: final path, e.g. ``mask.tif`` (written as ``.<name>.tmp*`` beside it, then
            renamed); the sidecars are :func:`sidecar_paths`.
        blocks: the scene's blocks (windows in pixels).
        read_block: returns a block's (h, w) uint8 values: class ids for ``"mask"``, 0-100 for
            ``"confidence"``; 255 = nodata.
        height, width: scene size in pixels.
        crs, transform: the input's georeferencing (``None`` for plain images).
        classes: names and colours (colour table, tags, RAT, style); needed for ``"mask"``,
            unused for ``"confidence"``.
        tags: extra GeoTIFF metadata (values JSON-encoded when not strings).
        compress: ``deflate``, ``zstd``, ``lzw`` or ``none``.
        on_block: also called with each block and its values (e.g. to count areas in this pass).
        kind: ``"mask"`` or ``"confidence"`` (:data:`KINDS`).

    Raises:
        ValueError: an unknown ``kind``, or ``"mask"`` without classes.
        OutputError: a file cannot be written (disk full, permissions: the message names
            it); no partial file is left at ``path`` or its sidecars' paths. Errors of
            ``read_block`` and ``on_block`` pass through.
    """
    import rasterio.shutil

    if kind not in KINDS:
        raise ValueError(f"write_cog: unknown kind {kind!r}, expected one of {sorted(KINDS)}")
    spec = KINDS[kind]
    if spec.classes and not classes:
        raise ValueError("write_cog: a class mask needs its classes (names and colours)")
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-gtiff")
    tmp_cog = path.with_name(f".{path.name}.tmp-cog")
    styles = dict(zip(sidecar_paths(path, kind), _sidecar_texts(spec, classes), strict=True))
    staged = {p: p.with_name(f".{p.name}.tmp-style") for p in styles}
    comp = None if compress.lower() == "none" else compress.upper()
    placed: list[Path] = []
    try:  # each write names its file if it fails (a full disk: OutputError, exit 6)
        with gdal_env(GDAL_TIFF_INTERNAL_MASK=True):
            _write_gtiff(path, tmp, blocks, read_block, height, width, crs, transform, on_block)
            with writing(path):
                _decorate(tmp, spec, classes, tags)
                with quiet_georef():
                    rasterio.shutil.copy(tmp, tmp_cog, driver="COG", **_cog_options(comp, spec))
        for final, text in styles.items():
            with writing(final):
                staged[final].write_text(text, encoding="utf-8")
        for final, tmp_style in staged.items():  # sidecars first: a raster has its sidecars
            with writing(final):
                atomic.replace(tmp_style, final)
            placed.append(final)
        with writing(path):
            atomic.replace(tmp_cog, path)
    except BaseException:
        for p in placed:  # no sidecars without their raster
            p.unlink(missing_ok=True)
        raise
    finally:
        leftovers = [tmp, tmp_cog, *staged.values()]
        for p in [*leftovers, *(q.with_name(q.name + ".aux.xml") for q in (tmp, tmp_cog))]:
            p.unlink(missing_ok=True)
    return path


def _sidecar_texts(spec: RasterKind, classes: Sequence[ClassInfo]) -> list[str]:
    """Texts in :func:`sidecar_paths` order."""
    if spec.classes:
        return [class_qml(classes), rat_aux_xml(classes)]
    return [ramp_qml(0.0, 100.0)]


def _write_gtiff(
    path: Path,
    tmp: Path,
    blocks: Iterable[Block],
    read_block: Callable[[Block], np.ndarray],
    height: int,
    width: int,
    crs: Any,
    transform: Any,
    on_block: Callable[[Block, np.ndarray], None] | None,
) -> None:
    """Copy the blocks into ``tmp``, a tiled, uncompressed GeoTIFF (the COG step compresses
    once: DEFLATE twice cost ~2x here); its write failures are those of ``path``."""
    import rasterio

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
    )
    if crs is not None:
        profile.update(crs=crs, transform=transform)
    with writing(path), quiet_georef():  # no CRS: a plain frame's mask
        dst = rasterio.open(tmp, "w", **profile)
    try:
        for block, values in read_ahead(blocks, read_block):
            with writing(path):  # GDAL flushes its block cache here: a full disk shows here
                dst.write(values, 1, window=block.window.to_rasterio())
            if on_block is not None:
                on_block(block, values)
    finally:
        with writing(path):  # ...or here
            dst.close()


def _decorate(
    tmp: Path, spec: RasterKind, classes: Sequence[ClassInfo], tags: dict[str, Any] | None
) -> None:
    """Colour table (class masks), tags and band description; then the overviews."""
    import rasterio
    from rasterio.enums import Resampling

    all_tags: dict[str, str] = {}
    if spec.classes:
        all_tags["CLASS_NAMES"] = json.dumps([c.name for c in classes])
        all_tags.update({f"CLASS_{c.id}": c.name for c in classes})
    for k, v in (tags or {}).items():
        all_tags[k] = v if isinstance(v, str) else json.dumps(v)
    with quiet_georef():
        dst = rasterio.open(tmp, "r+")
    with dst:
        # Overviews first: GDAL computes each level from the one before, and on a palette band
        # it warned ("Computing overviews on palette index raster bands without a palette
        # ...") for every level past the first, as the overviews hold no colour table; MODE
        # of the ids is the same either way, and the COG step gives every level the palette.
        factors = overview_factors(dst.height, dst.width)
        if factors:
            dst.build_overviews(factors, Resampling[spec.resampling.lower()])
        if spec.classes:
            # a TIFF palette stores RGB only: GDAL reads every entry opaque but nodata's (255)
            cmap = {i: (0, 0, 0, 0) for i in range(256)}
            cmap.update({c.id: (*c.color, 255) for c in classes})
            dst.write_colormap(1, cmap)
        dst.update_tags(**all_tags)
        dst.set_band_description(1, spec.description)


def _cog_options(comp: str | None, spec: RasterKind) -> dict[str, Any]:
    """Creation options of the COG step (it reuses the overviews already built)."""
    opts: dict[str, Any] = dict(
        BLOCKSIZE=512,
        OVERVIEWS="AUTO",
        OVERVIEW_RESAMPLING=spec.resampling,
        BIGTIFF="IF_SAFER",
        COMPRESS=comp or "NONE",
        NUM_THREADS="ALL_CPUS",  # parallel block compression
    )
    if comp in COMPRESSION_LEVEL:
        opts["LEVEL"] = COMPRESSION_LEVEL[comp]
    return opts

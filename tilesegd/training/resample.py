"""Training at a chosen resolution: each pair's training grid, and reads resampled onto it.

``tilesegd train --gsd M`` trains at ``M`` metres per pixel and ``--scale F`` resamples plain
frames by ``F``; the model file records the result (``gsd``, ``scale``) so that ``tilesegd run``
can bring scenes to it. Resampling happens while a pair is read (into the
:class:`~tilesegd.training.data.PairStore` cache), never on disk.

Which factor a pair gets (:func:`plan_grids`):

* ``gsd`` and a georeferenced image: ``pixel size / gsd`` per axis, the pixel size from
  :func:`tilesegd.raster.gsd.pixel_size_m` of the image (geodesic for a geographic CRS); no resampling
  within :func:`tilesegd.raster.gsd.resample_factors`' 10 % tolerance (the one ``tilesegd run`` uses);
* otherwise ``scale`` on both axes (plain frames: their pixel size is unknown, so ``--gsd``
  alone takes them to be at ``gsd`` already, and ``--gsd M --scale F`` says that frames
  resampled by ``F`` are at ``M``);
* otherwise the native grid.

The training grid of an ``H x W`` pair resampled by ``(fy, fx)`` is
``max(1, round(H * fy)) x max(1, round(W * fx))`` over the same extent, and images and their
validity are read onto it by the rules of :mod:`tilesegd.raster.footprint`, those of
``tilesegd run``'s resampling, so image, mask and validity stay aligned:

* images: GDAL ``average`` when shrinking (each source pixel weighted by its share of the
  footprint; nodata and masked pixels excluded), ``bilinear`` when enlarging, through rasterio
  ``out_shape`` reads (the native image is never decoded whole into memory);
* validity: a training pixel is nodata when nodata covers more than half of its footprint
  (shrinking), or when the native pixel under its centre is nodata (enlarging);
* masks: class ids (after the class map, so colour-coded masks work too) by GDAL ``mode`` (the
  class covering most of the footprint) when shrinking, ``nearest`` when enlarging; the ignore
  id 255 is a value like the others, so a pixel mostly ignored stays ignored. Pixels whose image
  is nodata are then ignored.

Predictions made on a training grid go back to the native mask grid by nearest neighbour
(:func:`tilesegd.raster.regrid.to_native`), where validation scores them, as ``tilesegd eval`` does.
The grids and resampled reads live in :mod:`tilesegd.raster.regrid`, shared with ``tilesegd eval``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from tilesegd.errors import ConfigError
from tilesegd.raster.gsd import median_gsd
from tilesegd.raster.regrid import Grid, grid_for


def plan_grids(
    images: Sequence[str | Path], gsd: float | None = None, scale: float | None = None
) -> list[Grid]:
    """The training grid of every image (see the module docstring for the rule).

    Args:
        images: image files.
        gsd: training pixel size in metres, or ``None``.
        scale: resampling factor for images without georeferencing (for every image when
            ``gsd`` is ``None``), or ``None``.

    Raises:
        ConfigError: a non-positive ``gsd`` or ``scale``.
        DatasetError: an image cannot be opened.
    """
    if (gsd is not None and gsd <= 0) or (scale is not None and scale <= 0):
        raise ConfigError(f"gsd and scale must be > 0, got gsd {gsd}, scale {scale}")
    return [grid_for(p, gsd, scale) for p in images]


def training_gsd(grids: Sequence[Grid], gsd: float | None) -> float | None:
    """The training resolution to record in the model file, metres per pixel: ``gsd`` when
    given, else the median training-grid pixel size when every image is georeferenced, else
    ``None`` (plain frames without ``--gsd``)."""
    if gsd is not None:
        return float(gsd)
    if not grids or any(g.pixel_size is None for g in grids):
        return None
    return median_gsd(g.training_pixel_size for g in grids)

"""Images and masks at a model's resolution: each pair's grid, and reads resampled onto it.

A model trained at a chosen resolution (``tilesegd train --gsd M`` / ``--scale F``) records it
(``gsd``, ``scale``); training reads its pairs onto that grid, and ``tilesegd eval`` predicts
images on it and scores at the masks' native resolution. Which factor an image gets
(:func:`grid_factors`): ``pixel size / gsd`` per axis for a georeferenced image and a ``gsd``
(no resampling within :func:`tilesegd.raster.gsd.resample_factors`' 10 % tolerance, the one
``tilesegd run`` uses), otherwise ``scale`` on both axes, otherwise the native grid.

The grid of an ``H x W`` image resampled by ``(fy, fx)`` is
``max(1, round(H * fy)) x max(1, round(W * fx))`` over the same extent (pixel-is-area: grid row
``r`` covers native rows ``[r * H / h, (r + 1) * H / h)``), so image, mask and validity stay
aligned:

* images and validity: read by the rules of :mod:`tilesegd.raster.footprint`, those of
  ``tilesegd run``'s resampling: GDAL ``average`` when shrinking (nodata and masked pixels
  excluded), ``bilinear`` when enlarging, through rasterio ``out_shape`` reads (never decoded
  whole at native size); a pixel is nodata when nodata covers more than half of its footprint
  (shrinking) or the native pixel under its centre is nodata (enlarging);
* masks: class ids by GDAL ``mode`` when shrinking, ``nearest`` when enlarging; the ignore id
  255 is a value like the others.

Predictions made on a model grid go back to the native mask grid by nearest neighbour
(:func:`to_native`, :func:`tilesegd.raster.footprint.nearest_index`), where they are scored.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tilesegd.raster.footprint import (
    grid_shape,
    nearest_index,
    read_onto,
    shrinks,
    valid_onto,
    warp_pixels,
)
from tilesegd.raster.gsd import GsdXY, pixel_size_m, resample_factors
from tilesegd.raster.labels import band_indexes, open_raster, read_raster


@dataclass(frozen=True)
class Grid:
    """A pair's native grid and its training grid (pixels), and its native pixel size.

    Attributes:
        height, width: native size of the image (and of its mask).
        out_height, out_width: the training grid.
        pixel_size: native ``(across, down)`` metres per pixel; ``None`` without georeferencing.
    """

    height: int
    width: int
    out_height: int
    out_width: int
    pixel_size: GsdXY | None = None

    @property
    def shape(self) -> tuple[int, int]:
        """``(out_height, out_width)``: the training grid."""
        return self.out_height, self.out_width

    @property
    def native_shape(self) -> tuple[int, int]:
        """``(height, width)``: the native grid."""
        return self.height, self.width

    @property
    def resampled(self) -> bool:
        """Whether the training grid differs from the native one."""
        return self.shape != self.native_shape

    @property
    def training_pixel_size(self) -> GsdXY | None:
        """``(across, down)`` metres per training-grid pixel, if the image is georeferenced."""
        if self.pixel_size is None:
            return None
        return (
            self.pixel_size[0] * self.width / self.out_width,
            self.pixel_size[1] * self.height / self.out_height,
        )

    def native_rows(self, rows: slice) -> slice:
        """The native rows whose centres fall in training rows ``rows`` (a ``slice`` of
        training rows, ``None`` ends allowed): where validation scores a row strip."""
        r0 = rows.start or 0
        r1 = self.out_height if rows.stop is None else rows.stop
        f = self.out_height / self.height
        first = max(0, math.ceil(r0 / f - 0.5))
        last = min(self.height, math.ceil(r1 / f - 0.5))
        return slice(first, max(first, last))


def grid_factors(
    size: GsdXY | None, gsd: float | None, scale: float | None
) -> tuple[float, float] | None:
    """``(fy, fx)`` resampling factors of an image of native pixel size ``size`` (metres, or
    ``None`` without georeferencing) for a model at ``gsd`` metres or ``scale``: the GSD rule
    when both sizes are known (:func:`tilesegd.raster.gsd.resample_factors`, 10 % tolerance), else
    ``scale`` on both axes, else ``None`` (the native grid)."""
    if gsd is not None and size is not None:
        return resample_factors(size, gsd)
    if scale is not None and scale != 1.0:
        return scale, scale
    return None


def grid_for(path: str | Path, gsd: float | None = None, scale: float | None = None) -> Grid:
    """The :class:`Grid` of one image (only its header is read).

    Raises:
        DatasetError: the file cannot be opened.
    """
    with open_raster(path) as ds:
        h, w = int(ds.height), int(ds.width)
        size = pixel_size_m(ds.crs, ds.transform, h, w) if ds.crs else None
    f = grid_factors(size, gsd, scale)
    if f is None:
        return Grid(h, w, h, w, size)
    return Grid(h, w, *grid_shape((h, w), f), size)


def read_valid(path: str | Path) -> np.ndarray:
    """(H, W) bool native validity of an image (GDAL's dataset mask; no pixel is decoded when
    the file declares every pixel valid).

    Raises:
        DatasetError: the file cannot be read.
    """
    from rasterio.enums import MaskFlags

    with open_raster(path) as ds:
        if all(MaskFlags.all_valid in f for f in ds.mask_flag_enums):
            return np.ones((ds.height, ds.width), bool)
        return ds.dataset_mask() > 0


def read_image(
    path: str | Path, grid: Grid, bands: Sequence[int] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Read an image onto its model (training) grid.

    Args:
        path: the image file.
        grid: its :class:`Grid`.
        bands: 1-based bands to read (default: all).

    Returns:
        ``(image (C, h, w) native dtype, valid (h, w) bool)`` with ``(h, w) = grid.shape``,
        by the rules of :mod:`tilesegd.raster.footprint`: GDAL average (shrinking, nodata
        excluded) or bilinear (enlarging); nodata where nodata covers more than half of the
        footprint (shrinking) or the native pixel under the centre is nodata (enlarging).

    Raises:
        DatasetError: the file cannot be read, or a band number is out of range.
    """
    if not grid.resampled:
        return read_raster(Path(path), bands)
    with open_raster(path) as ds:
        idx = band_indexes(path, ds.count, bands)
        image = read_onto(ds, idx, grid.native_shape, grid.shape)
        return image, valid_onto(ds, grid.native_shape, grid.shape)


def resample_array(array: np.ndarray, shape: tuple[int, int], how: str) -> np.ndarray:
    """Resample a 2-D array onto an ``(h, w)`` grid over the same extent with GDAL's warper
    (:func:`tilesegd.raster.footprint.warp_pixels`).

    Args:
        array: (H, W) numeric array.
        shape: ``(h, w)`` target size, pixels.
        how: a GDAL resampling name (``average``, ``mode``, ``nearest``...).

    Returns:
        (h, w) array of ``array``'s dtype.
    """
    return warp_pixels(array, shape, how)


def resample_ids(ids: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Class ids (H, W) uint8 onto an ``(h, w)`` grid: GDAL mode (majority of each footprint,
    weighted by coverage) when shrinking, nearest when enlarging; 255 (ignore) is kept like
    any class id."""
    if ids.shape == tuple(shape):
        return ids
    return resample_array(ids, shape, "mode" if shrinks(ids.shape, shape) else "nearest")


def to_native(ids: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bring (h, w) class ids back to an ``(H, W)`` grid over the same extent by nearest
    neighbour (the grid pixel under each native pixel's centre,
    :func:`tilesegd.raster.footprint.nearest_index`)."""
    h, w = ids.shape
    rows = nearest_index(shape[0], h, 0, shape[0])
    cols = nearest_index(shape[1], w, 0, shape[1])
    return ids[rows[:, None], cols[None, :]]

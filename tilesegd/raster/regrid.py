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

* images: GDAL ``average`` when shrinking (nodata and masked pixels excluded), ``bilinear``
  when enlarging, through rasterio ``out_shape`` reads (never decoded whole at native size);
* validity: a pixel is nodata when nodata covers half or more of its footprint (the average of
  GDAL's dataset mask), the rule of ``tilesegd run``'s resampling;
* masks: class ids by GDAL ``mode`` when shrinking, ``nearest`` when enlarging; the ignore id
  255 is a value like the others.

Predictions made on a model grid go back to the native mask grid by nearest neighbour
(:func:`to_native`), where they are scored.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tilesegd.raster.gsd import GsdXY, pixel_size_m, resample_factors
from tilesegd.raster.labels import band_indexes, open_raster, read_raster

# Any CRS serves for a pure pixel-grid resample with GDAL's warper (source and destination share
# it, so nothing is reprojected); rasterio.warp.reproject insists on one.
_PIXEL_CRS = "EPSG:3857"


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
    return Grid(h, w, max(1, round(h * f[0])), max(1, round(w * f[1])), size)


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
        ``(image (C, h, w) native dtype, valid (h, w) bool)`` with ``(h, w) = grid.shape``:
        GDAL average (shrinking, nodata excluded) or bilinear (enlarging); valid where nodata
        covers less than half of the footprint.

    Raises:
        DatasetError: the file cannot be read, or a band number is out of range.
    """
    from rasterio.enums import MaskFlags, Resampling

    if not grid.resampled:
        return read_raster(Path(path), bands)
    h, w = grid.shape
    shrink = h * w < grid.height * grid.width
    with open_raster(path) as ds:
        how = Resampling.average if shrink else Resampling.bilinear
        idx = band_indexes(path, ds.count, bands)
        image = ds.read(indexes=idx, out_shape=(len(idx), h, w), resampling=how)
        if all(MaskFlags.all_valid in f for f in ds.mask_flag_enums):
            return image, np.ones((h, w), bool)
        native = (ds.dataset_mask() > 0).astype(np.float32)
    return image, resample_array(native, (h, w), "average") >= 0.5


def resample_array(array: np.ndarray, shape: tuple[int, int], how: str) -> np.ndarray:
    """Resample a 2-D array onto an ``(h, w)`` grid over the same extent with GDAL's warper.

    Args:
        array: (H, W) numeric array.
        shape: ``(h, w)`` target size, pixels.
        how: a GDAL resampling name (``average``, ``mode``, ``nearest``...).

    Returns:
        (h, w) array of ``array``'s dtype.
    """
    from affine import Affine
    from rasterio.crs import CRS
    from rasterio.enums import Resampling
    from rasterio.warp import reproject

    h, w = shape
    out = np.zeros((h, w), array.dtype)
    crs = CRS.from_string(_PIXEL_CRS)
    reproject(
        np.ascontiguousarray(array),
        out,
        src_transform=Affine.identity(),
        src_crs=crs,
        dst_transform=Affine.scale(array.shape[1] / w, array.shape[0] / h),
        dst_crs=crs,
        resampling=Resampling[how],
    )
    return out


def resample_ids(ids: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Class ids (H, W) uint8 onto an ``(h, w)`` grid: GDAL mode (majority of each footprint,
    weighted by coverage) when shrinking, nearest when enlarging; 255 (ignore) is kept like
    any class id."""
    if ids.shape == tuple(shape):
        return ids
    shrink = shape[0] * shape[1] < ids.size
    return resample_array(ids, shape, "mode" if shrink else "nearest")


def to_native(ids: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bring (h, w) class ids back to an ``(H, W)`` grid over the same extent by nearest
    neighbour (the training pixel under each native pixel's centre)."""
    h, w = ids.shape
    rows = np.minimum(((np.arange(shape[0]) + 0.5) * h / shape[0]).astype(np.int64), h - 1)
    cols = np.minimum(((np.arange(shape[1]) + 0.5) * w / shape[1]).astype(np.int64), w - 1)
    return ids[rows[:, None], cols[None, :]]

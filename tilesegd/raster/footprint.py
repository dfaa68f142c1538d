"""The rules of a raster read onto another grid over the same extent, in one place.

``tilesegd run`` reads scenes onto a model grid (:mod:`tilesegd.raster.resample`) and
``tilesegd eval`` / training read image pairs onto one (:mod:`tilesegd.raster.regrid`); both
follow these rules, so a model sees the same pixels in either.

A native ``H x W`` raster resampled by ``(fy, fx)`` has the ``h x w`` grid
``max(1, round(H * fy)) x max(1, round(W * fx))`` over the same extent (:func:`grid_shape`;
pixel-is-area: grid row ``r`` covers native rows ``[r * H / h, (r + 1) * H / h)``):

* **Shrinking** is ``h * w < H * W`` (:func:`shrinks`); the data are read by GDAL ``average``
  when shrinking (nodata values left out of the averages), ``bilinear`` otherwise
  (:func:`read_onto`).
* **Nodata** (:func:`valid_onto`): when shrinking, a grid pixel is nodata when less than half
  of its footprint is valid (the native validity averaged by GDAL's warper,
  :func:`rasterio.warp.reproject`); otherwise when the native pixel under its centre is
  nodata. A raster whose mask flags say every pixel is valid reads as all valid.
* **Back to the native grid** (:func:`nearest_index`): each native pixel takes the grid pixel
  under its centre, in exact integer arithmetic (a centre on a boundary takes the next pixel,
  as GDAL's ``nearest`` does).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from tilesegd.raster.tiling import Win

# Any CRS serves for a pure pixel-grid resample with GDAL's warper (source and destination share
# it, so nothing is reprojected); rasterio.warp.reproject insists on one.
PIXEL_CRS = "EPSG:3857"


def grid_shape(native: tuple[int, int], factors: tuple[float, float]) -> tuple[int, int]:
    """The (h, w) grid of an (H, W) raster resampled by ``factors`` (fy, fx):
    ``max(1, round(H * fy)) x max(1, round(W * fx))``."""
    return max(1, round(native[0] * factors[0])), max(1, round(native[1] * factors[1]))


def shrinks(native: tuple[int, int], grid: tuple[int, int]) -> bool:
    """Whether the ``grid`` (h, w) has fewer pixels than the ``native`` (H, W) raster."""
    return grid[0] * grid[1] < native[0] * native[1]


def data_resampling(shrink: bool) -> Any:
    """GDAL's resampling of image data onto a grid: ``average`` when shrinking, else
    ``bilinear`` (a :class:`rasterio.enums.Resampling`)."""
    from rasterio.enums import Resampling

    return Resampling.average if shrink else Resampling.bilinear


def source_window(native: tuple[int, int], grid: tuple[int, int], win: Win) -> Any:
    """The floating-point native window (a :class:`rasterio.windows.Window`) of grid window
    ``win`` (which lies inside the grid)."""
    from rasterio.windows import Window

    sy, sx = native[0] / grid[0], native[1] / grid[1]
    return Window(win.col_off * sx, win.row_off * sy, win.width * sx, win.height * sy)


def read_onto(
    ds: Any,
    bands: Sequence[int],
    native: tuple[int, int],
    grid: tuple[int, int],
    win: Win | None = None,
) -> np.ndarray:
    """Bands of an open rasterio dataset read onto a grid by GDAL (see the module docstring).

    Args:
        ds: the open dataset, of size ``native`` (H, W).
        bands: 1-based band numbers.
        grid: (h, w) of the whole grid.
        win: the grid window to read (inside the grid), or ``None`` for the whole grid.

    Returns:
        (C, h', w') array of the dataset's dtype, ``(h', w')`` the window's size.

    Raises:
        rasterio.errors.RasterioError: GDAL cannot decode the pixels.
    """
    shape = grid if win is None else (win.height, win.width)
    fw = None if win is None else source_window(native, grid, win)
    how = data_resampling(shrinks(native, grid))
    return ds.read(list(bands), window=fw, out_shape=(len(bands), *shape), resampling=how)


def valid_onto(
    ds: Any, native: tuple[int, int], grid: tuple[int, int], win: Win | None = None
) -> np.ndarray:
    """(h', w') bool validity of grid window ``win`` (``None``: the whole grid) of an open
    rasterio dataset: the half-footprint rule when shrinking, the pixel under each centre
    otherwise (see the module docstring).

    Raises:
        rasterio.errors.RasterioError: GDAL cannot decode the dataset's mask.
    """
    from rasterio.enums import MaskFlags, Resampling
    from rasterio.windows import Window

    shape = grid if win is None else (win.height, win.width)
    if all(MaskFlags.all_valid in f for f in ds.mask_flag_enums):
        return np.ones(shape, bool)
    fw = None if win is None else source_window(native, grid, win)
    if not shrinks(native, grid):
        return ds.dataset_mask(window=fw, out_shape=shape, resampling=Resampling.nearest) > 0
    if fw is None:
        fw = Window(0, 0, native[1], native[0])
    c0, r0 = math.floor(fw.col_off), math.floor(fw.row_off)
    c1 = min(native[1], math.ceil(fw.col_off + fw.width))
    r1 = min(native[0], math.ceil(fw.row_off + fw.height))
    mask = ds.dataset_mask(window=Window(c0, r0, c1 - c0, r1 - r0))
    step = (native[0] / grid[0], native[1] / grid[1])
    frac = warp_pixels((mask > 0).astype(np.float32), shape, "average",
                       src_origin=(r0, c0), dst_origin=(fw.row_off, fw.col_off), step=step)  # fmt: skip
    return frac >= 0.5


def warp_pixels(
    array: np.ndarray,
    shape: tuple[int, int],
    how: str,
    *,
    src_origin: tuple[float, float] = (0, 0),
    dst_origin: tuple[float, float] = (0.0, 0.0),
    step: tuple[float, float] | None = None,
) -> np.ndarray:
    """Resample a 2-D array onto an ``(h, w)`` grid with GDAL's warper, in pixel space.

    Args:
        array: (H', W') numeric array whose pixel (0, 0) is native pixel ``src_origin``
            (row, col).
        shape: ``(h, w)`` of the output.
        how: a GDAL resampling name (``average``, ``mode``, ``nearest``...).
        dst_origin: the native (row, col), fractional, of the output's corner.
        step: native (rows, cols) per output pixel; default ``array``'s size over ``shape``
            (the same extent).

    Returns:
        (h, w) array of ``array``'s dtype.
    """
    from affine import Affine
    from rasterio.crs import CRS
    from rasterio.enums import Resampling
    from rasterio.warp import reproject

    h, w = shape
    sy, sx = step or (array.shape[0] / h, array.shape[1] / w)
    out = np.zeros((h, w), array.dtype)
    crs = CRS.from_string(PIXEL_CRS)
    reproject(
        np.ascontiguousarray(array),
        out,
        src_transform=Affine.translation(src_origin[1], src_origin[0]),
        src_crs=crs,
        dst_transform=Affine.translation(dst_origin[1], dst_origin[0]) * Affine.scale(sx, sy),
        dst_crs=crs,
        resampling=Resampling[how],
    )
    return out


def nearest_index(n_native: int, n_grid: int, start: int, stop: int) -> np.ndarray:
    """(stop - start,) int64: the grid index under the centre of native pixels
    ``start..stop-1`` along one axis of ``n_native`` native and ``n_grid`` grid pixels:
    ``floor((i + 0.5) * n_grid / n_native)``, exactly."""
    i = np.arange(start, stop, dtype=np.int64)
    return np.minimum((2 * i + 1) * n_grid // (2 * n_native), n_grid - 1)

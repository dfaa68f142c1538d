"""Windowed reads of raw pixels and validity masks, thread-safe, padded outside the scene.

Sources return ``(data, valid)`` for any window, even one reaching outside the raster:
``data`` is (C, h, w) in the raster's own dtype (uint8 stays uint8 until the device) and
``valid`` is (h, w) bool, False for nodata (nodata value, alpha band or internal mask, through
GDAL's dataset mask: ``rasterio.DatasetReader.dataset_mask``), NaN/Inf, and padding.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Protocol

import numpy as np

from tilesegd.errors import InputError
from tilesegd.raster.gdalenv import quiet_georef
from tilesegd.raster.scene import Scene
from tilesegd.raster.tiling import Win, clip_window


class Source(Protocol):
    """Anything the pipeline can read windows from."""

    height: int
    width: int

    def read(self, win: Win) -> tuple[np.ndarray, np.ndarray]:
        """Return ``(data (C, h, w), valid (h, w) bool)`` for ``win`` (scene pixels)."""
        ...


def finite(data: np.ndarray, valid: np.ndarray) -> None:
    """In place: NaN / Inf pixels of float ``data`` (C, h, w) become invalid (and 0)."""
    if data.dtype.kind == "f":
        valid &= np.isfinite(data).all(axis=0)
        data[:, ~valid] = 0


def _gdal_detail(exc: BaseException) -> str:
    """GDAL's own message (rasterio's is often "Read failed. See previous exception"), one line."""
    text = str(exc.__cause__ or exc)
    return " ".join(text.split())[:160]


class ArraySource:
    """A source over an in-memory image (C, H, W) and optional validity mask (H, W) bool."""

    def __init__(self, image: np.ndarray, valid: np.ndarray | None = None) -> None:
        if image.ndim == 2:
            image = image[None]
        self.image = image
        self.valid = valid
        self.count, self.height, self.width = image.shape

    def read(self, win: Win) -> tuple[np.ndarray, np.ndarray]:
        """See :class:`Source`."""
        inner, (dr, dc) = clip_window(win, self.height, self.width)
        data = np.zeros((self.count, win.height, win.width), self.image.dtype)
        valid = np.zeros((win.height, win.width), bool)
        if inner.height and inner.width:
            rows, cols = inner.slices
            dst = (slice(dr, dr + inner.height), slice(dc, dc + inner.width))
            data[(slice(None), *dst)] = self.image[:, rows, cols]
            valid[dst] = True if self.valid is None else self.valid[rows, cols]
        finite(data, valid)
        return data, valid


class SceneSource:
    """Thread-safe windowed reader of a :class:`~tilesegd.raster.scene.Scene` (one rasterio
    dataset handle per thread, as GDAL handles are not thread-safe).

    Args:
        scene: the profiled scene.
        bands: 1-based band numbers to read, in model input order.
    """

    def __init__(self, scene: Scene, bands: tuple[int, ...]) -> None:
        self.scene = scene
        self.bands = list(bands)
        self.height, self.width = scene.height, scene.width
        self._local = threading.local()
        self._handles: list = []
        self._lock = threading.Lock()

    def _ds(self):
        ds = getattr(self._local, "ds", None)
        if ds is None:
            import rasterio

            with quiet_georef():  # a plain frame: the run said so once
                ds = rasterio.open(self.scene.path)
            self._local.ds = ds
            with self._lock:
                self._handles.append(ds)
        return ds

    def read(self, win: Win) -> tuple[np.ndarray, np.ndarray]:
        """See :class:`Source`.

        Raises:
            InputError: GDAL fails to decode the window (truncated or corrupt file).
        """
        inner, (dr, dc) = clip_window(win, self.height, self.width)
        data = np.zeros((len(self.bands), win.height, win.width), self.scene.dtype)
        valid = np.zeros((win.height, win.width), bool)
        if inner.height and inner.width:
            rw = inner.to_rasterio()
            dst = (slice(dr, dr + inner.height), slice(dc, dc + inner.width))
            with self.decoding(inner):
                ds = self._ds()
                data[(slice(None), *dst)] = ds.read(self.bands, window=rw)
                if self.scene.has_mask:
                    valid[dst] = ds.dataset_mask(window=rw) > 0
                else:
                    valid[dst] = True
        finite(data, valid)
        return data, valid

    def valid(self, win: Win) -> np.ndarray:
        """(h, w) bool validity of ``win`` exactly as :meth:`read` gives it (dataset mask, and
        NaN / Inf of the bands in float imagery; False outside the scene), decoding the bands
        only for float imagery: the scene-grid nodata of outputs made on another grid.

        Raises:
            InputError: GDAL fails to decode the window (truncated or corrupt file).
        """
        if self.scene.dtype.startswith("float"):
            return self.read(win)[1]
        inner, (dr, dc) = clip_window(win, self.height, self.width)
        valid = np.zeros((win.height, win.width), bool)
        if inner.height and inner.width:
            dst = (slice(dr, dr + inner.height), slice(dc, dc + inner.width))
            if not self.scene.has_mask:
                valid[dst] = True
            else:
                with self.decoding(inner):
                    valid[dst] = self._ds().dataset_mask(window=inner.to_rasterio()) > 0
        return valid

    @contextlib.contextmanager
    def decoding(self, inner: Win) -> Iterator[None]:
        """Turn GDAL's errors while decoding ``inner`` into an :class:`InputError` naming the
        file and the pixels."""
        from rasterio.errors import RasterioError

        try:
            yield
        except RasterioError as exc:
            raise InputError(
                f"{self.scene.path}: cannot decode pixels at rows {inner.row_off}-"
                f"{inner.row_off + inner.height}, cols {inner.col_off}-"
                f"{inner.col_off + inner.width} ({_gdal_detail(exc)}); the file is probably "
                "truncated or corrupt: re-copy it"
            ) from None

    def close(self) -> None:
        """Close every thread's dataset handle."""
        with self._lock:
            for ds in self._handles:
                ds.close()
            self._handles.clear()

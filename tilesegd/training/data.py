"""Training data: decoded pairs (cached), the dataset scan, and the input scale.

Class maps, pairing and whole-raster reads are in :mod:`tilesegd.raster.labels` (shared with
``tilesegd eval``). Pairs are read onto their training grid (native, or resampled by
``--gsd`` / ``--scale``: :mod:`tilesegd.training.resample`); large images are never resized down
to one tile: training tiles are random windows of that grid (scale jitter resamples a window of
``tile * s`` pixels, ``s`` in ``[1 - j, 1 + j]``, to the tile).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from tilesegd.errors import DatasetError
from tilesegd.raster.labels import IGNORE_INDEX, ClassMap, Pair, read_raster
from tilesegd.raster.regrid import Grid, read_image, read_valid, resample_ids
from tilesegd.training.resample import plan_grids
from tilesegd.training.split import Region, as_region

log = logging.getLogger(__name__)


def input_scale_for(dtype: np.dtype) -> float:
    """Raw -> [0, 1] divisor by dtype: 255 (uint8), 65535 (uint16: the full bit depth, so the
    scale never depends on the sample; the dataset mean/std then normalise the real range),
    32767 (int16), 1 (floats)."""
    dt = np.dtype(dtype)
    return {"uint8": 255.0, "uint16": 65535.0, "int16": 32767.0}.get(dt.name, 1.0)


class PairStore:
    """Decoded pairs on their training grids, with an LRU cache bounded in bytes.

    ``get(i)`` returns ``(image (C, h, w) native dtype, ids (h, w) uint8)`` on pair ``i``'s
    training grid (``grids[i].shape``; the native grid unless resampled, see
    :mod:`tilesegd.training.resample`), with ids set to :data:`IGNORE_INDEX` where the image is
    nodata. ``native_ids(i)`` returns the (H, W) ids on the mask's own grid, for scoring.

    Args:
        pairs: the image/mask pairs.
        classmap: the mask coding.
        cache_mb: cache size (MiB) for decoded pairs.
        grids: each pair's :class:`~tilesegd.training.resample.Grid` (default: native, read from
            the headers).
    """

    def __init__(
        self,
        pairs: Sequence[Pair],
        classmap: ClassMap,
        cache_mb: float = 4096,
        grids: Sequence[Grid] | None = None,
    ) -> None:
        self.pairs = list(pairs)
        self.classmap = classmap
        self.grids = list(grids) if grids is not None else plan_grids([p.image for p in pairs])
        self.cache_bytes = int(cache_mb * 2**20)
        self._cache: OrderedDict[tuple[str, int], tuple[np.ndarray, ...]] = OrderedDict()
        self._used = 0

    def __len__(self) -> int:
        return len(self.pairs)

    def _cached(self, key: tuple[str, int], load: Callable[[], tuple[np.ndarray, ...]]) -> Any:
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        item = load()
        size = sum(a.nbytes for a in item)
        while self._cache and self._used + size > self.cache_bytes:
            _, old = self._cache.popitem(last=False)
            self._used -= sum(a.nbytes for a in old)
        if size <= self.cache_bytes:
            self._cache[key] = item
            self._used += size
        return item

    def _mask_ids(self, i: int) -> np.ndarray:
        """(H, W) native class ids of pair ``i``'s mask (not yet ignored where nodata)."""
        pair, grid = self.pairs[i], self.grids[i]
        raw, _ = read_raster(pair.mask)
        if raw.shape[1:] != grid.native_shape:
            raise DatasetError(
                f"{pair.mask}: mask is {raw.shape[2]}x{raw.shape[1]} but image "
                f"{pair.image.name} is {grid.width}x{grid.height} (WxH); "
                "masks must be pixel-aligned with their images"
            )
        return self.classmap.encode(raw, pair.mask)

    def _load(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        grid = self.grids[i]
        image, valid = read_image(self.pairs[i].image, grid)
        ids = resample_ids(self._mask_ids(i), grid.shape)
        ids[~valid] = IGNORE_INDEX
        return image, ids

    def get(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """``(image (C, h, w), ids (h, w) uint8)`` of pair ``i`` on its training grid."""
        return self._cached(("train", i), lambda: self._load(i))

    def native_ids(self, i: int) -> np.ndarray:
        """(H, W) uint8 ids of pair ``i`` on the mask's native grid (ignored where the image is
        nodata); the same array as ``get(i)[1]`` when the pair is not resampled."""
        if not self.grids[i].resampled:
            return self.get(i)[1]

        def load() -> tuple[np.ndarray]:
            ids = self._mask_ids(i)
            ids[~read_valid(self.pairs[i].image)] = IGNORE_INDEX
            return (ids,)

        return self._cached(("native", i), load)[0]


@dataclass
class DatasetStats:
    """What a scan of the training pairs found.

    Attributes:
        dtype: the images' dtype name (all must agree).
        bands: band count (all must agree).
        input_scale: see :func:`input_scale_for`.
        mean, std: per-channel statistics of ``raw / input_scale`` over valid pixels
            (every 4th row and column).
        class_pixels: (K,) int64 labelled pixels per class id.
        pixels: (n,) labelled pixels per training image or region (in the order given).
    """

    dtype: str
    bands: int
    input_scale: float
    mean: list[float]
    std: list[float]
    class_pixels: np.ndarray
    pixels: np.ndarray


def scan(store: PairStore, train: Sequence[int | Region], all_idx: Sequence[int]) -> DatasetStats:
    """Read every pair once: check dtypes, band counts and mask values (errors name the file),
    count labelled pixels per class, and compute channel mean/std on the training images.

    Args:
        store: the pairs.
        train: training pair indices or :class:`~tilesegd.training.split.Region` s (rows of a
            pair); class counts and statistics come from these pixels only.
        all_idx: every pair index to check (training and validation).

    Raises:
        DatasetError: mixed dtypes or band counts, unknown mask values, size mismatches.
    """
    k = store.classmap.num_classes
    dtype = bands = None
    counts = np.zeros(k, np.int64)
    regions = [as_region(r) for r in train]
    pixels = np.zeros(len(regions), np.int64)
    s = s2 = n = 0.0
    for i in all_idx:
        image, ids = store.get(i)
        path = store.pairs[i].image
        if dtype is None:
            dtype, bands = image.dtype, image.shape[0]
        elif image.dtype != dtype or image.shape[0] != bands:
            raise DatasetError(
                f"{path}: {image.shape[0]} band(s) {image.dtype}, but "
                f"{store.pairs[all_idx[0]].image.name} has {bands} band(s) "
                f"{dtype}; all images must agree"
            )
        for p, reg in enumerate(regions):
            if reg.index != i:
                continue
            part, im = ids[reg.rows], image[:, reg.rows]
            counts += np.bincount(part.ravel(), minlength=256)[:k]
            pixels[p] = int((part != IGNORE_INDEX).sum())
            sub = im[:, ::4, ::4].astype(np.float64)
            ok = part[::4, ::4] != IGNORE_INDEX
            if not ok.any():
                continue
            v = sub[:, ok]
            s = s + v.sum(1)
            s2 = s2 + (v**2).sum(1)
            n += v.shape[1]
    scale = input_scale_for(dtype)
    if n == 0:
        raise DatasetError("the training masks have no labelled pixels (all ignored)")
    mean = s / n / scale
    std = np.sqrt(np.maximum(s2 / n / scale**2 - mean**2, 0.0))
    std = np.maximum(std, 1e-3)
    return DatasetStats(
        np.dtype(dtype).name,
        int(bands),
        scale,
        [float(v) for v in mean],
        [float(v) for v in std],
        counts,
        pixels,
    )

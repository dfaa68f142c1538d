"""Training data: decoded pairs (cached), the dataset scan, and the input scale.

Class maps, pairing and whole-raster reads are in :mod:`tilesegd.labels` (shared with
``tilesegd eval``). Large images are never resized down: training tiles are random windows at native resolution
(scale jitter resamples a window of ``tile * s`` pixels, ``s`` in ``[1 - j, 1 + j]``, to the tile).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from tilesegd.errors import DatasetError
from tilesegd.labels import IGNORE_INDEX, ClassMap, Pair, read_raster
from tilesegd.train.split import Region, as_region

log = logging.getLogger(__name__)


def input_scale_for(dtype: np.dtype) -> float:
    """Raw -> [0, 1] divisor by dtype: 255 (uint8), 65535 (uint16: the full bit depth, so the
    scale never depends on the sample; the dataset mean/std then normalise the real range),
    32767 (int16), 1 (floats)."""
    dt = np.dtype(dtype)
    return {"uint8": 255.0, "uint16": 65535.0, "int16": 32767.0}.get(dt.name, 1.0)


class PairStore:
    """Decoded pairs with an LRU cache bounded in bytes.

    ``get(i)`` returns ``(image (C, H, W) native dtype, ids (H, W) uint8)``, with ids set to
    :data:`IGNORE_INDEX` where the image is nodata.
    """

    def __init__(self, pairs: Sequence[Pair], classmap: ClassMap, cache_mb: float = 4096) -> None:
        self.pairs = list(pairs)
        self.classmap = classmap
        self.cache_bytes = int(cache_mb * 2**20)
        self._cache: OrderedDict[int, tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self._used = 0

    def __len__(self) -> int:
        return len(self.pairs)

    def get(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        if i in self._cache:
            self._cache.move_to_end(i)
            return self._cache[i]
        pair = self.pairs[i]
        image, valid = read_raster(pair.image)
        raw, _ = read_raster(pair.mask)
        if raw.shape[1:] != image.shape[1:]:
            raise DatasetError(
                f"{pair.mask}: mask is {raw.shape[2]}x{raw.shape[1]} but image "
                f"{pair.image.name} is {image.shape[2]}x{image.shape[1]} (WxH); "
                "masks must be pixel-aligned with their images"
            )
        ids = self.classmap.encode(raw, pair.mask)
        ids[~valid] = IGNORE_INDEX
        item = (image, ids)
        size = image.nbytes + ids.nbytes
        while self._cache and self._used + size > self.cache_bytes:
            _, old = self._cache.popitem(last=False)
            self._used -= old[0].nbytes + old[1].nbytes
        if size <= self.cache_bytes:
            self._cache[i] = item
            self._used += size
        return item


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
        train: training pair indices or :class:`~tilesegd.train.split.Region` s (rows of a
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

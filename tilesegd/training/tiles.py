"""Random training tiles of each pair's training grid, with albumentations augmentations.

A tile is a random window of ``tile * s`` pixels (``s`` log-uniform in ``[1 - j, 1 + j]``, the
scale jitter; ``s = 1`` without augmentation) resampled to ``tile`` pixels: images are never
resized down as a whole (the grid is native, or resampled by ``--gsd`` / ``--scale``:
:mod:`tilesegd.training.resample`). Images (or training regions) smaller than a tile are padded with the
channel mean and the ignore index. Flips, 90-degree rotations and brightness/contrast come from
albumentations, reseeded per tile from the caller's generator so a tile sequence is fully
reproducible.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from tilesegd.raster.labels import IGNORE_INDEX
from tilesegd.training.data import PairStore
from tilesegd.training.split import Region, as_region


def build_augment(augment: bool):
    """The albumentations pipeline applied to (H, W, C) float32 tiles in ``[0, 1]``-ish units:
    flips, 90-degree rotations, brightness/contrast (scale jitter happens at crop time)."""
    import albumentations as A

    if not augment:
        return A.Compose([])
    return A.Compose(
        [
            A.HorizontalFlip(p=0.5),
            A.VerticalFlip(p=0.5),
            A.RandomRotate90(p=0.5),
            A.RandomBrightnessContrast(brightness_limit=0.15, contrast_limit=0.15, p=0.5),
        ]
    )


class TileSampler:
    """Random training tiles at native resolution.

    Args:
        store: the pairs.
        indices: training pair indices (whole images) or
            :class:`~tilesegd.training.split.Region` s (rows of a pair; a tile never leaves its
            region's rows); one is drawn with probability proportional to its labelled pixels.
        weights: (n,) labelled pixels per index or region (from :class:`DatasetStats`).
        tile_size: tile side, pixels.
        scale_jitter: ``j``: a window of ``round(tile * s)`` pixels, ``s`` log-uniform in
            ``[1 - j, 1 + j]``, is resampled to the tile (0 = pure native resolution).
        augment: flips, rotations, brightness/contrast.
        input_scale, mean, std: normalisation, as in the model file.
    """

    def __init__(
        self,
        store: PairStore,
        indices: Sequence[int | Region],
        weights: np.ndarray,
        tile_size: int,
        scale_jitter: float,
        augment: bool,
        input_scale: float,
        mean: Sequence[float],
        std: Sequence[float],
    ) -> None:
        self.store, self.tile = store, tile_size
        self.regions = [as_region(r) for r in indices]
        w = np.asarray(weights, np.float64) + 1.0
        self.p = w / w.sum()
        self.jitter = scale_jitter if augment else 0.0
        self.aug = build_augment(augment)
        self.scale = float(input_scale)
        self.mean = np.asarray(mean, np.float32).reshape(-1, 1, 1)
        self.std = np.asarray(std, np.float32).reshape(-1, 1, 1)

    def normalise(self, image: np.ndarray) -> np.ndarray:
        """(C, H, W) raw -> float32 ``(raw / input_scale - mean) / std``."""
        return (image.astype(np.float32) / self.scale - self.mean) / self.std

    def _crop(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        import cv2

        t = self.tile
        for _attempt in range(10):
            reg = self.regions[rng.choice(len(self.regions), p=self.p)]
            image, ids = self.store.get(reg.index)
            image, ids = image[:, reg.rows], ids[reg.rows]
            h, w = ids.shape
            s = (
                math.exp(rng.uniform(math.log(1 - self.jitter), math.log(1 + self.jitter)))
                if self.jitter
                else 1.0
            )
            side = max(8, round(t * s))
            ch, cw = min(side, h), min(side, w)
            r, c = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
            m = ids[r : r + ch, c : c + cw]
            if (m != IGNORE_INDEX).any():
                break
        x = image[:, r : r + ch, c : c + cw].astype(np.float32).transpose(1, 2, 0) / self.scale
        if side != t:
            oh, ow = max(1, round(ch * t / side)), max(1, round(cw * t / side))
            x = cv2.resize(x, (ow, oh), interpolation=cv2.INTER_LINEAR).reshape(oh, ow, -1)
            m = cv2.resize(m, (ow, oh), interpolation=cv2.INTER_NEAREST)
        ph, pw = t - x.shape[0], t - x.shape[1]
        if ph > 0 or pw > 0:  # image smaller than the tile: pad with the mean, ignore
            fill = (self.mean[:, 0, 0]).astype(np.float32)
            xp = np.broadcast_to(fill, (t, t, x.shape[2])).copy()
            xp[: x.shape[0], : x.shape[1]] = x
            mp = np.full((t, t), IGNORE_INDEX, np.uint8)
            mp[: m.shape[0], : m.shape[1]] = m
            x, m = xp, mp
        return x[:t, :t], m[:t, :t]

    def sample(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        """``n`` tiles: ``(x (n, C, T, T) float32 normalised, y (n, T, T) int64 ids)``.

        Fully determined by ``rng`` (albumentations is reseeded from it per tile)."""
        xs, ys = [], []
        for _ in range(n):
            x, m = self._crop(rng)
            self.aug.set_random_seed(int(rng.integers(2**31 - 1)))
            out = self.aug(image=x, mask=m)
            x = np.ascontiguousarray(out["image"].transpose(2, 0, 1))
            xs.append((x - self.mean) / self.std)
            ys.append(out["mask"].astype(np.int64))
        return np.stack(xs).astype(np.float32), np.stack(ys)

"""The training / validation split: whole images, or a held-out strip of rows of every image.

``images`` (the default): a seeded permutation of the pairs; ``round(n * val_fraction)`` of
them (at least one, and at least one left for training) are validation images.

``regions``: every image is cut into training rows and one held-out horizontal strip of
``round(H * val_fraction)`` rows at a seeded position. Training tiles are drawn from the
training rows only: a tile never reaches into the strip, so neither its labels nor its pixels
are seen in training. Validation runs the deployed tiled inference on the whole image and scores
the strip's pixels only. This is a spatial hold-out in the spirit of TorchGeo's ``roi_split`` /
``random_grid_cell_assignment`` (block-wise, not pixel-wise, so neighbouring pixels do not leak
between the sides). It is the right split for a few large scenes: with three images, a
whole-image split validates on one scene whose classes the two training scenes may not contain.
One pair is always split into regions.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tilesegd.errors import ConfigError, DatasetError
from tilesegd.raster.labels import raster_height

log = logging.getLogger(__name__)

SPLITS = ("images", "regions")


@dataclass(frozen=True)
class Region:
    """Rows ``[row0, row1)`` (pixels, the full width) of pair ``index``; ``row1=None`` means
    to the last row (the whole image when ``row0 == 0``)."""

    index: int
    row0: int = 0
    row1: int | None = None

    @property
    def rows(self) -> slice:
        """The rows as a slice of an (H, W) or (C, H, W)[..., rows, :] array."""
        return slice(self.row0, self.row1)

    def describe(self, name: str) -> str:
        """``"a.png"`` or ``"a.png rows 0-340"`` (inclusive, for logs)."""
        if self.row0 == 0 and self.row1 is None:
            return name
        end = "end" if self.row1 is None else str(self.row1 - 1)
        return f"{name} rows {self.row0}-{end}"


def as_region(item: int | Region) -> Region:
    """A pair index (the whole image) or a :class:`Region`, as a :class:`Region`."""
    return item if isinstance(item, Region) else Region(int(item))


def split(n: int, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Whole-image split of ``n >= 2`` pairs (a seeded permutation).

    Returns:
        Sorted ``(train, val)`` pair indices; each side has at least one.

    Raises:
        ValueError: ``n < 2`` (use :func:`split_regions`).
    """
    if n < 2:
        raise ValueError(f"a whole-image split needs at least 2 pairs, got {n}")
    perm = np.random.default_rng(seed).permutation(n)
    n_val = min(n - 1, max(1, round(n * val_fraction)))
    return sorted(perm[n_val:].tolist()), sorted(perm[:n_val].tolist())


def split_regions(
    heights: Sequence[int], val_fraction: float, seed: int
) -> tuple[list[Region], list[Region]]:
    """Hold out a strip of ``round(H * val_fraction)`` rows (at least 1, at most ``H - 1``) of
    every image, at a position drawn from ``numpy.random.default_rng(seed)``.

    Args:
        heights: image heights in pixels, one per pair.

    Returns:
        ``(train, val)`` regions: one or two training regions per image (the rows above and
        below the strip) and one validation region (the strip).

    Raises:
        DatasetError: an image with fewer than 2 rows.
    """
    rng = np.random.default_rng(seed)
    train: list[Region] = []
    val: list[Region] = []
    for i, h in enumerate(heights):
        if h < 2:
            raise DatasetError(f"pair {i}: {h} row(s) cannot be split into training and validation")
        hv = min(h - 1, max(1, round(h * val_fraction)))
        r0 = int(rng.integers(0, h - hv + 1))
        val.append(Region(i, r0, r0 + hv))
        if r0 > 0:
            train.append(Region(i, 0, r0))
        if r0 + hv < h:
            train.append(Region(i, r0 + hv, h))
    return train, val


def make_split(
    images: Sequence[str | Path],
    mode: str,
    val_fraction: float,
    seed: int,
    heights: Sequence[int] | None = None,
) -> tuple[list[Region], list[Region]]:
    """The split ``mode`` (``images`` or ``regions``) of the pairs whose images are ``images``.

    A single pair is split into regions whatever the mode (with a warning for ``images``).
    ``heights`` are the images' heights on their training grids (pixels; default: read from
    the files), which region rows refer to.

    Returns:
        ``(train, val)`` lists of :class:`Region` (whole images for the ``images`` mode).

    Raises:
        ConfigError: an unknown mode.
        DatasetError: an unreadable image, or one too small to split.
    """
    if mode not in SPLITS:
        raise ConfigError(f"val_split must be one of {', '.join(SPLITS)}, got {mode!r}")
    if mode == "images" and len(images) == 1:
        log.warning(
            "only 1 image/mask pair: validating on a held-out strip of its rows "
            "(val_split regions); add pairs to validate on unseen images"
        )
        mode = "regions"
    if mode == "regions":
        if heights is None:
            heights = [raster_height(p) for p in images]
        return split_regions(heights, val_fraction, seed)
    train, val = split(len(images), val_fraction, seed)
    return [Region(i) for i in train], [Region(i) for i in val]

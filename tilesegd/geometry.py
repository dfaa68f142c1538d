"""A run's tile geometry, resolved once from the options and the model's metadata.

Every part of a run (the engine's batch size, each scene's tile grid, the distributed workers,
the fingerprint that decides what may be resumed) receives the same :class:`Geometry`, made by
:func:`resolve_geometry`; nothing else picks a tile size, an overlap or a batch size.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import astuple, dataclass

from tilesegd.errors import ConfigError
from tilesegd.spec import ModelSpec
from tilesegd.tiling import TileGrid

log = logging.getLogger(__name__)

DEFAULT_BLOCK = 2048
DEFAULT_OVERLAP = 64  # pixels, for model files that carry no measured overlap
BATCH_PIXELS = 8 * 512 * 512  # the default batch holds about this many pixels


@dataclass(frozen=True)
class Geometry:
    """Tile geometry of a run (all in pixels).

    Attributes:
        tile_size: network input side.
        overlap: pixels shared by neighbouring tiles (``2 x halo``).
        multiple: the network's size multiple (from the model file).
        block_size: approximate block side (unit of reading, writing and resume).
        batch_size: tiles per network call.
    """

    tile_size: int
    overlap: int
    multiple: int
    block_size: int
    batch_size: int

    @property
    def halo(self) -> int:
        """Context cropped from each side of a tile."""
        return self.overlap // 2

    def grid(self, height: int, width: int) -> TileGrid:
        """The :class:`~tilesegd.tiling.TileGrid` of a ``height x width`` scene."""
        return TileGrid(height, width, self.tile_size, self.overlap, self.multiple, self.block_size)

    def settings(self) -> tuple[int, ...]:
        """The values that change the masks (for the run's fingerprint)."""
        return astuple(self)


@functools.cache
def warn_capped(tile: int, overlap: int, needed: int, model_tile: int) -> None:
    """Warn, once per geometry, that the tile is too small for the model's measured overlap."""
    log.warning(
        "tile %d px leaves room for a %d-px overlap, less than the %d px the model needs to be "
        "seamless; use --tile-size %d or more",
        tile,
        overlap,
        needed,
        model_tile,
    )


def default_batch(tile: int) -> int:
    """Tiles per network call when none is given: 8 tiles of up to 512^2 pixels and
    proportionally fewer of larger tiles (~2.1 megapixels per call, at least 1), so memory does
    not grow with a model's larger seamless tile."""
    return max(1, min(8, BATCH_PIXELS // (tile * tile)))


def resolve_geometry(
    spec: ModelSpec,
    *,
    tile_size: int | None = None,
    overlap: int | None = None,
    block_size: int = DEFAULT_BLOCK,
    batch_size: int | None = None,
) -> Geometry:
    """Resolve the options against the model's suggestions.

    * ``tile_size``: the option, else the model's ``tile_size``.
    * ``overlap``: the option, else the model file's measured ``overlap`` (capped to leave a
      core of ``multiple`` pixels when the tile is smaller than the model's, with a warning),
      else 64 px, or a quarter of tiles smaller than 256 px.
    * ``batch_size``: the option, else :func:`default_batch`.

    Raises:
        ConfigError: the values cannot make a tile grid (tile not a multiple of the model's
            ``multiple``, overlap odd or too large, block too small).
    """
    tile = tile_size or spec.tile_size
    if overlap is None and spec.overlap is not None:
        overlap = max(0, min(spec.overlap, tile - spec.multiple)) // 2 * 2
        if overlap < spec.overlap:
            warn_capped(tile, overlap, spec.overlap, spec.tile_size)
    if overlap is None:
        overlap = min(DEFAULT_OVERLAP, tile // 4) // 2 * 2
    geometry = Geometry(tile, overlap, spec.multiple, block_size, batch_size or default_batch(tile))
    try:
        geometry.grid(10**5, 10**5)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return geometry

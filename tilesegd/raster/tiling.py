"""Tile and block arithmetic: pure integer geometry, no I/O.

A scene of ``height x width`` pixels is cut into **blocks** (the unit of reading, writing, resume
and distribution; each block is one Zarr chunk of the output mask) and each block into
**tiles** (the unit the network sees). Every tile has a **core** (the pixels it is trusted
for) surrounded by a **halo** of ``overlap // 2`` pixels on each side that gives the network
context and is cropped away after inference ("crop the halo", also called overlap-tile
stitching: Ronneberger et al., *U-Net*, MICCAI 2015, section 2 and Fig. 2; the
receptive-field / expression-field scheme of OTBTF, Cresson 2018). Cores tile the image
exactly, so every output pixel is written by exactly one tile and no blending is needed.

Geometry along one axis of length ``n`` with tile size ``t``, overlap ``o`` and model
multiple ``m`` (all in pixels):

* ``n > t``: tiles of ``t`` pixels, halo ``h = o // 2``, core ``c = t - 2h``; cores start at
  ``0, c, 2c, ...``; a tile reads ``[start - h, start - h + t)``, padded outside the image.
* ``n <= t``: one tile covers the axis: no halo, ``t' = c = ceil(n / m) * m``.

Blocks are ``k`` cores wide (``k = max(1, block_size // c)``), so tile cores never straddle
blocks and every block (and Zarr chunk) starts on a multiple of ``c``.

>>> g = TileGrid(1000, 700, tile_size=512, overlap=64, multiple=32, block_size=1024)
>>> (g.tile_shape, g.core_shape, g.halo, g.block_shape)
((512, 512), (448, 448), (32, 32), (896, 896))
>>> g.n_blocks, len(g.tiles_in_block(g.blocks()[0]))
(2, 4)
>>> TileGrid(1, 1, 512, 64, 32).tile_shape
(32, 32)
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class Win:
    """A pixel window: ``row_off, col_off, height, width`` (as ``rasterio.windows.Window``)."""

    row_off: int
    col_off: int
    height: int
    width: int

    @property
    def slices(self) -> tuple[slice, slice]:
        """``(rows, cols)`` slices for indexing a 2-D array in scene coordinates."""
        return (
            slice(self.row_off, self.row_off + self.height),
            slice(self.col_off, self.col_off + self.width),
        )

    def to_rasterio(self):  # -> rasterio.windows.Window (kept lazy: rasterio import is slow)
        """The same window as a ``rasterio.windows.Window``."""
        from rasterio.windows import Window

        return Window(self.col_off, self.row_off, self.width, self.height)


@dataclass(frozen=True)
class Block:
    """One output block: ``index`` (block row, block col) and its ``window`` (clipped to the
    scene) in scene pixels; ``id`` is its row-major number."""

    id: int
    index: tuple[int, int]
    window: Win


@dataclass(frozen=True)
class Tile:
    """One network input.

    Attributes:
        read: the tile's full extent in scene pixels (``tile_shape``; may reach outside the
            scene, where it is padded).
        core: the pixels this tile writes, in scene pixels (clipped to the scene and block).
        core_offset: ``(row, col)`` of ``core`` inside the tile array.
    """

    read: Win
    core: Win
    core_offset: tuple[int, int]


def _axis(n: int, t: int, o: int, m: int) -> tuple[int, int, int]:
    """Return (tile, halo, core) lengths in pixels along one axis."""
    if n <= t:
        side = max(m, math.ceil(n / m) * m)
        return side, 0, side
    h = o // 2
    return t, h, t - 2 * h


@dataclass(frozen=True)
class TileGrid:
    """Blocks and tiles covering a ``height x width`` scene.

    Args:
        height, width: scene size in pixels (>= 1).
        tile_size: network input side in pixels (a multiple of ``multiple``).
        overlap: pixels shared by neighbouring tiles (``2 * halo``); even, ``< tile_size``.
        multiple: the network's size multiple (32 for a 5-level U-Net).
        block_size: approximate block side in pixels (rounded to a whole number of cores).

    Raises:
        ValueError: sizes out of range (tile not a multiple of ``multiple``, overlap too big);
            :func:`tilesegd.inference.geometry.resolve_geometry` turns user settings into a ConfigError
            first (this module imports nothing else of tilesegd: pure geometry).
    """

    height: int
    width: int
    tile_size: int = 512
    overlap: int = 64
    multiple: int = 32
    block_size: int = 2048

    def __post_init__(self) -> None:
        if self.height < 1 or self.width < 1:
            raise ValueError(f"scene size must be >= 1x1 pixels, got {self.height}x{self.width}")
        if self.tile_size < self.multiple or self.tile_size % self.multiple:
            raise ValueError(
                f"--tile-size {self.tile_size} must be a positive multiple of the model's "
                f"multiple ({self.multiple}); try {max(1, round(self.tile_size / self.multiple)) * self.multiple}"
            )
        if self.overlap < 0 or self.overlap % 2 or self.tile_size - self.overlap < self.multiple:
            raise ValueError(
                f"--overlap {self.overlap} must be even, >= 0 and leave a core of at least "
                f"{self.multiple} px inside a {self.tile_size}-px tile"
            )

    @property
    def tile_shape(self) -> tuple[int, int]:
        """(rows, cols) of every tile array fed to the network."""
        return (
            _axis(self.height, self.tile_size, self.overlap, self.multiple)[0],
            _axis(self.width, self.tile_size, self.overlap, self.multiple)[0],
        )

    @property
    def halo(self) -> tuple[int, int]:
        """(rows, cols) of context cropped from each side of a tile."""
        return (
            _axis(self.height, self.tile_size, self.overlap, self.multiple)[1],
            _axis(self.width, self.tile_size, self.overlap, self.multiple)[1],
        )

    @property
    def core_shape(self) -> tuple[int, int]:
        """(rows, cols) of the core each tile writes."""
        return (
            _axis(self.height, self.tile_size, self.overlap, self.multiple)[2],
            _axis(self.width, self.tile_size, self.overlap, self.multiple)[2],
        )

    @property
    def block_shape(self) -> tuple[int, int]:
        """(rows, cols) of a full block; also the output Zarr chunk shape."""
        ch, cw = self.core_shape
        return (ch * max(1, self.block_size // ch), cw * max(1, self.block_size // cw))

    @property
    def block_counts(self) -> tuple[int, int]:
        """Number of block rows and block columns."""
        bh, bw = self.block_shape
        return math.ceil(self.height / bh), math.ceil(self.width / bw)

    @property
    def n_blocks(self) -> int:
        """Total number of blocks."""
        r, c = self.block_counts
        return r * c

    def blocks(self) -> list[Block]:
        """All blocks in row-major order."""
        bh, bw = self.block_shape
        nr, nc = self.block_counts
        out = []
        for i in range(nr):
            for j in range(nc):
                r0, c0 = i * bh, j * bw
                win = Win(r0, c0, min(bh, self.height - r0), min(bw, self.width - c0))
                out.append(Block(i * nc + j, (i, j), win))
        return out

    def read_window(self, block: Block) -> Win:
        """The window (scene pixels, may reach outside the scene) holding every tile of
        ``block``: the block's cores rounded up to whole cores, plus the halo."""
        (ch, cw), (hh, hw) = self.core_shape, self.halo
        th, tw = self.tile_shape
        w = block.window
        nr, nc = math.ceil(w.height / ch), math.ceil(w.width / cw)
        return Win(w.row_off - hh, w.col_off - hw, (nr - 1) * ch + th, (nc - 1) * cw + tw)

    def tiles_in_block(self, block: Block) -> list[Tile]:
        """The tiles whose cores exactly cover ``block.window`` (row-major)."""
        (ch, cw), (hh, hw) = self.core_shape, self.halo
        th, tw = self.tile_shape
        w = block.window
        tiles = []
        for r0 in range(w.row_off, w.row_off + w.height, ch):
            for c0 in range(w.col_off, w.col_off + w.width, cw):
                core = Win(
                    r0, c0, min(ch, w.row_off + w.height - r0), min(cw, w.col_off + w.width - c0)
                )
                tiles.append(Tile(Win(r0 - hh, c0 - hw, th, tw), core, (hh, hw)))
        return tiles

    def iter_tiles(self) -> Iterator[Tile]:
        """Every tile of the scene, block by block."""
        for b in self.blocks():
            yield from self.tiles_in_block(b)


def clip_window(win: Win, height: int, width: int) -> tuple[Win, tuple[int, int]]:
    """Clip ``win`` to a ``height x width`` scene.

    Returns:
        ``(clipped, (dr, dc))``: the part inside the scene and its offset inside ``win``.
        ``clipped`` has zero height or width when ``win`` lies outside the scene.
    """
    r0, c0 = max(win.row_off, 0), max(win.col_off, 0)
    r1 = min(win.row_off + win.height, height)
    c1 = min(win.col_off + win.width, width)
    return Win(r0, c0, max(0, r1 - r0), max(0, c1 - c0)), (r0 - win.row_off, c0 - win.col_off)

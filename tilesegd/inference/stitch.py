"""Tiles from blocks, and class-id blocks from tile cores (the pipeline's splitter and stitcher).

Stitching is "crop the halo" (overlap-tile strategy: Ronneberger et al., *U-Net*, MICCAI 2015,
Fig. 2): every output pixel comes from the core of exactly one tile, whose halo gave the
network context, so no blending is needed and the result does not depend on tile order.

Two invariants are checked on every block, cheaply, before it reaches the sink:

* **every block is finished exactly once**: a block is handed on when its last tile is
  accounted for, whether that tile went through the network or was skipped as all-nodata (one
  place: :meth:`Stitcher.account`), whatever order tiles are read, skipped, batched and inferred
  in;
* **a finished block holds 255 exactly where its input is nodata**: the count of 255 ids must
  equal the count of invalid input pixels of the block (a count per block, ~1 ms for 2048^2),
  else :class:`BlockCheckError` fails the scene loudly, naming the block, and the block is never
  written. Pixels outside an area of interest count as nodata, and so do pixels whose top-class
  probability is below ``--min-confidence`` (counted where their tile core is placed).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from tilesegd.errors import TilesegdError
from tilesegd.model.spec import CONFIDENCE_LOW, NODATA
from tilesegd.raster.tiling import Block, Tile, TileGrid, Win


class BlockCheckError(TilesegdError, RuntimeError):
    """Internal error: a finished block's class ids disagree with its input's nodata, or a
    block was never finished. The block is not written; the scene fails (a bug to report)."""


@dataclass
class TileJob:
    """One tile on its way to the network.

    Attributes:
        block: the :class:`BlockState` the tile's core belongs to.
        tile: its geometry (scene pixels).
        x: (C, th, tw) raw pixels (a view into the block's read window).
        valid: (th, tw) bool, False for nodata and padding.
        valid_core: (h, w) bool, ``valid`` over ``tile.core`` (h, w <= the core shape), and
            inside the area of interest when there is one: the pixels this tile classifies.
    """

    block: BlockState
    tile: Tile
    x: np.ndarray
    valid: np.ndarray
    valid_core: np.ndarray


@dataclass
class BlockState:
    """A block being assembled.

    Attributes:
        block: its geometry.
        ids: (h, w) uint8 class ids, 255 until a tile core is placed.
        expected_nodata: pixels that must end up 255: invalid input, outside the area of
            interest, or (added as cores are placed) below the minimum confidence.
        remaining: tiles not yet accounted for (placed or skipped).
        keep: (h, w) bool area of interest of the block, or ``None`` (everything).
        confidence: (h, w) uint8 top-class probability x 100 (255 = none), or ``None``.
        low_confidence: valid pixels set to nodata for their low confidence.
        outside_tiles: tiles with valid pixels in their core but none in the area of interest.
    """

    block: Block
    ids: np.ndarray
    expected_nodata: int
    remaining: int
    keep: np.ndarray | None = None
    confidence: np.ndarray | None = None
    low_confidence: int = 0
    outside_tiles: int = 0


def block_validity(grid: TileGrid, block: Block, valid: np.ndarray) -> np.ndarray:
    """(h, w) bool validity of ``block.window`` inside the (H, W) validity of its read window
    (``grid.read_window(block)``, which starts one halo before the block)."""
    hh, hw = grid.halo
    w = block.window
    return valid[hh : hh + w.height, hw : hw + w.width]


def nodata_count(
    grid: TileGrid, block: Block, valid: np.ndarray, keep: np.ndarray | None = None
) -> int:
    """Pixels of ``block.window`` that are invalid input or (with ``keep``, the block's (h, w)
    area of interest) outside the area of interest."""
    v = block_validity(grid, block, valid)
    if keep is not None:
        v = v & keep
    return v.size - int(np.count_nonzero(v))


def split_block(
    grid: TileGrid, state: BlockState, data: np.ndarray, valid: np.ndarray
) -> tuple[list[TileJob], int]:
    """Cut a block's read window into the tiles whose cores cover the block.

    Args:
        grid: the tile geometry.
        state: the block's :class:`BlockState` (its ``keep``: the area of interest).
        data: (C, H, W) raw pixels of ``grid.read_window(state.block)``.
        valid: (H, W) bool validity of the same window.

    Returns:
        ``(jobs, skipped)``: the tiles whose core holds at least one valid pixel inside the
        area of interest (row-major), and how many tiles had none (they never reach the
        network). A tile's halo keeps its full context, inside the area or not.
    """
    rwin, block = grid.read_window(state.block), state.block.window
    (hh, hw), (th, tw) = grid.halo, grid.tile_shape
    jobs, skipped = [], 0
    for tile in grid.tiles_in_block(state.block):
        r, c = tile.read.row_off - rwin.row_off, tile.read.col_off - rwin.col_off
        v = valid[r : r + th, c : c + tw]
        vcore = v[hh : hh + tile.core.height, hw : hw + tile.core.width]
        if state.keep is not None and vcore.any():
            kr, kc = tile.core.row_off - block.row_off, tile.core.col_off - block.col_off
            vcore = vcore & state.keep[kr : kr + tile.core.height, kc : kc + tile.core.width]
            state.outside_tiles += not vcore.any()
        if not vcore.any():
            skipped += 1
            continue
        jobs.append(TileJob(state, tile, data[:, r : r + th, c : c + tw], v, vcore))
    return jobs, skipped


class Stitcher:
    """Assembles blocks from tile cores and hands each finished block on exactly once.

    Args:
        on_block: called with ``(block, ids, confidence)`` (ids (h, w) uint8, 255 = nodata;
            confidence (h, w) uint8 0-100, 255 = none, or ``None``) when the block's last tile
            is accounted for; may be called from the thread that accounts it.
        confidence: assemble the tiles' confidence too.

    Raises:
        BlockCheckError: (from :meth:`account`) a finished block's 255 count differs from its
            input's nodata count.
    """

    def __init__(
        self,
        on_block: Callable[[Block, np.ndarray, np.ndarray | None], None],
        confidence: bool = False,
    ) -> None:
        self.on_block, self.confidence = on_block, confidence
        self.open_blocks: dict[int, BlockState] = {}
        self.finished = 0
        self.low_confidence = 0
        self.outside_tiles = 0

    def open(
        self, grid: TileGrid, block: Block, valid: np.ndarray, keep: np.ndarray | None = None
    ) -> BlockState:
        """Start a block; ``valid`` is the (H, W) validity of its read window, ``keep`` the
        block's (h, w) area of interest (``None``: all of it)."""
        shape = (block.window.height, block.window.width)
        state = BlockState(
            block,
            np.full(shape, NODATA, np.uint8),
            nodata_count(grid, block, valid, keep),
            len(grid.tiles_in_block(block)),
            keep,
            np.full(shape, NODATA, np.uint8) if self.confidence else None,
        )
        self.open_blocks[block.id] = state
        return state

    def place(self, job: TileJob, ids: np.ndarray, confidence: np.ndarray | None = None) -> None:
        """Copy a tile's core ids ((>= h, >= w) uint8, core at the top left) into its block,
        with 255 where the core's input is nodata (or outside the area of interest), and
        account for the tile. With ``confidence`` (same shape, uint8), its values go into the
        block too; those flagged :data:`~tilesegd.model.spec.CONFIDENCE_LOW` make their ids 255."""
        state, core = job.block, job.tile.core
        h, w = core.height, core.width
        r0 = core.row_off - state.block.window.row_off
        c0 = core.col_off - state.block.window.col_off
        out = state.ids[r0 : r0 + h, c0 : c0 + w]
        out[...] = ids[:h, :w]
        out[~job.valid_core] = NODATA
        if state.confidence is not None and confidence is not None:
            conf = state.confidence[r0 : r0 + h, c0 : c0 + w]
            conf[...] = confidence[:h, :w] & (CONFIDENCE_LOW - 1)
            conf[~job.valid_core] = NODATA
            low = job.valid_core & (confidence[:h, :w] >= CONFIDENCE_LOW)
            n_low = int(np.count_nonzero(low))
            if n_low:
                out[low] = NODATA
                state.expected_nodata += n_low
                state.low_confidence += n_low
        self.account(state)

    def account(self, state: BlockState, tiles: int = 1) -> None:
        """Count ``tiles`` of ``state`` as done (run or skipped); the last one finishes the
        block: the nodata count is checked, then ``on_block`` is called."""
        state.remaining -= tiles
        if state.remaining > 0:
            return
        if state.remaining < 0:
            raise BlockCheckError(f"{describe(state.block)} was accounted for twice")
        del self.open_blocks[state.block.id]
        check_block(state.block, state.ids, state.expected_nodata)
        self.finished += 1
        self.low_confidence += state.low_confidence
        self.outside_tiles += state.outside_tiles
        self.on_block(state.block, state.ids, state.confidence)

    def check_all_finished(self) -> None:
        """Raise :class:`BlockCheckError` naming any block started but never finished."""
        if self.open_blocks:
            names = ", ".join(describe(s.block) for s in list(self.open_blocks.values())[:5])
            raise BlockCheckError(
                f"{len(self.open_blocks)} block(s) were never finished ({names}); nothing was "
                "written for them. This is a tilesegd bug: please report it"
            )


def describe(block: Block) -> str:
    """``"block 7 (rows 0-2047, cols 4096-6143)"``: a block named for messages."""
    w: Win = block.window
    return (
        f"block {block.id} (rows {w.row_off}-{w.row_off + w.height - 1}, "
        f"cols {w.col_off}-{w.col_off + w.width - 1})"
    )


def check_block(block: Block, ids: np.ndarray, expected_nodata: int) -> None:
    """Check that ``ids`` ((h, w) uint8) holds exactly ``expected_nodata`` nodata (255) ids.

    Valid pixels always get a class id < 255 and invalid ones 255, so the counts agree unless
    a tile core was lost, placed twice or placed in the wrong block.

    Raises:
        BlockCheckError: the counts differ (the message names the block and both counts).
    """
    got = int(np.count_nonzero(ids == NODATA))
    if got != expected_nodata:
        raise BlockCheckError(
            f"{describe(block)}: {got} pixels are nodata (255) in the stitched class ids, but "
            f"{expected_nodata} are nodata in the input; the block was not written. This is a "
            "tilesegd bug: please report it with the scene and settings"
        )

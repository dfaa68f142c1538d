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
  written.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from tilesegd.errors import TilesegdError
from tilesegd.spec import NODATA
from tilesegd.tiling import Block, Tile, TileGrid, Win


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
        valid_core: (h, w) bool, ``valid`` over ``tile.core`` (h, w <= the core shape).
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
        expected_nodata: invalid input pixels of the block (what must end up 255).
        remaining: tiles not yet accounted for (placed or skipped).
    """

    block: Block
    ids: np.ndarray
    expected_nodata: int
    remaining: int


def nodata_count(grid: TileGrid, block: Block, valid: np.ndarray) -> int:
    """Invalid input pixels of ``block.window``, given the (H, W) bool validity of its read
    window (``grid.read_window(block)``, which starts one halo before the block)."""
    hh, hw = grid.halo
    w = block.window
    return w.height * w.width - int(np.count_nonzero(valid[hh : hh + w.height, hw : hw + w.width]))


def split_block(
    grid: TileGrid, state: BlockState, data: np.ndarray, valid: np.ndarray
) -> tuple[list[TileJob], int]:
    """Cut a block's read window into the tiles whose cores cover the block.

    Args:
        grid: the tile geometry.
        state: the block's :class:`BlockState`.
        data: (C, H, W) raw pixels of ``grid.read_window(state.block)``.
        valid: (H, W) bool validity of the same window.

    Returns:
        ``(jobs, skipped)``: the tiles whose core holds at least one valid pixel (row-major),
        and how many tiles were all nodata (they never reach the network).
    """
    rwin = grid.read_window(state.block)
    (hh, hw), (th, tw) = grid.halo, grid.tile_shape
    jobs, skipped = [], 0
    for tile in grid.tiles_in_block(state.block):
        r, c = tile.read.row_off - rwin.row_off, tile.read.col_off - rwin.col_off
        v = valid[r : r + th, c : c + tw]
        vcore = v[hh : hh + tile.core.height, hw : hw + tile.core.width]
        if not vcore.any():
            skipped += 1
            continue
        jobs.append(TileJob(state, tile, data[:, r : r + th, c : c + tw], v, vcore))
    return jobs, skipped


class Stitcher:
    """Assembles blocks from tile cores and hands each finished block on exactly once.

    Args:
        on_block: called with ``(block, ids)`` ((h, w) uint8, 255 = nodata) when the block's
            last tile is accounted for; may be called from the thread that accounts it.

    Raises:
        BlockCheckError: (from :meth:`account`) a finished block's 255 count differs from its
            input's nodata count.
    """

    def __init__(self, on_block: Callable[[Block, np.ndarray], None]) -> None:
        self.on_block = on_block
        self.open_blocks: dict[int, BlockState] = {}
        self.finished = 0

    def open(self, grid: TileGrid, block: Block, valid: np.ndarray) -> BlockState:
        """Start a block; ``valid`` is the (H, W) validity of its read window."""
        w = block.window
        state = BlockState(
            block,
            np.full((w.height, w.width), NODATA, np.uint8),
            nodata_count(grid, block, valid),
            len(grid.tiles_in_block(block)),
        )
        self.open_blocks[block.id] = state
        return state

    def place(self, job: TileJob, ids: np.ndarray) -> None:
        """Copy a tile's core ids ((>= h, >= w) uint8, core at the top left) into its block,
        with 255 where the core's input is nodata, and account for the tile."""
        state, core = job.block, job.tile.core
        h, w = core.height, core.width
        r0 = core.row_off - state.block.window.row_off
        c0 = core.col_off - state.block.window.col_off
        out = state.ids[r0 : r0 + h, c0 : c0 + w]
        out[...] = ids[:h, :w]
        out[~job.valid_core] = NODATA
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
        self.on_block(state.block, state.ids)

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

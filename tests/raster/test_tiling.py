"""Tile-grid arithmetic: every pixel in exactly one core, blocks aligned, sizes legal."""

from __future__ import annotations

import doctest

import numpy as np
import pytest

import tilesegd.raster.tiling
from tilesegd.errors import ConfigError
from tilesegd.raster.tiling import TileGrid, Win, clip_window

SIZES = [
    (1, 1),
    (1, 700),
    (31, 33),
    (64, 64),
    (65, 513),
    (512, 512),
    (513, 1000),
    (1000, 700),
    (2049, 1537),
]


def test_doctests() -> None:
    assert doctest.testmod(tilesegd.raster.tiling).failed == 0


@pytest.mark.parametrize(("h", "w"), SIZES)
@pytest.mark.parametrize(
    ("tile", "overlap", "multiple", "block"),
    [(512, 64, 32, 2048), (128, 32, 32, 256), (64, 0, 8, 100)],
)
def test_cores_cover_every_pixel_exactly_once(h, w, tile, overlap, multiple, block) -> None:
    g = TileGrid(h, w, tile, overlap, multiple, block)
    hits = np.zeros((h, w), np.int32)
    th, tw = g.tile_shape
    assert th % multiple == 0 and tw % multiple == 0
    for b in g.blocks():
        bh, bw = g.block_shape
        # blocks start on whole multiples of the block (= chunk) shape
        assert b.window.row_off % bh == 0 and b.window.col_off % bw == 0
        rw = g.read_window(b)
        for t in g.tiles_in_block(b):
            assert (t.read.height, t.read.width) == (th, tw)
            # the core sits inside the tile at the halo offset and inside the block
            assert t.core.row_off - t.read.row_off == t.core_offset[0] == g.halo[0]
            assert t.core.col_off - t.read.col_off == t.core_offset[1] == g.halo[1]
            assert b.window.row_off <= t.core.row_off
            assert t.core.row_off + t.core.height <= b.window.row_off + b.window.height
            # the tile lies within the block's read window
            assert rw.row_off <= t.read.row_off
            assert t.read.row_off + th <= rw.row_off + rw.height
            assert rw.col_off <= t.read.col_off
            assert t.read.col_off + tw <= rw.col_off + rw.width
            hits[t.core.slices] += 1
    assert hits.min() == 1 and hits.max() == 1


def test_small_images_use_one_small_tile() -> None:
    g = TileGrid(33, 70, 512, 64, 32)
    assert g.tile_shape == (64, 96) and g.halo == (0, 0) and g.n_blocks == 1


def test_tile_offsets_are_multiples_of_the_model_multiple() -> None:
    # aligned read windows keep pooling grids identical to whole-image inference
    g = TileGrid(3000, 3000, 512, 64, 32, 2048)
    for t in g.iter_tiles():
        assert t.read.row_off % 32 == 0 and t.read.col_off % 32 == 0


@pytest.mark.parametrize(("tile", "overlap"), [(500, 64), (512, 63), (512, 500), (512, -2)])
def test_bad_geometry_is_a_clear_error(tile, overlap) -> None:
    from conftest import spec_for

    from tilesegd.inference.geometry import resolve_geometry

    with pytest.raises(ValueError, match="--(tile-size|overlap)"):  # pure geometry: ValueError
        TileGrid(1000, 1000, tile, overlap, 32)
    with pytest.raises(ConfigError, match="--(tile-size|overlap)"):  # a user's settings
        resolve_geometry(spec_for(3, multiple=32), tile_size=tile, overlap=overlap)


def test_clip_window() -> None:
    inner, off = clip_window(Win(-5, 10, 20, 20), 12, 25)
    assert inner == Win(0, 10, 12, 15) and off == (5, 0)
    inner, _ = clip_window(Win(50, 50, 10, 10), 12, 25)
    assert inner.height == 0 or inner.width == 0

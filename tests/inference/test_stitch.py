"""The pipeline's roles one by one (splitter, batcher, stitcher, sink), and the run-time checks
that turn a lost or misplaced tile core into a loud error (issue 11)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import IdentityNet, engine_for, engine_from, make_raster, spec_for

from tilesegd.inference.engine import Engine
from tilesegd.inference.pipeline import Batcher, BlockWriter, StageTimes, segment
from tilesegd.inference.stitch import BlockCheckError, Stitcher, check_block, split_block
from tilesegd.raster.reader import ArraySource
from tilesegd.raster.tiling import TileGrid


def identity_engine(k: int = 7, batch: int = 3) -> Engine:
    spec = spec_for(k, 1, input_scale=1.0, multiple=1, tile_size=32)
    return engine_for(IdentityNet(k), spec, batch_size=batch)


def strip_scene(h: int = 100, w: int = 130) -> tuple[np.ndarray, np.ndarray, TileGrid]:
    img = np.random.default_rng(0).integers(0, 7, (1, h, w), dtype=np.uint8)
    valid = np.ones((h, w), bool)
    valid[72:] = False
    return img, valid, TileGrid(h, w, 32, 8, 1, 96)


def test_split_block_skips_all_nodata_tiles_and_views_the_read_window() -> None:
    img, valid, grid = strip_scene()
    block = grid.blocks()[grid.block_counts[1]]  # second block row: rows 96..99 all nodata
    data, v = ArraySource(img, valid).read(grid.read_window(block))
    stitcher = Stitcher(lambda b, ids, conf: None)
    state = stitcher.open(grid, block, v)
    jobs, skipped = split_block(grid, state, data, v)
    assert jobs == [] and skipped == len(grid.tiles_in_block(block))
    first = grid.blocks()[0]
    data, v = ArraySource(img, valid).read(grid.read_window(first))
    jobs, skipped = split_block(grid, stitcher.open(grid, first, v), data, v)
    assert len(jobs) == 12 and skipped == 4  # the bottom row of 4 tile cores is all nodata
    for j in jobs:  # each tile's pixels are its own read window
        r0, c0 = j.tile.read.row_off, j.tile.read.col_off
        expect = ArraySource(img, valid).read(j.tile.read)[0]
        assert np.array_equal(j.x, expect), (r0, c0)


@pytest.mark.parametrize("batch", [1, 4, 5, 12])
def test_a_block_finishes_once_when_its_last_tile_is_skipped(batch: int) -> None:
    img, valid, grid = strip_scene()
    finished: list[int] = []
    out = np.zeros(valid.shape, np.uint8)

    def sink(block, ids):
        finished.append(block.id)
        out[block.window.slices] = ids

    segment(ArraySource(img, valid), grid, identity_engine(batch=batch), sink, workers=1)
    assert sorted(finished) == list(range(grid.n_blocks))
    assert np.array_equal(out, np.where(valid, img[0], 255))


def test_batcher_groups_tiles_across_blocks_and_drains_in_order() -> None:
    img, valid, grid = strip_scene(60, 61)
    eng, results = identity_engine(batch=5), []
    batcher = Batcher(
        eng, (4, 4, 24, 24), lambda jobs, ids, p, c: results.append(len(jobs)), StageTimes()
    )
    stitcher = Stitcher(lambda b, ids, conf: None)
    n = 0
    for block in grid.blocks():
        data, v = ArraySource(img, valid).read(grid.read_window(block))
        jobs, _ = split_block(grid, stitcher.open(grid, block, v), data, v)
        for j in jobs:
            batcher.add(j)
            n += 1
    batcher.finish()
    assert sum(results) == n and all(r == 5 for r in results[:-1]) and 0 < results[-1] <= 5
    assert eng.calls == len(results)


def test_block_writer_reraises_a_sink_error() -> None:
    def sink(block, ids):
        raise OSError("disk on fire")

    writer = BlockWriter(sink, 2, StageTimes())
    _, _, grid = strip_scene()
    with pytest.raises(OSError, match="disk on fire"):  # at the next submit, or at the end
        for b in grid.blocks():
            writer.submit(b, np.zeros((1, 1), np.uint8))
        writer.wait()
    writer.close()


def test_check_block_counts_nodata() -> None:
    _, _, grid = strip_scene()
    b = grid.blocks()[0]
    ids = np.zeros((b.window.height, b.window.width), np.uint8)
    check_block(b, ids, 0)
    ids[3, 4] = 255
    with pytest.raises(BlockCheckError, match=r"block 0 \(rows 0-95, cols 0-95\): 1 pixels"):
        check_block(b, ids, 0)


def broken_place(self, job, ids, confidence=None):
    """A stitcher that loses the first tile core of every block (accounts it, writes nothing)."""
    if job.tile.core.row_off == job.block.block.window.row_off and (
        job.tile.core.col_off == job.block.block.window.col_off
    ):
        self.account(job.block)
        return
    Stitcher.real_place(self, job, ids, confidence)


@pytest.fixture
def broken_stitcher(monkeypatch):
    monkeypatch.setattr(Stitcher, "real_place", Stitcher.place, raising=False)
    monkeypatch.setattr(Stitcher, "place", broken_place)


def test_a_lost_tile_core_fails_loudly_and_the_block_is_never_written(broken_stitcher) -> None:
    img, valid, grid = strip_scene()
    written: list[int] = []
    with pytest.raises(BlockCheckError, match=r"block 0 .* 2880 pixels are nodata .* 2304 are"):
        segment(ArraySource(img, valid), grid, identity_engine(), lambda b, i: written.append(b.id))
    assert 0 not in written


def test_a_block_never_finished_is_an_error(monkeypatch) -> None:
    img, valid, grid = strip_scene()
    real = Stitcher.account

    def lose_skips(self, state, tiles=1):  # the bug of issue 11: skipped tiles never finish
        if tiles > 1:
            state.remaining -= tiles
            return
        real(self, state, tiles)

    monkeypatch.setattr(Stitcher, "account", lose_skips)
    with pytest.raises(BlockCheckError, match="never finished"):
        segment(
            ArraySource(img, valid), grid, identity_engine(batch=4), lambda b, i: None, workers=1
        )


def test_a_broken_stitcher_fails_the_scene_and_publishes_nothing(
    broken_stitcher, tmp_path: Path, tiny_model
) -> None:
    from click.testing import CliRunner

    from tilesegd.cli.main import cli

    inp = tmp_path / "in"
    inp.mkdir()
    make_raster(inp / "s.tif", np.random.default_rng(0).integers(1, 200, (3, 70, 90), np.uint8))
    model = tiny_model(num_classes=3)
    out = tmp_path / "out"
    args = ["-q", "run", "-i", str(inp), "-m", str(model), "-o", str(out)]
    r = CliRunner().invoke(
        cli, [*args, "--tile-size", "32", "--overlap", "8", "--block-size", "48"]
    )
    assert r.exit_code == 4, r.output
    entry = json.loads((out / "run.json").read_text())["scenes"]["s"]
    assert entry["status"] == "failed" and "block 0 (rows 0-47, cols 0-47)" in entry["error"]
    assert "s.tif" in entry["error"] and not (out / "s").exists()


def test_finish_refuses_a_store_with_a_missing_block(tmp_path: Path, tiny_model) -> None:
    from tilesegd.batch.finish import check_blocks_done, finish_scene
    from tilesegd.batch.runner import RunSetup, plan_scene
    from tilesegd.config import RunConfig
    from tilesegd.outputs.zarr_store import ZarrMaskStore

    inp = tmp_path / "in"
    inp.mkdir()
    make_raster(inp / "s.tif", np.random.default_rng(0).integers(1, 200, (3, 70, 90), np.uint8))
    model = tiny_model(num_classes=3)
    cfg = RunConfig(input=[str(inp)], model=str(model), output=str(tmp_path / "o"))
    cfg.tile_size, cfg.overlap, cfg.block_size = 32, 8, 48
    eng = engine_from(model)
    run = RunSetup.resolve(cfg, eng.spec, tmp_path / "o", "", "cpu", "torch.float32")
    plan = plan_scene(inp / "s.tif", "s", run)
    store = ZarrMaskStore.reopen(plan.store_path)
    store.write_block(plan.grid.blocks()[0], np.zeros((48, 48), np.uint8))
    with pytest.raises(
        BlockCheckError, match=r"3 block\(s\) were never written \(ids \[1, 2, 3\]\)"
    ):
        check_blocks_done(plan, store)
    for b in plan.grid.blocks()[1:]:
        store.write_block(b, np.zeros((b.window.height, b.window.width), np.uint8))
    assert check_blocks_done(plan, store) == 70 * 90
    store.mask[0:5, 0:5] = 255  # a chunk changed after it was logged: 25 pixels lost
    with pytest.raises(BlockCheckError, match="records 6300 class-id pixels written, but 6275"):
        finish_scene(plan, run)
    assert not (tmp_path / "o" / "s").exists()

"""preview.png: the image sampled from the windows the pipeline decodes (no second read of the
scene), the fallback to a decimated GDAL read when a run did not decode every block, and the
bounded GDAL block cache of the segment and COG passes."""

from __future__ import annotations

from pathlib import Path
from unittest import mock

import numpy as np
from conftest import engine_from, make_raster, read_png, smooth_image

from tilesegd.batch.runner import (
    RunSetup,
    compute_blocks,
    finish_scene,
    plan_scene,
    preview_sampler,
)
from tilesegd.config import RunConfig
from tilesegd.outputs.preview import PreviewSampler
from tilesegd.raster.tiling import TileGrid


def test_sampler_from_halo_windows_equals_strided_scene() -> None:
    # odd sizes, windows with halos reaching outside the scene, overlapping neighbours
    h, w = 301, 457
    scene = smooth_image(h, w, 3, seed=4)
    sampler = PreviewSampler(h, w, 3, np.uint8, max_size=100)
    assert sampler.step == 5 and sampler.image.shape == (3, 61, 92)
    grid = TileGrid(h, w, tile_size=96, overlap=16, multiple=32, block_size=160)
    for block in grid.blocks():
        win = grid.read_window(block)
        data = np.zeros((3, win.height, win.width), np.uint8)  # padded outside, as readers do
        r0, c0 = max(win.row_off, 0), max(win.col_off, 0)
        r1, c1 = min(win.row_off + win.height, h), min(win.col_off + win.width, w)
        data[:, r0 - win.row_off : r1 - win.row_off, c0 - win.col_off : c1 - win.col_off] = scene[
            :, r0:r1, c0:c1
        ]
        assert not sampler.complete or block.id == grid.n_blocks - 1
        sampler.add(win.row_off, win.col_off, data)
    assert sampler.complete
    np.testing.assert_array_equal(sampler.image, scene[:, ::5, ::5])


def test_sampler_is_incomplete_when_a_block_was_not_decoded() -> None:
    sampler = PreviewSampler(64, 64, 1, np.uint16, max_size=64)
    sampler.add(0, 0, np.ones((1, 64, 40), np.uint16))
    assert sampler.step == 1 and not sampler.complete


def assert_preview_shows_classes(png_path: Path, spec) -> None:
    """A two-panel preview that is not blank and whose legend shows the class colours."""
    png = read_png(png_path)
    assert png.shape[0] >= 100 and png.shape[1] > png.shape[0]  # two panels side by side
    assert len(np.unique(png.reshape(-1, 3), axis=0)) >= 16
    for c in spec.classes[1:]:  # class 0 is black, like the text
        assert (np.abs(png.astype(int) - c.color).max(-1) <= 1).sum() >= 30, c


def _plan(tmp_path: Path, tiny_model, scene: Path, preview_size: int = 128):
    model = tiny_model(num_classes=3, tile_size=64)
    cfg = RunConfig(
        input=[str(scene)],
        model=str(model),
        output=str(tmp_path / "out"),
        tile_size=64,
        overlap=16,
        block_size=96,
        workers=2,
        preview_size=preview_size,
    ).validate()
    engine = engine_from(model, batch_size=4)
    run = RunSetup.resolve(cfg, engine.spec, tmp_path / "out", "", "cpu", "torch.float32")
    return run, engine, plan_scene(scene, "s", run)


def test_run_uses_the_sampled_image_and_never_rereads_the_scene(tmp_path: Path, tiny_model):
    data = smooth_image(203, 311, 3, seed=2)
    data[:, :20, :30] = 0
    scene = make_raster(tmp_path / "s.tif", data, nodata=0)
    run, engine, plan = _plan(tmp_path, tiny_model, scene)
    preview = preview_sampler(plan, run)
    compute_blocks(plan, engine, run, preview=preview, progress=False)
    assert preview is not None and preview.complete
    np.testing.assert_array_equal(preview.image, data[:, :: preview.step, :: preview.step])

    import rasterio

    real_open = rasterio.open
    opened: list[str] = []

    def spy(path, *a, **k):
        opened.append(Path(path).name)
        return real_open(path, *a, **k)

    with mock.patch.object(rasterio, "open", spy):
        finish_scene(plan, run, preview)
    assert "s.tif" not in opened  # the preview took the sampled image
    assert_preview_shows_classes(tmp_path / "out" / "s" / "preview.png", engine.spec)


def test_resumed_scene_falls_back_to_reading_the_scene(tmp_path: Path, tiny_model) -> None:
    scene = make_raster(tmp_path / "s.tif", smooth_image(150, 170, 3, seed=5))
    run, engine, plan = _plan(tmp_path, tiny_model, scene)
    compute_blocks(plan, engine, run, plan.todo[:2], progress=False)  # "killed" after 2 blocks
    run, engine, plan = _plan(tmp_path, tiny_model, scene)  # the rerun: resumes the rest
    assert len(plan.todo) == plan.grid.n_blocks - 2
    preview = preview_sampler(plan, run)
    compute_blocks(plan, engine, run, preview=preview, progress=False)
    assert preview is not None and not preview.complete
    finish_scene(plan, run, preview)
    assert_preview_shows_classes(tmp_path / "out" / "s" / "preview.png", engine.spec)


def test_gdal_block_cache_is_bounded_while_segmenting_and_writing(
    tmp_path: Path, tiny_model, monkeypatch
) -> None:
    from rasterio.env import getenv

    import tilesegd.batch.runner as runner
    from tilesegd.raster.gdalenv import GDAL_CACHE_MB

    monkeypatch.delenv("GDAL_CACHEMAX", raising=False)
    seen: dict[str, object] = {}
    real_segment = runner.segment

    def spy_segment(*a, **k):
        seen["segment"] = getenv().get("GDAL_CACHEMAX")
        return real_segment(*a, **k)

    import rasterio.shutil

    real_shutil_copy = rasterio.shutil.copy

    def spy_copy(*a, **k):
        seen["cog"] = getenv().get("GDAL_CACHEMAX")
        return real_shutil_copy(*a, **k)

    monkeypatch.setattr(runner, "segment", spy_segment)
    monkeypatch.setattr(rasterio.shutil, "copy", spy_copy)
    scene = make_raster(tmp_path / "s.tif", smooth_image(90, 110, 3, seed=6))
    run, engine, plan = _plan(tmp_path, tiny_model, scene)
    compute_blocks(plan, engine, run, progress=False)
    finish_scene(plan, run)
    assert seen == {"segment": GDAL_CACHE_MB, "cog": GDAL_CACHE_MB}

    monkeypatch.setenv("GDAL_CACHEMAX", "1024")  # the user's own setting is left alone
    seen.clear()
    run, engine, plan = _plan(tmp_path / "again", tiny_model, scene)
    compute_blocks(plan, engine, run, progress=False)
    assert seen["segment"] is None

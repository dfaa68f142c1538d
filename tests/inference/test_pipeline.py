"""Stitching: exact reproduction with an identity model, nodata, and seamlessness."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import IdentityNet, TinyConvNet, engine_for, shared_data, smooth_image, spec_for

from tilesegd.inference.engine import Engine
from tilesegd.inference.pipeline import predict_array, segment
from tilesegd.raster.reader import ArraySource
from tilesegd.raster.tiling import TileGrid


def identity_engine(k: int = 7, batch: int = 3) -> Engine:
    spec = spec_for(k, 1, input_scale=1.0, multiple=1, tile_size=32)
    return engine_for(IdentityNet(k), spec, batch_size=batch)


@pytest.mark.parametrize(("h", "w"), [(1, 1), (5, 3), (31, 33), (97, 130), (200, 61)])
@pytest.mark.parametrize(("tile", "overlap"), [(32, 8), (16, 0), (64, 30)])
def test_identity_model_reproduces_input_exactly(h, w, tile, overlap) -> None:
    rng = np.random.default_rng(h * w)
    img = rng.integers(0, 7, (1, h, w), dtype=np.uint8)
    out = predict_array(identity_engine(), img, tile_size=tile, overlap=overlap, block_size=48)
    assert out.shape == (h, w) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, img[0])


def test_every_pixel_written_once_and_blocks_once() -> None:
    h, w = 123, 157
    img = np.random.default_rng(1).integers(0, 7, (1, h, w), dtype=np.uint8)
    grid = TileGrid(h, w, 32, 8, 1, 50)
    seen = np.zeros((h, w), np.int32)
    block_ids: list[int] = []

    def sink(block, ids):
        block_ids.append(block.id)
        seen[block.window.slices] += 1
        assert ids.shape == (block.window.height, block.window.width)

    stats = segment(ArraySource(img), grid, identity_engine(), sink, workers=2)
    assert sorted(block_ids) == list(range(grid.n_blocks))
    assert seen.min() == 1 and seen.max() == 1
    assert stats.tiles_run == sum(1 for _ in grid.iter_tiles())


def test_nodata_is_255_and_all_nodata_tiles_never_reach_the_model() -> None:
    h, w = 100, 90
    img = np.full((1, h, w), 3, np.uint8)
    valid = np.ones((h, w), bool)
    valid[:, :60] = False  # left two thirds are nodata
    valid[10, 10] = True  # one valid pixel inside an otherwise empty tile
    eng = identity_engine()
    out = predict_array(eng, img, valid, tile_size=32, overlap=8)
    assert (out[~valid] == 255).all() and (out[valid] == 3).all()
    grid = TileGrid(h, w, 32, 8, 1)
    needed = sum(1 for t in grid.iter_tiles() if valid[t.core.slices].any())
    assert eng.tiles == needed < sum(1 for _ in grid.iter_tiles())


def test_nan_and_inf_become_nodata() -> None:
    img = np.full((1, 40, 40), 2.0, np.float32)
    img[0, 5, 5] = np.nan
    img[0, 6, 6] = np.inf
    out = predict_array(identity_engine(), img, tile_size=32, overlap=8)
    assert out[5, 5] == 255 and out[6, 6] == 255 and out[7, 7] == 2


def whole_image(engine: Engine, img: np.ndarray) -> np.ndarray:
    """Reference: the whole image in one network call, zero-padded to the model multiple."""
    m = engine.spec.multiple
    c, h, w = img.shape
    ph, pw = -(-h // m) * m, -(-w // m) * m
    x = np.zeros((1, c, ph, pw), img.dtype)
    x[0, :, :h, :w] = img
    v = np.zeros((1, ph, pw), bool)
    v[0, :h, :w] = True
    ids, _ = engine.predict(x, v)
    return ids[0, :h, :w]


def agreement(a: np.ndarray, b: np.ndarray, border: int = 64) -> float:
    return float((a[border:-border, border:-border] == b[border:-border, border:-border]).mean())


def test_tiny_cnn_with_halo_covering_receptive_field_is_exact() -> None:
    # TinyConvNet sees < 8 px around a pixel: with an 8-px halo every pixel farther than the
    # receptive field from the image border is identical to whole-image inference (at the
    # border the two pad differently: zeros outside the scene vs. the convolution's padding)
    img = smooth_image(150, 170)
    eng = engine_for(TinyConvNet(3, 5), spec_for(5, multiple=2), batch_size=4)
    out = predict_array(eng, img, tile_size=48, overlap=16, block_size=96)
    ref = whole_image(eng, img)
    np.testing.assert_array_equal(out[8:-8, 8:-8], ref[8:-8, 8:-8])


def test_seamless_against_whole_image_unet() -> None:
    """smp Unet-mobilenet_v2 (random weights): >= 99.99 % agreement outside a 64-px border."""
    smp = pytest.importorskip("segmentation_models_pytorch")
    torch.manual_seed(0)
    net = smp.Unet("mobilenet_v2", encoder_weights=None, in_channels=3, classes=6).eval()
    spec = spec_for(6, mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
    eng = engine_for(net, spec, batch_size=4)
    try:
        import rasterio

        with rasterio.open(shared_data() / "scenes" / "swissimage_lakeshore_875x400.tif") as ds:
            img = ds.read()
    except pytest.skip.Exception:
        img = smooth_image(400, 875)
    out = predict_array(eng, img, tile_size=256, overlap=64)
    ref = whole_image(eng, img)
    assert out.shape == img.shape[1:]
    assert agreement(out, ref) >= 0.9999

"""One resampling rule (issue 21 point 4): ``tilesegd run``'s model grid and ``tilesegd eval`` /
training's grid give the same grid, the same pixels, the same validity and the same mapping
back to the native grid (:mod:`tilesegd.raster.footprint`)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
from conftest import examples, make_raster
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from rasterio.transform import from_origin

from tilesegd.raster.footprint import nearest_index
from tilesegd.raster.regrid import grid_for, read_image, resample_array, to_native
from tilesegd.raster.resample import ResampledSource, plan_resample, to_scene_grid
from tilesegd.raster.scene import open_scene
from tilesegd.raster.tiling import TileGrid, Win

PIXEL = 0.5  # metres


def layout(kind: str, h: int, w: int, seed: int) -> np.ndarray:
    """(H, W) bool validity: all valid, a rectangle, stripes or scattered pixels."""
    rng = np.random.default_rng(seed)
    valid = np.ones((h, w), bool)
    if kind == "block":
        r0, c0 = rng.integers(0, h), rng.integers(0, w)
        valid[r0 : r0 + rng.integers(1, h + 1), c0 : c0 + rng.integers(1, w + 1)] = False
    elif kind == "stripes":
        valid[:, np.arange(w) % int(rng.integers(2, 6)) == 0] = False
    elif kind == "scattered":
        valid &= rng.random((h, w)) >= 0.4
    return valid


def write_scene(root: Path, valid: np.ndarray, seed: int) -> Path:
    img = np.random.default_rng(seed).integers(1, 256, (3, *valid.shape), dtype=np.uint8)
    img[:, ~valid] = 0
    t = from_origin(500000.0, 4650000.0, PIXEL, PIXEL)
    return make_raster(root / "s.tif", img, transform=t, nodata=0)


class ArrayStore:
    """The part of :class:`~tilesegd.outputs.zarr_store.ZarrMaskStore` that
    :func:`to_scene_grid` uses, over an in-memory mask."""

    confidence = probs = None

    def __init__(self, mask: np.ndarray) -> None:
        self.mask = mask

    def read_block(self, block) -> np.ndarray:
        return self.mask[block.window.slices].copy()

    def write_block(self, block, ids: np.ndarray) -> None:
        self.mask[block.window.slices] = ids


@settings(
    max_examples=examples(40),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    h=st.integers(4, 48),
    w=st.integers(4, 48),
    factor=st.one_of(
        st.sampled_from([0.25, 0.5, 2 / 3, 1.5, 2.0, 4.0]),
        st.floats(-2, 2).map(lambda e: 2.0**e).filter(lambda f: abs(f - 1) > 0.1),
    ),
    kind=st.sampled_from(["none", "block", "stripes", "scattered"]),
    seed=st.integers(0, 2**16),
)
@example(h=11, w=11, factor=30 / 11, kind="scattered", seed=1)  # a centre on a grid edge
@example(h=20, w=25, factor=2.9, kind="scattered", seed=7)  # enlarging: the centre, not half
def test_run_and_eval_read_the_same_grid_pixels_and_validity(h, w, factor, kind, seed) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = write_scene(Path(d), layout(kind, h, w, seed), seed)
        gsd = PIXEL / factor
        plan, _ = plan_resample(open_scene(path), gsd)
        grid = grid_for(path, gsd)
        assert plan is not None and grid.resampled
        assert plan.model_shape == grid.shape and plan.scene_shape == grid.native_shape
        image, valid = read_image(path, grid, (1, 2, 3))
        src = ResampledSource(open_scene(path), (1, 2, 3), plan)
        try:  # (GDAL's reads of parts of a grid can differ from its whole by rounding)
            data, ok = src.read(Win(0, 0, *grid.shape))
        finally:
            src.close()
        np.testing.assert_array_equal(data, image)
        np.testing.assert_array_equal(ok, valid)
        # back to the scene grid: run's block-by-block mapping is eval's to_native
        ids = np.random.default_rng(seed).integers(0, 255, grid.shape).astype(np.uint8)
        scene = ArrayStore(np.full((h, w), 255, np.uint8))
        to_scene_grid(
            ArrayStore(ids),
            scene,
            TileGrid(h, w, tile_size=8, overlap=0, multiple=1, block_size=8),
            plan,
        )
        np.testing.assert_array_equal(scene.mask, to_native(ids, (h, w)))


@settings(max_examples=examples(40), deadline=None)
@given(n_native=st.integers(1, 400), n_grid=st.integers(1, 400))
@example(n_native=11, n_grid=30)  # the float formula took the pixel before a centre's edge
def test_nearest_index_is_the_pixel_under_each_centre_exactly(n_native, n_grid) -> None:
    got = nearest_index(n_native, n_grid, 0, n_native)
    centres = [(2 * i + 1) * n_grid / (2 * n_native) for i in range(n_native)]  # fractions
    exact = [int((2 * i + 1) * n_grid // (2 * n_native)) for i in range(n_native)]
    assert got.tolist() == exact and all(
        e <= c < e + 1 for e, c in zip(exact, centres, strict=True)
    )
    ids = np.arange(n_grid, dtype=np.int64)[None] % 251
    ref = resample_array(ids.astype(np.uint8), (1, n_native), "nearest")  # GDAL's nearest
    np.testing.assert_array_equal(ids[0, got].astype(np.uint8), ref[0])

"""pred.zarr is georeferenced the CF / GeoZarr way: xarray + rioxarray place it on the map
exactly where rasterio places a GeoTIFF with the same CRS and transform."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from affine import Affine
from conftest import examples, make_raster
from hypothesis import given, settings
from hypothesis import strategies as st

from tilesegd.outputs.zarr_store import ZarrMaskStore
from tilesegd.raster.tiling import Block, Win

xr = pytest.importorskip("xarray")
pytest.importorskip("rioxarray")

UTM = "EPSG:32633"


def make_store(folder: Path, shape, crs: str | None, transform: Affine | None, probs=True):
    """A store with the attributes the runner passes (crs WKT, GDAL transform, classes...)."""
    from rasterio.crs import CRS

    attrs = {
        "crs": CRS.from_user_input(crs).to_wkt() if crs else None,
        "transform": list(transform.to_gdal()) if transform is not None else None,
        "classes": [{"id": 0, "name": "a", "color": [1, 2, 3]}],
        "nodata": 255,
        "config": {"tile": 64},
        "fingerprint": "fp",
    }
    return ZarrMaskStore(
        folder / "pred.zarr", shape, (16, 16), attrs, 3, probs_chunks=(16, 16) if probs else None
    )


def open_zarr(path: Path):
    """``xr.open_zarr`` as a user calls it, failing on any warning (e.g. about consolidation)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warnings.filterwarnings("ignore", category=PendingDeprecationWarning)  # affine's `*`
        return xr.open_zarr(path)


def test_open_zarr_places_the_mask_like_the_geotiff(tmp_path: Path) -> None:
    import rasterio

    transform = Affine(0.5, 0, 500123.25, 0, -0.5, 4650000.75)
    tif = make_raster(tmp_path / "mask.tif", np.zeros((37, 53), np.uint8), transform=transform)
    store = make_store(tmp_path, (37, 53), UTM, transform)
    ids = np.arange(16 * 16, dtype=np.uint8).reshape(16, 16) % 7
    store.write_block(Block(0, (1, 2), Win(16, 32, 16, 16)), ids)
    ds = open_zarr(store.path)
    with rasterio.open(tif) as src:
        for var in (ds.mask, ds.probs):
            assert var.rio.crs == src.crs
            assert var.rio.transform().almost_equals(src.transform)
            np.testing.assert_allclose(var.rio.bounds(), tuple(src.bounds))
    assert ds.probs.dims == ("class", "y", "x")
    assert ds.x.attrs["units"] == "metre" and ds.x.attrs["standard_name"].startswith("projection")
    assert ds.spatial_ref.attrs["GeoTransform"].split() == [repr(v) for v in transform.to_gdal()]
    # the existing attributes are kept; nodata is CF _FillValue 255 (NaN once decoded)
    assert ds.attrs["classes"][0]["name"] == "a" and ds.attrs["config"] == {"tile": 64}
    assert ds.mask.rio.encoded_nodata == 255
    raw = xr.open_zarr(store.path, mask_and_scale=False).mask.values
    assert raw.dtype == np.uint8
    np.testing.assert_array_equal(raw[16:32, 32:48], ids)
    assert (raw[:16] == 255).all() and np.isnan(ds.mask.values[:16]).all()


@settings(max_examples=examples(20), deadline=None)
@given(
    h=st.integers(1, 40),
    w=st.integers(1, 40),
    x0=st.floats(-1e6, 1e6, allow_nan=False),
    y0=st.floats(-1e6, 1e7, allow_nan=False),
    px=st.floats(0.01, 100),
    py=st.floats(0.01, 100),
    south_up=st.booleans(),
)
def test_coordinates_are_pixel_centres(tmp_path_factory, h, w, x0, y0, px, py, south_up) -> None:
    """x / y equal rasterio's pixel centres and rioxarray's bounds equal rasterio's, for random
    sizes, origins and pixel sizes (north-up and south-up)."""
    from rasterio.transform import array_bounds, xy

    transform = Affine(px, 0, x0, 0, py if south_up else -py, y0)
    store = make_store(tmp_path_factory.mktemp("z"), (h, w), UTM, transform, probs=False)
    ds = open_zarr(store.path)
    xs, _ = xy(transform, np.zeros(w), np.arange(w))
    _, ys = xy(transform, np.arange(h), np.zeros(h))
    np.testing.assert_allclose(ds.x.values, xs, rtol=0, atol=1e-6)
    np.testing.assert_allclose(ds.y.values, ys, rtol=0, atol=1e-6)
    west, south, east, north = array_bounds(h, w, transform)  # south > north if south-up
    left, bottom, right, top = ds.mask.rio.bounds()
    if h > 1 and w > 1:  # rioxarray needs two coordinates to measure a resolution
        np.testing.assert_allclose(
            (left, min(bottom, top), right, max(bottom, top)),
            (west, min(south, north), east, max(south, north)),
            rtol=0,
            atol=1e-6 * max(1.0, abs(x0), abs(y0)),
        )


def test_geographic_crs(tmp_path: Path) -> None:
    import rasterio

    transform = Affine(1e-4, 0, 15.0, 0, -1e-4, 42.0)
    tif = make_raster(
        tmp_path / "m.tif", np.zeros((21, 33), np.uint8), crs="EPSG:4326", transform=transform
    )
    ds = open_zarr(make_store(tmp_path, (21, 33), "EPSG:4326", transform).path)
    with rasterio.open(tif) as src:
        assert ds.mask.rio.crs == src.crs
        np.testing.assert_allclose(ds.mask.rio.bounds(), tuple(src.bounds))
    assert ds.x.attrs["units"] == "degrees_east" and ds.y.attrs["units"] == "degrees_north"


def test_rotated_transform_keeps_the_exact_geotransform(tmp_path: Path) -> None:
    """1-D coordinates cannot carry a rotation: no x / y, and rioxarray reads the full
    transform from spatial_ref's GeoTransform, as it does for a rotated GeoTIFF."""
    import rioxarray

    transform = Affine.translation(500000, 4650000) @ Affine.rotation(20) @ Affine.scale(2, -2)
    tif = make_raster(tmp_path / "m.tif", np.zeros((9, 7), np.uint8), transform=transform)
    ds = open_zarr(make_store(tmp_path, (9, 7), UTM, transform).path)
    assert "x" not in ds.variables and "y" not in ds.variables
    assert ds.mask.rio.transform().almost_equals(transform)
    ref = rioxarray.open_rasterio(tif)
    assert ds.mask.rio.transform().almost_equals(ref.rio.transform())
    np.testing.assert_allclose(ds.mask.rio.bounds(), ref.rio.bounds())
    assert ds.mask.rio.crs == ref.rio.crs


def test_plain_image_gets_pixel_coordinates(tmp_path: Path) -> None:
    ds = open_zarr(make_store(tmp_path, (5, 8), None, None).path)
    np.testing.assert_array_equal(ds.x.values, np.arange(8) + 0.5)
    np.testing.assert_array_equal(ds.y.values, np.arange(5) + 0.5)
    assert "spatial_ref" not in ds.variables and "grid_mapping" not in ds.mask.attrs
    assert ds.mask.rio.crs is None and ds.mask.rio.transform() == Affine.identity()


def test_resumed_store_keeps_its_coordinates_and_blocks(tmp_path: Path) -> None:
    transform = Affine(2, 0, 500000, 0, -2, 4650000)
    store = make_store(tmp_path, (37, 53), UTM, transform)
    store.write_block(Block(3, (0, 0), Win(0, 0, 16, 16)), np.ones((16, 16), np.uint8))
    again = make_store(tmp_path, (37, 53), UTM, transform)
    assert again.done_blocks() == {3}
    ds = open_zarr(again.path)
    assert ds.mask.rio.transform().almost_equals(transform)
    assert float(ds.mask[0, 0]) == 1
    reopened = ZarrMaskStore.reopen(store.path)
    assert reopened.probs is not None and reopened.mask.shape == (37, 53)

"""Polygon files (tilesegd.vector.layers) and the area of interest (tilesegd.vector.aoi): reading any OGR
format, the bad-input rules, reprojection onto a scene, and the pixel-centre AOI mask checked
against an independent point-in-polygon test of every pixel centre."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import shapely
from conftest import examples, to_lonlat, to_map, write_polygons
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rasterio.crs import CRS
from rasterio.transform import from_origin

from tilesegd.errors import ConfigError, InputError
from tilesegd.raster.tiling import TileGrid, Win
from tilesegd.vector.aoi import SceneAOI
from tilesegd.vector.layers import load_polygons
from tilesegd.vector.pixelgrid import centre_rule

UTM = CRS.from_epsg(32633)
T = from_origin(500000.0, 4650000.0, 2.0, 2.0)  # as make_raster


def centres_inside(geom, win: Win) -> np.ndarray:
    """Reference: whether each pixel centre of ``win`` is inside ``geom`` (shapely
    point-in-polygon, independent of GDAL's scanline fill), centres exactly on an edge by the
    documented tie rule (:func:`tilesegd.vector.pixelgrid.centre_rule`)."""
    rr, cc = np.mgrid[win.row_off : win.row_off + win.height, win.col_off : win.col_off + win.width]
    return centre_rule(geom, cc + 0.5, rr + 0.5)


# --- reading -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "suffix, driver",
    [
        (".gpkg", "GPKG"),
        (".geojson", "GeoJSON"),
        (".shp", "ESRI Shapefile"),
        (".fgb", "FlatGeobuf"),
    ],
)
def test_any_ogr_format_reads_the_same_polygons(tmp_path: Path, suffix: str, driver: str) -> None:
    geoms = [
        to_map(shapely.box(0, 0, 10, 5)),
        to_map(shapely.box(3, 3, 7, 20).union(shapely.box(20, 0, 25, 4))),
    ]
    path = write_polygons(
        tmp_path / f"z{suffix}", geoms, fields={"name": ["a", "b"]}, driver=driver
    )
    layer = load_polygons(path, field="name")
    assert layer.crs.to_epsg() == 32633 and len(layer) == 2
    # FlatGeobuf's spatial index may reorder features: compare by key
    got = dict(zip(layer.keys.tolist(), shapely.area(layer.geoms), strict=True))
    assert got == pytest.approx({"a": geoms[0].area, "b": geoms[1].area})
    fid = load_polygons(path)  # no field: the OGR feature ids
    assert len(set(fid.keys.tolist())) == 2 and fid.keys.dtype == np.int64


def test_missing_and_unreadable_files_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"--aoi .*nope\.gpkg: no such file"):
        load_polygons(tmp_path / "nope.gpkg", option="--aoi")
    bad = tmp_path / "bad.gpkg"
    bad.write_bytes(b"not a geopackage at all" * 10)
    with pytest.raises(ConfigError, match=r"bad\.gpkg: cannot read it as a vector file"):
        load_polygons(bad)


def test_no_polygons_is_an_error_and_non_polygons_are_dropped(tmp_path: Path, caplog) -> None:
    pts = write_polygons(tmp_path / "pts.gpkg", [shapely.Point(500010, 4649990)] * 2)
    with pytest.raises(ConfigError, match=r"pts\.gpkg: no polygons found \(2 feature"):
        load_polygons(pts)
    mixed = write_polygons(
        tmp_path / "mixed.gpkg",
        [to_map(shapely.box(0, 0, 4, 4)), shapely.Point(500010, 4649990), None],
    )
    with caplog.at_level(logging.WARNING):
        layer = load_polygons(mixed)
    assert len(layer) == 1 and layer.dropped == 2
    assert "2 feature(s) without a polygon" in caplog.text


def test_no_crs_needs_the_override(tmp_path: Path, caplog) -> None:
    # a Shapefile without .prj (GDAL reads every GeoJSON as EPSG:4326, RFC 7946)
    path = write_polygons(tmp_path / "nocrs.shp", [to_map(shapely.box(0, 0, 4, 4))], crs=None)
    with pytest.raises(ConfigError, match=r"has no CRS.*--zones-crs EPSG"):
        load_polygons(path)
    assert load_polygons(path, crs="EPSG:32633").crs.to_epsg() == 32633
    with pytest.raises(ConfigError, match=r"--aoi-crs 'EPSG:bogus'.*not a CRS"):
        load_polygons(path, option="--aoi", crs="EPSG:bogus")
    other = write_polygons(tmp_path / "crs.gpkg", [to_map(shapely.box(0, 0, 4, 4))])
    with caplog.at_level(logging.WARNING):
        assert load_polygons(other, crs="EPSG:32632").crs.to_epsg() == 32632
    assert "declares CRS" in caplog.text


def test_invalid_geometries_are_repaired_with_a_count(tmp_path: Path, caplog) -> None:
    bowtie = shapely.Polygon([(0, 0), (10, 10), (10, 0), (0, 10)])  # self-intersecting
    assert not bowtie.is_valid
    path = write_polygons(
        tmp_path / "bad.gpkg", [to_map(bowtie), to_map(shapely.box(20, 0, 30, 10))]
    )
    with caplog.at_level(logging.WARNING):
        layer = load_polygons(path)
    assert layer.repaired == 1 and "1 invalid geometry repaired" in caplog.text
    assert shapely.is_valid(layer.geoms).all()
    # make_valid splits the bowtie into its two triangles: half of the 10x10 box (x 4 m2/px)
    assert layer.geoms[0].area == pytest.approx(50 * 4)


def test_unknown_field_lists_the_fields(tmp_path: Path) -> None:
    path = write_polygons(
        tmp_path / "f.gpkg",
        [to_map(shapely.box(0, 0, 4, 4))],
        fields={"parcel": ["p1"], "owner": ["x"]},
    )
    with pytest.raises(ConfigError, match=r"no field 'district'; the file has parcel, owner"):
        load_polygons(path, field="district")


def test_shared_field_values_are_dissolved_and_nulls_dropped(tmp_path: Path, caplog) -> None:
    geoms = [
        to_map(shapely.box(0, 0, 4, 4)),
        to_map(shapely.box(10, 0, 14, 4)),
        to_map(shapely.box(4, 0, 8, 4)),
        to_map(shapely.box(20, 0, 24, 4)),
    ]
    path = write_polygons(tmp_path / "d.gpkg", geoms, fields={"d": ["x", "y", "x", None]})
    with caplog.at_level(logging.WARNING):
        layer = load_polygons(path, field="d")
    assert list(layer.keys) == ["x", "y"] and layer.dropped == 1
    assert "1 feature(s) with an empty 'd'" in caplog.text
    assert layer.geoms[0].area == pytest.approx(geoms[0].area + geoms[2].area)


def test_unreferenced_scene_is_an_input_error(tmp_path: Path) -> None:
    layer = load_polygons(
        write_polygons(tmp_path / "a.gpkg", [to_map(shapely.box(0, 0, 4, 4))]), option="--aoi"
    )
    with pytest.raises(
        InputError, match=r"frame\.jpg: the scene is not georeferenced.*--aoi needs georeferenced"
    ):
        SceneAOI(layer, None, None, 10, 10, scene="frame.jpg")


# --- AOI ---------------------------------------------------------------------------------


def test_reprojected_aoi_from_4326_matches_the_utm_rectangle(tmp_path: Path) -> None:
    """An AOI drawn in EPSG:4326 lands on the same UTM pixels: its edges sit on pixel edges
    (0.5 px from every centre), far beyond the reprojection's millimetres."""
    rect = shapely.box(7, 11, 29, 23)
    path = write_polygons(tmp_path / "aoi.geojson", [to_lonlat(to_map(rect))], crs="EPSG:4326")
    aoi = SceneAOI(load_polygons(path, option="--aoi"), UTM, T, 37, 41)
    got = aoi.mask(Win(0, 0, 37, 41))
    want = np.zeros((37, 41), bool)
    want[11:23, 7:29] = True
    np.testing.assert_array_equal(got, want)
    assert not aoi.empty and aoi.fraction == pytest.approx(22 * 12 / (37 * 41), rel=1e-6)
    assert aoi.intersects(Win(20, 20, 5, 5)) and not aoi.intersects(Win(23, 0, 14, 41))


def test_aoi_on_a_geographic_scene(tmp_path: Path) -> None:
    geo_t = from_origin(14.0, 46.0, 1e-4, 1e-4)
    rect = shapely.box(3, 5, 12, 9)
    path = write_polygons(tmp_path / "aoi.gpkg", [to_map(rect, geo_t)], crs="EPSG:4326")
    aoi = SceneAOI(load_polygons(path, option="--aoi"), CRS.from_epsg(4326), geo_t, 16, 20)
    want = np.zeros((16, 20), bool)
    want[5:9, 3:12] = True
    np.testing.assert_array_equal(aoi.mask(Win(0, 0, 16, 20)), want)


def test_aoi_pickles_for_workers(tmp_path: Path) -> None:
    import pickle

    path = write_polygons(tmp_path / "aoi.gpkg", [to_map(shapely.box(3, 4, 17, 9))])
    aoi = SceneAOI(load_polygons(path, option="--aoi"), UTM, T, 20, 20)
    back = pickle.loads(pickle.dumps(aoi))
    assert shapely.is_prepared(back.geom)
    np.testing.assert_array_equal(back.mask(Win(0, 0, 20, 20)), aoi.mask(Win(0, 0, 20, 20)))
    assert back.intersects(Win(4, 3, 1, 1)) and not back.intersects(Win(10, 0, 10, 20))


def test_aoi_far_away_covers_nothing_with_a_warning(tmp_path: Path, caplog) -> None:
    far = write_polygons(tmp_path / "far.gpkg", [shapely.box(600000, 4000000, 600100, 4000100)])
    with caplog.at_level(logging.WARNING):
        aoi = SceneAOI(load_polygons(far, option="--aoi"), UTM, T, 50, 50, scene="s1")
    assert aoi.empty and aoi.covers_nothing and aoi.fraction == 0.0
    assert "s1: the AOI" in caplog.text and "does not overlap" in caplog.text
    assert not aoi.intersects(Win(0, 0, 50, 50)) and not aoi.mask(Win(0, 0, 50, 50)).any()


def test_a_ten_percent_aoi_skips_nine_tenths_of_the_blocks(tmp_path: Path) -> None:
    g = TileGrid(1000, 1000, tile_size=100, overlap=0, multiple=10, block_size=100)
    path = write_polygons(tmp_path / "aoi.gpkg", [to_map(shapely.box(0, 0, 1000, 100))])
    aoi = SceneAOI(load_polygons(path, option="--aoi"), UTM, T, 1000, 1000)
    hit = [b for b in g.blocks() if aoi.intersects(b.window)]
    assert len(hit) == 10 and all(b.window.row_off == 0 for b in hit)  # edge-sharing blocks skipped
    assert aoi.fraction == pytest.approx(0.1)


coord = st.integers(-80, 560).map(lambda v: v / 8)  # eighths of a pixel: exact ties on centres


@st.composite
def polygons(draw):
    """1-3 random triangles / boxes in pixel coordinates, some reaching outside the scene."""
    out = []
    for _ in range(draw(st.integers(1, 3))):
        if draw(st.booleans()):
            x0, x1 = sorted([draw(coord), draw(coord)])
            y0, y1 = sorted([draw(coord), draw(coord)])
            out.append(shapely.box(x0, y0, x1 + 0.125, y1 + 0.125))
        else:
            out.append(shapely.Polygon([(draw(coord), draw(coord)) for _ in range(3)]).buffer(0))
    return [g for g in out if not g.is_empty and g.area > 0] or [shapely.box(1, 1, 9, 9)]


windows = st.builds(
    Win, st.integers(-10, 60), st.integers(-10, 70), st.integers(1, 30), st.integers(1, 30)
)


@settings(
    max_examples=examples(30),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(polys=polygons(), wins=st.lists(windows, min_size=1, max_size=6))
def test_aoi_mask_is_the_pixel_centre_rule(tmp_path: Path, polys, wins) -> None:
    """mask(win) is True exactly where a pixel centre is inside the AOI (centres on an edge by
    the tie rule: the coordinates are eighths of a pixel, so many are), False outside the
    scene; intersects(win) is never False where mask(win) has a True pixel; the blocks' masks
    tile into the scene's mask, ties included (issue 26)."""
    h, w = 53, 61
    path = write_polygons(tmp_path / "aoi.gpkg", [to_map(p) for p in polys])
    aoi = SceneAOI(load_polygons(path, option="--aoi"), UTM, T, h, w)
    union = shapely.clip_by_rect(shapely.union_all(polys), 0, 0, w, h)
    for win in wins:
        m = aoi.mask(win)
        inside = centres_inside(union, win)
        assert m.shape == (win.height, win.width)
        np.testing.assert_array_equal(m, inside)
        if m.any():
            assert aoi.intersects(win)
    whole = aoi.mask(Win(0, 0, h, w))
    tiled = np.zeros_like(whole)
    for b in TileGrid(h, w, 20, 0, 1, 16).blocks():
        tiled[b.window.slices] = aoi.mask(b.window)
    np.testing.assert_array_equal(tiled, whole)
    if aoi.empty:
        assert not whole.any()
    padded = np.pad(whole, 2)  # every 2x3 window, True pixels at any of its edges
    for r, c in zip(*np.nonzero(padded[:-1, :-2] | padded[1:, :-2] | padded[:-1, 2:]), strict=True):
        assert aoi.intersects(Win(int(r) - 2, int(c) - 2, 2, 3))

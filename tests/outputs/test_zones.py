"""Per-zone class areas (tilesegd.outputs.zones): block-by-block counts against a whole-scene
point-in-polygon reference, against rasterstats and exactextract, geodesic areas, reprojected
zones, overlapping zones (each counted on its own), a zone spanning two scenes, and the written
files."""

from __future__ import annotations

import csv
import errno
import logging
import threading
from pathlib import Path

import numpy as np
import pytest
import shapely
from conftest import examples, make_raster, to_lonlat, to_map, write_polygons
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from rasterio.crs import CRS
from rasterio.transform import from_origin

from tilesegd.errors import InputError, OutputError
from tilesegd.model.model_file import ClassInfo
from tilesegd.outputs.areas import row_pixel_areas
from tilesegd.outputs.zones import ZONE_COLUMNS, ZoneCounter, class_columns, write_zones_summary
from tilesegd.raster.tiling import TileGrid, Win
from tilesegd.vector.layers import load_polygons
from tilesegd.vector.pixelgrid import centre_rule

UTM = CRS.from_epsg(32633)
T = from_origin(500000.0, 4650000.0, 2.0, 2.0)  # as make_raster
K = 3
CLASSES = [ClassInfo(i, name, (0, 0, 0)) for i, name in enumerate(["bare soil", "tree", "water"])]


def count(counter: ZoneCounter, ids: np.ndarray, block: int = 16) -> ZoneCounter:
    """Feed a whole (H, W) id array to ``counter`` block by block, as the run does."""
    h, w = ids.shape
    for b in TileGrid(h, w, block, 0, 1, block).blocks():
        counter.add(b.window, np.ascontiguousarray(ids[b.window.slices]))
    return counter


def reference(zones_px: list, ids: np.ndarray, num_classes: int = K) -> np.ndarray:
    """(n_zones, K + 1) pixel counts by a plain loop over the zones, each on its own: a pixel
    counts in every zone that contains its centre (shapely point-in-polygon with the documented
    tie rule for centres on an edge, :func:`tilesegd.vector.pixelgrid.centre_rule`); column K = nodata."""
    h, w = ids.shape
    rr, cc = np.mgrid[0:h, 0:w]
    cls = np.where(ids < num_classes, ids, num_classes)
    out = np.zeros((len(zones_px), num_classes + 1), np.int64)
    for z, zone in enumerate(zones_px):
        inside = centre_rule(zone, cc + 0.5, rr + 0.5)
        out[z] = np.bincount(cls[inside], minlength=num_classes + 1)
    return out


def by_zone(rows: list[dict]) -> dict:
    """{zone: {class_id: row}}."""
    out: dict = {}
    for r in rows:
        out.setdefault(r["zone"], {})[int(r["class_id"])] = r
    return out


def test_hand_made_zones_with_known_areas_and_overlap(tmp_path: Path) -> None:
    """Column stripes of classes 0, 1, 2 (3 px each), top 4 rows nodata; zone A a 12x12 box,
    zone B overlapping A's lower-right quarter (both count it), zone C outside the scene."""
    h, w = 30, 36
    ids = (np.arange(w) // 3 % 3).astype(np.uint8)[None].repeat(h, 0)
    ids[:4] = 255
    zones = [shapely.box(0, 0, 12, 12), shapely.box(6, 6, 18, 18), shapely.box(100, 0, 110, 5)]
    path = write_polygons(
        tmp_path / "z.gpkg", [to_map(z) for z in zones], fields={"id": ["A", "B", "C"]}
    )
    counter = count(ZoneCounter(load_polygons(path, field="id"), UTM, T, h, w, K), ids)
    got = by_zone(counter.rows(CLASSES))
    assert set(got) == {"A", "B"}  # C never reaches the scene
    # A: rows 4..11 valid (8 rows); columns 0..11 hold classes 0 0 0 1 1 1 2 2 2 0 0 0
    assert [got["A"][c]["pixels"] for c in range(K)] == [8 * 6, 8 * 3, 8 * 3]
    # B: rows 6..17 x columns 6..17 (classes 2 2 2 0 0 0 1 1 1 2 2 2), A's quarter included
    assert [got["B"][c]["pixels"] for c in range(K)] == [12 * 3, 12 * 3, 12 * 6]
    for z in got.values():
        for r in z.values():
            assert r["area_m2"] == pytest.approx(4.0 * r["pixels"])  # 2 m pixels
            assert r["area_ha"] == pytest.approx(r["area_m2"] / 1e4)
        assert sum(r["percent"] for r in z.values()) == pytest.approx(100.0, abs=1e-3)
    assert got["A"][0]["percent"] == pytest.approx(50.0)


coord = st.integers(-500, 4500).map(lambda v: v / 100 + 0.000137)  # never on a pixel centre


@st.composite
def zone_sets(draw):
    """1-6 random zones (pixel coordinates): boxes and triangles, overlapping, some leaving the
    scene or outside it; zones nested in an earlier one; boxes touching an earlier box."""
    out = []
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["box", "triangle", "nested", "touching"]))
        if kind in ("nested", "touching") and out:
            prev = out[draw(st.integers(0, len(out) - 1))]
            if kind == "nested":
                g = prev.buffer(-draw(st.sampled_from([0.5, 1.3, 3.7])), join_style="mitre")
            else:
                x0, y0, x1, y1 = prev.bounds
                g = shapely.box(x1, y0, x1 + draw(st.integers(1, 12)), y1)
        elif kind == "triangle":
            g = shapely.Polygon([(draw(coord), draw(coord)) for _ in range(3)])
        else:
            x0, x1 = sorted([draw(coord), draw(coord)])
            y0, y1 = sorted([draw(coord), draw(coord)])
            g = shapely.box(x0, y0, x1 + 0.5, y1 + 0.5)
        if g.is_valid and g.geom_type == "Polygon" and g.area > 0.01:
            out.append(g)
    return out or [shapely.box(1.3, 1.3, 9.7, 9.7)]


# A centre exactly on an edge: the triangle's edge from (0.000137, 0.000137) to
# (0.500137, 0.500137) lies on y = x and passes through the centre (0.5, 0.5) of pixel (0, 0).
# GDAL counts it (a centre on an edge with the polygon to its left is in); a plain
# point-in-polygon reference did not (found by Hypothesis, issue 26).
TIE_TRIANGLE = shapely.Polygon([(0.000137, 0.000137), (0.000137, 0.050137), (0.500137, 0.500137)])
# The same tie, which GDAL alone lost to rounding (it left the centre out) until
# rasterize_window moved the centres by the tie-breaking shift.
TIE_TRIANGLE_2 = shapely.Polygon([(0.000137, 0.000137), (0.000137, 0.040137), (0.510137, 0.510137)])


@settings(
    max_examples=examples(30),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(zones=zone_sets(), block=st.sampled_from([7, 16, 40]), seed=st.integers(0, 2**16))
@example(zones=[TIE_TRIANGLE], block=7, seed=0)
@example(zones=[TIE_TRIANGLE_2], block=7, seed=0)
@example(  # nested and overlapping zones, each counted on its own (issue 20)
    zones=[shapely.box(2.3, 2.3, 30.7, 30.7), shapely.box(5.1, 5.1, 9.9, 9.9),
           shapely.Point(20.2, 20.2).buffer(8.3), shapely.box(30.7, 2.3, 40.2, 30.7)],
    block=16, seed=3,
)  # fmt: skip
def test_block_counts_equal_a_whole_scene_reference(tmp_path: Path, zones, block, seed) -> None:
    h, w = 37, 41
    ids = np.random.default_rng(seed).integers(0, K, (h, w)).astype(np.uint8)
    ids[np.random.default_rng(seed + 1).random((h, w)) < 0.1] = 255
    path = write_polygons(tmp_path / "z.gpkg", [to_map(z) for z in zones])
    layer = load_polygons(path)
    counter = count(ZoneCounter(layer, UTM, T, h, w, K), ids, block)
    want = reference(zones, ids)
    got = np.zeros_like(want)
    got[counter.index] = counter.pixels
    np.testing.assert_array_equal(got, want)
    np.testing.assert_allclose(counter.area, 4.0 * counter.pixels)
    rows = counter.rows(CLASSES)
    meets = shapely.intersects(np.array(zones, dtype=object), shapely.box(0, 0, w, h))
    # a row per class for every zone that meets the scene, with zero pixels where none is in
    assert len(rows) == K * int(meets.sum())
    assert {r["zone"] for r in rows} == {int(layer.keys[i]) for i in np.flatnonzero(meets)}


def test_the_tie_rule_is_gdals_and_holds_in_every_window(tmp_path: Path) -> None:
    """Centres exactly on edges (a box with edges through pixel centres, the y = x triangle):
    the counts follow the documented rule (a centre on a left / bottom edge is out, on a right /
    top edge is in), which is what GDAL's scanline fill does, whatever the block size."""
    from affine import Affine
    from rasterio.features import rasterize

    h, w = 9, 9
    box = shapely.box(1.5, 1.5, 5.5, 6.5)  # centres on every edge
    zones = [box, TIE_TRIANGLE, shapely.Polygon([(0, 0), (9, 9), (0, 9)])]
    ids = np.zeros((h, w), np.uint8)
    for block in (1, 2, 3, 4, 9):
        counter = count(ZoneCounter(load_polygons(
            write_polygons(tmp_path / f"z{block}.gpkg", [to_map(z) for z in zones])),
            UTM, T, h, w, K), ids, block)  # fmt: skip
        np.testing.assert_array_equal(counter.pixels, reference(zones, ids))
    # the box keeps columns 2..5 (centre 1.5 on the left edge out, 5.5 on the right edge in)
    # and rows 1..5 (centre 1.5 on the top edge in, 6.5 on the bottom edge out)
    assert counter.pixels[0, 0] == 4 * 5
    # GDAL itself, one whole-scene call with the plain identity transform, agrees
    for z, zone in enumerate(zones):
        plain = rasterize([(zone, 1)], out_shape=(h, w), transform=Affine.identity())
        assert int(plain.sum()) == int(counter.pixels[z].sum()), z


def test_against_rasterstats_and_exactextract(tmp_path: Path) -> None:
    """Independent zonal statistics on the same GeoTIFF: rasterstats (pixel-centre, categorical)
    on random non-overlapping polygons; exactextract (exact coverage fractions, which equal the
    pixel-centre rule for zones whose edges are pixel edges) on a pixel-aligned grid."""
    from exactextract import exact_extract
    from rasterstats import zonal_stats

    h, w = 45, 53
    rng = np.random.default_rng(3)
    ids = rng.integers(0, K, (h, w)).astype(np.uint8)
    ids[rng.random((h, w)) < 0.05] = 255
    tif = make_raster(tmp_path / "mask.tif", ids, nodata=255)
    centres = [(8.3, 7.1), (30.2, 9.9), (12.6, 33.4), (40.1, 30.7)]
    blobs = [
        shapely.Point(x, y).buffer(r)
        for (x, y), r in zip(centres, (7.7, 9.1, 6.4, 8.8), strict=True)
    ]
    blobs[1] = shapely.Polygon([(22.2, 1.1), (51.9, 3.3), (37.4, 20.6)])
    path = write_polygons(tmp_path / "blobs.gpkg", [to_map(b) for b in blobs])
    counter = count(ZoneCounter(load_polygons(path), UTM, T, h, w, K), ids, 16)
    stats = zonal_stats([to_map(b) for b in blobs], str(tif), categorical=True, nodata=255)
    for i, s in zip(counter.index, stats, strict=True):
        assert {c: int(counter.pixels[i, c]) for c in range(K) if counter.pixels[i, c]} == s

    grid = [shapely.box(x, y, x + 9, y + 11) for x in range(0, 45, 9) for y in range(0, 44, 11)]
    feats = [
        {
            "type": "Feature",
            "id": j,
            "properties": {},
            "geometry": shapely.geometry.mapping(to_map(g)),
        }
        for j, g in enumerate(grid)
    ]
    ee = exact_extract(str(tif), feats, ["unique", "frac", "count"])
    path = write_polygons(tmp_path / "grid.gpkg", [to_map(g) for g in grid])
    counter = count(ZoneCounter(load_polygons(path), UTM, T, h, w, K), ids, 16)
    assert len(counter.index) == len(grid)
    for j, f in enumerate(ee):
        p = f["properties"]
        want = {int(u): fr * p["count"] for u, fr in zip(p["unique"], p["frac"], strict=True)}
        got = {c: int(counter.pixels[j, c]) for c in range(K) if counter.pixels[j, c]}
        assert got == pytest.approx(want)
        assert counter.area[j, :K].sum() == pytest.approx(4.0 * p["count"])


def test_reprojected_zones_from_4326_match_the_utm_zones(tmp_path: Path) -> None:
    h, w = 40, 50
    ids = np.random.default_rng(5).integers(0, K, (h, w)).astype(np.uint8)
    zones = [shapely.box(x, y, x + 10, y + 8) for x in range(0, 50, 10) for y in range(0, 40, 8)]
    utm = write_polygons(tmp_path / "utm.gpkg", [to_map(z) for z in zones])
    ll = write_polygons(
        tmp_path / "ll.geojson", [to_lonlat(to_map(z)) for z in zones], crs="EPSG:4326"
    )
    a = count(ZoneCounter(load_polygons(utm), UTM, T, h, w, K), ids)
    b = count(ZoneCounter(load_polygons(ll), UTM, T, h, w, K), ids)
    np.testing.assert_array_equal(a.pixels, b.pixels)
    np.testing.assert_array_equal(b.pixels.sum(1), 80)


def test_geographic_scene_uses_geodesic_areas(tmp_path: Path) -> None:
    """On an EPSG:4326 scene each row has its own m2 per pixel; a zone's area equals the
    geodesic area of its (densified) polygon (pyproj.Geod, Karney 2013)."""
    from pyproj import Geod

    h, w = 60, 40
    geo_t = from_origin(14.0, 61.0, 0.01, 0.01)  # ~1.1 km x 0.5 km pixels at 60 N
    zone = shapely.box(5, 3, 35, 57)
    path = write_polygons(tmp_path / "z.gpkg", [to_map(zone, geo_t)], crs="EPSG:4326")
    ids = np.zeros((h, w), np.uint8)
    ids[:, 20:] = 1
    counter = count(ZoneCounter(load_polygons(path), CRS.from_epsg(4326), geo_t, h, w, K), ids, 16)
    ll = shapely.segmentize(to_map(zone, geo_t), 0.001)
    geod_area, _ = Geod(ellps="WGS84").geometry_area_perimeter(ll)
    assert counter.area[0, :K].sum() == pytest.approx(abs(geod_area), rel=1e-4)
    rows = row_pixel_areas(CRS.from_epsg(4326), geo_t, h, w)
    assert counter.area[0, 1] == pytest.approx(15 * rows[3:57].sum())  # columns 20..34


def test_a_zone_spanning_two_scenes_is_summed(tmp_path: Path) -> None:
    """Two side-by-side scenes (left: columns 0..29, right: 30..59 of one 24 x 60 frame)."""
    h, w = 24, 60
    ids = np.random.default_rng(7).integers(0, K, (h, w)).astype(np.uint8)
    ids[:, 50:] = 255
    zones = [shapely.box(20, 2, 40, 20), shapely.box(2, 2, 10, 10), shapely.box(45, 0, 60, 24)]
    path = write_polygons(
        tmp_path / "z.gpkg", [to_map(z) for z in zones], fields={"n": ["x", "y", "z"]}
    )
    layer = load_polygons(path, field="n")
    whole = count(ZoneCounter(layer, UTM, T, h, w, K), ids)
    t_right = from_origin(500000.0 + 30 * 2.0, 4650000.0, 2.0, 2.0)
    csvs = []
    for name, t, part in (("left", T, ids[:, :30]), ("right", t_right, ids[:, 30:])):
        c = count(ZoneCounter(layer, UTM, t, h, 30, K), np.ascontiguousarray(part))
        csvs.append(c.write_csv(tmp_path / f"{name}.csv", CLASSES))
    rows = write_zones_summary(csvs, tmp_path / "zones_summary.csv")
    want = by_zone(whole.rows(CLASSES))
    got = by_zone(rows)
    assert set(got) == set(want) == {"x", "y", "z"}
    for z in want:
        for c in range(K):
            assert got[z][c]["pixels"] == want[z][c]["pixels"]
            assert got[z][c]["area_m2"] == pytest.approx(want[z][c]["area_m2"])
            assert got[z][c]["percent"] == pytest.approx(want[z][c]["percent"], abs=1e-4)
    assert [got[z][0]["scenes"] for z in ("x", "y", "z")] == [2, 1, 1]
    with open(tmp_path / "zones_summary.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == len(rows)


def test_zones_gpkg_is_in_the_zones_crs_with_class_columns(tmp_path: Path) -> None:
    import pyogrio.raw

    h, w = 20, 20
    ids = np.zeros((h, w), np.uint8)
    ids[:, 10:] = 2
    zones = [shapely.box(0, 0, 20, 10), shapely.box(0, 10, 20, 20), shapely.box(900, 0, 910, 5)]
    path = write_polygons(
        tmp_path / "z.geojson", [to_lonlat(to_map(z)) for z in zones], crs="EPSG:4326"
    )
    counter = count(ZoneCounter(load_polygons(path), UTM, T, h, w, K), ids)
    out = counter.write_gpkg(tmp_path / "zones.gpkg", CLASSES)
    meta, _, wkb, data = pyogrio.raw.read(out)
    assert CRS.from_user_input(meta["crs"]).to_epsg() == 4326
    cols = dict(zip(meta["fields"], data, strict=True))
    assert list(meta["fields"]) == [
        "zone",
        "bare_soil_m2",
        "tree_m2",
        "water_m2",
        "valid_m2",
        "bare_soil_pct",
        "tree_pct",
        "water_pct",
    ]
    assert len(wkb) == 2  # the third zone is outside the scene
    np.testing.assert_allclose(cols["bare_soil_m2"], [400.0, 400.0])
    np.testing.assert_allclose(cols["water_pct"], [50.0, 50.0])
    np.testing.assert_allclose(cols["valid_m2"], [800.0, 800.0])
    geoms = shapely.from_wkb(wkb)
    np.testing.assert_allclose(shapely.area(geoms), shapely.area(load_polygons(path).geoms[:2]))


def test_csv_columns_and_a_scene_with_no_zone(tmp_path: Path, caplog) -> None:
    far = write_polygons(tmp_path / "far.gpkg", [shapely.box(600000, 4000000, 600100, 4000100)])
    with caplog.at_level(logging.WARNING):
        counter = ZoneCounter(load_polygons(far), UTM, T, 10, 10, K, scene="s7")
    assert "s7: the zones file" in caplog.text and "does not overlap" in caplog.text
    count(counter, np.zeros((10, 10), np.uint8))
    out = counter.write_csv(tmp_path / "zones.csv", CLASSES)
    assert out.read_text().strip() == ",".join(ZONE_COLUMNS)
    counter.write_gpkg(tmp_path / "zones.gpkg", CLASSES)
    import pyogrio

    assert pyogrio.read_info(tmp_path / "zones.gpkg")["features"] == 0


def test_unreferenced_scene_and_bad_blocks(tmp_path: Path) -> None:
    layer = load_polygons(write_polygons(tmp_path / "z.gpkg", [to_map(shapely.box(0, 0, 5, 5))]))
    with pytest.raises(InputError, match=r"DJI_0001\.JPG: the scene is not georeferenced.*--zones"):
        ZoneCounter(layer, None, None, 10, 10, K, scene="DJI_0001.JPG")
    counter = ZoneCounter(layer, UTM, T, 10, 10, K)
    with pytest.raises(ValueError, match=r"\(10, 10\) uint8"):
        counter.add(Win(0, 0, 10, 10), np.zeros((10, 10), np.int64))


def test_a_failed_write_leaves_no_file(tmp_path: Path, monkeypatch) -> None:
    import pyogrio.raw

    layer = load_polygons(write_polygons(tmp_path / "z.gpkg", [to_map(shapely.box(0, 0, 5, 5))]))
    counter = count(ZoneCounter(layer, UTM, T, 10, 10, K), np.zeros((10, 10), np.uint8))

    def full(*args, **kwargs):
        Path(args[0]).write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pyogrio.raw, "write", full)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(OutputError, match=r"zones\.gpkg: disk full.*No space left.*rerun"):
        counter.write_gpkg(out / "zones.gpkg", CLASSES)

    def disk_full(self, rows) -> None:  # the temporary file is open and half-written
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(csv.DictWriter, "writerows", disk_full)
    with pytest.raises(OutputError, match=r"zones\.csv: disk full"):
        counter.write_csv(out / "zones.csv", CLASSES)
    assert list(out.iterdir()) == []


def test_threads_add_blocks_concurrently(tmp_path: Path) -> None:
    h, w = 64, 64
    ids = np.random.default_rng(9).integers(0, K, (h, w)).astype(np.uint8)
    zones = [shapely.box(x, y, x + 13, y + 13) for x in range(0, 64, 13) for y in range(0, 64, 13)]
    layer = load_polygons(write_polygons(tmp_path / "z.gpkg", [to_map(z) for z in zones]))
    serial = count(ZoneCounter(layer, UTM, T, h, w, K), ids, 8)
    par = ZoneCounter(layer, UTM, T, h, w, K)
    blocks = TileGrid(h, w, 8, 0, 1, 8).blocks()

    def work(part) -> None:
        for b in part:
            par.add(b.window, np.ascontiguousarray(ids[b.window.slices]))

    threads = [threading.Thread(target=work, args=(blocks[i::4],)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    np.testing.assert_array_equal(par.pixels, serial.pixels)


def test_class_columns_are_field_safe_and_unique() -> None:
    classes = [
        ClassInfo(0, "low vegetation", (0, 0, 0)),
        ClassInfo(1, "Low-Vegetation", (0, 0, 0)),
        ClassInfo(2, "  ", (0, 0, 0)),
    ]
    assert class_columns(classes) == ["low_vegetation", "Low_Vegetation_1", "class2"]


def test_zones_with_many_vertices_are_clipped_per_block_without_changing_counts(
    tmp_path: Path,
) -> None:
    """Zones over CLIP_VERTICES vertices are clipped to each block before rasterising; the
    counts still equal the whole-scene reference."""
    from tilesegd.vector.pixelgrid import CLIP_VERTICES

    h, w = 50, 47
    ids = np.random.default_rng(11).integers(0, K, (h, w)).astype(np.uint8)
    ring = shapely.Point(20.3137, 24.7071).buffer(17.123, quad_segs=400)
    zones = [ring, shapely.box(30.21, 3.37, 46.02, 40.91)]
    assert shapely.get_num_coordinates(ring) > CLIP_VERTICES
    layer = load_polygons(write_polygons(tmp_path / "z.gpkg", [to_map(z) for z in zones]))
    counter = count(ZoneCounter(layer, UTM, T, h, w, K), ids, 12)
    np.testing.assert_array_equal(counter.pixels, reference(zones, ids))


def test_benchmark_smoke(tmp_path: Path) -> None:
    """benchmarks/bench_zones.py runs on a tiny scene and counts every valid pixel once."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "bench_zones", Path(__file__).resolve().parents[2] / "benchmarks" / "bench_zones.py"
    )
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    res = bench.main(["--size", "700", "--zones", "30", "--out", str(tmp_path)])
    z, a = res["zones"], res["aoi"]
    assert z["valid_pixels_counted"] == z["valid_pixels_expected"] and z["zones_in_scene"] == 30
    assert 0.05 < a["aoi_pixel_fraction"] < 0.15 and a["tiles_hit"] <= a["tiles_total"]
    assert (tmp_path / "bench_zones.json").is_file()


def test_a_huge_reprojected_zone_is_clipped_to_the_scene_first(tmp_path: Path) -> None:
    """A 2 x 2 degree zone (EPSG:4326) around a 2 m UTM scene: only the part near the scene is
    densified and reprojected (else ~200 km edges at 128 m steps); it holds every pixel."""
    h, w = 30, 40
    ids = np.random.default_rng(13).integers(0, K, (h, w)).astype(np.uint8)
    path = write_polygons(
        tmp_path / "big.geojson", [shapely.box(14.0, 41.0, 16.0, 43.0)], crs="EPSG:4326"
    )
    counter = count(ZoneCounter(load_polygons(path), UTM, T, h, w, K), ids)
    assert counter.pixels.sum() == h * w
    assert shapely.get_num_coordinates(counter.geoms[0]) < 100


def test_overlapping_and_nested_zones_match_rasterstats(tmp_path: Path) -> None:
    """rasterstats counts every zone on its own (one GDAL rasterisation per feature): circles
    overlapping each other, a zone nested in another, a zone covering an earlier one and a zone
    whose pixel centres all miss the scene still get a row each (issue 20: a zone covered by
    earlier zones had no row)."""
    from rasterstats import zonal_stats

    h, w = 47, 51
    rng = np.random.default_rng(21)
    ids = rng.integers(0, K, (h, w)).astype(np.uint8)
    ids[rng.random((h, w)) < 0.05] = 255
    tif = make_raster(tmp_path / "mask.tif", ids, nodata=255)
    zones = [
        shapely.Point(15.3, 17.1).buffer(12.7),
        shapely.Point(24.6, 20.2).buffer(11.1),  # overlaps the first
        shapely.box(10.2, 12.3, 20.1, 22.4),  # nested in the union of the first two
        shapely.Point(16.1, 18.3).buffer(4.2),  # inside the first, listed after it
        shapely.box(50.7, 3.3, 52.0, 9.1),  # meets the scene, no pixel centre inside
    ]
    path = write_polygons(tmp_path / "z.gpkg", [to_map(z) for z in zones])
    counter = count(ZoneCounter(load_polygons(path), UTM, T, h, w, K), ids, 16)
    assert list(counter.index) == list(range(len(zones)))
    stats = zonal_stats([to_map(z) for z in zones], str(tif), categorical=True, nodata=255)
    for i, s in enumerate(stats):
        assert {c: int(counter.pixels[i, c]) for c in range(K) if counter.pixels[i, c]} == s
    assert counter.pixels[4].sum() == 0
    rows = by_zone(counter.rows(CLASSES))
    assert set(rows) == {1, 2, 3, 4, 5} and all(r["pixels"] == 0 for r in rows[5].values())
    np.testing.assert_array_equal(counter.pixels, reference(zones, ids))
    assert counter.layer_of.max() >= 1  # the overlapping zones needed more than one layer


def test_a_partition_of_touching_zones_is_one_layer(tmp_path: Path) -> None:
    """A grid of zones that share edges through pixel centres: one rasterisation per block
    suffices, and every valid pixel is counted exactly once."""
    h, w = 30, 30
    ids = np.random.default_rng(4).integers(0, K, (h, w)).astype(np.uint8)
    grid = [shapely.box(x, y, x + 7.5, y + 5.5) for x in np.arange(-0.5, 30, 7.5)
            for y in np.arange(-0.5, 30, 5.5)]  # fmt: skip
    counter = count(ZoneCounter(load_polygons(
        write_polygons(tmp_path / "g.gpkg", [to_map(g) for g in grid])), UTM, T, h, w, K), ids, 8)  # fmt: skip
    assert counter.layer_of.max() == 0
    assert counter.pixels.sum() == h * w
    np.testing.assert_array_equal(counter.pixels, reference(grid, ids))

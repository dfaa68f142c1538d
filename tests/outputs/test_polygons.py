"""polygons.gpkg (tilesegd.outputs.polygons / regions): block-by-block tracing against a
whole-scene reference, seams, holes, options, metres, simplification and atomic writes."""

from __future__ import annotations

import errno
from collections import Counter
from pathlib import Path

import numpy as np
import pyogrio
import pytest
import shapely
from conftest import examples
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rasterio.crs import CRS
from rasterio.features import rasterize, shapes
from rasterio.transform import from_origin
from scipy.ndimage import uniform_filter

from tilesegd.errors import ConfigError, InputError, OutputError
from tilesegd.model.model_file import ClassInfo
from tilesegd.outputs import polygons as P
from tilesegd.outputs.areas import AreaCounter, row_pixel_areas
from tilesegd.outputs.regions import RegionTracer
from tilesegd.raster.tiling import TileGrid

UTM = CRS.from_epsg(32633)
UTM_T = from_origin(500000.0, 4650000.0, 2.0, 2.0)  # 2 m pixels: 4 m2
CLASSES = [
    ClassInfo(i, n, (i, i, i)) for i, n in enumerate(["background", "building", "tree", "water"])
]
FAST = settings(
    max_examples=examples(25),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


def grid(h: int, w: int, block: int) -> list:
    """Blocks of ``block`` px (any size: multiple 1, no overlap)."""
    return TileGrid(h, w, tile_size=block, overlap=0, multiple=1, block_size=block).blocks()


def write(path: Path, mask: np.ndarray, block: int, **kw) -> P.PolygonStats:
    h, w = mask.shape
    args = dict(crs=UTM, transform=UTM_T, classes=CLASSES, keep={1, 2, 3}) | kw
    return P.write_polygons(
        path, grid(h, w, block), lambda b: mask[b.window.slices], height=h, width=w, **args
    )


def read(path: Path) -> tuple[dict, np.ndarray, dict[str, np.ndarray]]:
    meta, _, wkb, data = pyogrio.raw.read(path, layer=P.LAYER)
    return meta, shapely.from_wkb(wkb), dict(zip(meta["fields"], data, strict=True))


def random_mask(seed: int, h: int, w: int, smooth: int, n_classes: int, nodata: float):
    """(h, w) uint8 ids with blobs of ``smooth`` px, ``nodata`` fraction of 255."""
    rng = np.random.default_rng(seed)
    m = (uniform_filter(rng.random((h, w)), smooth) * 97).astype(np.uint8) % n_classes
    m[rng.random((h, w)) < nodata] = 255
    return m


def reference(mask: np.ndarray, keep: set[int], transform=UTM_T) -> Counter:
    """Whole-scene GDAL polygonize (4-connectivity): the plain reference."""
    sel = np.isin(mask, list(keep))
    out = shapes(mask, mask=sel, connectivity=4, transform=transform)
    return Counter((int(v), shapely.geometry.shape(g).normalize().wkt) for g, v in out)


masks = st.builds(
    random_mask,
    seed=st.integers(0, 2**32 - 1),
    h=st.integers(1, 40),
    w=st.integers(1, 40),
    smooth=st.integers(1, 9),
    n_classes=st.integers(1, 4),
    nodata=st.sampled_from([0.0, 0.05]),
)


def test_disc_across_four_blocks_is_one_seamless_polygon(tmp_path: Path) -> None:
    from tilesegd.outputs.zarr_store import ZarrMaskStore

    h, w = 61, 57
    yy, xx = np.mgrid[:h, :w]
    mask = np.where((yy - 30.5) ** 2 + (xx - 28.5) ** 2 < 15**2, 1, 0).astype(np.uint8)
    blocks = grid(h, w, 32)
    assert len(blocks) == 4
    store = ZarrMaskStore(tmp_path / "pred.zarr", (h, w), (32, 32), {}, num_classes=4)
    for b in blocks:
        store.write_block(b, mask[b.window.slices])
    stats = P.write_polygons(
        tmp_path / "polygons.gpkg",
        blocks,
        store.read_block,
        height=h,
        width=w,
        crs=UTM,
        transform=UTM_T,
        classes=CLASSES,
        keep=P.resolve_keep(CLASSES, None),
    )
    meta, geoms, f = read(tmp_path / "polygons.gpkg")
    assert stats.features == len(geoms) == 1 and stats.pixels[1] == int(mask.sum())
    disc = geoms[0]
    assert disc.geom_type == "Polygon" and len(disc.interiors) == 0 and disc.is_valid
    assert f["pixels"][0] == mask.sum() and f["class_name"][0] == "building"
    assert f["area_m2"][0] == pytest.approx(mask.sum() * 4.0, rel=1e-12)
    # no seam: the very polygon GDAL traces on the whole scene, vertex for vertex
    ((_, whole),) = reference(mask, {1})
    assert disc.normalize().wkt == whole
    assert CRS.from_user_input(meta["crs"]) == UTM


@FAST
@given(mask=masks, block=st.integers(1, 45), keep=st.sets(st.integers(0, 3), min_size=1))
def test_blockwise_polygons_equal_whole_scene_polygons(mask, block, keep, tmp_path) -> None:
    path = tmp_path / f"p{block}.gpkg"
    stats = write(path, mask, block, keep=keep)
    _, geoms, f = read(path)
    assert shapely.is_valid(geoms).all() and set(shapely.get_type_id(geoms)) <= {3}
    got = Counter((int(c), g.normalize().wkt) for c, g in zip(f["class_id"], geoms, strict=True))
    assert got == reference(mask, keep)
    counts = np.bincount(mask.ravel(), minlength=256)
    for c in keep:
        assert f["pixels"][f["class_id"] == c].sum() == counts[c] == stats.pixels[c]
    assert np.allclose(f["area_m2"], f["pixels"] * 4.0)
    # rasterising the layer back onto the mask's grid gives the mask (other classes -> 255)
    back = rasterize(
        zip(geoms, f["class_id"].tolist(), strict=True) if len(geoms) else [],
        out_shape=mask.shape,
        transform=UTM_T,
        fill=255,
        dtype="uint8",
    )
    np.testing.assert_array_equal(back, np.where(np.isin(mask, list(keep)), mask, 255))


def test_regions_leave_as_soon_as_they_are_finished() -> None:
    """Bounded memory: squares inside a block come out with that block; only regions that
    touch the unread side of the frontier are held."""
    h, w, b = 64, 96, 16
    mask = np.zeros((h, w), np.uint8)
    mask[1::4, 1::4] = mask[2::4, 1::4] = mask[1::4, 2::4] = mask[2::4, 2::4] = 1
    mask[:, 47:49] = 2  # a long strip: one region through every block row
    blocks = grid(h, w, b)
    tracer = RegionTracer(blocks, h, w, {1, 2})
    held, out = [], []
    for blk in blocks:
        done = tracer.add(blk, mask[blk.window.slices])
        assert sum(r.class_id == 1 for r in done) == 16  # its own 4x4 squares, at once
        out += done
        held.append(tracer.open_regions)
    tracer.finish()
    assert max(held) == 1 and tracer.open_regions == 0  # only the strip waits
    strip = [r for r in out if r.class_id == 2]
    assert len(strip) == 1 and strip[0].pixels == 2 * h


def test_holes_are_kept_also_when_the_ring_spans_blocks(tmp_path: Path) -> None:
    mask = np.zeros((23, 29), np.uint8)
    mask[3:20, 4:25] = 2  # tree ring...
    mask[7:16, 9:20] = 3  # ...around water
    mask[10:12, 12:14] = 2  # a tree island inside the water
    for block in (8, 64):
        path = tmp_path / f"h{block}.gpkg"
        write(path, mask, block)
        _, geoms, f = read(path)
        trees = geoms[f["class_id"] == 2]
        water = geoms[f["class_id"] == 3]
        assert len(trees) == 2 and len(water) == 1
        ring = max(trees, key=lambda g: g.area)
        assert len(ring.interiors) == 1 and len(water[0].interiors) == 1
        assert shapely.Polygon(ring.interiors[0]).equals(shapely.Polygon(water[0].exterior))
        assert shapely.is_valid(geoms).all()


def test_a_scene_wide_region_keeps_every_hole(tmp_path: Path) -> None:
    """Background across all 20 blocks, a building (hole) in every 6x6 cell, some on block
    edges, and a ring of trees across a block corner: one background polygon, all holes."""
    h, w = 61, 83
    mask = np.zeros((h, w), np.uint8)
    for r in range(2, h - 3, 6):
        for c in range(2, w - 3, 6):
            mask[r : r + 2, c : c + 3] = 1
    mask[30:40, 35:45] = 2
    mask[33:37, 38:42] = 0  # background inside the tree ring: a second background region
    path = tmp_path / "all.gpkg"
    write(path, mask, 16, keep={0, 1, 2})
    _, geoms, f = read(path)
    got = Counter((int(c), g.normalize().wkt) for c, g in zip(f["class_id"], geoms, strict=True))
    assert got == reference(mask, {0, 1, 2})
    background = geoms[f["class_id"] == 0]
    outer = max(background, key=lambda g: g.area)
    from scipy.ndimage import label

    _, islands = label(mask != 0)  # buildings, and the ring with the buildings it touches
    assert len(background) == 2 and len(outer.interiors) == islands > 100
    assert outer.is_valid and f["pixels"][f["class_id"] == 0].sum() == (mask == 0).sum()


def test_projected_areas_and_perimeters_in_metres(tmp_path: Path) -> None:
    mask = np.zeros((9, 11), np.uint8)
    mask[1:4, 1:3] = 1  # 3 x 2 px = 6 m x 4 m
    mask[5:9, 5:10] = 2  # 4 x 5 px with a 1-px hole
    mask[6, 7] = 0
    write(tmp_path / "p.gpkg", mask, 4)
    _, _, f = read(tmp_path / "p.gpkg")
    by = {int(c): k for k, c in enumerate(f["class_id"])}
    assert f["area_m2"][by[1]] == pytest.approx(24.0) and f["perimeter_m"][by[1]] == 20.0
    assert f["area_m2"][by[2]] == pytest.approx(19 * 4.0)
    assert f["perimeter_m"][by[2]] == pytest.approx(2 * (8 + 10) + 8)  # outer ring + hole


def test_geographic_crs_areas_are_geodesic(tmp_path: Path) -> None:
    from pyproj import Geod

    mask = random_mask(3, 37, 41, 5, 4, 0.02)
    crs, t = CRS.from_epsg(4326), from_origin(10.0, 60.0, 2e-4, 1e-4)
    write(tmp_path / "g.gpkg", mask, 16, crs=crs, transform=t)
    _, geoms, f = read(tmp_path / "g.gpkg")
    geod = Geod(ellps="WGS84")
    for g, a, p in zip(geoms, f["area_m2"], f["perimeter_m"], strict=True):
        assert a == pytest.approx(abs(geod.geometry_area_perimeter(g)[0]), rel=1e-9)
        rings = [g.exterior, *g.interiors]
        assert p == pytest.approx(sum(geod.geometry_length(r) for r in rings), rel=1e-9)
    # and per class, the same m2 as areas.csv's independent per-row computation
    counter = AreaCounter(4, row_pixel_areas(crs, t, *mask.shape))
    counter.add(0, mask)
    for c in (1, 2, 3):
        assert f["area_m2"][f["class_id"] == c].sum() == pytest.approx(counter.area[c], rel=1e-6)
    assert f["area_m2"].min() > 100  # m2, not square degrees


@pytest.mark.parametrize("crs", [None, UTM])  # a CRS without a transform is no georef either
def test_no_georeferencing_gives_pixel_coordinates_and_null_metres(tmp_path: Path, crs) -> None:
    mask = random_mask(5, 13, 17, 3, 4, 0.0)
    write(tmp_path / "n.gpkg", mask, 8, crs=crs, transform=None, min_area_m2=50.0)
    meta, geoms, f = read(tmp_path / "n.gpkg")
    assert meta["crs"] is None
    assert np.isnan(f["area_m2"]).all() and np.isnan(f["perimeter_m"]).all()
    x0, y0, x1, y1 = shapely.union_all(geoms).bounds
    assert x0 >= 0 and y0 >= 0 and x1 <= 17 and y1 <= 13
    ident = from_origin(0, 0, 1, -1)  # x = column, y = row
    got = Counter((int(c), g.normalize().wkt) for c, g in zip(f["class_id"], geoms, strict=True))
    assert got == reference(mask, {1, 2, 3}, ident)  # min area not applied: no metres


def test_keep_classes(tmp_path: Path) -> None:
    assert P.resolve_keep(CLASSES, None) == {1, 2, 3}
    assert P.resolve_keep(CLASSES, ["Water", " tree "]) == {2, 3}
    assert P.resolve_keep(CLASSES, "building,background") == {0, 1}
    assert P.VectorOptions(classes=["water"]).keep(CLASSES) == {3}
    with pytest.raises(ConfigError, match="unknown class 'roads'.*background, building, tree"):
        P.resolve_keep(CLASSES, ["water", "roads"])
    with pytest.raises(ConfigError, match="empty"):
        P.resolve_keep(CLASSES, [])
    mask = random_mask(1, 20, 20, 3, 4, 0.1)
    write(tmp_path / "k.gpkg", mask, 7, keep={2})
    _, _, f = read(tmp_path / "k.gpkg")
    assert set(f["class_id"]) == {2} and f["pixels"].sum() == (mask == 2).sum()


def test_min_area_drops_small_regions_only_from_the_polygons(tmp_path: Path) -> None:
    mask = np.zeros((20, 30), np.uint8)
    for k, side in enumerate((1, 2, 3, 5)):  # 1, 4, 9, 25 px = 4, 16, 36, 100 m2
        mask[2 : 2 + side, 2 + 7 * k : 2 + 7 * k + side] = 1 + k % 3
    before = mask.copy()
    stats = write(tmp_path / "m.gpkg", mask, 8, min_area_m2=20.0)
    _, _, f = read(tmp_path / "m.gpkg")
    assert sorted(f["pixels"]) == [9, 25] and stats.dropped == 2 and stats.features == 2
    assert (f["area_m2"] >= 20.0).all()
    np.testing.assert_array_equal(mask, before)  # the mask is never changed


def shared_edges(geoms: np.ndarray) -> tuple[int, float]:
    """(pairs of polygons sharing a boundary of positive length, largest overlap area)."""
    a, b = shapely.STRtree(geoms).query(geoms, predicate="intersects")
    a, b = a[a < b], b[a < b]
    inter = shapely.intersection(geoms[a], geoms[b])
    length = shapely.length(shapely.boundary(inter)) + shapely.length(inter)
    return int((length > 0).sum()), float(shapely.area(inter).max(initial=0.0))


def trace(mask: np.ndarray, block: int, keep: set[int], simplify: float = 0.0) -> np.ndarray:
    """The regions' polygons (pixel coordinates) straight from the tracer: no GeoPackage."""
    h, w = mask.shape
    blocks = grid(h, w, block)
    tracer = RegionTracer(blocks, h, w, keep, simplify)
    out = [r for b in blocks for r in tracer.add(b, mask[b.window.slices])]
    tracer.finish()
    return np.array([r.geometry for r in out], dtype=object)


@FAST
@given(mask=masks, block=st.integers(1, 45), tol=st.sampled_from([0.5, 1.0, 2.0, 4.0]))
def test_simplify_keeps_shared_edges_without_gaps_or_overlaps(mask, block, tol) -> None:
    every = {0, 1, 2, 3}
    geoms, exact = trace(mask, block, every, tol), trace(mask, block, every)
    assert len(geoms) == len(exact)
    assert shapely.is_valid(geoms).all() and set(shapely.get_type_id(geoms)) <= {3}
    pairs, overlap = shared_edges(geoms)
    assert overlap == 0.0 and shapely.coverage_is_valid(geoms)  # edges matched vertex for vertex
    assert pairs == shared_edges(exact)[0]  # every neighbour still shares an edge
    # simplifying only takes vertices away: each one left is a pixel corner on the region's
    # exact outline (one more per T-junction, kept so that the neighbours match vertex for
    # vertex: on a tiny mask the total can grow)
    xy, k = shapely.get_coordinates(geoms, return_index=True)
    assert (xy == np.round(xy)).all()
    assert shapely.intersects(shapely.boundary(exact)[k], shapely.points(xy)).all()
    if (mask != 255).all():  # a full coverage stays full: no gaps
        assert shapely.union_all(geoms).area == pytest.approx(mask.size)
        assert shapely.area(geoms).sum() == pytest.approx(mask.size)


def test_simplify_smooths_a_staircase_across_blocks(tmp_path: Path) -> None:
    h, w = 60, 60
    yy, xx = np.mgrid[:h, :w]
    mask = np.where(yy * 3 < xx * 2 + 5, 1, 2).astype(np.uint8)  # a 2:3 staircase
    write(tmp_path / "e.gpkg", mask, 25)
    write(tmp_path / "s.gpkg", mask, 25, simplify=1.5)
    _, exact, _ = read(tmp_path / "e.gpkg")
    _, simple, f = read(tmp_path / "s.gpkg")
    assert len(simple) == 2 and shapely.get_num_coordinates(simple).sum() < 0.25 * (
        shapely.get_num_coordinates(exact).sum()
    )
    a, b = simple
    assert a.intersection(b).length > 60 * 2 and a.intersection(b).area == 0.0
    assert shapely.union_all(simple).equals(shapely.union_all(exact))
    assert shapely.hausdorff_distance(a, exact[0]) <= 1.5 * 2.0 * 1.5  # metres


def test_nothing_to_vectorise_writes_an_empty_valid_layer(tmp_path: Path) -> None:
    for name, mask in (("bg", np.zeros((5, 7), np.uint8)), ("nd", np.full((1, 1), 255, np.uint8))):
        stats = write(tmp_path / f"{name}.gpkg", mask, 3)
        info = pyogrio.read_info(tmp_path / f"{name}.gpkg", layer=P.LAYER)
        assert stats.features == 0 and info["features"] == 0
        assert list(info["fields"]) == list(P.FIELDS) and info["geometry_type"] == "Polygon"


def test_bad_options_and_blocks_are_clear_errors(tmp_path: Path) -> None:
    mask = np.zeros((4, 4), np.uint8)
    for kw in ({"min_area_m2": -1.0}, {"simplify": -0.5}, {"simplify": float("nan")}):
        with pytest.raises(ConfigError, match=">= 0"):
            write(tmp_path / "x.gpkg", mask, 2, **kw)
        with pytest.raises(ConfigError, match=">= 0"):
            P.VectorOptions(**kw)
    with pytest.raises(ConfigError, match="not classes"):
        write(tmp_path / "x.gpkg", mask, 2, keep={7})
    with pytest.raises(ConfigError, match="do not tile"):
        P.write_polygons(
            tmp_path / "x.gpkg", grid(4, 4, 2)[:3], lambda b: mask[b.window.slices],
            height=4, width=4, crs=UTM, transform=UTM_T, classes=CLASSES, keep={1},
        )  # fmt: skip
    with pytest.raises(InputError, match=r"expected \(2, 2\) uint8"):
        write(tmp_path / "x.gpkg", mask.astype(np.int32), 2)
    assert list(tmp_path.iterdir()) == []  # nothing left behind by any failure


@pytest.mark.parametrize("fail_at", [1, 3])
def test_a_full_disk_leaves_no_partial_file(tmp_path: Path, monkeypatch, fail_at: int) -> None:
    """fail_at 1: creating the layer fails; 3: the second append fails (after real writes)."""
    import pyogrio.raw

    real, calls = pyogrio.raw.write, []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == fail_at:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(*args, **kwargs)

    monkeypatch.setattr(pyogrio.raw, "write", flaky)
    monkeypatch.setattr(P, "FLUSH_FEATURES", 1)
    final = tmp_path / "polygons.gpkg"
    final.write_bytes(b"previous complete file")
    mask = random_mask(2, 30, 30, 3, 4, 0.0)
    with pytest.raises(OutputError, match=r"polygons\.gpkg: disk full.*rerun"):
        write(final, mask, 10)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["polygons.gpkg"]  # no tmp, journal
    assert final.read_bytes() == b"previous complete file"
    assert issubclass(OutputError, OSError)


def test_benchmark_scene_and_worker(tmp_path: Path, monkeypatch) -> None:
    """benchmarks/bench_vector.py: any window of the generated scene is the same scene (so it
    is made block by block), and its worker writes the polygons of a small store."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    import bench_vector

    whole = bench_vector.scene_window(0, 0, 300, 260)
    np.testing.assert_array_equal(
        bench_vector.scene_window(37, 101, 200, 150), whole[37:237, 101:251]
    )
    assert {1, 255} <= set(np.unique(whole).tolist()) <= {0, 1, 2, 3, 4, 255}
    monkeypatch.setattr(bench_vector, "DATA", tmp_path)
    store = bench_vector.make_store(512)
    res = bench_vector._worker(
        {"size": 512, "simplify": 1.0, "store": str(store), "out": str(tmp_path / "p.gpkg")}
    )
    assert res["features"] == pyogrio.read_info(tmp_path / "p.gpkg")["features"] > 100
    assert res["peak_rss_mb"] > 0 and res["seconds"] > 0


REAL_FAILURE = """
import resource, signal, sys
import numpy as np
from rasterio.crs import CRS
from rasterio.transform import from_origin
from tilesegd.errors import OutputError
from tilesegd.model.model_file import ClassInfo
from tilesegd.raster.tiling import TileGrid
from tilesegd.outputs.polygons import write_polygons

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
rng = np.random.default_rng(0)
mask = rng.integers(0, 4, (120, 120)).astype(np.uint8)
blocks = TileGrid(120, 120, 64, 0, 1, 64).blocks()
classes = [ClassInfo(i, f"c{i}", (0, 0, 0)) for i in range(4)]
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[2]), resource.RLIM_INFINITY))
try:
    write_polygons(sys.argv[1], blocks, lambda b: mask[b.window.slices], height=120,
                   width=120, crs=CRS.from_epsg(32633), transform=from_origin(0, 0, 1, 1),
                   classes=classes, keep={1, 2, 3})
except OutputError as e:
    print("OutputError", e)
"""


@pytest.mark.parametrize("limit", [50_000, 200_000])
def test_a_real_write_failure_leaves_nothing(tmp_path: Path, limit: int) -> None:
    """GDAL really failing (a file-size limit: EFBIG, as a full disk fails) while creating the
    layer (50 kB) or in mid-append (200 kB): OutputError, no file, no SQLite journal."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    out = tmp_path / "out"
    out.mkdir()
    cmd = [sys.executable, "-c", REAL_FAILURE, str(out / "polygons.gpkg"), str(limit)]
    proc = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("OutputError") and "polygons.gpkg" in proc.stdout
    assert list(out.iterdir()) == []


def test_real_loveda_masks_blockwise_equal_whole_and_simplify_cleanly() -> None:
    """Real annotated masks (LoveDA, 1024^2, jagged outlines): block-by-block polygons equal
    the whole-scene ones; simplified, they still tile the scene without gaps or overlaps."""
    import rasterio
    from conftest import shared_data

    ident = from_origin(0, 0, 1, -1)
    for name in ("0.png", "2.png"):
        with rasterio.open(shared_data() / "labeled" / "loveda" / "masks" / name) as ds:
            mask = ds.read(1)
        mask[mask == 0] = 255  # LoveDA's 0 is nodata
        kept = set(np.unique(mask).tolist()) - {255}
        h, w = mask.shape
        blocks = grid(h, w, 300)
        tracer = RegionTracer(blocks, h, w, kept)
        regions = [r for b in blocks for r in tracer.add(b, mask[b.window.slices])]
        got = Counter((r.class_id, r.geometry.normalize().wkt) for r in regions)
        assert got == reference(mask, kept, ident) and len(regions) >= 10
        simple, exact = trace(mask, 300, kept, simplify=1.5), trace(mask, 300, kept)
        pairs, overlap = shared_edges(simple)
        assert overlap == 0.0 and pairs == shared_edges(exact)[0]
        assert shapely.is_valid(simple).all() and shapely.coverage_is_valid(simple)
        n_simple, n_exact = shapely.get_num_coordinates(simple), shapely.get_num_coordinates(exact)
        assert n_simple.sum() < 0.6 * n_exact.sum()  # 3241 / 6025 and 2472 / 6680 vertices
        valid_px = int((mask != 255).sum())
        if valid_px == mask.size:
            assert shapely.union_all(simple).area == pytest.approx(mask.size)

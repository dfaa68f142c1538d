"""Cost of ``--zones`` (ZoneCounter) and ``--aoi`` (SceneAOI) on a large scene, CPU only.

    .venv/bin/python benchmarks/bench_zones.py                   # 16384^2, 10,000 zones
    .venv/bin/python benchmarks/bench_zones.py --size 4096 --zones 1000 --out /tmp/z

A 16384^2 UTM scene (0.5 m pixels, 23 classes) is cut into the run's blocks
(``TileGrid`` with tile 512, overlap 64, block 2048). Its mask is generated block by block (never
whole): smooth class patches with a nodata strip. The zones are random Voronoi cells (parcels),
written to a GeoPackage and read back with ``load_polygons``; a second copy in EPSG:4326 measures
placement with reprojection. Timed: loading, placement (``ZoneCounter``), ``add`` per block,
writing ``zones.csv`` and ``zones.gpkg``; and for an AOI covering ~10 % of the scene:
``SceneAOI`` construction, ``intersects`` per block and per tile core, ``mask`` per block.
Peak memory is this process's ``ru_maxrss``; the mask generation's own arrays are included.

Prints a table and writes ``<out>/bench_zones.json`` (default ``benchmarks/results``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

NUM_CLASSES = 23
PIXEL = 0.5  # m
ORIGIN = (500000.0, 4650000.0)


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def block_ids(win: Any, seed: int = 0) -> np.ndarray:
    """(h, w) uint8 class ids of one block: smooth patches (a function of scene position, so
    blocks agree at their edges), 255 in a nodata strip along the left edge."""
    rr = np.arange(win.row_off, win.row_off + win.height, dtype=np.float32)[:, None]
    cc = np.arange(win.col_off, win.col_off + win.width, dtype=np.float32)[None, :]
    v = np.sin(rr / 97.0 + seed) + np.cos(cc / 131.0) + 0.5 * np.sin((rr + cc) / 53.0)
    ids = ((v + 2.5) * (NUM_CLASSES / 5.0)).astype(np.int16).clip(0, NUM_CLASSES - 1)
    ids = ids.astype(np.uint8)
    ids[:, : max(0, 300 - win.col_off)] = 255
    return ids


def voronoi_zones(size: int, n: int, seed: int = 0) -> np.ndarray:
    """(n,) random Voronoi cells covering a ``size``-pixel square, in map coordinates (UTM)."""
    import shapely

    rng = np.random.default_rng(seed)
    pts = shapely.multipoints(rng.uniform(0, size, (n, 2)))
    frame = shapely.box(0, 0, size, size)
    cells = shapely.get_parts(shapely.voronoi_polygons(pts, extend_to=frame))
    cells = shapely.intersection(cells, frame)
    x0, y0 = ORIGIN
    return shapely.transform(
        cells, lambda xy: np.column_stack([x0 + PIXEL * xy[:, 0], y0 - PIXEL * xy[:, 1]])
    )


def write_layer(path: Path, geoms: np.ndarray, crs: str) -> Path:
    import pyogrio.raw
    import shapely

    names = np.array([f"parcel-{i:05d}" for i in range(len(geoms))], dtype=object)
    pyogrio.raw.write(
        path,
        shapely.to_wkb(geoms),
        [names],
        ["parcel"],
        driver="GPKG",
        geometry_type="Polygon",
        crs=crs,
    )
    return path


def to_4326(geoms: np.ndarray) -> np.ndarray:
    import shapely
    from pyproj import Transformer

    t = Transformer.from_crs("EPSG:32633", "EPSG:4326", always_xy=True)
    return shapely.transform(geoms, lambda xy: np.column_stack(t.transform(xy[:, 0], xy[:, 1])))


def timed(fn, *args, **kwargs) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0


def bench_zones(size: int, n_zones: int, work: Path) -> dict[str, Any]:
    """Zones: load, place, count every block, write the files."""
    from rasterio.crs import CRS
    from rasterio.transform import from_origin

    from tilesegd.model.model_file import ClassInfo
    from tilesegd.outputs.zones import ZoneCounter
    from tilesegd.raster.tiling import TileGrid
    from tilesegd.vector.layers import load_polygons

    crs, transform = CRS.from_epsg(32633), from_origin(*ORIGIN, PIXEL, PIXEL)
    grid = TileGrid(size, size, 512, 64, 32, 2048)
    cells = voronoi_zones(size, n_zones)
    utm = write_layer(work / "zones.gpkg", cells, "EPSG:32633")
    ll = write_layer(work / "zones_4326.gpkg", to_4326(cells), "EPSG:4326")
    del cells
    rss0 = peak_rss_mb()
    layer, t_load = timed(load_polygons, utm, field="parcel")
    layer_ll = load_polygons(ll, field="parcel")
    _, t_place_ll = timed(ZoneCounter, layer_ll, crs, transform, size, size, NUM_CLASSES)
    del layer_ll
    counter, t_place = timed(ZoneCounter, layer, crs, transform, size, size, NUM_CLASSES)
    t_gen = t_add = 0.0
    blocks = grid.blocks()
    for b in blocks:
        ids, dt = timed(block_ids, b.window)
        t_gen += dt
        _, dt = timed(counter.add, b.window, ids)
        t_add += dt
    classes = [ClassInfo(i, f"class{i}", (0, 0, 0)) for i in range(NUM_CLASSES)]
    _, t_csv = timed(counter.write_csv, work / "zones.csv", classes)
    _, t_gpkg = timed(counter.write_gpkg, work / "out_zones.gpkg", classes)
    valid = int(counter.pixels[:, :NUM_CLASSES].sum())
    return {
        "size": size,
        "zones": n_zones,
        "zones_in_scene": int(counter.present().sum()),
        "blocks": len(blocks),
        "block_shape": list(grid.block_shape),
        "classes": NUM_CLASSES,
        "load_s": round(t_load, 3),
        "place_s": round(t_place, 3),
        "place_reprojected_4326_s": round(t_place_ll, 3),
        "add_s": round(t_add, 3),
        "add_ms_per_block": round(1000 * t_add / len(blocks), 2),
        "add_mpx_per_s": round(size * size / 1e6 / t_add, 1),
        "mask_generation_s": round(t_gen, 3),
        "write_csv_s": round(t_csv, 3),
        "write_gpkg_s": round(t_gpkg, 3),
        "valid_pixels_counted": valid,
        "valid_pixels_expected": size * (size - 300),
        "peak_rss_before_mb": round(rss0, 1),
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }


def bench_aoi(size: int, work: Path) -> dict[str, Any]:
    """AOI covering ~10 % of the scene (an irregular blob): build, intersects, mask."""
    import shapely
    from rasterio.crs import CRS
    from rasterio.transform import from_origin

    from tilesegd.raster.tiling import TileGrid
    from tilesegd.vector.aoi import SceneAOI
    from tilesegd.vector.layers import load_polygons

    crs, transform = CRS.from_epsg(32633), from_origin(*ORIGIN, PIXEL, PIXEL)
    grid = TileGrid(size, size, 512, 64, 32, 2048)
    r = size * np.sqrt(0.1 / np.pi)
    ang = np.linspace(0, 2 * np.pi, 400, endpoint=False)
    rad = r * (1 + 0.15 * np.sin(5 * ang))
    blob = shapely.Polygon(
        np.column_stack([0.37 * size + rad * np.cos(ang), 0.55 * size + rad * np.sin(ang)])
    )
    x0, y0 = ORIGIN
    blob_map = shapely.transform(
        blob, lambda xy: np.column_stack([x0 + PIXEL * xy[:, 0], y0 - PIXEL * xy[:, 1]])
    )
    path = write_layer(
        work / "aoi.gpkg", to_4326(shapely.segmentize(np.array([blob_map]), 5.0)), "EPSG:4326"
    )
    layer = load_polygons(path, option="--aoi")
    aoi, t_build = timed(SceneAOI, layer, crs, transform, size, size)
    blocks = grid.blocks()
    t0 = time.perf_counter()
    hit = [b for b in blocks if aoi.intersects(b.window)]
    t_blocks = time.perf_counter() - t0
    tiles = [t for b in hit for t in grid.tiles_in_block(b)]
    t0 = time.perf_counter()
    tiles_hit = sum(aoi.intersects(t.core) for t in tiles)
    t_tiles = time.perf_counter() - t0
    t0 = time.perf_counter()
    inside = sum(int(aoi.mask(b.window).sum()) for b in hit)
    t_mask = time.perf_counter() - t0
    return {
        "size": size,
        "aoi_fraction": round(aoi.fraction, 4),
        "aoi_pixel_fraction": round(inside / size / size, 4),
        "build_s": round(t_build, 4),
        "blocks": len(blocks),
        "blocks_hit": len(hit),
        "intersects_us_per_block": round(1e6 * t_blocks / len(blocks), 1),
        "tiles_in_hit_blocks": len(tiles),
        "tiles_hit": int(tiles_hit),
        "tiles_total": sum(len(grid.tiles_in_block(b)) for b in blocks),
        "intersects_us_per_tile": round(1e6 * t_tiles / max(1, len(tiles)), 1),
        "mask_ms_per_block": round(1000 * t_mask / max(1, len(hit)), 2),
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }


def table(z: dict[str, Any], a: dict[str, Any]) -> str:
    rows = [
        (
            "scene",
            f"{z['size']}^2 px, {z['classes']} classes, {z['blocks']} blocks of {z['block_shape'][0]}^2",
        ),
        ("zones", f"{z['zones']:,} Voronoi cells ({z['zones_in_scene']:,} in the scene)"),
        ("load (pyogrio + make_valid checks)", f"{z['load_s']} s"),
        (
            "place (same CRS / from EPSG:4326)",
            f"{z['place_s']} s / {z['place_reprojected_4326_s']} s",
        ),
        (
            "ZoneCounter.add, all blocks",
            f"{z['add_s']} s ({z['add_ms_per_block']} ms/block, {z['add_mpx_per_s']} MP/s)",
        ),
        ("zones.csv / zones.gpkg", f"{z['write_csv_s']} s / {z['write_gpkg_s']} s"),
        ("peak RSS (before counting / end)", f"{z['peak_rss_before_mb']} / {z['peak_rss_mb']} MiB"),
        (
            "valid pixels counted = expected",
            str(z["valid_pixels_counted"] == z["valid_pixels_expected"]),
        ),
        ("AOI share (polygon / pixels)", f"{a['aoi_fraction']} / {a['aoi_pixel_fraction']}"),
        ("AOI build (from EPSG:4326)", f"{a['build_s']} s"),
        ("AOI blocks kept", f"{a['blocks_hit']} of {a['blocks']}"),
        ("AOI tiles kept", f"{a['tiles_hit']} of {a['tiles_total']}"),
        (
            "AOI intersects per block / tile",
            f"{a['intersects_us_per_block']} / {a['intersects_us_per_tile']} us",
        ),
        ("AOI mask per block", f"{a['mask_ms_per_block']} ms"),
    ]
    wide = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{wide}}  {v}" for k, v in rows)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=16384, help="scene side in pixels")
    ap.add_argument("--zones", type=int, default=10_000, help="number of zones")
    ap.add_argument("--out", type=Path, default=HERE / "results", help="folder for the JSON")
    args = ap.parse_args(argv)
    load0 = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        z = bench_zones(args.size, args.zones, Path(tmp))
        a = bench_aoi(args.size, Path(tmp))
    result = {
        "zones": z,
        "aoi": a,
        "loadavg_start": [round(x, 2) for x in load0],
        "loadavg_end": [round(x, 2) for x in os.getloadavg()],
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
    }
    print(table(z, a))
    print(f"load average start {result['loadavg_start']}, end {result['loadavg_end']}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_zones.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()

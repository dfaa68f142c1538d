"""The ``--vector`` stage (issue 14): seconds and peak memory of ``polygons.gpkg`` from a
finished mask, at 8192^2 and 16384^2, each configuration in a fresh interpreter.

    .venv/bin/python benchmarks/bench_vector.py                        # 8192^2 and 16384^2
    .venv/bin/python benchmarks/bench_vector.py --sizes 1024 --simplify 0 1   # seconds

The mask is a generated land-cover scene written block by block into a Zarr store, the run's
``pred.zarr`` layout (2048-px chunks), before anything is measured; no process ever holds the
whole scene. Fields and water from two octaves of value noise (classes water, background, tree,
grass), buildings as rectangles on a jittered 32-px grid (about 55 % of the cells), and a
nodata collar with a slanted edge: about 150,000 regions at 16384^2. The measured process
opens the store and runs :class:`tilesegd.outputs.polygons.PolygonWriter` over the blocks read
with ``ZarrMaskStore.read_block``, the default classes (all but background), then every class
at the largest size (the background is one region spanning the scene, with every building as a
hole: the largest region the frontier can hold). It reports wall and CPU seconds, peak RSS
(``ru_maxrss``), the RSS after imports, the features written and the most regions held open at
once. Results go to ``benchmarks/results/results_vector_cpu.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # the tilesegd beside this script
DATA = HERE / "data" / "vector"
RESULTS = HERE / "results" / "results_vector_cpu.json"
BLOCK = 2048
CLASSES = ["background", "building", "tree", "water", "grass"]
CELL = 32  # building grid (px)


def _hash01(ix: np.ndarray, iy: np.ndarray, seed: int) -> np.ndarray:
    """A uniform [0, 1) value per integer lattice point (splitmix64 finaliser)."""
    with np.errstate(over="ignore"):
        h = ix.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15) ^ (
            iy.astype(np.uint64) * np.uint64(0xC2B2AE3D27D4EB4F) + np.uint64(seed)
        )
        h ^= h >> np.uint64(31)
        h *= np.uint64(0xBF58476D1CE4E5B9)
        h ^= h >> np.uint64(27)
        h *= np.uint64(0x94D049BB133111EB)
        h ^= h >> np.uint64(31)
    return (h >> np.uint64(11)).astype(np.float64) / 2.0**53


def _noise(r0: int, c0: int, h: int, w: int, spacing: int, seed: int) -> np.ndarray:
    """(h, w) smooth value noise of the given lattice ``spacing`` (px), any window."""
    ys = (np.arange(r0, r0 + h) + 0.5) / spacing
    xs = (np.arange(c0, c0 + w) + 0.5) / spacing
    iy, ix = np.floor(ys).astype(np.int64), np.floor(xs).astype(np.int64)
    fy, fx = ys - iy, xs - ix
    fy, fx = (fy * fy * (3 - 2 * fy))[:, None], (fx * fx * (3 - 2 * fx))[None, :]
    gy, gx = np.arange(iy[0], iy[-1] + 2), np.arange(ix[0], ix[-1] + 2)
    lat = _hash01(gx[None, :], gy[:, None], seed)
    y0, x0 = iy - gy[0], ix - gx[0]
    top = lat[np.ix_(y0, x0)] * (1 - fx) + lat[np.ix_(y0, x0 + 1)] * fx
    bot = lat[np.ix_(y0 + 1, x0)] * (1 - fx) + lat[np.ix_(y0 + 1, x0 + 1)] * fx
    return top * (1 - fy) + bot * fy


def scene_window(r0: int, c0: int, h: int, w: int) -> np.ndarray:
    """(h, w) uint8 class ids of the generated scene at any window (255 = nodata)."""
    n = 0.6 * _noise(r0, c0, h, w, 512, 1) + 0.4 * _noise(r0, c0, h, w, 48, 2)
    ids = np.digitize(n, [0.33, 0.52, 0.62]).astype(np.uint8)  # water, background, tree, grass
    ids = np.array([3, 0, 2, 4], np.uint8)[ids]
    rows, cols = np.arange(r0, r0 + h), np.arange(c0, c0 + w)
    cy, cx = rows // CELL, cols // CELL
    gy, gx = np.unique(cy), np.unique(cx)
    params = [_hash01(gx[None, :], gy[:, None], 10 + k) for k in range(5)]
    present, sh, sw, oy, ox = params
    sh, sw = 5 + (sh * 16).astype(int), 5 + (sw * 16).astype(int)  # 5..20 px
    oy, ox = 1 + (oy * (CELL - 1 - sh)).astype(int), 1 + (ox * (CELL - 1 - sw)).astype(int)
    jy, jx = np.ix_(cy - gy[0], cx - gx[0])
    ry, rx = (rows % CELL)[:, None] - oy[jy, jx], (cols % CELL)[None, :] - ox[jy, jx]
    building = (present[jy, jx] < 0.55) & (ry >= 0) & (ry < sh[jy, jx]) & (rx >= 0)
    ids[building & (rx < sw[jy, jx])] = 1
    ids[cols[None, :] < 150 + rows[:, None] // 8] = 255  # a slanted nodata collar
    return ids


def make_store(size: int) -> Path:
    """``DATA/scene_<size>.zarr``: the generated mask, written block by block (cached)."""
    from tilesegd.outputs.zarr_store import ZarrMaskStore
    from tilesegd.raster.tiling import TileGrid

    path = DATA / f"scene_{size}" / "pred.zarr"
    if (path.parent / "complete").exists():
        return path
    grid = TileGrid(size, size, tile_size=512, overlap=0, multiple=32, block_size=BLOCK)
    store = ZarrMaskStore(path, (size, size), grid.block_shape, {}, num_classes=len(CLASSES))
    for b in grid.blocks():
        w = b.window
        store.write_block(b, scene_window(w.row_off, w.col_off, w.height, w.width))
    (path.parent / "complete").touch()
    return path


def _worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one configuration in this fresh process; the figures as a dict."""
    from rasterio.crs import CRS
    from rasterio.transform import from_origin

    from tilesegd.model.model_file import ClassInfo
    from tilesegd.outputs.polygons import PolygonWriter, resolve_keep
    from tilesegd.outputs.zarr_store import ZarrMaskStore
    from tilesegd.raster.tiling import TileGrid

    size = spec["size"]
    store = ZarrMaskStore.reopen(spec["store"])
    classes = [ClassInfo(i, n, (0, 0, 0)) for i, n in enumerate(CLASSES)]
    blocks = TileGrid(size, size, 512, 0, 32, BLOCK).blocks()
    out = Path(spec["out"])
    rss_imports = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0, cpu0, held = time.perf_counter(), time.process_time(), 0
    with PolygonWriter(
        out,
        blocks,
        height=size,
        width=size,
        crs=CRS.from_epsg(32633),
        transform=from_origin(500000.0, 4650000.0, 0.1, 0.1),
        classes=classes,
        keep=resolve_keep(classes, spec.get("classes")),
        simplify=spec["simplify"],
    ) as w:
        for b in blocks:
            w.add(b, store.read_block(b))
            held = max(held, w.tracer.open_regions)
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    return {
        "size": size,
        "simplify_px": spec["simplify"],
        "classes": spec.get("classes") or "all but background",
        "seconds": round(wall, 2),
        "cpu_seconds": round(cpu, 2),  # less sensitive than wall time to other work
        "megapixels_per_s": round(size * size / 1e6 / wall, 2),
        "features": w.stats.features,
        "max_open_regions": held,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "rss_after_imports_mb": round(rss_imports, 1),
        "gpkg_mb": round(out.stat().st_size / 2**20, 1),
    }


def run_one(size: int, simplify: float, classes: list[str] | None) -> dict[str, Any]:
    """One configuration in a fresh interpreter (so ``ru_maxrss`` is its own)."""
    store = make_store(size)
    out = DATA / f"polygons_{size}_{simplify:g}.gpkg"
    spec = {"size": size, "simplify": simplify, "store": str(store), "out": str(out)}
    spec["classes"] = classes
    load = os.getloadavg()[0]
    proc = subprocess.run(
        [sys.executable, __file__, "--worker", json.dumps(spec)],
        capture_output=True,
        text=True,
    )
    if proc.returncode:
        raise RuntimeError(f"{size}^2, simplify {simplify}: worker failed\n{proc.stderr}")
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    res["load_avg_1min_before"] = round(load, 2)
    res["load_avg_1min_after"] = round(os.getloadavg()[0], 2)
    out.unlink(missing_ok=True)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[8192, 16384])
    ap.add_argument("--simplify", type=float, nargs="+", default=[0.0, 1.0])
    ap.add_argument(
        "--classes",
        nargs="+",
        help="class names to vectorise (default: all but background); 'all' adds the "
        "background, one region spanning the whole scene",
    )
    ap.add_argument("--output", type=Path, default=RESULTS)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(_worker(json.loads(args.worker))))
        return
    classes = CLASSES if args.classes == ["all"] else args.classes
    rows = [run_one(s, t, classes) for s in args.sizes for t in args.simplify]
    if args.classes is None:  # and the worst case: one region (background) spans the scene
        rows.append(run_one(max(args.sizes), 0.0, CLASSES))
    doc = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "block": BLOCK,
        "results": rows,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(doc, indent=2) + "\n")
    cols = ["size", "simplify_px", "features", "seconds", "cpu_seconds", "peak_rss_mb"]
    cols += ["max_open_regions", "load_avg_1min_before", "classes"]
    print(" | ".join(cols))
    for r in rows:
        print(" | ".join(str(r[c]) for c in cols))


if __name__ == "__main__":
    main()

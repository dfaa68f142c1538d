"""What an area of interest saves, and what zones and polygons cost, end to end.

On one scene (default: the 4096^2 benchmark scene, benchmarks/make_scenes.py) and one model
(default: the random-weight Unet-mobilenet_v2 of benchmarks/models.py), on the CPU, each
configuration runs ``tilesegd.api.run`` in a fresh process, interleaved over ``--repeat`` rounds
(medians; the load average is recorded):

* ``full``: the whole scene;
* ``aoi``: an AOI covering ``--aoi-share`` of the scene (a centred square, in EPSG:4326 so the
  run reprojects it);
* ``zones``: the whole scene with a grid of ``--zones`` zones (zones.csv / zones.gpkg);
* ``vector``: the whole scene with ``--vector`` (polygons.gpkg).

    .venv/bin/python benchmarks/bench_aoi.py [--scene S] [--model M] [--repeat 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def make_vectors(scene: Path, share: float, n_zones: int, folder: Path) -> tuple[Path, Path]:
    """A centred square AOI covering ``share`` of the scene (EPSG:4326) and an n x n grid of
    zones over it (the scene's CRS)."""
    import numpy as np
    import pyogrio.raw
    import rasterio
    import shapely
    from rasterio.warp import transform_geom

    with rasterio.open(scene) as ds:
        x0, y0, x1, y1 = ds.bounds
        crs = ds.crs
    side = share**0.5
    cx, cy, w, h = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) * side, (y1 - y0) * side
    square = shapely.box(cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
    wgs = shapely.geometry.shape(transform_geom(crs, "EPSG:4326", shapely.geometry.mapping(
        shapely.segmentize(square, w / 50))))  # fmt: skip
    aoi = folder / "aoi.geojson"
    pyogrio.raw.write(aoi, shapely.to_wkb(np.array([wgs], dtype=object)), [], [],
                      driver="GeoJSON", geometry_type="Polygon", crs="EPSG:4326")  # fmt: skip
    n = max(1, round(n_zones**0.5))
    cells = [shapely.box(x0 + (x1 - x0) * j / n, y0 + (y1 - y0) * i / n,
                         x0 + (x1 - x0) * (j + 1) / n, y0 + (y1 - y0) * (i + 1) / n)
             for i in range(n) for j in range(n)]  # fmt: skip
    zones = folder / "zones.gpkg"
    pyogrio.raw.write(zones, shapely.to_wkb(np.array(cells, dtype=object)), [], [],
                      driver="GPKG", geometry_type="Polygon", crs=crs.to_wkt())  # fmt: skip
    return aoi, zones


WORKER = """
import json, resource, sys, time
from tilesegd.api import run
opts = json.loads(sys.argv[1])
t0 = time.perf_counter()
doc = run(progress=False, **opts)
e = doc["scenes"][next(iter(doc["scenes"]))]
print(json.dumps({"seconds": time.perf_counter() - t0, "tiles_run": e["tiles_run"],
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "status": e["status"], "polygons": e.get("polygons")}))
"""


def one(opts: dict, threads: int) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    r = subprocess.run([sys.executable, "-c", WORKER, json.dumps(opts)], cwd=ROOT, env=env,
                       capture_output=True, text=True, check=True)  # fmt: skip
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scene", default=str(HERE / "data" / "scene_4096_deflate.tif"))
    ap.add_argument("--model", help="model file (default: random-weight Unet-mobilenet_v2)")
    ap.add_argument("--aoi-share", type=float, default=0.1)
    ap.add_argument("--zones", type=int, default=100)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=str(HERE / "results" / "results_aoi_cpu.json"))
    args = ap.parse_args()
    sys.path.insert(0, str(HERE))
    from models import build

    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        model = args.model or str(build("unet", 7, d))
        aoi, zones = make_vectors(Path(args.scene), args.aoi_share, args.zones, d)
        base = dict(input=[args.scene], model=model, workers=args.threads, preview_size=0)
        configs = {
            "full": {},
            "aoi": {"aoi": str(aoi)},
            "zones": {"zones": str(zones)},
            "vector": {"vector": True},
        }
        runs: dict[str, list[dict]] = {k: [] for k in configs}
        for i in range(args.repeat):
            for name, extra in configs.items():
                r = one({**base, **extra, "output": str(d / f"{name}{i}")}, args.threads)
                runs[name].append(r)
                print(name, json.dumps(r), flush=True)
    med = {k: statistics.median(r["seconds"] for r in v) for k, v in runs.items()}
    summary = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "load_average": os.getloadavg(),
        "command": "python benchmarks/bench_aoi.py " + " ".join(sys.argv[1:]),
        "scene": args.scene,
        "aoi_share": args.aoi_share,
        "median_seconds": med,
        "aoi_time_share": med["aoi"] / med["full"],
        "zones_extra_share": med["zones"] / med["full"] - 1,
        "vector_extra_share": med["vector"] / med["full"] - 1,
        "runs": runs,
        "when": time.strftime("%Y-%m-%d %H:%M"),
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(summary, indent=1))
    print(json.dumps({k: v for k, v in summary.items() if k != "runs"}, indent=1))


if __name__ == "__main__":
    main()

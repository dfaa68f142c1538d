"""``make demo``: train a small real model, run ``tilesegd run`` on sample scenes, show outputs.

With ``../shared/data`` beside the checkout, the model is an smp U-Net trained on the LoveDA
sample pairs and the scenes are the real samples in ``../shared/data/scenes``. Without it, the
demo generates its own georeferenced sample scene and labelled pairs, and trains on those.
Everything lands in ``demo/`` (git-ignored); a second ``make demo`` reuses the trained model.
"""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np

from tilesegd.model.model_file import trained_model

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
DEMO = ROOT / "demo"
SYNTH_CLASSES = [  # value, name, colour
    (0, "bare soil", (190, 160, 120)),
    (1, "vegetation", (40, 140, 40)),
    (2, "water", (30, 80, 200)),
    (3, "building", (200, 60, 60)),
]


def synthetic_scene(height: int, width: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A (3, H, W) uint8 landscape and its (H, W) uint8 class map (values of SYNTH_CLASSES).

    Smooth random fields decide soil / vegetation / water; rectangles are buildings. Each
    class has its own colour plus texture noise, so a small network can learn it.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)

    def field() -> np.ndarray:
        f = np.zeros((height, width), np.float32)
        for _ in range(5):
            a, b, p = rng.uniform(0.004, 0.03), rng.uniform(0.004, 0.03), rng.uniform(0, 6.3)
            f += np.sin(yy * a + p) * np.cos(xx * b + 2 * p)
        return f

    veg, wet = field(), field()
    labels = np.where(veg > 0.6, 1, 0).astype(np.uint8)
    labels[wet > 1.6] = 2
    for _ in range(max(1, height * width // 40000)):
        r, c = rng.integers(0, height), rng.integers(0, width)
        h, w = rng.integers(8, 40), rng.integers(8, 40)
        labels[r : r + h, c : c + w] = 3
    colours = np.array([c for _, _, c in SYNTH_CLASSES], np.float32)
    img = colours[labels].transpose(2, 0, 1) + rng.normal(0, 18, (3, height, width))
    return np.clip(img, 0, 255).astype(np.uint8), labels


def make_synthetic(root: Path) -> tuple[Path, Path, Path, Path]:
    """Write a labelled set (images/, masks/, classes.csv) and a 1500 x 1100 GeoTIFF scene
    (EPSG:32633, 0.5 m pixels, nodata 0 in one corner) under ``root``.

    Returns:
        ``(images_dir, masks_dir, classes_csv, scenes_dir)``.
    """
    import rasterio
    import rasterio.errors
    from rasterio.transform import from_origin

    images, masks, scenes = root / "labeled" / "images", root / "labeled" / "masks", root / "scenes"
    for d in (images, masks, scenes):
        d.mkdir(parents=True, exist_ok=True)
    classes = root / "labeled" / "classes.csv"
    classes.write_text(
        "value,name,r,g,b\n"
        + "".join(f"{v},{n},{c[0]},{c[1]},{c[2]}\n" for v, n, c in SYNTH_CLASSES)
    )
    warnings.filterwarnings("ignore", category=rasterio.errors.NotGeoreferencedWarning)
    for i in range(4):
        img, lab = synthetic_scene(512, 512, seed=i)
        prof = dict(driver="PNG", width=512, height=512, dtype="uint8")
        with rasterio.open(images / f"pair{i}.png", "w", count=3, **prof) as d:
            d.write(img)
        with rasterio.open(masks / f"pair{i}.png", "w", count=1, **prof) as d:
            d.write(lab[None])
    img, _ = synthetic_scene(1100, 1500, seed=99)
    img[:, :200, :300] = 0
    with rasterio.open(
        scenes / "synthetic_scene.tif",
        "w",
        driver="GTiff",
        width=1500,
        height=1100,
        count=3,
        dtype="uint8",
        crs="EPSG:32633",
        nodata=0,
        transform=from_origin(500000.0, 4650000.0, 0.5, 0.5),
        tiled=True,
    ) as d:
        d.write(img)
    return images, masks, classes, scenes


def footprints(scenes: Path) -> list[tuple[str, object]]:
    """``(name, footprint polygon in EPSG:4326)`` of each georeferenced scene under ``scenes``."""
    import rasterio
    import shapely
    from rasterio.warp import transform_geom

    out = []
    for path in sorted(scenes.rglob("*.tif")):
        with rasterio.open(path) as ds:
            if ds.crs is None:
                continue
            box = shapely.box(*ds.bounds)
            geom = transform_geom(ds.crs, "EPSG:4326", shapely.geometry.mapping(box))
            out.append((path.stem, shapely.geometry.shape(geom)))
    return out


def make_vectors(scenes: Path, folder: Path) -> tuple[Path, Path]:
    """An AOI (``aoi.geojson``: the central half of the first scene, in EPSG:4326, so the run
    reprojects it) and zones (``zones.gpkg``: a 2 x 2 grid over every scene, named
    ``<scene>-<row><col>``) made from the sample scenes' extent."""
    import pyogrio.raw
    import shapely

    folder.mkdir(parents=True, exist_ok=True)
    feet = footprints(scenes)
    names, cells = [], []
    for name, g in feet:
        x0, y0, x1, y1 = g.bounds
        for i in range(2):
            for j in range(2):
                xa, ya = x0 + (x1 - x0) * j / 2, y1 - (y1 - y0) * (i + 1) / 2
                cells.append(shapely.box(xa, ya, xa + (x1 - x0) / 2, ya + (y1 - y0) / 2))
                names.append(f"{name}-{i}{j}")
    zones, aoi = folder / "zones.gpkg", folder / "aoi.geojson"
    pyogrio.raw.write(zones, shapely.to_wkb(np.array(cells, dtype=object)),
                      [np.array(names, dtype=object)], ["zone"], driver="GPKG",
                      geometry_type="Polygon", crs="EPSG:4326")  # fmt: skip
    first = feet[0][1]
    half = shapely.affinity.scale(first, 0.5**0.5, 0.5**0.5)
    pyogrio.raw.write(aoi, shapely.to_wkb(np.array([half], dtype=object)), [], [],
                      driver="GeoJSON", geometry_type="Polygon", crs="EPSG:4326")  # fmt: skip
    return aoi, zones


def tilesegd(*args: str) -> int:
    """Run the ``tilesegd`` CLI in a subprocess (as a user would); return its exit code."""
    cmd = [sys.executable, "-m", "tilesegd", *args]
    print("$ tilesegd " + " ".join(args), flush=True)
    return subprocess.call(cmd, cwd=ROOT)


def main() -> int:
    """Train (once), run, and print where the outputs are."""
    if (SHARED / "labeled" / "loveda").is_dir() and (SHARED / "scenes").is_dir():
        lab = SHARED / "labeled" / "loveda"
        images, masks, classes = lab / "images", lab / "masks", lab / "classes.csv"
        scenes = SHARED / "scenes"
        train_opts = ["--config", str(ROOT / "configs" / "loveda_unet.yaml")]
        print(f"demo: real data from {SHARED}")
    else:
        print("demo: ../shared/data not found; generating a synthetic sample in demo/sample")
        images, masks, classes, scenes = make_synthetic(DEMO / "sample")
        train_opts = ["--epochs", "4", "--tile-size", "128", "--batch-size", "8"]
    run_dir = DEMO / "model"
    model = trained_model(run_dir)
    if not model.is_file():
        rc = tilesegd(
            "train",
            "--images",
            str(images),
            "--masks",
            str(masks),
            "--classes",
            str(classes),
            "--output",
            str(run_dir),
            *train_opts,
        )
        model = trained_model(run_dir)
        if rc != 0 or not model.is_file():
            print(f"demo: training failed (exit {rc})", file=sys.stderr)
            return rc or 1
    out = DEMO / "out"
    aoi, zones = make_vectors(scenes, DEMO / "vectors")
    rc = tilesegd(
        "run",
        "--input",
        str(scenes),
        "--model",
        str(model),
        "--output",
        str(out),
        "--vector",
        "--zones",
        str(zones),
        "--zone-field",
        "zone",
        "--save-confidence",
    )
    if rc not in (0, 4):  # 4: some scenes failed on purpose (e.g. a 1-band uint16 scene)
        return rc
    first = sorted(p for p in scenes.rglob("*.tif"))[0]
    out_aoi = DEMO / "out_aoi"
    rc_aoi = tilesegd("run", "--input", str(first), "--model", str(model), "--output",
                      str(out_aoi), "--aoi", str(aoi))  # fmt: skip
    print("\nOutputs:")
    for scene in sorted(p for p in out.iterdir() if p.is_dir() and not p.name.startswith(".")):
        print(
            f"  {scene}/  mask.tif (+ mask.qml, mask.tif.aux.xml: open it in QGIS)  "
            "confidence.tif  polygons.gpkg  zones.csv  zones.gpkg  pred.zarr  areas.csv  "
            "preview.png  item.json (STAC)"
        )
    print(f"  {out / 'summary.csv'}\n  {out / 'zones_summary.csv'}\n  {out / 'run.json'}")
    print(f"  {out / 'catalog.json'}  (a STAC catalog of the finished scenes: pystac, QGIS)")
    print(f"  zones from the scenes' extent: {zones}")
    if rc_aoi == 0:
        print(f"  {out_aoi / first.stem}/  the same scene clipped to the AOI {aoi}")
    if rc == 4:
        print(
            "Some scenes failed with a clear reason (see above and run.json): the 1-band "
            "uint16 sample cannot feed a 3-band RGB model."
        )
    print(f"Model trained in {run_dir} (metrics.csv, curves.png, confusion.png).")
    return 0


if __name__ == "__main__":
    sys.exit(main())

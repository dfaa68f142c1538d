"""Check, in real QGIS (headless), that tilesegd's masks open styled, with their class names.

Two halves, one file:

- ``python benchmarks/qgis_check.py --write DIR`` (the project's venv: it imports tilesegd)
  writes a small ``mask.tif`` (+ ``mask.qml``, ``mask.tif.aux.xml``) and ``confidence.tif``
  (+ ``confidence.qml``) with :func:`tilesegd.outputs.cog.write_cog`.
- ``QT_QPA_PLATFORM=offscreen /usr/bin/python3 benchmarks/qgis_check.py [DIR]`` (the system
  Python with QGIS: ``apt-get install python3-qgis qgis-providers``) loads them as
  ``QgsRasterLayer`` objects, prints what QGIS and GDAL (QGIS's ``osgeo.gdal``) see, renders the
  mask offscreen, and exits 1 if anything differs from what was written. Without DIR it first
  runs the ``--write`` half in a temporary folder with ``$TILESEGD_PYTHON`` (default: the
  repository's ``.venv/bin/python``).

The results are recorded in benchmarks/QGIS_CHECK.md.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

# (id, name, RGB): one non-ASCII name with XML-special characters
CLASSES = [(0, "background", (10, 20, 30)), (1, "bâtiment & <toit>", (200, 0, 0))]
CLASSES += [(2, "water", (0, 0, 255))]
H, W = 600, 700  # big enough for one overview level
NODATA_ROWS = 50  # the top rows are nodata (255)


def expected_mask():
    """(H, W) uint8: three vertical bands of classes 0, 1, 2 under NODATA_ROWS nodata rows."""
    import numpy as np

    mask = (np.arange(W)[None, :] * 3 // W).repeat(H, 0).astype(np.uint8)
    mask[:NODATA_ROWS] = 255
    return mask


def write(folder: Path) -> None:
    """The venv half: write the rasters with tilesegd's writer (this checkout's)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import numpy as np
    from rasterio.transform import from_origin

    from tilesegd.model.model_file import ClassInfo
    from tilesegd.outputs.cog import write_cog
    from tilesegd.raster.tiling import TileGrid

    folder.mkdir(parents=True, exist_ok=True)
    mask = expected_mask()
    conf = np.where(mask == 255, 255, (np.arange(W)[None, :] * 100 // W)).astype(np.uint8)
    grid = TileGrid(H, W, 256, 32, 1, 512)
    geo = dict(height=H, width=W, crs="EPSG:32633", transform=from_origin(5e5, 4.65e6, 2, 2))
    classes = [ClassInfo(i, n, c) for i, n, c in CLASSES]
    write_cog(
        folder / "mask.tif", grid.blocks(), lambda b: mask[b.window.slices], classes=classes, **geo
    )
    write_cog(
        folder / "confidence.tif",
        grid.blocks(),
        lambda b: conf[b.window.slices],
        kind="confidence",
        **geo,
    )
    print("wrote", *sorted(p.name for p in folder.iterdir()))


def check_qgis(folder: Path) -> list[str]:
    """Load both rasters in QGIS; print what it sees; return the failures."""
    from qgis.core import Qgis, QgsApplication, QgsRasterLayer

    app = QgsApplication([], False)
    app.initQgis()
    fails: list[str] = []
    print("QGIS", Qgis.QGIS_VERSION)
    layer = QgsRasterLayer(str(folder / "mask.tif"), "mask")
    r = layer.renderer()
    print("mask.tif valid:", layer.isValid(), "| renderer:", r.type())
    entries = [(c.value, c.label, c.color.getRgb()[:3]) for c in r.classes()]
    for e in entries:
        print("  palette entry:", e)
    want = [(i, n, c) for i, n, c in CLASSES]
    if r.type() != "paletted" or entries != want:
        fails.append(
            f"mask renderer {r.type()}: {len(entries)} entries {entries[:4]}..., expected {want}"
        )
    nodata = layer.dataProvider().sourceNoDataValue(1)
    print("  nodata value:", nodata, "| nodata colour:", r.nodataColor().isValid() or "none")
    if nodata != 255 or r.nodataColor().isValid():
        fails.append("nodata 255 is not transparent")
    if hasattr(layer, "attributeTableCount"):  # QGIS >= 3.30
        print("  attributeTableCount():", layer.attributeTableCount())
        if layer.attributeTableCount() != 1:
            fails.append("QGIS did not read the raster attribute table")
    else:
        print("  attributeTableCount(): not in this QGIS (added in 3.30)")
    fails += check_render(layer)
    conf = QgsRasterLayer(str(folder / "confidence.tif"), "confidence")
    cr = conf.renderer()
    shader = cr.shader().rasterShaderFunction() if cr.type() == "singlebandpseudocolor" else None
    items = [] if shader is None else shader.colorRampItemList()
    print(
        "confidence.tif valid:",
        conf.isValid(),
        "| renderer:",
        cr.type(),
        "| ramp",
        [(i.value, i.color.name()) for i in items][:: max(1, len(items) // 3)],
        "...",
    )
    if shader is None or (shader.minimumValue(), shader.maximumValue()) != (0, 100):
        fails.append(f"confidence renderer {cr.type()} is not a 0-100 colour ramp")
    fails += check_default(folder)
    del r, cr, shader, layer, conf
    app.exitQgis()
    return fails


def check_default(folder: Path) -> list[str]:
    """The control: the same mask without its sidecars opens with QGIS's default style."""
    import shutil

    from qgis.core import QgsRasterLayer

    bare = folder / "bare" / "mask.tif"
    bare.parent.mkdir(exist_ok=True)
    shutil.copy(folder / "mask.tif", bare)
    layer = QgsRasterLayer(str(bare), "bare")
    r = layer.renderer()
    labels = [c.label for c in r.classes()] if r.type() == "paletted" else []
    print(
        f"control, mask.tif without mask.qml: renderer {r.type()}, {len(labels)} entries,",
        f"labels {labels[:4]}...",
    )
    del r, layer
    return [] if CLASSES[1][1] not in labels else ["class names appear without mask.qml?"]


def check_render(layer) -> list[str]:
    """Render the mask offscreen: each class band has its colour; nodata rows are transparent."""
    from qgis.core import QgsMapRendererSequentialJob, QgsMapSettings
    from qgis.PyQt.QtCore import QSize
    from qgis.PyQt.QtGui import QColor

    settings = QgsMapSettings()
    settings.setLayers([layer])
    settings.setDestinationCrs(layer.crs())
    settings.setExtent(layer.extent())
    settings.setOutputSize(QSize(W // 10, H // 10))
    settings.setBackgroundColor(QColor(0, 0, 0, 0))
    job = QgsMapRendererSequentialJob(settings)
    job.start()
    job.waitForFinished()
    img = job.renderedImage()
    fails = []
    for x, (_, name, rgb) in zip((W // 60, W // 20, W // 12), CLASSES, strict=True):
        got = QColor(img.pixel(x, H // 20)).getRgb()[:3]
        print(f"  rendered pixel in class {name!r}:", got)
        if got != rgb:
            fails.append(f"class {name} rendered as {got}, not {rgb}")
    alpha = QColor.fromRgba(img.pixel(W // 20, 1)).alpha()
    print("  rendered alpha in the nodata rows:", alpha)
    if alpha != 0:
        fails.append("nodata rows are drawn")
    return fails


def check_gdal(folder: Path) -> list[str]:
    """Read the raster attribute table back through GDAL (QGIS's osgeo bindings)."""
    from osgeo import gdal

    gdal.UseExceptions()
    ds = gdal.Open(str(folder / "mask.tif"))  # keep: a band outliving its dataset segfaults
    band = ds.GetRasterBand(1)
    rat = band.GetDefaultRAT()
    print("GDAL", gdal.__version__, "| GetDefaultRAT():", rat is not None)
    if rat is None:
        return ["GDAL read no raster attribute table"]
    cols = [(rat.GetNameOfCol(j), rat.GetUsageOfCol(j)) for j in range(rat.GetColumnCount())]
    rows = [
        tuple(rat.GetValueAsString(i, j) for j in range(rat.GetColumnCount()))
        for i in range(rat.GetRowCount())
    ]
    print("  columns (name, GFU usage):", cols)
    for row in rows:
        print("  row:", row)
    want = [(str(i), n, *map(str, c), "255") for i, n, c in CLASSES]
    return [] if rows == want else [f"RAT rows {rows} != {want}"]


def main() -> int:
    if sys.argv[1:2] == ["--write"]:
        write(Path(sys.argv[2]))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tmp)
        if len(sys.argv) == 1:
            root = Path(__file__).resolve().parents[1]
            python = os.environ.get("TILESEGD_PYTHON", str(root / ".venv" / "bin" / "python"))
            subprocess.run([python, __file__, "--write", str(folder)], check=True, cwd=root)
        fails = check_qgis(folder) + check_gdal(folder)
    print("FAILED:\n  " + "\n  ".join(fails) if fails else "OK: all checks passed", flush=True)
    return 1 if fails else 0


if __name__ == "__main__":
    sys.exit(main())

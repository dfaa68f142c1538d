"""Sidecar files that make an output raster open styled: QGIS ``.qml`` styles and GDAL raster
attribute tables (RAT) in a PAM ``.aux.xml``.

- :func:`class_qml`: a QGIS paletted renderer, one entry per class (its colour, its name as the
  label). QGIS applies ``mask.qml`` automatically when ``mask.tif`` is added to a project.
- :func:`ramp_qml`: a QGIS single-band pseudocolour renderer (0-100, magma), for
  ``confidence.tif``.
- :func:`rat_aux_xml`: a thematic raster attribute table (Value, Class_Name, Red, Green, Blue,
  Alpha) in GDAL's PAM format, which GDAL reads from ``<raster>.aux.xml`` when it opens
  ``<raster>`` (QGIS >= 3.30 and ArcGIS show the class names from it). rasterio has no RAT API
  and GDAL's Python bindings are optional, so the XML is written here with ``xml.etree``.

In every style, nodata (255) is transparent: QGIS draws the band's nodata value with
``nodataColor=""`` (none), and no style lists 255.

Sources: QGIS's layer-definition format as QGIS 3.22 writes it (``QgsRasterLayer.saveNamedStyle``
for ``QgsPalettedRasterRenderer`` / ``QgsSingleBandPseudoColorRenderer``); GDAL's PAM format
(https://gdal.org/en/stable/drivers/raster/pam.html) and ``GDALRasterAttributeTable``'s XML
serialisation (``GDALDefaultRasterAttributeTable::Serialize``, gcore/gdal_rat.cpp); the magma
colour map of matplotlib (Smith and van der Walt, CC0).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence

from tilesegd.model.spec import ClassInfo

# matplotlib's "magma" sampled at 0, 0.1, ..., 1 (RGB 0-255): dark = unsure, light = sure.
MAGMA = (
    (0, 0, 4),
    (20, 14, 54),
    (59, 15, 112),
    (100, 26, 128),
    (140, 41, 129),
    (183, 55, 121),
    (222, 73, 104),
    (247, 112, 92),
    (254, 159, 109),
    (254, 207, 146),
    (252, 253, 191),
)

# GDAL's GDALRATFieldType and GDALRATFieldUsage enum values (gdal.h).
_GFT_INTEGER, _GFT_STRING = 0, 2
_GFU_NAME, _GFU_MINMAX, _GFU_RED, _GFU_GREEN, _GFU_BLUE, _GFU_ALPHA = 2, 5, 6, 7, 8, 9
RAT_FIELDS = (
    ("Value", _GFT_INTEGER, _GFU_MINMAX),
    ("Class_Name", _GFT_STRING, _GFU_NAME),
    ("Red", _GFT_INTEGER, _GFU_RED),
    ("Green", _GFT_INTEGER, _GFU_GREEN),
    ("Blue", _GFT_INTEGER, _GFU_BLUE),
    ("Alpha", _GFT_INTEGER, _GFU_ALPHA),
)


def _hex(rgb: Sequence[int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*(int(c) for c in rgb[:3]))


def _min_max_origin(parent: ET.Element) -> None:
    """QGIS's ``minMaxOrigin`` block with fixed limits ("None": no statistics are computed)."""
    mmo = ET.SubElement(parent, "minMaxOrigin")
    for tag, text in (
        ("limits", "None"),
        ("extent", "WholeRaster"),
        ("statAccuracy", "Estimated"),
        ("cumulativeCutLower", "0.02"),
        ("cumulativeCutUpper", "0.98"),
        ("stdDevFactor", "2"),
    ):
        ET.SubElement(mmo, tag).text = text


def _qml(renderer: ET.Element) -> str:
    """A complete ``.qml`` document around one ``rasterrenderer`` element (nearest-neighbour
    display resampling, as for any categorical or per-pixel layer)."""
    root = ET.Element("qgis", version="3.22.0", styleCategories="AllStyleCategories")
    pipe = ET.SubElement(root, "pipe")
    provider = ET.SubElement(pipe, "provider")
    ET.SubElement(
        provider,
        "resampling",
        enabled="false",
        zoomedInResamplingMethod="nearestNeighbour",
        zoomedOutResamplingMethod="nearestNeighbour",
        maxOversampling="2",
    )
    pipe.append(renderer)
    ET.SubElement(pipe, "brightnesscontrast", brightness="0", contrast="0", gamma="1")
    ET.SubElement(pipe, "rasterresampler", maxOversampling="2")
    ET.SubElement(root, "blendMode").text = "0"
    ET.indent(root)
    body = ET.tostring(root, encoding="unicode")
    return f"<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>\n{body}\n"


def _renderer(kind: str, **attrs: str) -> ET.Element:
    return ET.Element(
        "rasterrenderer", type=kind, band="1", opacity="1", alphaBand="-1", nodataColor="", **attrs
    )


def class_qml(classes: Sequence[ClassInfo]) -> str:
    """A QGIS style (``.qml`` text) for a class-id band: a paletted renderer with one entry per
    class (value = class id, its colour, its name as the label); other values, nodata 255
    included, are not drawn.

    Args:
        classes: the model's classes (ids 0..254, names, RGB colours 0-255).

    Raises:
        ValueError: a class id outside 0..254 (255 is nodata).
    """
    _check_ids(classes)
    renderer = _renderer("paletted")
    _min_max_origin(renderer)
    palette = ET.SubElement(renderer, "colorPalette")
    for c in sorted(classes, key=lambda c: c.id):
        ET.SubElement(
            palette, "paletteEntry", value=str(c.id), color=_hex(c.color), alpha="255", label=c.name
        )
    return _qml(renderer)


def ramp_qml(
    vmin: float = 0.0, vmax: float = 100.0, colors: Sequence[Sequence[int]] = MAGMA
) -> str:
    """A QGIS style (``.qml`` text) for a continuous band: a single-band pseudocolour renderer
    interpolating ``colors`` (RGB 0-255, evenly spaced) from ``vmin`` to ``vmax`` (band units;
    0-100 % for ``confidence.tif``). Values outside are clamped to the end colours; the band's
    nodata is not drawn.

    Raises:
        ValueError: ``vmax <= vmin`` or fewer than two colours.
    """
    if vmax <= vmin or len(colors) < 2:
        raise ValueError(f"ramp_qml needs vmin < vmax and >= 2 colours, got {vmin}, {vmax}")
    renderer = _renderer(
        "singlebandpseudocolor", classificationMin=f"{vmin:g}", classificationMax=f"{vmax:g}"
    )
    _min_max_origin(renderer)
    shader = ET.SubElement(ET.SubElement(renderer, "rastershader"), "colorrampshader")
    shader.attrib.update(
        colorRampType="INTERPOLATED",
        classificationMode="1",
        clip="0",
        minimumValue=f"{vmin:g}",
        maximumValue=f"{vmax:g}",
        labelPrecision="0",
    )
    n = len(colors) - 1
    for i, rgb in enumerate(colors):
        v = vmin + (vmax - vmin) * i / n
        ET.SubElement(shader, "item", value=f"{v:g}", color=_hex(rgb), alpha="255", label=f"{v:g}")
    return _qml(renderer)


def rat_aux_xml(classes: Sequence[ClassInfo], band: int = 1) -> str:
    """A GDAL PAM document (``<raster>.aux.xml`` text) holding a thematic raster attribute
    table for ``band``: one row per class with the fields of :data:`RAT_FIELDS` (``Value`` the
    class id, ``Class_Name``, ``Red``/``Green``/``Blue`` 0-255 and ``Alpha`` 255). Nodata (255)
    has no row.

    Raises:
        ValueError: a class id outside 0..254.
    """
    _check_ids(classes)
    root = ET.Element("PAMDataset")
    pam_band = ET.SubElement(root, "PAMRasterBand", band=str(band))
    rat = ET.SubElement(pam_band, "GDALRasterAttributeTable", tableType="thematic")
    for i, (name, ftype, usage) in enumerate(RAT_FIELDS):
        defn = ET.SubElement(rat, "FieldDefn", index=str(i))
        ET.SubElement(defn, "Name").text = name
        ET.SubElement(defn, "Type").text = str(ftype)
        ET.SubElement(defn, "Usage").text = str(usage)
    for row, c in enumerate(sorted(classes, key=lambda c: c.id)):
        r = ET.SubElement(rat, "Row", index=str(row))
        for value in (c.id, c.name, *(int(v) for v in c.color[:3]), 255):
            ET.SubElement(r, "F").text = str(value)
    ET.indent(root)
    return ET.tostring(root, encoding="unicode") + "\n"


def _check_ids(classes: Sequence[ClassInfo]) -> None:
    bad = [c.id for c in classes if not 0 <= c.id <= 254]
    if bad:
        raise ValueError(f"class ids {bad} are outside 0..254 (255 is the masks' nodata value)")

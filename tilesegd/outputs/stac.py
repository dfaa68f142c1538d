"""STAC 1.1 metadata of a run's outputs: one Item per finished scene and the root Catalog.

Every run makes its output folder a static STAC catalog that works wherever it is copied
(all links and hrefs are relative)::

    DIR/catalog.json            :func:`run_catalog`: one ``item`` link per finished scene
    DIR/<scene>/item.json       :func:`scene_item` / :func:`write_scene_item`

An Item describes one scene's outputs:

- ``geometry`` / ``bbox`` in EPSG:4326: the mask's footprint (its bounds, densified to
  :data:`EDGE_POINTS` points per edge, reprojected by GDAL with antimeridian cutting; a bbox
  across the antimeridian has west > east). A mask without a CRS (or whose footprint cannot
  be reprojected) gets ``geometry: null`` and no bbox.
- ``datetime``: the input Item's, else the scene's own metadata, else the run's start, and
  ``tilesegd:datetime_source`` says which (:data:`DATETIME_SOURCES`).
- projection v2.0.0 (``proj:code`` or ``proj:wkt2``, ``proj:shape``, ``proj:transform``),
  STAC 1.1 ``bands`` (``data_type``, ``nodata``) with raster v2.0.0 fields, classification
  v2.0.0 classes on the ``mask`` asset, file v2.1.0 ``file:size`` / ``file:checksum``, and
  processing v1.2.0 (``processing:software``). The model's name and SHA-256 are
  ``tilesegd:model`` / ``tilesegd:model_sha256``: the MLM extension describes a model's own Item
  (it requires an asset with role ``mlm:model``), which a derived product is not.

Sources: the STAC 1.1.0 specification (github.com/radiantearth/stac-spec) and the extensions'
READMEs and JSON schemas (github.com/stac-extensions). Reads the finished files only.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import rasterio
import rasterio.warp
from affine import Affine
from rasterio.crs import CRS
from rasterio.errors import NotGeoreferencedWarning
from shapely.geometry import shape

from tilesegd import atomic
from tilesegd.errors import OutputError, writing
from tilesegd.model.spec import ClassInfo
from tilesegd.outputs.stac_grid import (
    footprint,
    geometry_bbox,
    projection_fields,
    resolution_m,
)
from tilesegd.version import __version__
from tilesegd.warnfilter import ignoring

STAC_VERSION = "1.1.0"
CATALOG_ID = "tilesegd-run"
ITEM_JSON = "item.json"
CATALOG_JSON = "catalog.json"
"""Points per edge of the densified footprint (corners included)."""
CHECKSUM_MAX_BYTES = 256 * 2**20
"""Files up to this size (bytes) get a ``file:checksum``; every file gets ``file:size``."""
EXTENSIONS = {
    "proj": "https://stac-extensions.github.io/projection/v2.0.0/schema.json",
    "raster": "https://stac-extensions.github.io/raster/v2.0.0/schema.json",
    "file": "https://stac-extensions.github.io/file/v2.1.0/schema.json",
    "classification": "https://stac-extensions.github.io/classification/v2.0.0/schema.json",
    "processing": "https://stac-extensions.github.io/processing/v1.2.0/schema.json",
}
DATETIME_SOURCES = ("input item", "scene metadata", "run time")
COG = "image/tiff; application=geotiff; profile=cloud-optimized"
ZARR = "application/vnd+zarr"
GPKG = "application/geopackage+sqlite3"
CSV = "text/csv"
STAC_JSON = "application/json"
GEOJSON = "application/geo+json"
UP = ("root", "parent")

#: (asset key, file name, media type, roles, title); each asset only when its file is present
ASSETS: tuple[tuple[str, str, str, tuple[str, ...], str], ...] = (
    ("mask", "mask.tif", COG, ("data",), "Class mask"),
    ("confidence", "confidence.tif", COG, ("data",), "Top-class probability (%)"),
    ("zarr", "pred.zarr", ZARR, ("data",), "Prediction store (Zarr v3)"),
    ("polygons", "polygons.gpkg", GPKG, ("data",), "Class polygons"),
    ("areas", "areas.csv", CSV, ("data",), "Area per class"),
    ("zones", "zones.csv", CSV, ("data",), "Area per class and zone"),
    ("zones_vector", "zones.gpkg", GPKG, ("data",), "Area per class and zone (vector)"),
    ("preview", "preview.png", "image/png", ("overview",), "Preview"),
    ("style", "mask.qml", "application/xml", ("metadata",), "QGIS style of the mask"),
    ("confidence_style", "confidence.qml", "application/xml", ("metadata",), "QGIS style (conf.)"),
)
_RASTER_BANDS = {"mask": ("class", None), "confidence": ("confidence", "%")}


@dataclass(frozen=True)
class ItemContext:
    """What an Item says beyond its scene's files.

    Attributes:
        classes: the model's classes (ids 0..K-1), written as ``classification:classes``.
        model_name: the model's name (e.g. the model file's name).
        model_sha256: the model file's SHA-256 (hex).
        run_time: ISO 8601 UTC of the run's start, e.g. ``"2026-12-03T14:00:00Z"``.
        source_datetime: the input STAC Item's ``datetime`` (ISO 8601), or None.
        source_href: the input Item's ``self`` href (a URL or absolute path), or None; becomes
            the ``derived_from`` link.
        scene_datetime: the scene's own date-time, ISO 8601 (``Scene.acquired``, read from
            its EXIF / TIFF tags), taken as UTC when it has no offset; or None.
    """

    classes: Sequence[ClassInfo]
    model_name: str
    model_sha256: str
    run_time: str
    source_datetime: str | None = None
    source_href: str | None = None
    scene_datetime: str | None = None


def rfc3339(text: str | None) -> str | None:
    """``text`` (ISO 8601, e.g. ``2026-12-03T15:00:00+01:00`` or ``2026-12-03``; a scene's
    TIFF / EXIF date arrives as ISO already, :func:`tilesegd.raster.exif.acquisition_time`) as
    an RFC 3339 UTC string ending in ``Z``; a time without an offset is taken as UTC. ``None``
    for None, an empty string, or text that is no date-time."""
    if not text or not text.strip():
        return None
    s = text.strip()
    if s[-1] in "zZ":
        s = s[:-1] + "+00:00"
    try:
        dt = datetime.fromisoformat(s)
    except ValueError:
        return None
    dt = (dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt).astimezone(UTC)
    frac = f".{dt.microsecond:06d}".rstrip("0") if dt.microsecond else ""
    return dt.strftime("%Y-%m-%dT%H:%M:%S") + frac + "Z"


def item_datetime(ctx: ItemContext) -> tuple[str, str]:
    """``(datetime, source)``: the first valid of the input Item's, the scene's and the run's
    date-times (RFC 3339 UTC) and which it was (one of :data:`DATETIME_SOURCES`).

    Raises:
        ValueError: none is valid (``ctx.run_time`` is no ISO 8601 date-time).
    """
    candidates = (ctx.source_datetime, ctx.scene_datetime, ctx.run_time)
    for value, source in zip(candidates, DATETIME_SOURCES, strict=True):
        parsed = rfc3339(value)
        if parsed is not None:
            return parsed, source
    raise ValueError(f"run_time {ctx.run_time!r} is not an ISO 8601 date-time")


def class_name(name: str, value: int) -> str:
    """``name`` as a classification v2.0.0 machine name (``^[0-9A-Za-z-_]+$``): accents
    dropped, other runs of characters become ``_``; ``class_<value>`` if nothing is left."""
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^0-9A-Za-z_-]+", "_", ascii_name).strip("_")
    return slug or f"class_{value}"


def classification_classes(classes: Sequence[ClassInfo]) -> list[dict[str, Any]]:
    """``classification:classes``: one ``{value, name, title, description, color_hint}`` per
    class; ``name`` is :func:`class_name` (made unique with ``_<id>``), ``title`` and
    ``description`` the class's own name, ``color_hint`` its colour as ``RRGGBB`` hex."""
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    for c in classes:
        name = class_name(c.name, c.id)
        if name in seen:
            name = f"{name}_{c.id}"
        seen.add(name)
        hint = "{:02X}{:02X}{:02X}".format(*(int(v) for v in c.color[:3]))
        entry = {"value": int(c.id), "name": name, "title": c.name, "color_hint": hint}
        if c.name:
            entry["description"] = c.name
        out.append(entry)
    return out


def file_fields(path: Path) -> dict[str, Any]:
    """``file:size`` (bytes) of a file and, up to :data:`CHECKSUM_MAX_BYTES`, its
    ``file:checksum`` (multihash of SHA2-256: ``"1220"`` + the hex digest); ``{}`` for a
    folder (a Zarr store)."""
    if not path.is_file():
        return {}
    size = path.stat().st_size
    fields: dict[str, Any] = {"file:size": size}
    if size <= CHECKSUM_MAX_BYTES:
        digest = hashlib.sha256()
        with open(path, "rb") as fh:
            while chunk := fh.read(1 << 20):
                digest.update(chunk)
        fields["file:checksum"] = "1220" + digest.hexdigest()
    return fields


def _raster_band(path: Path, key: str) -> dict[str, Any]:
    """The STAC 1.1 band object of a one-band raster output (name, data_type, nodata, unit,
    ``raster:sampling``, ``raster:spatial_resolution`` in metres where known)."""
    name, unit = _RASTER_BANDS[key]
    with ignoring(NotGeoreferencedWarning), rasterio.open(path) as src:
        band: dict[str, Any] = {"name": name, "data_type": src.dtypes[0]}
        if src.nodata is not None:
            nd = float(src.nodata)
            band["nodata"] = int(nd) if nd.is_integer() else nd
        if unit:
            band["unit"] = unit
        point = src.tags().get("AREA_OR_POINT", "Area").lower() == "point"
        band["raster:sampling"] = "point" if point else "area"
        res = resolution_m(src.crs, src.transform, src.width, src.height)
    if res is not None:
        band["raster:spatial_resolution"] = res
    return band


def scene_assets(folder: Path, classes: Sequence[ClassInfo]) -> dict[str, dict[str, Any]]:
    """The Item's assets for the files of :data:`ASSETS` present in ``folder`` (relative
    hrefs ``./<file>``; raster bands on ``mask`` / ``confidence``; ``classification:classes``
    on ``mask``; file fields on files, none on the ``pred.zarr`` folder)."""
    assets: dict[str, dict[str, Any]] = {}
    for key, filename, media_type, roles, title in ASSETS:
        path = folder / filename
        if not path.exists():
            continue
        asset: dict[str, Any] = {"href": f"./{filename}", "type": media_type}
        asset["title"], asset["roles"] = title, list(roles)
        if key in _RASTER_BANDS:
            asset["bands"] = [_raster_band(path, key)]
        if key == "mask" and classes:
            asset["classification:classes"] = classification_classes(classes)
        asset.update(file_fields(path))
        assets[key] = asset
    return assets


def _read_grid(mask: Path) -> tuple[CRS | None, Affine, int, int]:
    """``(crs or None, transform, width, height)`` of ``mask``.

    Raises:
        OutputError: the mask is missing or cannot be read.
    """
    try:
        with ignoring(NotGeoreferencedWarning), rasterio.open(mask) as src:
            return src.crs or None, src.transform, src.width, src.height
    except (OSError, rasterio.errors.RasterioError) as exc:
        raise OutputError(
            f"{mask}: cannot be read to describe the scene in STAC ({exc}); the scene's "
            "outputs are incomplete: rerun the same command to rebuild them"
        ) from exc


def scene_item(folder: Path, name: str, ctx: ItemContext) -> dict[str, Any]:
    """The STAC 1.1.0 Item (a JSON-ready dict) of a finished scene whose outputs are in
    ``folder``: id ``name``, the footprint and grid of ``folder/mask.tif``, an asset per output
    file present (:data:`ASSETS`), links ``root`` / ``parent`` to ``../catalog.json`` and
    ``derived_from`` ``ctx.source_href``.

    Raises:
        OutputError: ``folder/mask.tif`` is missing or unreadable.
        ValueError: ``name`` is empty, or no date-time of ``ctx`` is valid.
    """
    if not name:
        raise ValueError("a STAC Item needs a non-empty id (the scene's name)")
    folder = Path(folder)
    crs, transform, width, height = _read_grid(folder / "mask.tif")
    when, source = item_datetime(ctx)
    run_time = rfc3339(ctx.run_time) or when
    props: dict[str, Any] = {
        "datetime": when,
        "tilesegd:datetime_source": source,
        **projection_fields(crs, transform, width, height),
        "processing:software": {"tilesegd": __version__},
        "processing:datetime": run_time,
        "processing:lineage": f"semantic segmentation by tilesegd with model {ctx.model_name}",
        "tilesegd:model": ctx.model_name,
        "tilesegd:model_sha256": ctx.model_sha256,
    }
    assets = scene_assets(folder, ctx.classes)
    used = ["proj", "raster", "file", "processing"]
    used += ["classification"] * any("classification:classes" in a for a in assets.values())
    item: dict[str, Any] = {
        "type": "Feature",
        "stac_version": STAC_VERSION,
        "stac_extensions": sorted(EXTENSIONS[k] for k in used),
        "id": name,
        "geometry": None,
    }
    geom = footprint(crs, transform, width, height) if crs is not None else None
    if geom is not None and all(map(math.isfinite, shape(geom).bounds)):
        item["geometry"], item["bbox"] = geom, geometry_bbox(geom)
    links = [{"rel": rel, "href": f"../{CATALOG_JSON}", "type": STAC_JSON} for rel in UP]
    if ctx.source_href:
        links.append({"rel": "derived_from", "href": ctx.source_href, "type": GEOJSON})
    item.update(properties=props, links=links, assets=assets)
    return item


def write_json(path: Path, doc: dict[str, Any]) -> Path:
    """Write ``doc`` as indented UTF-8 JSON to ``path`` atomically (a temporary file beside
    it, then ``os.replace``); returns ``path``.

    Raises:
        OutputError: the file could not be written (disk full, permissions).
    """
    path = Path(path)
    text = json.dumps(doc, indent=2, ensure_ascii=False) + "\n"
    with writing(path):
        atomic.write_text(path, text)
    return path


def write_scene_item(folder: Path, name: str, ctx: ItemContext) -> Path:
    """Write :func:`scene_item` to ``folder/item.json`` atomically; returns its path.

    Raises:
        OutputError: ``mask.tif`` is unreadable, or ``item.json`` could not be written.
        ValueError: as :func:`scene_item`.
    """
    return write_json(Path(folder) / ITEM_JSON, scene_item(Path(folder), name, ctx))


def href_segment(name: str) -> str:
    """``name`` as a relative href's path segment: only ``%``, ``#``, ``?`` and ``\\`` are
    percent-encoded (they would change what the href means); spaces and non-ASCII letters stay
    as they are, since pystac opens local hrefs without decoding them and HTTP clients encode
    them when they resolve the href."""
    return re.sub(r"[%#?\\]", lambda m: f"%{ord(m[0]):02X}", name)


def run_catalog(names: Sequence[str], title: str, description: str) -> dict[str, Any]:
    """The root ``catalog.json`` (STAC 1.1.0 Catalog, id :data:`CATALOG_ID`): a ``root`` link
    to ``./catalog.json`` and one ``item`` link ``./<name>/item.json`` (:func:`href_segment`) per
    finished scene, sorted and de-duplicated. An empty ``description`` becomes a default one
    (the schema wants at least one character)."""
    links: list[dict[str, Any]] = [
        {"rel": "root", "href": f"./{CATALOG_JSON}", "type": STAC_JSON, "title": title}
    ]
    for name in sorted(set(names)):
        href = f"./{href_segment(name)}/{ITEM_JSON}"
        links.append({"rel": "item", "href": href, "type": GEOJSON, "title": name})
    return {
        "type": "Catalog",
        "stac_version": STAC_VERSION,
        "id": CATALOG_ID,
        "title": title,
        "description": description or "Semantic segmentation outputs written by tilesegd",
        "links": links,
    }

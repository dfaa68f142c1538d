"""``--zones``: class areas per zone (parcels, districts, a grid), block by block.

**Pixel-centre assignment.** A pixel belongs to a zone when its centre is inside the zone
(``rasterio.features.rasterize``, ``all_touched=False``; a centre exactly on an edge follows the
tie rule of :mod:`tilesegd.vector.pixelgrid`). **Each zone is counted on its own**, as exactextract and
rasterstats count them: where zones overlap, a pixel counts in every zone that contains its
centre, so nested or overlapping zones each get their full figures. A pixel whose centre is in
no zone is not counted.

Per scene, a :class:`ZoneCounter` sorts the zones once into **layers** of zones whose interiors
do not overlap (greedy colouring, file order; a partition such as parcels or a grid is one
layer, since zones that only touch cannot share a pixel centre under the tie rule). It then
receives every finished block (``add(window, ids)``), rasterises, layer by layer, only the zones
whose bounds meet that block (``shapely.STRtree``) into an int32 zone-index raster the size of
the block, and accumulates a (zones x classes) table of pixel counts and areas with one
``np.bincount`` on ``zone * (K + 1) + class`` per layer. Memory: the zones' geometry, two
(n_zones, K + 1) tables and a few block-sized arrays; never a whole-scene raster.

Areas follow ``areas.csv`` (:func:`tilesegd.outputs.areas.row_pixel_areas`): m2 per pixel per row,
geodesic in a geographic CRS. ``percent`` is the class's share of the zone's valid (non-nodata)
pixels in this scene. Outputs (written atomically: temporary name, then ``os.replace``):

* ``zones.csv``: :data:`ZONE_COLUMNS`, one row per (zone, class) for **every zone that meets
  the scene's rectangle**, with zero pixels where no pixel centre of the scene is inside it;
  ``zone`` is the ``--zone-field`` value or the feature id.
* ``zones.gpkg``: the same zones with their **full geometry in the zones file's own CRS** (what
  a choropleth of the zones file expects; the figures cover only the part inside this scene),
  fields ``zone``, ``<class_name>_m2`` and ``<class_name>_pct`` per class, and ``valid_m2``.
* ``zones_summary.csv`` (:func:`write_zones_summary`): zones summed over scenes, ``percent``
  recomputed from the summed pixels, plus ``scenes`` (how many scenes' ``zones.csv`` list the
  zone). Scenes are assumed not to overlap: ground seen by two scenes is counted twice.
"""

from __future__ import annotations

import csv
import logging
import os
import re
import threading
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tilesegd import atomic
from tilesegd.errors import writing
from tilesegd.model.spec import ClassInfo
from tilesegd.outputs.areas import AREA_COLUMNS, row_pixel_areas
from tilesegd.raster.tiling import Win
from tilesegd.vector.layers import PolygonLayer
from tilesegd.vector.pixelgrid import place, rasterize_window

log = logging.getLogger(__name__)

ZONE_COLUMNS = ("zone", *AREA_COLUMNS)
SUMMARY_COLUMNS = (*ZONE_COLUMNS, "scenes")


class ZoneCounter:
    """Per-zone class pixel counts and areas of one scene, accumulated block by block.

    Args:
        layer: the zones (:func:`tilesegd.vector.layers.load_polygons`, ``option="--zones"``).
        crs, transform: the scene's georeferencing (rasterio CRS, ``affine.Affine``).
        height, width: scene size in pixels.
        num_classes: K; class ids ``>= K`` (255 = nodata) count as nodata.
        scene: the scene's name, for messages.

    Attributes:
        index: (m,) int64 positions in ``layer`` of the zones that meet the scene.
        layer_of: (m,) int64 layer of each of those zones (:func:`zone_layers`).
        pixels: (m, K + 1) int64 pixel counts; column K is nodata.
        area: (m, K + 1) float64 areas in m2.

    Raises:
        InputError: the scene is not georeferenced.

    A zones file that does not overlap the scene is logged as a warning (the files are then
    written with no zone).
    """

    def __init__(
        self,
        layer: PolygonLayer,
        crs: Any,
        transform: Any,
        height: int,
        width: int,
        num_classes: int,
        *,
        scene: str = "scene",
    ) -> None:
        import shapely

        self.layer, self.num_classes, self.scene = layer, num_classes, scene
        self.index, self.geoms = place(layer, crs, transform, height, width, scene=scene)
        self.tree = shapely.STRtree(self.geoms)
        self.layer_of = zone_layers(self.geoms, self.tree)
        self.row_areas = row_pixel_areas(crs, transform, height, width)
        m, slots = len(self.index), num_classes + 1
        self.pixels = np.zeros((m, slots), np.int64)
        self.area = np.zeros((m, slots), np.float64)
        self._lut = np.full(256, num_classes, np.int32)
        self._lut[:num_classes] = np.arange(num_classes, dtype=np.int32)
        self._lock = threading.Lock()
        if m == 0:
            log.warning(
                "%s: the zones file %s does not overlap this scene; zones.csv lists no zone",
                scene,
                layer.path,
            )

    def add(self, window: Win, ids: np.ndarray) -> None:
        """Count one finished block.

        Args:
            window: the block's window in scene pixels.
            ids: (window.height, window.width) uint8 class ids, 255 = nodata.

        Safe to call from several threads at once (the rasterising runs unlocked).

        Raises:
            ValueError: ``ids`` is not a uint8 array of the window's shape.
        """
        import shapely

        h, w = window.height, window.width
        if ids.shape != (h, w) or ids.dtype != np.uint8:
            raise ValueError(f"ids must be ({h}, {w}) uint8, got {ids.shape} {ids.dtype}")
        box = shapely.box(window.col_off, window.row_off, window.col_off + w, window.row_off + h)
        cand = np.sort(self.tree.query(box))
        if len(cand) == 0:
            return
        slots = self.num_classes + 1
        cls = self._lut[ids].ravel()
        rows = self.row_areas[window.row_off : window.row_off + h]
        weights = None if rows.min() == rows.max() else np.repeat(rows, w)
        layers = self.layer_of[cand]
        counts = np.zeros((len(cand), slots), np.int64)
        area = np.zeros((len(cand), slots), np.float64)
        for lay in np.unique(layers):
            sel = np.flatnonzero(layers == lay)  # zones of one layer never share a pixel
            key = rasterize_window(list(self.geoms[cand[sel]]), window, np.int32, sel + 1)
            flat = key.ravel() * slots + cls
            n_bins = (len(cand) + 1) * slots
            counts += np.bincount(flat, minlength=n_bins).reshape(-1, slots)[1:]
            if weights is None:
                continue
            area += np.bincount(flat, weights=weights, minlength=n_bins).reshape(-1, slots)[1:]
        if weights is None:
            area = counts * rows[0]
        with self._lock:
            self.pixels[cand] += counts
            self.area[cand] += area

    def present(self) -> np.ndarray:
        """(m,) bool: zones with at least one pixel centre counted (any class or nodata)."""
        return self.pixels.sum(axis=1) > 0

    def rows(self, classes: Sequence[ClassInfo]) -> list[dict[str, Any]]:
        """``zones.csv`` rows: one dict with :data:`ZONE_COLUMNS` per (zone, class), zones in
        file order, for every zone that meets the scene (zero pixels where none is inside)."""
        keys = self.layer.keys[self.index]
        valid = self.pixels[:, : self.num_classes].sum(axis=1)
        out = []
        for i in range(len(self.index)):
            zone = _plain(keys[i])
            for c in classes:
                px, a = int(self.pixels[i, c.id]), float(self.area[i, c.id])
                out.append(
                    {
                        "zone": zone,
                        "class_id": c.id,
                        "class_name": c.name,
                        "pixels": px,
                        "area_m2": round(a, 3),
                        "area_ha": round(a / 1e4, 6),
                        "percent": round(100.0 * px / int(valid[i]), 4) if valid[i] else 0.0,
                    }
                )
        return out

    def write_csv(self, path: str | os.PathLike[str], classes: Sequence[ClassInfo]) -> Path:
        """Write ``zones.csv`` atomically (see :meth:`rows`).

        Raises:
            OutputError: the file cannot be written (disk full, permissions).
        """
        rows = self.rows(classes)
        return atomic_write(Path(path), lambda tmp: _write_rows(tmp, ZONE_COLUMNS, rows))

    def write_gpkg(self, path: str | os.PathLike[str], classes: Sequence[ClassInfo]) -> Path:
        """Write ``zones.gpkg`` atomically: one MultiPolygon per zone that meets the scene, in
        the zones file's CRS, with ``zone``, ``<class>_m2``, ``valid_m2`` and ``<class>_pct``
        fields (m2; percent of the zone's valid pixels in this scene). Layer name ``zones``.

        Raises:
            OutputError: the file cannot be written.
        """
        import pyogrio.raw
        import shapely

        sel = np.arange(len(self.index))
        geoms = shapely.to_wkb(self.layer.geoms[self.index[sel]])
        valid_px = self.pixels[sel, : self.num_classes].sum(axis=1)
        names = class_columns(classes)
        fields, data = ["zone"], [_key_array(self.layer.keys[self.index[sel]])]
        for c, name in zip(classes, names, strict=True):
            fields.append(f"{name}_m2")
            data.append(np.round(self.area[sel, c.id], 3))
        fields.append("valid_m2")
        data.append(np.round(self.area[sel, : self.num_classes].sum(axis=1), 3))
        with np.errstate(invalid="ignore", divide="ignore"):
            for c, name in zip(classes, names, strict=True):
                fields.append(f"{name}_pct")
                pct = np.where(valid_px > 0, 100.0 * self.pixels[sel, c.id] / valid_px, 0.0)
                data.append(np.round(pct, 4))

        def write(tmp: Path) -> None:
            pyogrio.raw.write(
                tmp,
                np.asarray(geoms, dtype=object),
                data,
                fields,
                layer="zones",
                driver="GPKG",
                geometry_type="MultiPolygon",
                promote_to_multi=True,
                crs=self.layer.crs.to_wkt(),
            )

        return atomic_write(Path(path), write, suffix=".gpkg")


def zone_layers(geoms: np.ndarray, tree: Any) -> np.ndarray:
    """Sort zones into layers whose members' interiors do not overlap (greedy colouring).

    Args:
        geoms: (m,) object array of valid shapely polygons (pixel coordinates).
        tree: ``shapely.STRtree(geoms)``.

    Returns:
        (m,) int64 layer per zone, 0, 1, ...: each zone takes the lowest layer that holds no
        zone whose interior meets its own (DE-9IM ``T********``). Zones that only touch share a
        layer: under the tie rule of :mod:`tilesegd.vector.pixelgrid` no pixel centre is inside both,
        so one rasterisation of a layer gives every member its own pixels.
    """
    import shapely

    layer_of = np.full(len(geoms), -1, np.int64)
    for i, g in enumerate(geoms):
        near = tree.query(g, predicate="intersects")
        near = near[(near < i)]
        if len(near):
            near = near[shapely.relate_pattern(g, geoms[near], "T********")]
        taken = set(layer_of[near].tolist())
        layer_of[i] = next(k for k in range(len(taken) + 1) if k not in taken)
    return layer_of


def class_columns(classes: Sequence[ClassInfo]) -> list[str]:
    """Field-name stems for the classes: the name with characters other than letters, digits
    and ``_`` replaced by ``_`` (``class<id>`` when nothing is left), ``_<id>`` added to
    repeats."""
    out: list[str] = []
    for c in classes:
        stem = re.sub(r"\W", "_", c.name.strip(), flags=re.ASCII).strip("_") or f"class{c.id}"
        out.append(f"{stem}_{c.id}" if stem.lower() in (o.lower() for o in out) else stem)
    return out


def write_zones_summary(
    csv_paths: Iterable[str | os.PathLike[str]], path: str | os.PathLike[str]
) -> list[dict[str, Any]]:
    """Merge per-scene ``zones.csv`` files into ``zones_summary.csv`` (atomically).

    Pixels and m2 are summed per (zone, class) over the scenes; ``area_ha`` and ``percent``
    (share of the zone's summed valid pixels) are recomputed; ``scenes`` counts the files the
    zone appears in. Zones keep the order of first appearance.

    Args:
        csv_paths: the scenes' ``zones.csv`` files.
        path: the summary to write (``DIR/zones_summary.csv``).

    Returns:
        The rows written (dicts with :data:`SUMMARY_COLUMNS`).

    Raises:
        OutputError: the summary cannot be written.
        OSError / KeyError: a ``zones.csv`` is missing or lacks the columns.
    """
    sums: dict[tuple[str, int], list[Any]] = {}
    scenes: dict[str, int] = {}
    for p in csv_paths:
        seen = set()
        with open(p, newline="") as f:
            for r in csv.DictReader(f):
                k = (r["zone"], int(r["class_id"]))
                acc = sums.setdefault(k, [r["class_name"], 0, 0.0])
                acc[1] += int(r["pixels"])
                acc[2] += float(r["area_m2"] or 0.0)
                seen.add(r["zone"])
        for z in seen:
            scenes[z] = scenes.get(z, 0) + 1
    valid: dict[str, int] = {}
    for (zone, _), (_, px, _) in sums.items():
        valid[zone] = valid.get(zone, 0) + px
    rows = [
        {
            "zone": zone,
            "class_id": cid,
            "class_name": name,
            "pixels": px,
            "area_m2": round(a, 3),
            "area_ha": round(a / 1e4, 6),
            "percent": round(100.0 * px / valid[zone], 4) if valid[zone] else 0.0,
            "scenes": scenes[zone],
        }
        for (zone, cid), (name, px, a) in sums.items()
    ]
    atomic_write(Path(path), lambda tmp: _write_rows(tmp, SUMMARY_COLUMNS, rows))
    return rows


def atomic_write(path: Path, write: Callable[[Path], None], suffix: str = "") -> Path:
    """Call ``write(tmp)`` on ``.<name>.tmp-<pid><suffix>`` beside ``path``, then
    ``os.replace`` it onto ``path``; on any failure the temporary file is removed and nothing
    appears at ``path``.

    Raises:
        OutputError: ``write`` or the rename failed with an I/O error (an OSError, GDAL,
            pyogrio: :func:`tilesegd.errors.output_failure`); other errors pass through.
    """
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}{suffix}")
    try:
        with writing(path):  # classified before the temporary file frees its space
            write(tmp)
            atomic.replace(tmp, path)  # a GeoPackage: SQLite made it 0644
    finally:
        for p in (tmp, *(Path(f"{tmp}{side}") for side in ("-journal", "-wal", "-shm"))):
            p.unlink(missing_ok=True)  # with SQLite's side files (GeoPackages)
    return path


def _write_rows(path: Path, columns: Sequence[str], rows: list[dict[str, Any]]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(columns))
        w.writeheader()
        w.writerows(rows)


def _plain(value: Any) -> Any:
    """A numpy scalar as the Python value (for CSV and dict output)."""
    return value.item() if isinstance(value, np.generic) else value


def _key_array(keys: np.ndarray) -> np.ndarray:
    """Zone keys as a GPKG-writable column: integers stay int64, anything else strings."""
    if np.issubdtype(keys.dtype, np.integer) or np.issubdtype(keys.dtype, np.floating):
        return keys
    return np.array(["" if k is None else str(k) for k in keys], dtype=object)

"""Polygon files (``--aoi``, ``--zones``): read and checked once, before any scene.

A :class:`PolygonLayer` is read from any vector file GDAL/OGR opens (GeoPackage, GeoJSON,
Shapefile, FlatGeobuf...) with ``pyogrio.raw.read``; geometries are shapely 2 objects kept in the
file's own CRS (:func:`tilesegd.vector.pixelgrid.place` puts them on each scene).

Rules (each problem is a :class:`~tilesegd.errors.ConfigError` naming the file and the fix,
raised when the file is loaded, before any scene):

* unreadable file, or no polygon in it -> error; features without a polygonal part (null,
  points, lines) are dropped with a warning and a count;
* no CRS -> error, unless a ``crs`` override (``--aoi-crs`` / ``--zones-crs``) is given; an
  override also replaces a CRS the file declares (with a warning when they differ);
* invalid geometries -> repaired with ``shapely.make_valid`` (only the polygonal parts kept),
  with a warning and a count;
* a ``field`` that does not exist -> error listing the fields; features whose field is null are
  dropped with a warning; features sharing a field value are dissolved (``union_all``) into one
  zone, placed where the first of them was.

Per scene (:mod:`tilesegd.vector.pixelgrid`), a scene without georeferencing is an
:class:`~tilesegd.errors.InputError`, and a layer that does not overlap the scene is a warning.
"""

from __future__ import annotations

import logging
import os
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from tilesegd.errors import ConfigError

log = logging.getLogger(__name__)


def polygonal(geoms: np.ndarray) -> np.ndarray:
    """Keep only the polygonal part of each geometry.

    Args:
        geoms: (n,) object array of shapely geometries (any type, ``None`` allowed).

    Returns:
        (n,) object array: Polygon / MultiPolygon, or ``None`` where nothing polygonal is left
        (null, point, line, empty).
    """
    import shapely

    out = np.empty(len(geoms), dtype=object)
    types = shapely.get_type_id(geoms)  # -1 for None
    for i, (g, t) in enumerate(zip(geoms, types, strict=True)):
        if t in (3, 6):  # Polygon, MultiPolygon
            out[i] = None if g.is_empty else g
        elif t == 7:  # GeometryCollection (make_valid's output can be one)
            parts = [p for p in shapely.get_parts(g) if p.geom_type in ("Polygon", "MultiPolygon")]
            parts = [q for p in parts for q in shapely.get_parts(p)]
            out[i] = shapely.multipolygons(parts) if parts else None
        else:
            out[i] = None
    return out


def repair(geoms: np.ndarray) -> tuple[np.ndarray, int]:
    """``shapely.make_valid`` on the invalid geometries, keeping only their polygonal parts.

    Returns:
        ``(geoms, n_repaired)``: (n,) object array (``None`` where nothing polygonal is left)
        and how many geometries were invalid.
    """
    import shapely

    present = ~shapely.is_missing(geoms)
    bad = present & ~shapely.is_valid(geoms)
    out = geoms.copy()
    if bad.any():
        out[bad] = shapely.make_valid(geoms[bad])
    return polygonal(out), int(bad.sum())


class PolygonLayer:
    """The polygons of one vector file, valid, in the file's own CRS.

    Attributes:
        path: the file.
        option: ``--aoi`` / ``--zones`` (used in messages).
        geoms: (n,) object array of shapely Polygon / MultiPolygon, in ``crs`` units.
        keys: (n,) zone identifiers: the ``field`` values, or the OGR feature ids (FID).
        field: the field the keys come from, or ``None`` (FID).
        crs: ``pyproj.CRS`` of ``geoms``.
        repaired: invalid geometries repaired with ``make_valid``.
        dropped: features dropped (no polygonal part, or a null ``field`` value).
    """

    def __init__(
        self,
        path: Path,
        geoms: np.ndarray,
        keys: np.ndarray,
        crs: Any,
        *,
        field: str | None = None,
        option: str = "--zones",
        repaired: int = 0,
        dropped: int = 0,
    ) -> None:
        self.path, self.geoms, self.keys, self.crs = Path(path), geoms, keys, crs
        self.field, self.option, self.repaired, self.dropped = field, option, repaired, dropped

    def __len__(self) -> int:
        return len(self.geoms)

    @cached_property
    def tree(self) -> Any:
        """``shapely.STRtree`` over :attr:`geoms` (file CRS), built on first use."""
        import shapely

        return shapely.STRtree(self.geoms)


def load_polygons(
    path: str | os.PathLike[str],
    *,
    option: str = "--zones",
    crs: str | None = None,
    field: str | None = None,
    layer: str | int | None = None,
) -> PolygonLayer:
    """Read a polygon file for ``--aoi`` / ``--zones`` (see the module's rules).

    Args:
        path: any vector file GDAL/OGR reads.
        option: the option it was given with (``--aoi`` / ``--zones``), for messages.
        crs: override for the file's CRS (``--aoi-crs`` / ``--zones-crs``): ``EPSG:n``, WKT,
            PROJ string.
        field: attribute naming each zone (``--zone-field``); ``None`` = the feature id.
        layer: layer name or index in multi-layer files (default: the first).

    Returns:
        :class:`PolygonLayer`.

    Raises:
        ConfigError: unreadable file, no polygons, no CRS (and no ``crs``), a bad ``crs``, a
            ``field`` the file does not have.
    """
    import shapely

    path = Path(path)
    meta, fids, wkb, values = _read(path, option, field, layer)
    file_crs = _layer_crs(path, option, meta.get("crs"), crs)
    geoms, repaired = repair(shapely.from_wkb(wkb) if wkb is not None else np.empty(0, object))
    keys = np.asarray(values[0]) if field else np.asarray(fids, dtype=np.int64)
    keep = ~shapely.is_missing(geoms)
    no_poly = int((~keep).sum())
    null_key = 0
    if field:
        nulls = np.array([v is None or (isinstance(v, float) and np.isnan(v)) for v in keys])
        null_key = int((keep & nulls).sum())
        keep &= ~nulls
    if not keep.any():
        raise ConfigError(
            f"{option} {path}: no polygons found ({len(geoms)} feature(s), none a usable "
            f"polygon or multipolygon{f' with a {field!r} value' if field else ''}); give a "
            "file of polygons"
        )
    _warn_dropped(path, option, no_poly, null_key, field, repaired)
    geoms, keys = geoms[keep], keys[keep]
    if field:
        geoms, keys = _dissolve(geoms, keys, path, option, field)
    return PolygonLayer(
        path,
        geoms,
        keys,
        file_crs,
        field=field,
        option=option,
        repaired=repaired,
        dropped=no_poly + null_key,
    )


def _read(path: Path, option: str, field: str | None, layer: str | int | None) -> tuple:
    """``pyogrio.raw.read`` of the geometry, the FIDs and ``field``, errors as ConfigError."""
    import pyogrio

    if not path.exists():
        raise ConfigError(f"{option} {path}: no such file; check the path")
    try:
        fields = [str(f) for f in pyogrio.read_info(path, layer=layer)["fields"]]
        if field is not None and field not in fields:
            raise ConfigError(
                f"{option} {path}: no field {field!r}; the file has "
                f"{', '.join(fields) or 'no fields'}; pass one of them to --zone-field, or "
                "leave it out to use the feature id"
            )
        return pyogrio.raw.read(
            path, layer=layer, columns=[field] if field else [], force_2d=True, return_fids=True
        )
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001 - pyogrio / GDAL raise many types
        raise ConfigError(
            f"{option} {path}: cannot read it as a vector file ({str(exc)[:200]}); give a "
            "GeoPackage, GeoJSON, Shapefile or other OGR-readable file with polygons"
        ) from None


def _layer_crs(path: Path, option: str, found: str | None, override: str | None) -> Any:
    """The CRS to use: the override, else the file's; error when neither."""
    from pyproj import CRS
    from pyproj.exceptions import CRSError

    if override is not None:
        try:
            crs = CRS.from_user_input(override)
        except CRSError as exc:
            raise ConfigError(
                f"{option}-crs {override!r} (for {path}): not a CRS pyproj understands "
                f"({exc}); give e.g. EPSG:4326"
            ) from None
        if found and not CRS.from_user_input(found).equals(crs):
            log.warning(
                "%s %s: declares CRS %s but %s-crs %s is used",
                option,
                path,
                found,
                option,
                override,
            )
        return crs
    if not found:
        raise ConfigError(
            f"{option} {path}: the file has no CRS, so its polygons cannot be placed on the "
            f"scenes; add one (ogr2ogr -a_srs EPSG:...) or pass {option}-crs EPSG:..."
        )
    return CRS.from_user_input(found)


def _warn_dropped(
    path: Path, option: str, no_poly: int, null_key: int, field: str | None, repaired: int
) -> None:
    if repaired:
        log.warning(
            "%s %s: %d invalid geometr%s repaired with shapely.make_valid (polygonal parts "
            "kept); check the file in a GIS if areas look wrong",
            option,
            path,
            repaired,
            "y" if repaired == 1 else "ies",
        )
    if no_poly:
        log.warning(
            "%s %s: %d feature(s) without a polygon (null, points or lines) ignored",
            option,
            path,
            no_poly,
        )
    if null_key:
        log.warning(
            "%s %s: %d feature(s) with an empty %r ignored; fill the field or use the feature id",
            option,
            path,
            null_key,
            field,
        )


def _dissolve(
    geoms: np.ndarray, keys: np.ndarray, path: Path, option: str, field: str
) -> tuple[np.ndarray, np.ndarray]:
    """One geometry per distinct key (union of its features), in order of first appearance."""
    import shapely

    first: dict[Any, list[int]] = {}
    for i, k in enumerate(keys.tolist()):
        first.setdefault(k, []).append(i)
    if len(first) == len(keys):
        return geoms, keys
    log.info(
        "%s %s: %d features share %d %r values; each value is one zone (features dissolved)",
        option,
        path,
        len(keys),
        len(first),
        field,
    )
    out = np.empty(len(first), dtype=object)
    for j, idx in enumerate(first.values()):
        out[j] = (
            geoms[idx[0]]
            if len(idx) == 1
            else polygonal(np.array([shapely.union_all(geoms[idx])], dtype=object))[0]
        )
    return out, keys[[idx[0] for idx in first.values()]]

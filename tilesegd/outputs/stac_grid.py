"""The STAC view of a raster grid (:mod:`tilesegd.outputs.stac`): its footprint and bbox in
EPSG:4326, its pixel size in metres, and the projection extension's fields.

Sources: RFC 7946 (GeoJSON: lon/lat, counter-clockwise rings, a bbox across the antimeridian
with west > east); the projection extension v2.0.0 (github.com/stac-extensions/projection).
"""

from __future__ import annotations

import json
import math
from typing import Any

import pyproj
import rasterio.warp
from affine import Affine
from rasterio.crs import CRS
from shapely.geometry import mapping, shape
from shapely.geometry.polygon import orient

#: points per edge of the footprint before reprojection (curved edges stay close)
EDGE_POINTS = 21


def footprint(
    crs: CRS, transform: Affine, width: int, height: int, points: int = EDGE_POINTS
) -> dict[str, Any]:
    """The GeoJSON geometry (EPSG:4326, lon/lat degrees) of a raster grid's outer boundary:
    each edge sampled at ``points`` points in pixel space, mapped through ``transform`` (an
    ``affine.Affine``, map units), reprojected from ``crs`` by GDAL with
    antimeridian cutting (a MultiPolygon where it crosses 180 degrees), rings counter-clockwise.

    Raises:
        rasterio.errors.CRSError: ``crs`` is not a valid CRS.
    """
    n = max(2, points) - 1
    w, h = float(width), float(height)
    edges = (  # counter-clockwise on a north-up grid: left, bottom, right, top
        [(0.0, h * i / n) for i in range(n)],
        [(w * i / n, h) for i in range(n)],
        [(w, h - h * i / n) for i in range(n)],
        [(w - w * i / n, 0.0) for i in range(n)],
    )
    ring = [transform * p for edge in edges for p in edge]
    ring.append(ring[0])
    geom = {"type": "Polygon", "coordinates": [[list(p) for p in ring]]}
    out = rasterio.warp.transform_geom(crs, "EPSG:4326", geom, antimeridian_cutting=True)
    g = shape(out)
    if g.geom_type == "Polygon":
        g = orient(g, 1.0)
    elif g.geom_type == "MultiPolygon":
        g = type(g)([orient(p, 1.0) for p in g.geoms])
    return json.loads(json.dumps(mapping(g)))  # tuples -> lists


def geometry_bbox(geom: dict[str, Any]) -> list[float]:
    """``[west, south, east, north]`` (degrees) of a GeoJSON geometry: its bounds, except for a
    MultiPolygon split at the antimeridian, whose bbox has west (the eastern parts' minimum)
    greater than east (the western parts' maximum), as STAC and RFC 7946 want."""
    g = shape(geom)
    west, south, east, north = g.bounds
    if g.geom_type == "MultiPolygon" and east - west > 180.0:
        east_parts = [p.bounds for p in g.geoms if p.bounds[0] >= 0.0]
        west_parts = [p.bounds for p in g.geoms if p.bounds[2] <= 0.0]
        if east_parts and west_parts and len(east_parts) + len(west_parts) == len(g.geoms):
            west = min(b[0] for b in east_parts)
            east = max(b[2] for b in west_parts)
    return [west, south, east, north]


def resolution_m(crs: CRS | None, transform: Affine, width: int, height: int) -> float | None:
    """Mean pixel size in metres: projected CRS: the pixel's sides times the CRS's linear
    unit; geographic CRS: geodesic lengths of the centre pixel's sides on the CRS's ellipsoid;
    ``None`` without a CRS or for any other kind of CRS."""
    pcrs = None if crs is None else pyproj.CRS.from_wkt(crs.to_wkt())
    if pcrs is not None and pcrs.is_projected:
        a, b, _, d, e, _ = tuple(transform)[:6]
        unit = pcrs.axis_info[0].unit_conversion_factor if pcrs.axis_info else 1.0
        return round(unit * (math.hypot(a, d) + math.hypot(b, e)) / 2, 6)
    if pcrs is not None and pcrs.is_geographic:
        c, r = width / 2.0, height / 2.0
        (x0, y0), (x1, y1), (x2, y2) = (transform * p for p in ((c, r), (c + 1, r), (c, r + 1)))
        geod = pcrs.get_geod()
        return round((geod.inv(x0, y0, x1, y1)[2] + geod.inv(x0, y0, x2, y2)[2]) / 2, 6)
    return None


def projection_fields(
    crs: CRS | None, transform: Affine, width: int, height: int
) -> dict[str, Any]:
    """Projection v2.0.0 fields: ``proj:code`` (``"EPSG:32633"``; ``null`` without an
    authority code or a CRS), ``proj:wkt2`` (WKT2 2019, only without a code), ``proj:shape``
    ``[rows, cols]``, ``proj:transform`` (the affine's first 6 coefficients a, b, c, d, e, f)."""
    fields: dict[str, Any] = {"proj:code": None}
    if crs is not None:
        auth = crs.to_authority()
        if auth:
            fields["proj:code"] = f"{auth[0]}:{auth[1]}"
        else:
            fields["proj:wkt2"] = pyproj.CRS.from_wkt(crs.to_wkt()).to_wkt("WKT2_2019")
    fields["proj:shape"] = [int(height), int(width)]
    fields["proj:transform"] = [float(v) for v in tuple(transform)[:6]]
    return fields

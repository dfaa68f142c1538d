"""Ground sampling distance (GSD): the ground size of a pixel, in metres.

A network learns objects at the pixel size it was trained at; ``tilesegd train`` records it in
the model file (``gsd``) and ``tilesegd run`` resamples scenes of another pixel size to it (as
the QGIS Deepness plugin and GeoDeep do). Both measure it here:

* projected CRS: the lengths of the transform's column vectors (``|(a, d)|`` across, ``|(b, e)|``
  down; right for rotated and sheared grids too) times the CRS's linear unit in metres;
* geographic CRS: geodesic distances (``pyproj.Geod.inv`` on the CRS's ellipsoid, Karney 2013)
  across and down one pixel at the scene's centre (never degrees).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable
from typing import Any

GsdXY = tuple[float, float]


def pixel_size_m(crs: Any, transform: Any, height: int, width: int) -> GsdXY | None:
    """``(across, down)`` ground size of one pixel in metres, at the scene's centre.

    Args:
        crs: ``rasterio.crs.CRS`` (or anything with ``is_geographic``, ``to_wkt`` and
            ``linear_units_factor``), or ``None``.
        transform: ``affine.Affine`` pixel -> CRS transform, or ``None``.
        height, width: scene size in pixels.

    Returns:
        Metres per pixel along a row (x) and down a column (y); ``None`` without
        georeferencing.
    """
    if crs is None or transform is None:
        return None
    a, b, _, d, e, _ = tuple(transform)[:6]
    if not crs.is_geographic:
        factor = crs.linear_units_factor[1] if crs.linear_units_factor else 1.0
        return math.hypot(a, d) * factor, math.hypot(b, e) * factor
    from pyproj import CRS, Geod

    geod = CRS.from_wkt(crs.to_wkt()).get_geod() or Geod(ellps="WGS84")
    col, row = width / 2.0, height / 2.0
    x0, y0 = transform * (col, row)
    x1, y1 = transform * (col + 1, row)
    x2, y2 = transform * (col, row + 1)
    _, _, across = geod.inv(x0, y0, x1, y1)
    _, _, down = geod.inv(x0, y0, x2, y2)
    return abs(across), abs(down)


def gsd_of(size: GsdXY | None) -> float | None:
    """One number for a pixel size: the geometric mean of its sides (the side of a square
    pixel of the same area), metres."""
    return None if size is None else math.sqrt(size[0] * size[1])


def median_gsd(sizes: Iterable[GsdXY | None]) -> float | None:
    """The median :func:`gsd_of` of the georeferenced items (``None`` if there are none)."""
    values = [gsd_of(s) for s in sizes if s is not None]
    return statistics.median(values) if values else None


def resample_factors(
    scene: GsdXY, target_gsd: float, tolerance: float = 0.1
) -> tuple[float, float] | None:
    """``(fy, fx)``: how many target pixels one scene pixel becomes down and across
    (``scene / target``: < 1 shrinks the scene, > 1 enlarges it), or ``None`` when both sides
    are within ``tolerance`` (relative) of ``target_gsd`` and the scene runs as it is.

    Raises:
        ValueError: a non-positive GSD or tolerance.
    """
    if target_gsd <= 0 or min(scene) <= 0 or tolerance < 0:
        raise ValueError(f"GSDs must be > 0 and the tolerance >= 0, got {scene}, {target_gsd}")
    fx, fy = scene[0] / target_gsd, scene[1] / target_gsd
    if abs(fx - 1) <= tolerance and abs(fy - 1) <= tolerance:
        return None
    return fy, fx

"""Per-class pixel counts and areas in real units (m2, ha).

* Projected CRS: every pixel has the same area, ``|det(transform)|`` (correct for rotated and
  sheared transforms too) times the square of the CRS's linear unit in metres.
* Geographic CRS: pixel areas shrink with latitude, so each row's pixel area is the geodesic
  area of that row's pixel quadrilateral on the CRS's ellipsoid (``pyproj.Geod``, after Karney,
  *Algorithms for geodesics*, J. Geodesy 2013). Never square degrees.
* No georeferencing: pixels only; the area columns stay empty.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from tilesegd.model.spec import NODATA, ClassInfo

AREA_COLUMNS = ("class_id", "class_name", "pixels", "area_m2", "area_ha", "percent")


def row_pixel_areas(crs: Any, transform: Any, height: int, width: int) -> np.ndarray | None:
    """Area of one pixel for each row, in m2.

    Args:
        crs: ``rasterio.crs.CRS`` or ``None``.
        transform: ``affine.Affine`` or ``None``.
        height, width: scene size in pixels.

    Returns:
        (height,) float64 m2 per pixel of each row, or ``None`` without georeferencing.
    """
    if crs is None or transform is None:
        return None
    if not crs.is_geographic:
        factor = crs.linear_units_factor[1] if crs.linear_units_factor else 1.0
        return np.full(height, abs(transform.determinant) * factor * factor)
    from pyproj import CRS, Geod

    geod = CRS.from_wkt(crs.to_wkt()).get_geod() or Geod(ellps="WGS84")
    col = width / 2.0
    areas = np.empty(height)
    for r in range(height):
        corners = [
            transform @ (col, r),
            transform @ (col + 1, r),
            transform @ (col + 1, r + 1),
            transform @ (col, r + 1),
        ]
        lons, lats = zip(*corners, strict=True)
        area, _ = geod.polygon_area_perimeter(lons, lats)
        areas[r] = abs(area)
    return areas


@dataclass
class AreaCounter:
    """Accumulates class pixel counts and areas block by block.

    Args:
        num_classes: K.
        row_areas: (H,) m2 per pixel of each scene row, or ``None`` (no georeferencing).
    """

    num_classes: int
    row_areas: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.pixels = np.zeros(256, np.int64)
        self.area = np.zeros(256, np.float64)

    def add(self, row_off: int, ids: np.ndarray) -> None:
        """Count an (h, w) uint8 block of class ids whose first row is scene row ``row_off``.

        One integer histogram per block; areas are counts x pixel area when the block's rows
        share one pixel area (every projected CRS), else one histogram per row (geographic).
        """
        counts = np.bincount(ids.ravel(), minlength=256)
        self.pixels += counts
        if self.row_areas is None:
            return
        rows = self.row_areas[row_off : row_off + ids.shape[0]]
        if rows.min() == rows.max():
            self.area += counts * rows[0]
        else:
            for row, a in zip(ids, rows, strict=True):
                self.area += np.bincount(row, minlength=256) * a

    def rows(self, classes: Sequence[ClassInfo]) -> list[dict[str, Any]]:
        """One dict per class with the :data:`AREA_COLUMNS` (nodata excluded; ``percent`` is
        of valid pixels; area columns ``None`` without georeferencing)."""
        valid = int(self.pixels[: self.num_classes].sum())
        out = []
        for c in classes:
            px = int(self.pixels[c.id])
            geo = self.row_areas is not None
            out.append(
                {
                    "class_id": c.id,
                    "class_name": c.name,
                    "pixels": px,
                    "area_m2": round(float(self.area[c.id]), 3) if geo else None,
                    "area_ha": round(float(self.area[c.id]) / 1e4, 6) if geo else None,
                    "percent": round(100.0 * px / valid, 4) if valid else 0.0,
                }
            )
        return out

    @property
    def valid_pixels(self) -> int:
        """Pixels with a class id (everything but nodata)."""
        return int(self.pixels[: self.num_classes].sum())

    @property
    def nodata_pixels(self) -> int:
        """Pixels with the nodata id (255)."""
        return int(self.pixels[NODATA])


def write_areas_csv(
    path: str | os.PathLike[str],
    rows: list[dict[str, Any]],
    scene: str | None = None,
    append: bool = False,
) -> None:
    """Write ``areas.csv`` rows (with a leading ``scene`` column when ``scene`` is given)."""
    cols = (("scene",) if scene is not None else ()) + AREA_COLUMNS
    with open(path, "a" if append else "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        if not append:
            w.writeheader()
        for r in rows:
            w.writerow(
                {
                    **({"scene": scene} if scene is not None else {}),
                    **{k: ("" if v is None else v) for k, v in r.items()},
                }
            )

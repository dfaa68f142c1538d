"""Areas on known masks: projected (|det|, rotated too), geographic (geodesic), none."""

from __future__ import annotations

import numpy as np
import pytest
from affine import Affine
from rasterio.crs import CRS

from tilesegd.model.model_file import ClassInfo
from tilesegd.outputs.areas import AreaCounter, row_pixel_areas

CLASSES = [ClassInfo(0, "a", (0, 0, 0)), ClassInfo(1, "b", (1, 1, 1)), ClassInfo(2, "c", (2, 2, 2))]


def count(mask: np.ndarray, areas, block: int = 7) -> list[dict]:
    counter = AreaCounter(3, areas)
    for r in range(0, mask.shape[0], block):  # block by block, as the writer does
        counter.add(r, mask[r : r + block])
    return counter.rows(CLASSES)


def test_projected_areas_from_transform() -> None:
    mask = np.zeros((20, 30), np.uint8)
    mask[:5] = 1
    mask[5:6, :10] = 2
    mask[19, :] = 255  # nodata row
    areas = row_pixel_areas(CRS.from_epsg(32633), Affine(2.0, 0, 5e5, 0, -2.0, 4.6e6), 20, 30)
    rows = count(mask, areas)
    px = {r["class_id"]: r["pixels"] for r in rows}
    assert px == {0: 20 * 30 - 150 - 10 - 30, 1: 150, 2: 10}
    assert rows[1]["area_m2"] == pytest.approx(150 * 4.0)
    assert rows[1]["area_ha"] == pytest.approx(150 * 4.0 / 1e4)
    assert sum(r["percent"] for r in rows) == pytest.approx(100.0)
    assert sum(r["area_m2"] for r in rows) == pytest.approx((600 - 30) * 4.0)


def test_rotated_transform_uses_determinant() -> None:
    t = Affine.rotation(30) * Affine.scale(3.0, -2.0)
    areas = row_pixel_areas(CRS.from_epsg(32633), Affine.translation(5e5, 4.6e6) * t, 4, 4)
    np.testing.assert_allclose(areas, 6.0)


def test_us_survey_feet_are_converted_to_metres() -> None:
    crs = CRS.from_epsg(2263)  # NAD83 / New York Long Island (ftUS)
    areas = row_pixel_areas(crs, Affine(1.0, 0, 1e6, 0, -1.0, 2e5), 2, 2)
    np.testing.assert_allclose(areas, 0.3048006096**2, rtol=1e-6)


def test_geographic_areas_are_geodesic_not_square_degrees() -> None:
    from pyproj import Geod

    # 0.01-degree pixels, 60 N to 59 N: a pixel is ~ 0.62 km2, smaller to the north
    h, w = 100, 50
    t = Affine(0.01, 0, 10.0, 0, -0.01, 60.0)
    areas = row_pixel_areas(CRS.from_epsg(4326), t, h, w)
    assert areas[0] < areas[-1]
    rows = count(np.zeros((h, w), np.uint8), areas)
    # the whole extent as a polygon whose east-west edges follow the parallels
    n = 200
    lons = list(np.linspace(10.0, 10.5, n)) + list(np.linspace(10.5, 10.0, n))
    lats = [60.0] * n + [59.0] * n
    expected = abs(Geod(ellps="WGS84").polygon_area_perimeter(lons, lats)[0])
    assert rows[0]["area_m2"] == pytest.approx(expected, rel=1e-4)
    assert rows[0]["area_m2"] > 1e9  # ~3.1e9 m2, never ~0.5 square degrees


def test_no_georeferencing_leaves_areas_empty() -> None:
    assert row_pixel_areas(None, None, 5, 5) is None
    rows = count(np.ones((5, 5), np.uint8), None)
    assert rows[1]["pixels"] == 25 and rows[1]["area_m2"] is None and rows[1]["percent"] == 100


def test_geographic_mixed_classes_sum_their_own_rows_areas() -> None:
    # each class's area is the sum of its pixels' row areas (rows differ with latitude)
    h, w = 23, 17
    areas = row_pixel_areas(CRS.from_epsg(4326), Affine(0.05, 0, 5.0, 0, -0.05, 70.0), h, w)
    rng = np.random.default_rng(3)
    mask = rng.choice(np.array([0, 1, 2, 255], np.uint8), size=(h, w))
    rows = count(mask, areas, block=5)
    for r in rows:
        want = float((areas[:, None] * (mask == r["class_id"])).sum())
        assert r["area_m2"] == pytest.approx(want, rel=1e-9)
    assert sum(r["pixels"] for r in rows) == int((mask != 255).sum())

"""Ground sampling distance from a scene's georeferencing."""

from __future__ import annotations

import math

import pytest
from affine import Affine
from rasterio.crs import CRS

from tilesegd.raster.gsd import gsd_of, median_gsd, pixel_size_m, resample_factors


def test_projected_pixel_size_in_metres() -> None:
    t = Affine(0.5, 0, 500000, 0, -0.25, 4650000)
    assert pixel_size_m(CRS.from_epsg(32633), t, 100, 100) == (0.5, 0.25)
    feet = pixel_size_m(CRS.from_epsg(2264), Affine(2, 0, 0, 0, -2, 0), 10, 10)  # US survey ft
    assert feet == pytest.approx((2 * 1200 / 3937, 2 * 1200 / 3937))
    rotated = Affine.translation(500000, 4650000) * Affine.rotation(30) * Affine.scale(0.3, -0.3)
    assert pixel_size_m(CRS.from_epsg(32633), rotated, 10, 10) == pytest.approx((0.3, 0.3))
    assert (
        pixel_size_m(None, t, 10, 10) is None
        and pixel_size_m(CRS.from_epsg(32633), None, 1, 1) is None
    )


def test_geographic_pixel_size_is_geodesic_at_the_centre() -> None:
    arcsec = 1 / 3600
    equator = Affine(arcsec, 0, 10.0, 0, -arcsec, 0.5 + 50 * arcsec)  # centre on the equator
    x, y = pixel_size_m(CRS.from_epsg(4326), equator, 100, 100)
    assert x == pytest.approx(6378137 * math.radians(arcsec), rel=1e-4)  # 30.92 m
    assert y == pytest.approx(30.72, abs=0.05)  # the meridian arc is shorter at the equator
    north = Affine(arcsec, 0, 10.0, 0, -arcsec, 60.0 + 50 * arcsec)  # 60 degrees north
    x60, y60 = pixel_size_m(CRS.from_epsg(4326), north, 100, 100)
    assert x60 == pytest.approx(x * math.cos(math.radians(60)), rel=0.01) and y60 > y


def test_gsd_numbers_and_resample_factors() -> None:
    assert gsd_of((0.5, 2.0)) == 1.0 and gsd_of(None) is None
    assert median_gsd([(1, 1), None, (3, 3), (2, 2)]) == 2.0 and median_gsd([None]) is None
    assert resample_factors((0.105, 0.095), 0.1) is None  # within 10 %
    assert resample_factors((0.2, 0.2), 0.1) == (2.0, 2.0)  # a coarse scene is enlarged x2
    assert resample_factors((0.05, 0.05), 0.1, tolerance=0.0) == (0.5, 0.5)
    with pytest.raises(ValueError):
        resample_factors((0.1, 0.1), 0.0)

"""A scene's acquisition time from its EXIF / TIFF date tags, as GDAL reports them."""

from __future__ import annotations

from pathlib import Path

import pytest
import rasterio
from conftest import make_raster, smooth_image
from hypothesis import given
from hypothesis import strategies as st

from tilesegd.raster.exif import acquisition_time
from tilesegd.raster.scene import open_scene


@pytest.mark.parametrize(
    ("tags", "expected"),
    [
        ({"EXIF_DateTimeOriginal": "2023:07:14 11:02:33", "TIFFTAG_DATETIME": "2024:01:01 00:00:00"},
         "2023-07-14T11:02:33"),  # when it was taken wins over when the file was written
        ({"EXIF_DateTimeDigitized": "2023:07:14 11:02:34"}, "2023-07-14T11:02:34"),
        ({"TIFFTAG_DATETIME": " 2022:05:06 07:08:09 "}, "2022-05-06T07:08:09"),
        ({"TIFFTAG_DATETIME": "0000:00:00 00:00:00"}, None),  # cameras write this for "unknown"
        ({"TIFFTAG_DATETIME": "yesterday"}, None),
        ({}, None),
    ],
)  # fmt: skip
def test_the_first_usable_date_tag(tags: dict[str, str], expected: str | None) -> None:
    assert acquisition_time(tags) == expected


@given(st.datetimes().filter(lambda d: d.year >= 1000))
def test_any_exif_date_reads_back_as_iso(when) -> None:  # noqa: ANN001
    tag = when.strftime("%Y:%m:%d %H:%M:%S")
    assert acquisition_time({"EXIF_DateTimeOriginal": tag}) == when.strftime("%Y-%m-%dT%H:%M:%S")


def test_a_scene_reports_its_tiff_date(tmp_path: Path) -> None:
    path = make_raster(tmp_path / "a.tif", smooth_image(16, 16))
    assert open_scene(path).acquired is None
    with rasterio.open(path, "r+") as dst:
        dst.update_tags(TIFFTAG_DATETIME="2021:02:03 04:05:06")
    assert open_scene(path).acquired == "2021-02-03T04:05:06"

"""One VRT check (issue 21 point 4): a file is a VRT when GDAL's VRT driver takes it (its first
1024 bytes hold ``<VRTDataset``, after a BOM, an XML declaration or comments too), decided
before GDAL opens it; a disguised or network-reading VRT is refused without --allow-vrt."""

from __future__ import annotations

from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import rasterio
from conftest import make_raster

from tilesegd.errors import InputError
from tilesegd.raster.scene import open_scene

PROLOG = '<?xml version="1.0" encoding="UTF-8"?>\n<!-- made by hand -->\n'


def vrt(source: str) -> str:
    band = (
        '<VRTRasterBand dataType="Byte" band="1"><SimpleSource><SourceFilename '
        f'relativeToVRT="0">{source}</SourceFilename><SourceBand>1</SourceBand></SimpleSource>'
        "</VRTRasterBand>"
    )
    return f'<VRTDataset rasterXSize="30" rasterYSize="20">{band}</VRTDataset>\n'


@pytest.fixture
def good(tmp_path: Path) -> Path:
    return make_raster(tmp_path / "good.tif", np.ones((1, 20, 30), np.uint8))


@pytest.mark.parametrize(
    ("name", "text", "error"),
    [
        ("plain.tif", "{vrt}", "really a GDAL VRT"),
        ("prolog.tif", PROLOG + "{vrt}", "really a GDAL VRT"),
        ("bom.tiff", "\ufeff{vrt}", "really a GDAL VRT"),
        ("remote.vrt", PROLOG + "{remote}", "network location"),
    ],
)
def test_a_vrt_is_refused_before_gdal_opens_it(tmp_path, good, name, text, error) -> None:
    path = tmp_path / name
    path.write_text(text.format(vrt=vrt(str(good)), remote=vrt("/vsicurl/https://x.invalid/a.tif")))
    with rasterio.open(path) as ds:
        assert ds.driver == "VRT"  # what GDAL makes of it
    with mock.patch.object(rasterio, "open") as opened, pytest.raises(InputError, match=error):
        open_scene(path)
    opened.assert_not_called()
    if name.endswith(".tif") or name.endswith(".tiff"):
        assert open_scene(path, allow_vrt=True, allow_no_georef=True).driver == "VRT"


def test_a_vrt_named_vrt_and_text_that_gdal_does_not_take_for_one(tmp_path, good) -> None:
    local = tmp_path / "local.vrt"
    local.write_text(PROLOG + vrt(str(good)))
    assert open_scene(local, allow_no_georef=True).driver == "VRT"
    late = tmp_path / "late.tif"  # the root element after GDAL's 1024-byte header
    late.write_text(" " * 1100 + vrt(str(good)))
    with pytest.raises(InputError, match="not a readable raster"):
        open_scene(late)

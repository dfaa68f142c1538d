"""What a run publishes as STAC, read back by STAC consumers: pystac walks catalog.json to
every finished scene's item.json, the documents validate against the kept schemas, odc-stac
loads each mask asset with mask.tif's pixels and grid, and a failed scene is not listed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pystac
import pytest
import rasterio
from click.testing import CliRunner
from conftest import download, make_raster, smooth_image
from rasterio.transform import from_origin
from stac_schemas import CATALOG_SCHEMA, make_registry, validate, validate_item

from tilesegd.cli.main import cli
from tilesegd.model.model_file import read_spec


def run(*args: str) -> tuple[int, str]:
    r = CliRunner().invoke(cli, ["run", "--preview-size", "0", *args], catch_exceptions=False)
    return r.exit_code, r.output


@pytest.fixture
def inputs(tmp_path: Path) -> list[str]:
    """A STAC Item (its raster in EPSG:2056, relative href), a plain GeoTIFF with a TIFF
    DateTime tag, and a file that is not a raster (its scene fails)."""
    folder = tmp_path / "in"
    folder.mkdir()
    make_raster(folder / "lv95.tif", smooth_image(90, 70, seed=4), crs="EPSG:2056",
                transform=from_origin(2.6e6, 1.2e6, 0.25, 0.25))  # fmt: skip
    doc = {"type": "Feature", "stac_version": "1.1.0", "id": "swiss-1", "geometry": None,
           "properties": {"datetime": "2023-08-14T10:20:00Z"}, "links": [],
           "assets": {"visual": {"href": "./lv95.tif", "type": "image/tiff; application=geotiff",
                                 "roles": ["visual"]}}}  # fmt: skip
    (folder / "swiss-1.json").write_text(json.dumps(doc))
    plain = make_raster(folder / "utm.tif", smooth_image(64, 80, seed=5), nodata=0)
    with rasterio.open(plain, "r+") as dst:
        dst.update_tags(TIFFTAG_DATETIME="2022:05:06 07:08:09")
    (folder / "broken.tif").write_bytes(b"not a raster")
    return [str(folder / "swiss-1.json"), str(plain), str(folder / "broken.tif")]


def check_published(out: Path, model: Path, inputs: list[str]) -> None:
    registry = make_registry()
    catalog_doc = json.loads((out / "catalog.json").read_text())
    validate(catalog_doc, CATALOG_SCHEMA, registry)
    items = {
        i.id: i
        for i in pystac.Catalog.from_file(str(out / "catalog.json")).get_items(recursive=True)
    }
    assert sorted(items) == ["swiss-1", "utm"]  # the broken scene failed: not listed
    spec = read_spec(model)
    for name, item in items.items():
        validate_item(json.loads((out / name / "item.json").read_text()), registry)
        classes = item.assets["mask"].extra_fields["classification:classes"]
        assert [(c["value"], c["title"]) for c in classes] == [(c.id, c.name) for c in spec.classes]
        assert item.properties["tilesegd:model_sha256"] == json.loads(
            (out / "run.json").read_text())["model"]["sha256"]  # fmt: skip
    swiss, utm = items["swiss-1"], items["utm"]
    assert swiss.datetime.isoformat() == "2023-08-14T10:20:00+00:00"
    assert swiss.properties["tilesegd:datetime_source"] == "input item"
    assert [lk.href for lk in swiss.links if lk.rel == "derived_from"] == [inputs[0]]
    assert utm.datetime.isoformat() == "2022-05-06T07:08:09+00:00"
    assert utm.properties["tilesegd:datetime_source"] == "scene metadata"
    assert swiss.properties["proj:code"] == "EPSG:2056"


def test_a_run_publishes_a_catalog_that_stac_tools_read(tmp_path: Path, inputs, tiny_model) -> None:
    odc_stac = pytest.importorskip("odc.stac")
    model = tiny_model(num_classes=3)
    out = tmp_path / "out"
    code, text = run(*(a for i in inputs for a in ("-i", i)), "-m", str(model), "-o", str(out))
    assert code == 4, text  # one scene failed
    check_published(out, model, inputs)
    catalog = pystac.Catalog.from_file(str(out / "catalog.json"))
    for item in catalog.get_items(recursive=True):
        ds = odc_stac.load([item], bands=["mask"], chunks=None)
        with rasterio.open(out / item.id / "mask.tif") as src:
            want, crs, transform = src.read(1), src.crs, src.transform
        np.testing.assert_array_equal(ds["mask"].isel(time=0).values, want)
        assert rasterio.crs.CRS.from_user_input(str(ds.odc.geobox.crs)) == crs
        assert np.allclose(ds.odc.geobox.affine[:6], transform[:6])


def test_an_output_prefix_on_s3_is_a_static_catalog_too(
    s3, tmp_path: Path, inputs, tiny_model
) -> None:
    model = tiny_model(num_classes=3)
    code, text = run(
        *(a for i in inputs for a in ("-i", i)), "-m", str(model), "-o", s3.url("run/")
    )
    assert code == 4, text
    local = tmp_path / "copied"
    keys = download(s3, "run/", local)
    assert "catalog.json" in keys and "swiss-1/item.json" in keys and "utm/item.json" in keys
    check_published(local, model, inputs)
    zarr = json.loads((local / "utm" / "item.json").read_text())["assets"]["zarr"]
    assert (
        zarr["href"].startswith("./pred.zarr")
        and (local / "utm" / "pred.zarr" / "zarr.json").exists()
    )

"""STAC outputs (issue 23): each finished scene's ``item.json`` and the run's ``catalog.json``.

Oracles: the official JSON schemas of STAC 1.1.0 and of every extension used, kept in
``tests/stac/schemas/<host>/<path>`` (the file's official URL is ``https://<host>/<path>``;
nothing is fetched at test time); pystac and odc-stac as STAC consumers; pyproj for
independently transformed corners and edge pixel centres.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import pyproj
import pystac
import pytest
import rasterio
import shapely
from conftest import examples, make_raster
from hypothesis import example, given, settings
from hypothesis import strategies as st
from rasterio.crs import CRS
from rasterio.transform import Affine, from_origin
from referencing import Registry
from shapely.geometry import shape
from stac_schemas import (
    CATALOG_SCHEMA,
    ITEM_SCHEMA,
    KNOWN_ID_TYPOS,
    make_registry,
    schema_files,
    validate,
    validate_item,
)

from tilesegd.atomic import file_mode
from tilesegd.errors import OutputError
from tilesegd.model.spec import ClassInfo
from tilesegd.outputs import stac

PREFIXES = {
    "proj:": "proj",
    "raster:": "raster",
    "file:": "file",
    "classification:": "classification",
    "processing:": "processing",
}
CLASSES = [
    ClassInfo(0, "background", (10, 20, 30)),
    ClassInfo(1, "bâtiment & <toit>", (200, 0, 0)),
    ClassInfo(2, "water", (0, 0, 255)),
]
CTX = stac.ItemContext(
    classes=CLASSES,
    model_name="roofs.tsm",
    model_sha256="ab" * 32,
    run_time="2026-12-03T14:00:00Z",
)
PRODUCTS = {
    "mask.qml": b"<qgis/>",
    "mask.tif.aux.xml": b"<PAMDataset/>",
    "areas.csv": b"class_id,class_name,pixels\n0,background,10\n",
    "polygons.gpkg": b"SQLite format 3\x00dummy",
    "zones.csv": b"zone,class_id,pixels\n",
    "zones.gpkg": b"SQLite format 3\x00zones",
    "preview.png": b"\x89PNG\r\n\x1a\ndummy",
    "confidence.qml": b"<qgis/>",
}


@pytest.fixture(scope="module")
def registry() -> Registry:
    return make_registry()


def _keys(doc: Any) -> set[str]:
    if isinstance(doc, dict):
        return set(doc) | {k for v in doc.values() for k in _keys(v)}
    if isinstance(doc, list):
        return {k for v in doc for k in _keys(v)}
    return set()


def used_extensions(item: dict[str, Any]) -> set[str]:
    """The extension schemas whose fields appear anywhere in ``item``."""
    keys = _keys({k: v for k, v in item.items() if k != "stac_extensions"})
    return {stac.EXTENSIONS[e] for k in keys for p, e in PREFIXES.items() if k.startswith(p)}


def test_schema_files_carry_their_official_ids() -> None:
    files = schema_files()
    needed = {ITEM_SCHEMA, CATALOG_SCHEMA, *stac.EXTENSIONS.values()}
    assert needed <= set(files)
    assert "https://geojson.org/schema/Feature.json" in files
    for url, path in files.items():
        schema_id = json.loads(path.read_text())["$id"].rstrip("#")
        assert schema_id == KNOWN_ID_TYPOS.get(url, url), path


# ----------------------------------------------------------------------------- scenes


def _mask_data(height: int, width: int) -> np.ndarray:
    data = (np.add.outer(np.arange(height), np.arange(width)) % 3).astype(np.uint8)
    data[: height // 4, : width // 3] = 255
    return data


def make_scene(folder: Path, kind: str, products: bool = True) -> Path:
    """A finished scene folder: mask.tif (``utm`` EPSG:32633 0.5 m, ``geo`` EPSG:4326,
    ``plain`` no CRS), pred.zarr, and with ``products`` a confidence.tif and dummy products."""
    folder.mkdir(parents=True, exist_ok=True)
    data = _mask_data(48, 64)
    geo = {
        "utm": dict(crs="EPSG:32633", transform=from_origin(500000.0, 4650000.0, 0.5, 0.5)),
        "geo": dict(crs="EPSG:4326", transform=from_origin(12.25, 41.9, 1e-4, 1e-4)),
        "plain": dict(crs=None),
    }[kind]
    make_raster(
        folder / "mask.tif", data, nodata=255, tiled=True, blockxsize=16, blockysize=16, **geo
    )
    (folder / "pred.zarr").mkdir(exist_ok=True)
    (folder / "pred.zarr" / "zarr.json").write_text('{"zarr_format": 3, "node_type": "group"}')
    (folder / "areas.csv").write_bytes(PRODUCTS["areas.csv"])
    if products:
        conf = np.full((48, 64), 87, np.uint8)
        make_raster(folder / "confidence.tif", conf, nodata=255, **geo)
        for name, content in PRODUCTS.items():
            (folder / name).write_bytes(content)
    return folder


@pytest.mark.parametrize("kind", ["utm", "geo", "plain"])
def test_item_validates_against_core_and_extension_schemas(
    tmp_path: Path, registry: Registry, kind: str
) -> None:
    folder = make_scene(tmp_path / "scene", kind)
    path = stac.write_scene_item(folder, "scene", CTX)
    assert path == folder / "item.json"
    item = json.loads(path.read_text())
    validate_item(item, registry)
    assert set(item["stac_extensions"]) == used_extensions(item)
    assert len(item["stac_extensions"]) == len(set(item["stac_extensions"]))
    assert item["stac_version"] == stac.STAC_VERSION == "1.1.0"
    assert item["id"] == "scene"
    band = item["assets"]["mask"]["bands"][0]
    assert (band["nodata"], band["data_type"]) == (255, "uint8")
    if kind == "plain":
        assert item["geometry"] is None and "bbox" not in item
        assert item["properties"]["proj:code"] is None
        assert "raster:spatial_resolution" not in band
    else:
        assert item["properties"]["proj:code"] == {"utm": "EPSG:32633", "geo": "EPSG:4326"}[kind]
        assert band["raster:spatial_resolution"] == pytest.approx(
            {"utm": 0.5, "geo": 9.8}[kind], rel=0.2
        )
    with rasterio.open(folder / "mask.tif") as src:
        assert item["properties"]["proj:shape"] == [src.height, src.width]
        assert Affine(*item["properties"]["proj:transform"]) == src.transform
    assert not [p for p in folder.iterdir() if p.name.startswith(".item.json")]


def test_the_schemas_reject_broken_items(tmp_path: Path, registry: Registry) -> None:
    """The kept schemas are really used: each breakage fails its own schema."""
    good = stac.scene_item(make_scene(tmp_path / "s", "utm"), "s", CTX)
    breakages = {
        ITEM_SCHEMA: lambda it: it.update(stac_version="1.0.0"),
        stac.EXTENSIONS["classification"]: lambda it: it["assets"]["mask"][
            "classification:classes"
        ][0].update(name="not a name"),
        stac.EXTENSIONS["proj"]: lambda it: it["properties"].update({"proj:shape": [1]}),
        stac.EXTENSIONS["file"]: lambda it: it["assets"]["mask"].update({"file:checksum": "XY"}),
        stac.EXTENSIONS["processing"]: lambda it: it["properties"].update(
            {"processing:datetime": "2026-12-03T15:00:00+01:00"}
        ),
        stac.EXTENSIONS["raster"]: lambda it: it["assets"]["mask"]["bands"][0].update(
            {"raster:sampling": "pixel"}
        ),
    }
    for url, breakage in breakages.items():
        item = json.loads(json.dumps(good))
        breakage(item)
        with pytest.raises(AssertionError):
            validate(item, url, registry)


def test_assets_media_types_roles_and_file_fields(tmp_path: Path) -> None:
    folder = make_scene(tmp_path / "s", "utm")
    item = stac.scene_item(folder, "s", CTX)
    assets = item["assets"]
    assert set(assets) == {
        "mask", "confidence", "zarr", "polygons", "areas", "zones", "zones_vector", "preview",
        "style", "confidence_style",
    }  # fmt: skip
    expected = {
        "mask": ("./mask.tif", stac.COG, ["data"]),
        "confidence": ("./confidence.tif", stac.COG, ["data"]),
        "zarr": ("./pred.zarr", "application/vnd+zarr", ["data"]),
        "polygons": ("./polygons.gpkg", "application/geopackage+sqlite3", ["data"]),
        "areas": ("./areas.csv", "text/csv", ["data"]),
        "zones": ("./zones.csv", "text/csv", ["data"]),
        "zones_vector": ("./zones.gpkg", "application/geopackage+sqlite3", ["data"]),
        "preview": ("./preview.png", "image/png", ["overview"]),
        "style": ("./mask.qml", "application/xml", ["metadata"]),
    }
    for key, (href, media_type, roles) in expected.items():
        assert (assets[key]["href"], assets[key]["type"], assets[key]["roles"]) == (
            href,
            media_type,
            roles,
        )
    assert stac.COG == "image/tiff; application=geotiff; profile=cloud-optimized"
    for key, asset in assets.items():
        if key == "zarr":
            assert not any(k.startswith("file:") for k in asset)
            continue
        data = (folder / asset["href"][2:]).read_bytes()
        assert asset["file:size"] == len(data)
        assert asset["file:checksum"] == "1220" + hashlib.sha256(data).hexdigest()
    assert assets["confidence"]["bands"][0]["unit"] == "%"
    assert "classification:classes" not in assets["confidence"]


def test_only_present_files_become_assets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = make_scene(tmp_path / "s", "utm", products=False)
    monkeypatch.setattr(stac, "CHECKSUM_MAX_BYTES", 100)  # mask.tif is larger: no checksum
    item = stac.scene_item(folder, "s", CTX)
    assert set(item["assets"]) == {"mask", "zarr", "areas"}
    assert "file:checksum" not in item["assets"]["mask"]
    assert item["assets"]["mask"]["file:size"] == (folder / "mask.tif").stat().st_size
    assert "file:checksum" in item["assets"]["areas"]


def test_missing_mask_is_an_output_error(tmp_path: Path) -> None:
    (tmp_path / "s").mkdir()
    with pytest.raises(OutputError, match="mask.tif"):
        stac.scene_item(tmp_path / "s", "s", CTX)
    with pytest.raises(ValueError, match="non-empty id"):
        stac.scene_item(make_scene(tmp_path / "t", "utm"), "", CTX)


def test_classification_classes_equal_the_model_classes(tmp_path: Path, registry: Registry) -> None:
    folder = make_scene(tmp_path / "s", "utm")
    item = pystac.Item.from_file(str(stac.write_scene_item(folder, "s", CTX)))
    classes = item.assets["mask"].extra_fields["classification:classes"]
    got = [(c["value"], c["title"], c["color_hint"]) for c in classes]
    want = [(c.id, c.name, "{:02X}{:02X}{:02X}".format(*c.color)) for c in CLASSES]
    assert got == want
    assert all(re.fullmatch(r"[0-9A-Za-z_-]+", c["name"]) for c in classes)
    assert [c["name"] for c in classes] == ["background", "batiment_toit", "water"]
    from pystac.extensions.classification import ClassificationExtension

    ext = ClassificationExtension.ext(item.assets["mask"])
    assert [(c.value, c.color_hint) for c in ext.classes or []] == [(v, h) for v, _, h in want]


def test_class_names_are_valid_and_unique() -> None:
    classes = [
        ClassInfo(0, "", (0, 0, 0)),
        ClassInfo(1, "a b", (1, 2, 3)),
        ClassInfo(2, "a/b", (9, 9, 9)),
    ]
    out = stac.classification_classes(classes)
    assert [c["name"] for c in out] == ["class_0", "a_b", "a_b_2"]
    assert "description" not in out[0] and out[2]["color_hint"] == "090909"


def test_datetime_sources_in_order() -> None:
    def dt(**kw: str) -> tuple[str, str]:
        item = stac.item_datetime(stac.ItemContext(CLASSES, "m", "0" * 64, **kw))
        return item

    run = "2026-12-03T14:00:00Z"
    assert dt(run_time=run) == (run, "run time")
    assert dt(run_time=run, scene_datetime="2025-06-01T10:20:30") == (
        "2025-06-01T10:20:30Z",
        "scene metadata",
    )
    assert dt(
        run_time=run,
        scene_datetime="2025-06-01T10:20:30",
        source_datetime="2024-05-01T12:00:00+02:00",
    ) == ("2024-05-01T10:00:00Z", "input item")
    assert dt(run_time=run, scene_datetime="not a date") == (run, "run time")
    assert stac.rfc3339("2024-05-01T12:00:00.250Z") == "2024-05-01T12:00:00.25Z"
    assert stac.rfc3339("2024-05-01") == "2024-05-01T00:00:00Z"
    with pytest.raises(ValueError, match="run_time"):
        dt(run_time="yesterday")


def test_item_properties_links_and_processing(tmp_path: Path, registry: Registry) -> None:
    folder = make_scene(tmp_path / "s", "utm")
    ctx = stac.ItemContext(
        CLASSES, "roofs.tsm", "cd" * 32, "2026-12-03T14:00:00Z",
        source_datetime="2024-05-01T10:00:00Z", source_href="https://example.com/stac/a.json",
    )  # fmt: skip
    item = stac.scene_item(folder, "s", ctx)
    validate_item(item, registry)
    props = item["properties"]
    assert props["datetime"] == "2024-05-01T10:00:00Z"
    assert props["tilesegd:datetime_source"] == "input item"
    assert props["processing:software"] == {"tilesegd": stac.__version__}
    assert (props["tilesegd:model"], props["tilesegd:model_sha256"]) == ("roofs.tsm", "cd" * 32)
    links = {(lk["rel"], lk["href"]) for lk in item["links"]}
    assert links == {
        ("root", "../catalog.json"),
        ("parent", "../catalog.json"),
        ("derived_from", "https://example.com/stac/a.json"),
    }
    assert not [
        lk for lk in stac.scene_item(folder, "s", CTX)["links"] if lk["rel"] == "derived_from"
    ]


def test_crs_without_code_gets_wkt2(tmp_path: Path, registry: Registry) -> None:
    local = "+proj=tmerc +lat_0=0 +lon_0=15.5 +k=0.9996 +x_0=500000 +y_0=0 +ellps=GRS80 +units=m"
    folder = tmp_path / "s"
    folder.mkdir()
    make_raster(folder / "mask.tif", _mask_data(20, 30), crs=local, nodata=255)
    item = stac.scene_item(folder, "s", CTX)
    validate_item(item, registry)
    props = item["properties"]
    assert props["proj:code"] is None
    assert pyproj.CRS.from_wkt(props["proj:wkt2"]).equals(pyproj.CRS.from_proj4(local))
    assert -180 <= item["bbox"][0] < item["bbox"][2] <= 180


# ----------------------------------------------------------------------------- geometry


def test_bbox_contains_the_corners_transformed_with_pyproj(tmp_path: Path) -> None:
    folder = make_scene(tmp_path / "s", "utm")
    item = stac.scene_item(folder, "s", CTX)
    west, south, east, north = item["bbox"]
    with rasterio.open(folder / "mask.tif") as src:
        corners = [src.transform * (c, r) for c in (0, src.width) for r in (0, src.height)]
    to_wgs84 = pyproj.Transformer.from_crs("EPSG:32633", "EPSG:4326", always_xy=True)
    eps = 1e-9
    for x, y in corners:
        lon, lat = to_wgs84.transform(x, y)
        assert west - eps <= lon <= east + eps and south - eps <= lat <= north + eps
    assert list(shape(item["geometry"]).bounds) == item["bbox"]
    assert shape(item["geometry"]).exterior.is_ccw


def _edge_centres(transform: Affine, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """Map coordinates of the centres of every pixel on the raster's edge."""
    cols = np.arange(width) + 0.5
    rows = np.arange(height) + 0.5
    c = np.concatenate([cols, cols, np.full(height, 0.5), np.full(height, width - 0.5)])
    r = np.concatenate([np.full(width, 0.5), np.full(width, height - 0.5), rows, rows])
    a, b, xoff, d, e, yoff = tuple(transform)[:6]
    return a * c + b * r + xoff, d * c + e * r + yoff


@settings(max_examples=examples(25), deadline=None)
@example(zone=60, south=False, pixel=30.0, width=1500, height=1500, fx=1.0, fy=1.0)
@example(zone=1, south=True, pixel=0.05, width=1500, height=7, fx=0.0, fy=0.0)
@example(zone=33, south=False, pixel=7.3, width=1, height=1, fx=0.5, fy=0.0)
@given(
    zone=st.integers(1, 60),
    south=st.booleans(),
    pixel=st.floats(0.05, 30.0),
    width=st.integers(1, 1500),
    height=st.integers(1, 1500),
    fx=st.floats(0.0, 1.0),
    fy=st.floats(0.0, 1.0),
)
def test_footprint_contains_every_edge_pixel_centre(
    tmp_path_factory: pytest.TempPathFactory,
    zone: int,
    south: bool,
    pixel: float,
    width: int,
    height: int,
    fx: float,
    fy: float,
) -> None:
    epsg = (32700 if south else 32600) + zone
    # within 100 km of the central meridian, |latitude| <= ~63 degrees: no antimeridian
    left = 400000.0 + fx * (200000.0 - width * pixel)
    low, high = (3_000_000.0, 10_000_000.0) if south else (0.0, 7_000_000.0)
    top = low + height * pixel + fy * (high - low - height * pixel)
    transform = from_origin(left, top, pixel, pixel)
    folder = tmp_path_factory.mktemp("fp")
    data = np.zeros((height, width), np.uint8)
    make_raster(
        folder / "mask.tif",
        data,
        crs=f"EPSG:{epsg}",
        transform=transform,
        nodata=255,
        compress="deflate",
    )
    item = stac.scene_item(folder, "p", CTX)
    geom = shape(item["geometry"])
    assert geom.geom_type == "Polygon" and geom.is_valid
    assert list(geom.bounds) == item["bbox"]
    x, y = _edge_centres(transform, width, height)
    lon, lat = pyproj.Transformer.from_crs(epsg, 4326, always_xy=True).transform(x, y)
    inside = shapely.contains_xy(geom.buffer(1e-9), lon, lat)
    assert inside.all(), f"{(~inside).sum()} edge pixel centres outside the footprint"


def test_antimeridian_footprint_has_a_sane_bbox(tmp_path: Path, registry: Registry) -> None:
    folder = tmp_path / "s"
    folder.mkdir()
    transform = from_origin(720000.0, 5000000.0, 1000.0, 1000.0)  # UTM 60N across 180 E
    make_raster(
        folder / "mask.tif", _mask_data(40, 50), crs="EPSG:32660", transform=transform, nodata=255
    )
    item = stac.scene_item(folder, "s", CTX)
    validate_item(item, registry)
    west, south, east, north = item["bbox"]
    assert item["geometry"]["type"] == "MultiPolygon"
    assert 179 < west < 180 and -180 < east < -179 and 44 < south < north < 46
    to_wgs84 = pyproj.Transformer.from_crs(32660, 4326, always_xy=True)
    for c, r in ((0, 0), (50, 0), (0, 40), (50, 40)):
        lon, lat = to_wgs84.transform(*(transform * (c, r)))
        assert lon >= west - 1e-9 or lon <= east + 1e-9
        assert south - 1e-9 <= lat <= north + 1e-9


# ----------------------------------------------------------------------------- consumers


def _run_folder(tmp_path: Path) -> tuple[Path, list[str]]:
    out = tmp_path / "run"
    names = ["b scene", "a-utm", "c-geo"]
    for name, kind in zip(names, ["plain", "utm", "geo"], strict=True):
        stac.write_scene_item(make_scene(out / name, kind), name, CTX)
    catalog = stac.run_catalog([*names, "a-utm"], "tilesegd run", "roofs on a test run")
    stac.write_json(out / stac.CATALOG_JSON, catalog)
    return out, names


def test_catalog_validates_and_pystac_reads_every_item(tmp_path: Path, registry: Registry) -> None:
    out, names = _run_folder(tmp_path)
    doc = json.loads((out / "catalog.json").read_text())
    validate(doc, CATALOG_SCHEMA, registry)
    assert doc["id"] == stac.CATALOG_ID and doc["type"] == "Catalog"
    hrefs = [lk["href"] for lk in doc["links"] if lk["rel"] == "item"]
    assert hrefs == ["./a-utm/item.json", "./b scene/item.json", "./c-geo/item.json"]
    assert [lk["href"] for lk in doc["links"] if lk["rel"] == "root"] == ["./catalog.json"]
    catalog = pystac.Catalog.from_file(str(out / "catalog.json"))
    items = {it.id: it for it in catalog.get_items(recursive=True)}
    assert set(items) == set(names)
    for name, it in items.items():
        assert Path(it.assets["mask"].get_absolute_href() or "") == out / name / "mask.tif"
        assert it.get_root() is not None
        again = pystac.Item.from_dict(json.loads((out / name / "item.json").read_text()))
        assert again.id == name and set(again.assets) == set(it.assets)
    empty = stac.run_catalog([], "t", "")
    validate(empty, CATALOG_SCHEMA, registry)
    assert [lk["rel"] for lk in empty["links"]] == ["root"]


@pytest.mark.parametrize("kind", ["utm", "geo"])
def test_odc_stac_loads_the_mask_as_rasterio_reads_it(tmp_path: Path, kind: str) -> None:
    odc_stac = pytest.importorskip("odc.stac")
    folder = make_scene(tmp_path / "s", kind)
    item = pystac.Item.from_file(str(stac.write_scene_item(folder, "s", CTX)))
    # relative asset hrefs: pystac resolves them against the item.json it read
    ds = odc_stac.load([item], bands=["mask"], chunks=None)
    with rasterio.open(folder / "mask.tif") as src:
        want, crs, transform = src.read(1), src.crs, src.transform
    got = ds["mask"].isel(time=0)
    assert got.dtype == np.uint8 and got.attrs.get("nodata") == 255
    np.testing.assert_array_equal(got.values, want)
    gbox = ds.odc.geobox
    assert CRS.from_user_input(str(gbox.crs)) == crs
    assert all(
        math.isclose(a, b, abs_tol=1e-9)
        for a, b in zip(gbox.affine[:6], transform[:6], strict=True)
    )
    assert gbox.shape == want.shape


def test_write_is_atomic_and_leaves_no_temporary(tmp_path: Path) -> None:
    folder = make_scene(tmp_path / "s", "geo")
    (folder / "item.json").write_text("old")
    path = stac.write_scene_item(folder, "s", CTX)
    assert json.loads(path.read_text()) == stac.scene_item(folder, "s", CTX)
    assert sorted(p.name for p in folder.iterdir() if p.name.startswith(".")) == []
    assert os.stat(path).st_mode & 0o777 == file_mode()  # the umask's, not mkstemp's 0600


def test_item_hrefs_escape_only_what_changes_their_meaning() -> None:
    assert stac.href_segment("b scene") == "b scene"
    assert stac.href_segment("été #1?50%") == "été %231%3F50%25"
    links = stac.run_catalog(["x#1"], "t", "d")["links"]
    assert links[1]["href"] == "./x%231/item.json"

"""STAC documents as --input: Items, ItemCollections and Catalogs, local and over a loopback
HTTP server, relative and absolute hrefs, the choice of asset, and the errors."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner
from conftest import make_raster, smooth_image
from hypothesis import given
from hypothesis import strategies as st

from tilesegd.batch.discovery import unique_names
from tilesegd.cli.main import cli
from tilesegd.errors import InputError
from tilesegd.stac.inputs import choose_asset, stac_scenes

TIFF = "image/tiff; application=geotiff; profile=cloud-optimized"


def run(*args: str) -> tuple[int, str]:
    r = CliRunner().invoke(cli, ["run", "--preview-size", "0", *args], catch_exceptions=False)
    return r.exit_code, r.output


def item(item_id: str, assets: dict[str, dict], when: str = "2024-06-01T10:00:00Z") -> dict:
    return {"type": "Feature", "stac_version": "1.1.0", "id": item_id, "geometry": None,
            "properties": {"datetime": when}, "links": [], "assets": assets}  # fmt: skip


def image(href: str, roles=("data",), media: str = TIFF) -> dict:
    return {"href": href, "type": media, "roles": list(roles)}


def write(path: Path, doc: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))
    return path


@pytest.fixture
def rasters(tmp_path: Path) -> dict[str, Path]:
    """Two small scenes with different content under tmp/data/."""
    (tmp_path / "data" / "sub").mkdir(parents=True)
    return {
        "a": make_raster(tmp_path / "data" / "a.tif", smooth_image(70, 90, seed=1)),
        "b": make_raster(tmp_path / "data" / "sub" / "b.tif", smooth_image(64, 50, seed=2)),
    }


def mask(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read(1)


def test_catalog_collection_and_item_give_one_scene_per_item_named_by_its_id(
    tmp_path: Path, rasters, tiny_model
) -> None:
    """A catalog with a nested child catalog (relative hrefs everywhere), an ItemCollection
    with relative asset hrefs (resolved against the collection's file), and an Item with an
    absolute href: the masks equal those of the rasters given directly."""
    cat = tmp_path / "stac"
    write(cat / "catalog.json", {"type": "Catalog", "stac_version": "1.1.0", "id": "root",
          "description": "d", "links": [{"rel": "child", "href": "./sub/catalog.json"}]})  # fmt: skip
    write(cat / "sub" / "catalog.json", {"type": "Catalog", "stac_version": "1.1.0", "id": "s",
          "description": "d", "links": [{"rel": "item", "href": "./it/one.json"}]})  # fmt: skip
    write(cat / "sub" / "it" / "one.json", item("one", {"image": image("../../../data/a.tif")}))
    coll = write(tmp_path / "coll" / "items.json", {"type": "FeatureCollection", "features": [
        item("two", {"visual": image("../data/sub/b.tif", roles=("visual",))})]})  # fmt: skip
    lone = write(tmp_path / "lone.json", item("one", {"image": image(str(rasters["b"]))}))
    model = tiny_model()
    code, out = run("-i", str(cat / "catalog.json"), "-i", str(coll), "-i", str(lone),
                    "-m", str(model), "-o", str(tmp_path / "out"))  # fmt: skip
    assert code == 0, out
    doc = json.loads((tmp_path / "out" / "run.json").read_text())
    assert sorted(doc["scenes"]) == ["one", "one__2", "two"]
    code, out = run("-i", str(rasters["a"]), "-i", str(rasters["b"]), "-m", str(model),
                    "-o", str(tmp_path / "plain"))  # fmt: skip
    assert code == 0, out
    plain = tmp_path / "plain"
    assert np.array_equal(mask(tmp_path / "out/one/mask.tif"), mask(plain / "a/mask.tif"))
    assert np.array_equal(mask(tmp_path / "out/one__2/mask.tif"), mask(plain / "b/mask.tif"))
    assert np.array_equal(mask(tmp_path / "out/two/mask.tif"), mask(plain / "b/mask.tif"))


def test_documents_and_rasters_over_http(tmp_path: Path, rasters, tiny_model, range_server) -> None:
    """A catalog served by a loopback HTTP server: its children, items and relative asset
    hrefs are fetched from the server, the rasters read by range requests."""
    base = uuid.uuid4().hex
    range_server.add(f"{base}/img/a.tif", rasters["a"].read_bytes())
    range_server.add(f"{base}/catalog.json", json.dumps({"type": "Catalog",
        "stac_version": "1.1.0", "id": "r", "description": "d",
        "links": [{"rel": "item", "href": "items/a.json"}]}).encode())  # fmt: skip
    range_server.add(f"{base}/items/a.json",
                     json.dumps(item("http-a", {"image": image("../img/a.tif")})).encode())  # fmt: skip
    found = stac_scenes([range_server.url(f"{base}/catalog.json")])
    assert [(s.item_id, s.asset) for s in found] == [("http-a", "image")]
    assert found[0].location.url == range_server.url(f"{base}/img/a.tif")
    assert found[0].item_href == range_server.url(f"{base}/items/a.json")
    model = tiny_model()
    code, out = run("-i", range_server.url(f"{base}/catalog.json"), "-m", str(model),
                    "-o", str(tmp_path / "out"))  # fmt: skip
    assert code == 0, out
    code, out = run("-i", str(rasters["a"]), "-m", str(model), "-o", str(tmp_path / "plain"))
    assert np.array_equal(
        mask(tmp_path / "out/http-a/mask.tif"), mask(tmp_path / "plain/a/mask.tif")
    )
    assert range_server.requests(f"{base}/img/a.tif")  # read from the server, not elsewhere


class FakeItem:
    def __init__(self, assets: dict[str, dict]) -> None:
        import pystac

        self.id = "it"
        self.assets = {k: pystac.Asset(v["href"], media_type=v.get("type"), roles=v.get("roles"))
                       for k, v in assets.items()}  # fmt: skip


def test_the_asset_chosen_by_default_explicitly_and_the_errors() -> None:
    both = FakeItem({"visual": image("v.tif", roles=("visual",)), "b04": image("b04.tif")})
    assert choose_asset(both, None) == "visual"
    assert choose_asset(both, "b04") == "b04"
    one_data = FakeItem({"thumb": image("t.png", ("thumbnail",), "image/png"),
                         "analytic": image("a.tif"), "meta": image("m.xml", ("metadata",), "text/xml")})  # fmt: skip
    assert choose_asset(one_data, None) == "analytic"
    two_data = FakeItem({"b02": image("b02.tif"), "b03": image("b03.tif")})
    with pytest.raises(InputError, match=r"several data GeoTIFF.*--asset.*b02 .*b03"):
        choose_asset(two_data, None)
    no_tiff = FakeItem({"thumb": image("t.png", ("data",), "image/png")})
    with pytest.raises(InputError, match=r"no 'visual' asset and no data GeoTIFF.*thumb"):
        choose_asset(no_tiff, None)
    with pytest.raises(InputError, match=r"no asset 'red'.*b02.*b03"):
        choose_asset(two_data, "red")


def test_a_wrong_asset_is_an_input_error_before_any_scene(
    tmp_path: Path, rasters, tiny_model
) -> None:
    doc = write(tmp_path / "i.json", item("x", {"image": image(str(rasters["a"]))}))
    code, out = run(
        "-i", str(doc), "--asset", "red", "-m", str(tiny_model()), "-o", str(tmp_path / "o")
    )
    assert code == 1
    assert "no asset 'red'" in out and "image (image/tiff" in out and "Traceback" not in out
    assert not (tmp_path / "o" / "run.json").exists()


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("{not json", "not a JSON document"),
        ('{"type": "Topology"}', "not a STAC document"),
        ('{"type": "Catalog", "stac_version": "1.1.0", "id": "c", "description": "d", "links": []}',
         "links to no Items"),
        ('{"type": "Feature", "stac_version": "1.1.0", "id": "x", "properties": {}, "links": []}',
         "invalid STAC document"),
    ],
)  # fmt: skip
def test_unusable_documents_are_named(tmp_path: Path, content: str, expected: str) -> None:
    path = tmp_path / "doc.json"
    path.write_text(content)
    with pytest.raises(InputError, match=expected) as info:
        stac_scenes([str(path)])
    assert str(path) in str(info.value)


def test_missing_documents_local_and_remote(tmp_path: Path, range_server) -> None:
    with pytest.raises(InputError, match="no such STAC document"):
        stac_scenes([str(tmp_path / "gone.json")])
    url = range_server.url(f"{uuid.uuid4().hex}/gone.json")
    with pytest.raises(InputError, match="no such object") as info:
        stac_scenes([url])
    assert url in str(info.value)


@given(st.lists(st.sampled_from(["a", "b", "a__2", "a__3", "c__2"]), max_size=12))
def test_unique_names_are_unique_and_keep_unrepeated_bases(bases: list[str]) -> None:
    names = unique_names(bases)
    assert len(names) == len(bases) and len(set(names)) == len(names)
    for base, name in zip(bases, names, strict=True):
        assert name == base or name.startswith(base + "__")
    first = {}
    for base, name in zip(bases, names, strict=True):
        first.setdefault(base, name)
    assert all(first[b] == b for b in first)  # the first of each base keeps its name


def test_an_item_collection_on_s3_with_relative_hrefs(
    s3, tmp_path: Path, rasters, tiny_model
) -> None:
    """STAC documents on object storage are read through the same store settings as scenes;
    a relative href becomes an s3:// location read by range requests."""
    s3.put("stac/img/a.tif", rasters["a"])
    coll = {"type": "FeatureCollection", "features": [item("s3-a", {"image": image("img/a.tif")})]}
    s3.put("stac/items.json", json.dumps(coll).encode())
    found = stac_scenes([s3.url("stac/items.json")])
    assert [(s.item_id, s.location.url) for s in found] == [("s3-a", s3.url("stac/img/a.tif"))]
    model = tiny_model()
    code, out = run("-i", s3.url("stac/items.json"), "-m", str(model), "-o", str(tmp_path / "out"))
    assert code == 0, out
    run("-i", str(rasters["a"]), "-m", str(model), "-o", str(tmp_path / "plain"))
    assert np.array_equal(mask(tmp_path / "out/s3-a/mask.tif"), mask(tmp_path / "plain/a/mask.tif"))
    with pytest.raises(InputError, match="no such object"):
        stac_scenes([s3.url("stac/missing.json")])

"""--stac-api: an item search against a loopback STAC API with two result pages, the saved
search.json a rerun resumes from, and the errors of a non-conforming API and an empty search."""

from __future__ import annotations

import json
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from conftest import make_raster, smooth_image

from tilesegd.cli.main import cli

ITEM_SEARCH = "https://api.stacspec.org/v1.0.0/item-search"
CORE = "https://api.stacspec.org/v1.0.0/core"


def run(*args: str) -> tuple[int, str]:
    r = CliRunner().invoke(cli, ["run", "--preview-size", "0", *args], catch_exceptions=False)
    return r.exit_code, r.output


class StacApi:
    """A loopback STAC API: a landing page and POST /search answering ``pages`` (lists of
    Items) one after the other through ``next`` links; every search body is logged."""

    def __init__(self, pages: list[list[dict]], conforms: bool = True) -> None:
        self.pages, self.conforms, self.bodies = pages, conforms, []
        self.failing = False
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self.handler())
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    @property
    def root(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/"

    def landing(self) -> dict[str, Any]:
        links = [{"rel": "self", "href": self.root, "type": "application/json"},
                 {"rel": "root", "href": self.root, "type": "application/json"}]  # fmt: skip
        if self.conforms:
            links.append({"rel": "search", "href": self.root + "search", "method": "POST",
                          "type": "application/geo+json"})  # fmt: skip
        return {"type": "Catalog", "id": "api", "stac_version": "1.1.0", "description": "test",
                "conformsTo": [CORE] + [ITEM_SEARCH] * self.conforms, "links": links}  # fmt: skip

    def page(self, body: dict[str, Any]) -> dict[str, Any]:
        n = int(body.get("token") or 0)
        links = []
        if n + 1 < len(self.pages):
            links.append({"rel": "next", "href": self.root + "search", "method": "POST",
                          "body": {**body, "token": str(n + 1)}})  # fmt: skip
        features = self.pages[n] if self.pages else []
        return {"type": "FeatureCollection", "features": features, "links": links}

    def handler(self):  # noqa: ANN201
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # noqa: ANN002
                pass

            def reply(self, status: int, doc: Any) -> None:
                data = json.dumps(doc).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:  # noqa: N802
                if api.failing:
                    return self.reply(503, {"code": "down"})
                return self.reply(200, api.landing()) if self.path.split("?")[0] == "/" else (
                    self.reply(404, {"code": "NotFound"}))  # fmt: skip

            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])) or b"{}")
                api.bodies.append(body)
                if api.failing:
                    return self.reply(503, {"code": "down"})
                return self.reply(200, api.page(body))

        return Handler

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def search_item(item_id: str, href: str) -> dict[str, Any]:
    return {"type": "Feature", "stac_version": "1.1.0", "id": item_id, "collection": "c1",
            "geometry": {"type": "Point", "coordinates": [15.0, 42.0]}, "bbox": [15, 42, 15, 42],
            "properties": {"datetime": "2024-05-02T09:30:00Z"},
            "links": [{"rel": "self", "href": f"http://stac.example/c1/items/{item_id}"}],
            "assets": {"visual": {"href": href, "type": "image/tiff; application=geotiff",
                                  "roles": ["visual"]}}}  # fmt: skip


@pytest.fixture
def served(tmp_path: Path, range_server) -> list[str]:
    base = uuid.uuid4().hex
    return [
        range_server.add(f"{base}/{n}.tif", make_raster(tmp_path / f"{n}.tif",
                                                       smooth_image(48 + 8 * i, 40, seed=i)).read_bytes())
        for i, n in enumerate(["s1", "s2", "s3"])
    ]  # fmt: skip


def test_a_search_over_two_pages_is_segmented_saved_and_resumed(
    tmp_path: Path, served, tiny_model
) -> None:
    api = StacApi([[search_item("i1", served[0]), search_item("i2", served[1])],
                   [search_item("i3", served[2])]])  # fmt: skip
    out, model = tmp_path / "out", str(tiny_model())
    search = ["--stac-api", api.root, "--collections", "c1", "--bbox", "14,41,16,43",
              "--datetime", "2024-05-01/2024-05-31"]  # fmt: skip
    try:
        code, text = run(*search, "-m", model, "-o", str(out))
        assert code == 0, text
        assert sorted(json.loads((out / "run.json").read_text())["scenes"]) == ["i1", "i2", "i3"]
        first = api.bodies[0]
        assert first["collections"] == ["c1"] and first["bbox"] == [14, 41, 16, 43]
        assert first["datetime"].startswith("2024-05-01")
        assert len(api.bodies) == 2  # both pages
        saved = json.loads((out / "search.json").read_text())
        assert [f["id"] for f in saved["features"]] == ["i1", "i2", "i3"]
        assert saved["tilesegd:search"]["collections"] == ["c1"]
        api.failing, seen = True, len(api.bodies)  # the API is down: the saved search serves
        code, text = run(*search, "-m", model, "-o", str(out))
        assert code == 0, text
        assert len(api.bodies) == seen
        doc = json.loads((out / "run.json").read_text())
        assert sorted(doc["scenes"]) == ["i1", "i2", "i3"]
        code, text = run(*search[:-2], "--datetime", "2023", "-m", model, "-o", str(out))
        # other parameters: searched again, and the API (still down) is said to be the cause
        assert code == 1 and "item search failed" in text and api.root in text
    finally:
        api.close()


def test_max_items_and_the_aoi_as_bbox(tmp_path: Path, served, tiny_model) -> None:
    from conftest import write_polygons
    from shapely.geometry import box

    aoi = write_polygons(tmp_path / "aoi.gpkg", [box(500000, 4649900, 500100, 4650000)])
    api = StacApi([[search_item("i1", served[0]), search_item("i2", served[1])]])
    try:
        code, text = run("--stac-api", api.root, "--collections", "c1", "--max-items", "1",
                         "--aoi", str(aoi), "-m", str(tiny_model()), "-o", str(tmp_path / "o"))  # fmt: skip
        assert code == 0, text
        assert list(json.loads((tmp_path / "o" / "run.json").read_text())["scenes"]) == ["i1"]
        w, s, e, n = api.bodies[0]["bbox"]  # the AOI's UTM 33N box in degrees
        assert 14.9 < w < e < 15.1 and 41.9 < s < n < 42.1
    finally:
        api.close()


@pytest.mark.parametrize(
    ("api_args", "message"),
    [({"pages": [[]]}, "matched no Items"), ({"pages": [], "conforms": False}, "not a STAC API with item search")],
)  # fmt: skip
def test_an_empty_search_and_a_non_conforming_api(
    tmp_path: Path, tiny_model, api_args, message
) -> None:
    api = StacApi(**api_args)
    try:
        code, text = run("--stac-api", api.root, "--collections", "c1", "-m", str(tiny_model()),
                         "-o", str(tmp_path / "o"))  # fmt: skip
        assert code == 1 and message in text and api.root in text and "Traceback" not in text
    finally:
        api.close()


def test_search_options_are_checked(tmp_path: Path, tiny_model) -> None:
    code, text = run(
        "--stac-api", "http://127.0.0.1:9/", "-m", str(tiny_model()), "-o", str(tmp_path / "o")
    )
    assert code == 1 and "--collections" in text
    code, text = run("--stac-api", "http://127.0.0.1:9/", "--collections", "c", "--query", "{x",
                     "-m", str(tiny_model()), "-o", str(tmp_path / "o"))  # fmt: skip
    assert code == 1 and "--query: not JSON" in text


def test_an_api_token_never_reaches_the_outputs(tmp_path: Path, served, tiny_model) -> None:
    api = StacApi([[search_item("i1", served[0])]])
    secret = "SeCrEtToKeN0123456789"
    out = tmp_path / "out"
    search = ["--stac-api", f"{api.root}?access_token={secret}", "--collections", "c1"]
    try:
        code, text = run(*search, "-m", str(tiny_model()), "-o", str(out))
        assert code == 0, text
        api.failing = True
        code, text = run(*search, "-m", str(tiny_model()), "-o", str(out))
        assert code == 0, text  # the saved search matched though its URL is masked
    finally:
        api.close()
    written = [p.read_text() for p in out.rglob("*.json")]
    assert written and not any(secret in t for t in written)
    assert secret not in text


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"collections": []}, "needs --collections"),
        ({"bbox": [1, 50, 2, 40]}, "S <= N"),
        ({"bbox": [1, 2, 3]}, "W,S,E,N"),
        ({"query": "[1, 2]"}, "a JSON object"),
        ({"max_items": 0}, "positive"),
    ],
)  # fmt: skip
def test_search_parameters_refuse_what_no_api_could_answer(kwargs, message) -> None:
    from tilesegd.errors import ConfigError
    from tilesegd.stac.search import search_parameters

    args = {"collections": ["c"], **kwargs}
    with pytest.raises(ConfigError, match=message):
        search_parameters("http://api/", args.pop("collections"), **args)


def test_an_antimeridian_bbox_and_a_query_object_are_kept() -> None:
    from tilesegd.stac.search import search_parameters

    p = search_parameters("http://api/", ["c"], bbox=[179, -10, -179, 10],
                          query='{"eo:cloud_cover": {"lt": 20}}')  # fmt: skip
    assert p["bbox"] == [179, -10, -179, 10] and p["query"] == {"eo:cloud_cover": {"lt": 20}}

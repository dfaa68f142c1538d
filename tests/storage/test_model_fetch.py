"""Model files by URL: fetched once into the cache keyed by their SHA-256, never again while the
cache holds them (requests counted on a loopback HTTP server), pinned by --model-sha256."""

from __future__ import annotations

import hashlib
import json
import uuid
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import make_raster

from tilesegd.cli.main import cli
from tilesegd.errors import EXIT_MODEL, ModelFileError
from tilesegd.storage.fetch import cache_dir, fetch_model

SIGNATURE = "MoDeLSiGnAtUrE987654321"


def run(*args: str) -> tuple[int, str]:
    r = CliRunner().invoke(cli, ["run", *args], catch_exceptions=False)
    return r.exit_code, r.output


@pytest.fixture
def small_scene(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    return make_raster(tmp_path / "s.tif", rng.integers(0, 255, (3, 24, 31), dtype=np.uint8))


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TILESEGD_MODEL_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def full_gets(server, name: str) -> list:
    """GETs of the whole file (not the one-byte probe)."""
    return [r for r in server.requests(name) if r[0] == "GET" and r[2] != "bytes=0-0"]


def test_a_model_url_is_fetched_once(range_server, cache, small_scene, tiny_model, tmp_path):
    model = tiny_model()
    name = f"{uuid.uuid4().hex}/net.ts"
    url = range_server.add(name, model.read_bytes()) + f"?X-Amz-Signature={SIGNATURE}"

    code, out = run("-i", str(small_scene), "-m", url, "-o", str(tmp_path / "o1"))
    assert code == 0, out
    assert len(full_gets(range_server, name)) == 1
    cached = cache / sha(model) / "net.ts"
    assert cached.read_bytes() == model.read_bytes()
    doc = json.loads((tmp_path / "o1" / "run.json").read_text())
    assert doc["model"]["sha256"] == sha(model)
    assert doc["model"]["path"] == str(cached.resolve())

    before = len(range_server.requests(name))
    code, out = run("-i", str(small_scene), "-m", url, "-o", str(tmp_path / "o2"))
    assert code == 0, out
    assert len(full_gets(range_server, name)) == 1  # not fetched again...
    assert len(range_server.requests(name)) == before + 1  # ...one byte asked, to compare ETags

    before = len(range_server.requests(name))
    pinned = ("--model-sha256", sha(model))
    code, out = run("-i", str(small_scene), "-m", url, *pinned, "-o", str(tmp_path / "o3"))
    assert code == 0, out
    assert len(range_server.requests(name)) == before  # pinned: no request at all

    text = out + "".join(p.read_text() for p in (tmp_path / "o1").glob("*.json"))
    text += "".join(p.read_text() for p in cache.rglob("*.json"))
    assert SIGNATURE not in text


def test_an_s3_model_is_cached_and_pinned(s3, small_scene, tiny_model, tmp_path) -> None:
    model = tiny_model()
    url = s3.put("models/net.ts", model)
    pinned = ("--model-sha256", sha(model))
    code, out = run("-i", str(small_scene), "-m", url, *pinned, "-o", str(tmp_path / "a"))
    assert code == 0, out
    s3.delete("models/net.ts")
    code, out = run("-i", str(small_scene), "-m", url, *pinned, "-o", str(tmp_path / "b"))
    assert code == 0, out  # the cache holds it: the object was not asked for
    code, out = run("-i", str(small_scene), "-m", url, "-o", str(tmp_path / "c"))
    assert code == EXIT_MODEL and f"Error: {url}: no such object" in out, out


def test_a_changed_object_is_fetched_again(s3, tiny_model, tmp_path) -> None:
    first = tiny_model(num_classes=3)
    second = tiny_model(num_classes=5)
    url = s3.put("m/net.ts", first)
    assert fetch_model(url).read_bytes() == first.read_bytes()
    s3.put("m/net.ts", second)
    got = fetch_model(url)
    assert got.read_bytes() == second.read_bytes() and got.parent.name == sha(second)
    assert (cache_dir() / sha(first) / "net.ts").is_file()  # both versions stay cached


def test_a_download_with_another_hash_is_refused(s3, tiny_model, small_scene, tmp_path) -> None:
    url = s3.put("m/net.ts", tiny_model())
    code, out = run(
        "-i", str(small_scene), "-m", url, "--model-sha256", "0" * 64, "-o", str(tmp_path)
    )
    assert code == EXIT_MODEL and f"Error: {url}: SHA-256 is" in out and "pins" in out, out
    assert [p for p in cache_dir().rglob("*") if p.is_file()] == []  # nothing kept
    with pytest.raises(ModelFileError, match="pins"):
        fetch_model(url, "f" * 64)

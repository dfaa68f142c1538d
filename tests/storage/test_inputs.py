"""Inputs on a real S3 server (moto on 127.0.0.1) and behind a loopback HTTP server: listing,
scene names, and windowed reads by range requests that never fetch a scene whole."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import pytest
import rasterio
from conftest import make_raster, smooth_image
from rasterio.env import get_gdal_config
from rasterio.shutil import copy as gdal_copy

from tilesegd.batch.discovery import discover, scene_names
from tilesegd.raster.gdalenv import open_raster
from tilesegd.raster.reader import SceneSource
from tilesegd.raster.scene import open_scene
from tilesegd.raster.tiling import Win
from tilesegd.storage.urls import RemotePath


def make_cog(path: Path, height: int, width: int, *, seed: int = 0, nodata=None) -> Path:
    """A Cloud-Optimized GeoTIFF (256 px tiles, overviews) of a smooth image with noise."""
    img = smooth_image(height, width, seed=seed)
    noise = np.random.default_rng(seed).integers(0, 40, img.shape, dtype=np.uint8)
    plain = make_raster(path.with_suffix(".plain.tif"), img + noise, nodata=nodata)
    gdal_copy(plain, path, driver="COG", BLOCKSIZE=256, COMPRESS="DEFLATE")
    plain.unlink()
    return path


@pytest.fixture
def scene_file(tmp_path: Path) -> Path:
    return make_raster(tmp_path / "a.tif", smooth_image(67, 91), nodata=0)


def test_a_prefix_is_listed_like_a_local_folder(s3, scene_file: Path, tmp_path: Path) -> None:
    """Nested keys, any-case raster suffixes; other objects, hidden folders and tilesegd's own
    outputs ignored; the same scene names as the same tree on disk."""
    data = scene_file.read_bytes()
    keys = {
        "scenes/a.tif": data,
        "scenes/sub/deeper/b.TIF": data,
        "scenes/sub/c.jpg": b"not read while listing",
        "scenes/sub/a.tif": data,  # a second stem "a"
        "scenes/notes.txt": b"x",
        "scenes/a.tif.aux.xml": b"<PAMDataset/>",
        "scenes/.hidden/d.tif": data,
        "scenes/done/e/mask.tif": data,  # a finished scene's folder
        "scenes/done/e/pred.zarr/zarr.json": b"{}",
        "scenes/done/e/areas.csv": b"class",
        "elsewhere/f.tif": data,
    }
    local = tmp_path / "tree"
    for key, body in keys.items():
        s3.put(key, body)
        (local / key).parent.mkdir(parents=True, exist_ok=True)
        (local / key).write_bytes(body)
    found = discover([s3.url("scenes/")])
    assert all(isinstance(p, RemotePath) for p in found)
    assert [p.key for p in found] == [
        "scenes/a.tif",
        "scenes/sub/a.tif",
        "scenes/sub/c.jpg",
        "scenes/sub/deeper/b.TIF",
    ]
    on_disk = discover([local / "scenes"])
    assert [str(p.relative_to(local)) for p in on_disk] == [p.key for p in found]
    assert scene_names(found) == scene_names(on_disk) == ["a", "a__2", "c", "b"]
    assert discover([s3.url("scenes")]) == found  # no trailing slash: still the prefix


def test_single_objects_urls_and_vsi_paths_are_files(s3, scene_file, range_server) -> None:
    s3.put("one/a.tif", scene_file)
    s3.put("one/readme.txt", b"x")  # a file named as input is always taken (as on disk)
    url = range_server.add(f"{uuid.uuid4().hex}/h.tif", scene_file.read_bytes())
    found = discover(
        [
            s3.url("one/a.tif"),
            f"/vsis3/{s3.name}/one/a.tif",  # the same object: taken once
            s3.url("one/readme.txt"),
            url,
            "/vsicurl/" + url,  # again the same
        ]
    )
    assert [str(p) for p in found] == [s3.url("one/a.tif"), s3.url("one/readme.txt"), url]


def test_an_s3_scene_reads_as_the_local_file(s3, tmp_path: Path) -> None:
    path = make_cog(tmp_path / "cog.tif", 300, 420, nodata=0)
    scene_l = open_scene(path)
    scene_r = open_scene(s3.put("cogs/cog.tif", path))
    assert isinstance(scene_r.path, RemotePath) and scene_r.name == "cog"
    for attr in ("width", "height", "count", "dtype", "crs", "transform", "nodata", "has_mask"):
        assert getattr(scene_r, attr) == getattr(scene_l, attr), attr
    src_l, src_r = SceneSource(scene_l, (1, 2, 3)), SceneSource(scene_r, (1, 2, 3))
    try:
        for win in (Win(0, 0, 300, 420), Win(-20, 250, 90, 200), Win(100, 100, 7, 9)):
            (dl, vl), (dr, vr) = src_l.read(win), src_r.read(win)
            np.testing.assert_array_equal(dl, dr)
            np.testing.assert_array_equal(vl, vr)
    finally:
        src_l.close()
        src_r.close()


def test_an_http_cog_is_read_by_ranges_never_whole(range_server, tmp_path: Path) -> None:
    """A window of a 1024 x 1024 COG by URL: a few range requests, a small part of the file,
    no directory listing and no probing of side-car files."""
    path = make_cog(tmp_path / "big.tif", 1024, 1024, seed=3)
    name = f"{uuid.uuid4().hex}/big.tif"
    url = range_server.add(name, path.read_bytes())
    size = path.stat().st_size
    scene = open_scene(discover([url])[0])
    src = SceneSource(scene, (1, 2, 3))
    try:
        data, _ = src.read(Win(512, 512, 64, 64))
    finally:
        src.close()
    with rasterio.open(path) as ds:
        expected = ds.read(window=((512, 576), (512, 576)))
    np.testing.assert_array_equal(data, expected)
    gets = [r for r in range_server.requests(name) if r[0] == "GET"]
    assert gets and all(r[2] and r[2].startswith("bytes=") for r in gets), gets
    assert sum(r[3] for r in gets) < size / 4, (sum(r[3] for r in gets), size)
    others = [r for r in range_server.log if name.split("/")[0] in r[1] and name not in r[1]]
    assert others == []  # no .aux.xml / .ovr / .msk / directory requests


def test_a_local_scene_keeps_its_side_car_files_around_remote_opens(s3, tmp_path) -> None:
    """EMPTY_DIR is set only while a remote scene opens: afterwards a local TIFF still gets
    its georeferencing from the .tfw world file beside it."""
    plain = make_raster(tmp_path / "w.tif", smooth_image(20, 30), crs=None)
    plain.with_suffix(".tfw").write_text("2.0\n0\n0\n-2.0\n500001.0\n4650001.0\n")
    remote = s3.put("x/w2.tif", make_raster(tmp_path / "w2.tif", smooth_image(9, 9)))
    assert open_scene(remote).georeferenced
    assert get_gdal_config("GDAL_DISABLE_READDIR_ON_OPEN") is None
    with open_raster(plain) as ds:
        assert ds.transform.c == pytest.approx(500000.0)


READ_IN_THREADS = """
import sys, threading
from tilesegd.raster.reader import SceneSource
from tilesegd.raster.scene import open_scene
from tilesegd.raster.tiling import Win
out = {}
t = threading.Thread(target=lambda: out.update(scene=open_scene(sys.argv[1])))
t.start(); t.join()
def read():
    src = SceneSource(out["scene"], (1,))
    out["sum"] = int(src.read(Win(0, 0, 9, 9))[0].sum())
    src.close()
t = threading.Thread(target=read)
t.start(); t.join()
print(out["sum"])
"""


def test_worker_threads_see_the_settings_another_thread_made(s3, tmp_path) -> None:
    """As in a Dask worker, where no scene is opened on the main thread: the endpoint one
    thread configured holds for the reader threads (a fresh process: GDAL's settings from this
    one do not leak into it). rasterio's set_gdal_config is thread-local off the main thread,
    and the reader threads failed with 'Could not resolve host: <bucket>.s3...amazonaws.com'."""
    import os
    import subprocess
    import sys

    path = make_raster(tmp_path / "t.tif", smooth_image(9, 9))
    with rasterio.open(path) as ds:
        expected = int(ds.read(1).sum())
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    r = subprocess.run(
        [sys.executable, "-c", READ_IN_THREADS, s3.put("t/t.tif", path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert int(r.stdout.split()[-1]) == expected


def test_a_public_bucket_reads_without_credentials(s3, tmp_path, monkeypatch) -> None:
    """AWS_NO_SIGN_REQUEST=YES: listing (s3fs, anonymous) and reads (GDAL, unsigned) of a
    public-read object work with no credential in the environment."""
    path = make_raster(tmp_path / "p.tif", smooth_image(12, 14))
    s3.client.put_object(Bucket=s3.name, Key="pub/p.tif", Body=path.read_bytes(), ACL="public-read")
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setenv("AWS_NO_SIGN_REQUEST", "YES")
    found = discover([s3.url("pub/")])
    assert [str(p) for p in found] == [s3.url("pub/p.tif")]
    src = SceneSource(open_scene(found[0]), (1, 2, 3))
    try:
        data, _ = src.read(Win(0, 0, 12, 14))
    finally:
        src.close()
    with rasterio.open(path) as ds:
        np.testing.assert_array_equal(data, ds.read())


def test_a_whole_run_fetches_each_byte_of_a_cog_about_once(range_server, tiny_model, tmp_path):
    """Segmenting a 1024 x 1024 COG by URL in 256-px blocks (a halo crossing every block
    edge): the halo tiles neighbouring blocks share come from GDAL's region cache, so the bytes
    fetched stay near the file's size (at most 1.3 times it, the issue-22 target)."""
    from click.testing import CliRunner

    from tilesegd.cli.main import cli

    path = make_cog(tmp_path / "cog.tif", 1024, 1024, seed=4)
    name = f"{uuid.uuid4().hex}/cog.tif"
    url = range_server.add(name, path.read_bytes())
    args = ["run", "-i", url, "-m", str(tiny_model(num_classes=3)), "-o", str(tmp_path / "out"),
            "--block-size", "256", "--tile-size", "128", "--overlap", "32", "--preview-size", "0"]  # fmt: skip
    r = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert r.exit_code == 0, r.output
    fetched = sum(r[3] for r in range_server.requests(name) if r[0] == "GET")
    assert 0.5 < fetched / path.stat().st_size <= 1.3, (fetched, path.stat().st_size)


class DropFirst:
    """A :class:`conftest.FaultProxy` rule: drop the connection of the first ``n`` requests
    whose line contains ``part``, pass everything else."""

    def __init__(self, part: str, n: int = 1) -> None:
        self.part, self.left = part, n

    def __call__(self, proxy, key: str) -> str | None:  # noqa: ANN001
        with proxy.lock:
            if self.part not in key or self.left == 0:
                return None
            self.left -= 1
            proxy.faults["drop"] += 1
            return "drop"


@pytest.mark.parametrize("drops", [1, 3])
def test_a_dropped_connection_while_opening_a_scene_is_retried(
    s3, tmp_path, monkeypatch, drops
) -> None:
    """GDAL does not retry an open whose first request got no answer ("Empty reply from
    server"), and caches the failure: the open is tried again with that cache entry dropped."""
    from conftest import FaultProxy

    from tilesegd.raster.gdalenv import open_raster

    path = make_raster(tmp_path / "a.tif", smooth_image(64, 48, seed=7))
    key = f"in/{uuid.uuid4().hex}.tif"
    s3.put(key, path)
    proxy = FaultProxy(s3.endpoint)
    rule = DropFirst(key, drops)
    monkeypatch.setattr(proxy, "fault", lambda k: rule(proxy, k))
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
    try:
        with open_raster(s3.url(key)) as ds, rasterio.open(path) as want:
            assert np.array_equal(ds.read(), want.read())
        assert proxy.faults["drop"] == drops
    finally:
        proxy.httpd.shutdown()


def test_a_missing_scene_is_not_retried(s3) -> None:
    import time

    from tilesegd.raster.gdalenv import open_raster

    t0 = time.perf_counter()
    with pytest.raises(rasterio.errors.RasterioIOError):
        open_raster(s3.url(f"in/{uuid.uuid4().hex}.tif"))
    assert time.perf_counter() - t0 < 0.5  # no backoff: a 404 is not transient

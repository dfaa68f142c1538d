"""`tilesegd run --output s3://bucket/prefix/` (moto on 127.0.0.1): the same layout and masks as
a local folder, a completion marker written after a scene's objects and run.json last, resume
after a kill from the blocks on the store, the lock, and clear errors for bad locations."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import (
    TEST_SECRET_ACCESS_KEY,
    SlowNet,
    download,
    make_raster,
    same_scene_outputs,
    smooth_image,
    spec_for,
)
from rasterio.transform import from_origin

from tilesegd.cli.main import cli
from tilesegd.model.model_file import save_model

BOOKKEEPING = (".tilesegd/",)


def run(*args: str) -> tuple[int, str]:
    r = CliRunner().invoke(cli, ["run", *args], catch_exceptions=False)
    return r.exit_code, r.output


def scenes(folder: Path) -> list[Path]:
    """Two scenes of odd sizes, one with a nodata corner, two CRSs."""
    img = smooth_image(203, 157, seed=1)
    img[:, :40, :50] = 0
    t = from_origin(500000.0, 4650000.0, 0.5, 0.5)
    folder.mkdir(parents=True, exist_ok=True)
    return [
        make_raster(folder / "a.tif", img, nodata=0, transform=t),
        make_raster(
            folder / "b.tif",
            smooth_image(129, 65, seed=3),
            crs="EPSG:2056",
            transform=from_origin(2.5e6, 1.2e6, 0.1, 0.1),
        ),
    ]


def test_output_on_s3_has_the_local_layout_and_masks(s3, tiny_model, tmp_path: Path) -> None:
    inputs = scenes(tmp_path / "scenes")
    model = tiny_model(num_classes=4)
    common = [*(a for p in inputs for a in ("-i", str(p))), "-m", str(model),
              "--block-size", "64", "--save-confidence"]  # fmt: skip
    code, out = run(*common, "-o", str(tmp_path / "local"))
    assert code == 0, out
    code, out = run(*common, "-o", s3.url("runs/one/"), "--scratch", str(tmp_path / "scratch"))
    assert code == 0, out

    got = download(s3, "runs/one/", tmp_path / "remote")
    assert not [k for k in got if k.startswith(BOOKKEEPING) and "/published/" not in k]
    assert sorted(k for k in got if "/published/" in k) == [
        ".tilesegd/published/a.json",
        ".tilesegd/published/b.json",
    ]
    for name in ("a", "b"):
        same_scene_outputs(tmp_path / "local" / name, tmp_path / "remote" / name)
    lo, re_ = tmp_path / "local", tmp_path / "remote"
    assert (lo / "summary.csv").read_bytes() == (re_ / "summary.csv").read_bytes()
    doc = json.loads((re_ / "run.json").read_text())
    assert {n: e["status"] for n, e in doc["scenes"].items()} == {"a": "done", "b": "done"}
    assert doc["scenes"]["a"]["outputs"]["mask.tif"] == s3.url("runs/one/a/mask.tif")
    assert doc["outputs"]["summary.csv"] == s3.url("runs/one/summary.csv")
    assert TEST_SECRET_ACCESS_KEY not in out + (re_ / "run.json").read_text()
    assert not list((tmp_path / "scratch").iterdir())  # scratch emptied after the run

    code, out = run(*common, "-o", s3.url("runs/one/"), "-v")  # finished: skipped
    assert code == 0, out
    download(s3, "runs/one/", tmp_path / "again")
    again = json.loads((tmp_path / "again" / "run.json").read_text())["scenes"]
    assert all(e["status"] == "done" and e.get("skipped") for e in again.values()), again


def done_objects(s3, prefix: str) -> int:
    return s3.client.list_objects_v2(Bucket=s3.name, Prefix=prefix).get("KeyCount", 0)


def test_a_killed_run_on_s3_resumes_to_the_same_masks(s3, tiny_model, tmp_path: Path) -> None:
    inputs = scenes(tmp_path / "scenes")
    model = save_model(SlowNet(3), tmp_path / "slow.ts", spec_for(3, 3, multiple=2, tile_size=64))
    args = [*(a for p in inputs for a in ("-i", str(p))), "-m", str(model), "--tile-size", "64",
            "--overlap", "16", "--block-size", "48", "--workers", "1", "--batch-size", "2",
            "--preview-size", "0"]  # fmt: skip
    code, out = run(*args, "-o", str(tmp_path / "local"))
    assert code == 0, out

    url = s3.url("runs/killed/")
    cmd = [sys.executable, "-m", "tilesegd", "-q", "run", *args, "-o", url]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    log = "runs/killed/.tilesegd/work/a/blocks.done/"
    deadline = time.monotonic() + 180
    while done_objects(s3, log) < 4 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, proc.communicate()[0].decode()[-2000:]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = done_objects(s3, log)
    assert 0 < before < 5 * 4  # a.tif: 5 x 4 blocks of 48 px (203 x 157); killed part-way

    code, out = run(*args, "-o", url)  # the same command: takes over the dead run's lock
    assert code == 0, out
    download(s3, "runs/killed/", tmp_path / "remote")
    doc = json.loads((tmp_path / "remote" / "run.json").read_text())
    assert doc["scenes"]["a"]["blocks_resumed"] >= before
    for name in ("a", "b"):
        same_scene_outputs(tmp_path / "local" / name, tmp_path / "remote" / name)


def test_a_second_run_on_one_prefix_stops_with_exit_5(s3, tiny_model, tmp_path: Path) -> None:
    from tilesegd.batch.objects import object_lock
    from tilesegd.storage.objects import ObjectFolder, output_location

    inputs = scenes(tmp_path / "scenes")
    model = tiny_model(num_classes=2)
    url = s3.url("runs/locked/")
    with object_lock(ObjectFolder(output_location(url))):
        code, out = run("-i", str(inputs[0]), "-m", str(model), "-o", url)
        assert code == 5, out
        assert "another tilesegd run" in out and "runs/locked" in out
    code, out = run("-i", str(inputs[0]), "-m", str(model), "-o", url)  # released on exit
    assert code == 0, out


@pytest.mark.parametrize(
    "where, expect",
    [
        ("s3://tilesegd-no-such-bucket/out/", "does not exist"),
        ("https://example.invalid/out/", "--output must be a local folder or an object-storage"),
    ],
)
def test_bad_output_locations_are_exit_1_before_any_scene(
    s3, tiny_model, tmp_path: Path, where: str, expect: str
) -> None:
    inputs = scenes(tmp_path / "scenes")
    t0 = time.perf_counter()
    code, out = run("-i", str(inputs[0]), "-m", str(tiny_model(num_classes=2)), "-o", where)
    assert code == 1, out
    assert expect in out and "Traceback" not in out
    assert time.perf_counter() - t0 < 30


def test_an_unreachable_endpoint_is_a_clear_error(s3, tiny_model, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens on port 9
    inputs = scenes(tmp_path / "scenes")
    code, out = run("-i", str(inputs[0]), "-m", str(tiny_model(num_classes=2)), "-o", s3.url("x/"))
    assert code == 1, out
    assert "cannot reach" in out and "AWS_ENDPOINT_URL" in out


def test_throttling_and_dropped_connections_change_nothing(faulty_s3, tiny_model, tmp_path) -> None:
    """Reads, listings, chunk writes and uploads through a proxy that answers 503 SlowDown or
    drops the connection on the first try of one request in four: the same outputs, exit 0."""
    s3, proxy = faulty_s3
    inputs = scenes(tmp_path / "scenes")
    model = tiny_model(num_classes=4)
    common = ["-m", str(model), "--block-size", "64", "--preview-size", "0"]
    code, out = run(*(a for p in inputs for a in ("-i", str(p))), *common, "-o",
                    str(tmp_path / "local"))  # fmt: skip
    assert code == 0, out
    for p in inputs:
        s3.put(f"in/{p.name}", p)
    code, out = run("-i", s3.url("in/"), *common, "-o", s3.url("faulty/"))
    assert code == 0, out
    assert proxy.faults["503"] > 3 and proxy.faults["drop"] > 3, proxy.faults
    download(s3, "faulty/", tmp_path / "remote")
    for name in ("a", "b"):
        same_scene_outputs(tmp_path / "local" / name, tmp_path / "remote" / name)


def test_products_asked_for_later_are_added_on_s3(s3, tiny_model, tmp_path: Path) -> None:
    """A finished scene on S3 rerun with --vector gets polygons.gpkg from its stored mask (the
    network does not run), uploaded beside its other outputs and listed in run.json."""
    inputs = scenes(tmp_path / "scenes")
    args = ["-i", str(inputs[1]), "-m", str(tiny_model(num_classes=3)), "--preview-size", "0"]
    url = s3.url("runs/later/")
    code, out = run(*args, "-o", url)
    assert code == 0, out
    code, out = run(*args, "-o", url, "--vector")
    assert code == 0, out
    keys = download(s3, "runs/later/", tmp_path / "remote")
    assert "b/polygons.gpkg" in keys
    entry = json.loads((tmp_path / "remote" / "run.json").read_text())["scenes"]["b"]
    assert entry["products_added"] == ["vector"]
    assert entry["outputs"]["polygons.gpkg"] == s3.url("runs/later/b/polygons.gpkg")
    assert not [k for k in keys if k.startswith(".tilesegd/work/")]


def test_a_run_to_s3_exits_without_an_unclosed_session_error(s3, tiny_model, tmp_path) -> None:
    """zarr's S3 store leaves an aiohttp session open unless tilesegd closes it at exit, and
    asyncio then logs "ERROR ... Unclosed client session" after the run's last line."""
    import subprocess
    import sys

    inputs = scenes(tmp_path / "scenes")
    p = subprocess.run([sys.executable, "-m", "tilesegd", "run", "-i", str(inputs[1]), "-m",
                        str(tiny_model(num_classes=2)), "-o", s3.url("exit/"), "--preview-size",
                        "0"], capture_output=True, text=True, timeout=300)  # fmt: skip
    assert p.returncode == 0, p.stderr[-2000:]
    assert "Unclosed" not in p.stderr + p.stdout

"""A Dask cluster whose workers share no folder with the client: scenes, model and output all on
the loopback S3 server; two `dask worker` processes, each started in its own working directory
with its own model cache. The masks equal a local one-process run's, byte for byte."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import download, make_raster, same_scene_outputs, smooth_image
from rasterio.transform import from_origin

from tilesegd.cli.main import cli

pytest.importorskip("distributed")


def start(cmd: list[str], cwd: Path, env: dict[str, str]) -> subprocess.Popen:
    cwd.mkdir(parents=True, exist_ok=True)
    log = open(cwd / "log.txt", "w")  # noqa: SIM115 - closed with the process
    return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)


def wait_workers(scheduler_file: Path, n: int, timeout: float = 90) -> None:
    """Until the scheduler file exists and lists ``n`` workers."""
    from distributed import Client

    t_end = time.monotonic() + timeout
    while not scheduler_file.exists():
        assert time.monotonic() < t_end, "the scheduler did not start"
        time.sleep(0.2)
    with Client(scheduler_file=str(scheduler_file), timeout=30) as client:
        client.wait_for_workers(n, timeout=timeout)


def test_workers_in_other_folders_write_the_same_masks_to_s3(
    s3, tiny_model, tmp_path: Path
) -> None:
    from click.testing import CliRunner

    (tmp_path / "in").mkdir()
    img = smooth_image(203, 157, seed=1)
    img[:, :40, :50] = 0
    a = make_raster(tmp_path / "in" / "a.tif", img, nodata=0,
                    transform=from_origin(500000.0, 4650000.0, 0.5, 0.5))  # fmt: skip
    b = make_raster(tmp_path / "in" / "b.tif", smooth_image(130, 170, seed=2))
    model = tiny_model(num_classes=4)
    geometry = ["--block-size", "64", "--tile-size", "64", "--overlap", "16"]
    r = CliRunner().invoke(cli, ["run", "-i", str(tmp_path / "in"), "-m", str(model), "-o",
                                 str(tmp_path / "local"), *geometry])  # fmt: skip
    assert r.exit_code == 0, r.output
    s3.put("scenes/a.tif", a)
    s3.put("scenes/b.tif", b)
    model_url = s3.put("models/net.ts", model)

    dask = [sys.executable, "-m", "distributed.cli.dask_scheduler"]
    sched_file = tmp_path / "cluster" / "scheduler.json"
    env = {k: v for k, v in os.environ.items() if k != "TILESEGD_MODEL_CACHE"}
    procs = [start([*dask, "--scheduler-file", str(sched_file), "--host", "127.0.0.1",
                    "--port", "0", "--dashboard-address", ":0"], tmp_path / "cluster", env)]  # fmt: skip
    caches = []
    try:
        for i in range(2):
            home = tmp_path / f"worker{i}"
            caches.append(home / "model-cache")
            worker_env = {**env, "TILESEGD_MODEL_CACHE": str(caches[-1])}
            procs.append(start([sys.executable, "-m", "distributed.cli.dask_worker",
                                "--scheduler-file", str(sched_file), "--nthreads", "1",
                                "--nworkers", "1", "--no-dashboard", "--local-directory",
                                str(home / "dask")], home, worker_env))  # fmt: skip
        wait_workers(sched_file, 2)
        r = CliRunner().invoke(cli, ["run", "-i", s3.url("scenes/"), "-m", model_url, "-o",
                                     s3.url("out/"), "--scheduler", str(sched_file),
                                     *geometry])  # fmt: skip
        assert r.exit_code == 0, r.output
    finally:
        for p in procs[::-1]:
            p.terminate()
        for p in procs:
            p.wait(timeout=30)
    download(s3, "out/", tmp_path / "remote")
    for name in ("a", "b"):
        same_scene_outputs(tmp_path / "local" / name, tmp_path / "remote" / name)
    doc = json.loads((tmp_path / "remote" / "run.json").read_text())
    workers = set(doc["scenes"]["a"]["workers"]) | set(doc["scenes"]["b"]["workers"])
    assert len(workers) == 2  # both workers computed blocks
    for cache in caches:  # each fetched the model into its own machine's cache
        assert any(p.suffix == ".ts" for p in cache.rglob("*")), cache

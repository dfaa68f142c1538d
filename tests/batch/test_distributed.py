"""Distributed runs (issue 6): Dask LocalCluster of 2 worker processes against a local run,
a worker killed mid-run, ``--shard`` for job arrays, and the errors users meet first."""

from __future__ import annotations

import csv
import json
import os
import signal
import sys
import threading
import time
import types
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import rasterio
import torch
from click.testing import CliRunner
from conftest import make_raster, smooth_image, spec_for
from rasterio.transform import from_origin

from tilesegd.api import run
from tilesegd.batch.discovery import select_shard
from tilesegd.cli.main import cli
from tilesegd.config import RunConfig
from tilesegd.errors import EXIT_SCENES_FAILED, ConfigError
from tilesegd.model.model_file import save_model

GEOMETRY = {"tile_size": 64, "overlap": 16, "block_size": 48}  # 48-px blocks: many per scene


def invoke(*args: str):
    return CliRunner().invoke(cli, ["-q", *args], catch_exceptions=False)


@pytest.fixture
def scenes(tmp_path: Path) -> Path:
    """Two odd-sized georeferenced scenes (one with a nodata corner) and a 0-byte .tif."""
    d = tmp_path / "scenes"
    d.mkdir()
    img = smooth_image(181, 203, seed=3)
    img[:, :50, :60] = 0
    make_raster(d / "a.tif", img, nodata=0, transform=from_origin(500000.0, 4650000.0, 0.5, 0.5))
    make_raster(d / "b.tif", smooth_image(97, 131, seed=4), crs="EPSG:2056")
    return d


def mask_chunks(out: Path, scene: str) -> dict[str, bytes]:
    """Every stored chunk of ``pred.zarr/mask``, by key: the exact bytes the masks are."""
    root = out / scene / "pred.zarr" / "mask"
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def assert_same_masks(a: Path, b: Path, scene: str) -> None:
    chunks = mask_chunks(a, scene)
    assert len(chunks) > 1
    assert chunks == mask_chunks(b, scene)
    with rasterio.open(a / scene / "mask.tif") as x, rasterio.open(b / scene / "mask.tif") as y:
        ma, mb = x.read(1), y.read(1)
    assert np.array_equal(ma, mb)
    assert len(np.unique(ma[ma != 255])) > 1  # a real segmentation, not one constant class
    assert (a / scene / "areas.csv").read_bytes() == (b / scene / "areas.csv").read_bytes()


def test_two_worker_cluster_is_byte_identical_to_one_process(
    tmp_path: Path, scenes: Path, tiny_model
) -> None:
    pytest.importorskip("distributed")
    (scenes / "empty.tif").write_bytes(b"")  # fails on the client; the others carry on
    model = tiny_model(num_classes=4)
    local, dist = tmp_path / "local", tmp_path / "dist"
    run(input=[str(scenes)], model=str(model), output=str(local), progress=False, **GEOMETRY)
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in GEOMETRY.items()]
    r = invoke(
        "run", "-i", str(scenes), "-m", str(model), "-o", str(dist), *flags,
        "--cluster", "local", "--workers", "2",
    )  # fmt: skip
    assert r.exit_code == EXIT_SCENES_FAILED, r.output
    for scene in ("a", "b"):
        assert_same_masks(local, dist, scene)
    doc = json.loads((dist / "run.json").read_text())
    assert doc["distributed"]["cluster"] == "local" and doc["distributed"]["workers"] == 2
    assert doc["scenes"]["empty"]["status"] == "failed"
    assert "empty.tif" in doc["scenes"]["empty"]["error"]
    a, b = doc["scenes"]["a"], doc["scenes"]["b"]
    assert a["status"] == b["status"] == "done"
    assert a["blocks"] > 8 and a["tiles_skipped"] > 0  # the nodata corner was skipped
    assert len(set(a["workers"]) | set(b["workers"])) == 2  # both processes computed blocks
    with open(dist / "summary.csv", newline="") as f:
        assert {row["scene"] for row in csv.DictReader(f)} == {"a", "b"}


class WideNet(torch.nn.Module):
    """A slower, deterministic CNN (~30 ms per 64-px tile on one core), so a run lasts long
    enough to kill a worker in the middle of it."""

    def __init__(self, width: int = 48) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(1)
        self.body = torch.nn.Sequential(
            torch.nn.Conv2d(3, width, 3, padding=1),
            torch.nn.ReLU(),
            torch.nn.Conv2d(width, width, 3, padding=1),
            torch.nn.ReLU(),
            torch.nn.Conv2d(width, width, 3, padding=1),
            torch.nn.ReLU(),
            torch.nn.Conv2d(width, 3, 3, padding=1),
        )
        for p in self.parameters():
            with torch.no_grad():
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


# slow: a second Dask client in the test process (the run's, by scheduler file) next to the
# cluster's; when the worker is killed, distributed's client sometimes fails with "Event bound
# to a different event loop" (1 run of 5 fresh clones on 2 cores) - a test harness race, not a
# lost block; kept out of the gating suite so CI does not draw it (make test-slow runs it)
@pytest.mark.slow
def test_killed_worker_blocks_are_recomputed(tmp_path: Path) -> None:
    distributed = pytest.importorskip("distributed")
    src = tmp_path / "scenes"
    src.mkdir()
    make_raster(src / "big.tif", smooth_image(211, 233, seed=5), nodata=0)
    model = save_model(WideNet(), tmp_path / "wide.ts", spec_for(3, multiple=1, tile_size=64))
    opts = dict(input=[str(src)], model=str(model), progress=False, preview_size=0, **GEOMETRY)
    run(output=str(tmp_path / "local"), **opts)
    out = tmp_path / "dist"
    log = out / ".tilesegd" / "work" / "big" / "blocks.done"
    n_blocks = json.loads((tmp_path / "local" / "run.json").read_text())["scenes"]["big"]["blocks"]
    killed: dict = {}

    def kill_a_busy_worker_mid_run(client, pids: dict[str, int]) -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            done = len(log.read_text().splitlines()) if log.exists() else 0
            busy = [a for a, keys in client.processing().items() if keys and a in pids]
            if done >= 1 and busy:
                os.kill(pids[busy[0]], signal.SIGKILL)
                killed.update(pid=pids[busy[0]], done=done)
                return
            time.sleep(0.005)

    with (
        distributed.LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            scheduler_kwargs={"dashboard_address": ":0"},  # no fixed port
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        pids = client.run(os.getpid)
        watcher = threading.Thread(target=kill_a_busy_worker_mid_run, args=(client, pids))
        watcher.start()
        client.write_scheduler_file(str(tmp_path / "scheduler.json"))  # as `dask scheduler` does
        doc = run(output=str(out), scheduler=str(tmp_path / "scheduler.json"), **opts)
        watcher.join()
        alive = set(client.run(os.getpid).values())
    assert killed and killed["done"] < n_blocks, "no worker was killed mid-run"
    assert killed["pid"] not in alive  # it really died (its nanny started a new one)
    assert doc["status"] == "done" and doc["scenes"]["big"]["status"] == "done"
    assert_same_masks(tmp_path / "local", out, "big")
    assert not (out / ".tilesegd" / "work" / "big").exists()  # published and cleaned up


def test_shard_splits_scenes_deterministically(tmp_path: Path, tiny_model) -> None:
    paths = [Path(f"/d/{c}.tif") for c in "edcba"] + [Path("/e/a.tif")]
    names = ["e", "d", "c", "b", "a", "a__2"]
    shards = [select_shard(paths, names, f"{i}/3") for i in range(3)]
    by_path = sorted(zip(paths, names, strict=True), key=lambda pn: str(pn[0]))
    for i, (kept, kept_names) in enumerate(shards):  # sorted by path, scene k -> shard k % 3
        assert kept == [p for p, _ in by_path[i::3]]
        assert kept_names == [n for _, n in by_path[i::3]]
    every = [p for s in shards for p in s[0]]
    assert len(every) == len(set(every)) == len(paths) and set(every) == set(paths)
    assert shards[0] == ([Path("/d/a.tif"), Path("/d/d.tif")], ["a", "d"])
    assert shards[2][1] == ["c", "a__2"]  # names from the full list, never renamed
    assert select_shard(paths[::-1], names[::-1], "1/3") == shards[1]  # input order irrelevant
    for bad in ("1", "a/2", "-1/2"):
        with pytest.raises(ConfigError, match=rf"shard must be I/N .*got '{bad}'"):
            RunConfig(shard=bad).validate()
    for bad in ("3/3", "1/0"):
        with pytest.raises(ConfigError, match=rf"shard '{bad}': need 0 <= I < N"):
            RunConfig(shard=bad).validate()

    src = tmp_path / "scenes"
    src.mkdir()
    for i in range(3):
        make_raster(src / f"s{i}.tif", smooth_image(40, 50, seed=i))
    model = tiny_model()
    done = []
    for i in range(2):
        doc = run(input=[str(src)], model=str(model), output=str(tmp_path / f"shard{i}"),
                  shard=f"{i}/2", progress=False, tile_size=32)  # fmt: skip
        done.append(sorted(doc["scenes"]))
    assert done == [["s0", "s2"], ["s1"]]


def test_cluster_errors_say_what_to_do(tmp_path: Path, scenes: Path, tiny_model, monkeypatch):
    pytest.importorskip("distributed")
    import tilesegd.batch.cluster as dc

    model = str(tiny_model())
    with pytest.raises(ConfigError, match="either --scheduler"):
        RunConfig(cluster="local", scheduler="tcp://127.0.0.1:1").validate()
    with pytest.raises(ConfigError, match="cluster must be"):
        RunConfig(cluster="yarn").validate()
    monkeypatch.setattr(dc, "CONNECT_TIMEOUT_S", 1)
    r = invoke("run", "-i", str(scenes), "-m", model, "-o", str(tmp_path / "o"),
               "--scheduler", "tcp://127.0.0.1:9")  # fmt: skip
    assert r.exit_code == 1 and "cannot reach a Dask scheduler" in r.output
    assert "Traceback" not in r.output
    cuda_args = ("run", "-i", str(scenes), "-m", model, "-o", str(tmp_path / "o"),
                 "--cluster", "local-cuda", "--device", "cpu")  # fmt: skip
    # dask-cuda absent (hidden if installed): the error names the extra to install
    monkeypatch.setitem(sys.modules, "dask_cuda", None)
    r = invoke(*cuda_args)
    assert r.exit_code == 1 and "pip install 'tilesegd[distributed-cuda]'" in r.output
    # dask-cuda present (a stand-in if it is not installed): --device cpu is refused before
    # any cluster starts
    fake = types.ModuleType("dask_cuda")
    fake.LocalCUDACluster = mock.Mock(side_effect=AssertionError("no cluster may start"))
    monkeypatch.setitem(sys.modules, "dask_cuda", fake)
    r = invoke(*cuda_args)
    assert r.exit_code == 1 and "use --device auto or cuda, not 'cpu'" in r.output
    assert not fake.LocalCUDACluster.called and "Traceback" not in r.output


def test_slurm_examples_book_one_gpu_per_single_task_worker(tmp_path: Path) -> None:
    pytest.importorskip("dask_jobqueue")
    import importlib.util

    import dask

    root = Path(__file__).resolve().parents[2] / "configs"
    spec = importlib.util.spec_from_file_location("slurm_example", root / "slurm_dask_jobqueue.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    args = example.parse_args(["--input", "s", "--model", "m.ts", "--output", "o", "--cpus", "6"])
    with dask.config.set({"jobqueue.slurm.scheduler-options": {"host": "127.0.0.1"}}):
        cluster = example.make_cluster(args)
        try:
            script = cluster.job_script()
        finally:
            cluster.close()
    assert "#SBATCH --gres=gpu:1" in script and "#SBATCH --cpus-per-task=6" in script
    assert "--nthreads 1" in script  # one task at a time: the model is never shared
    array = (root / "slurm_array.sh").read_text()
    assert '--shard "$I/$N"' in array and "#SBATCH --array=0-" in array  # 0-based, as --shard
    assert '--output "$OUT/shard-$I"' in array  # one output (and lock) per shard

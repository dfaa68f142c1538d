"""Kill, preempt and double-start real `tilesegd run` processes; rerun; compare.

A real subprocess (``python -m tilesegd run``) is killed with SIGKILL once its ``blocks.done``
log reaches a chosen count (several points: first block, mid-scene, all blocks written, in the
second scene), then the same command is rerun. The final masks (GeoTIFF pixels and the Zarr
``mask`` array) and the area reports must equal those of an uninterrupted run, and the blocks
finished before the kill must not be recomputed (their Zarr chunk files are untouched).
SIGTERM must stop the run with exit code 75 and a ``run.json`` that says so; a second run on a
busy output directory must refuse with exit code 5.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio
import zarr
from click.testing import CliRunner
from conftest import SlowNet, make_raster, smooth_image, spec_for

from tilesegd.cli.main import cli
from tilesegd.model.model_file import save_model
from tilesegd.raster.tiling import TileGrid

TILE, OVERLAP, BLOCK = 64, 16, 48
GEOM = ["--tile-size", str(TILE), "--overlap", str(OVERLAP), "--block-size", str(BLOCK)]
GEOM += ["--workers", "2", "--batch-size", "2"]
SIZES = {"a": (384, 336), "b": (240, 288)}  # (height, width): 56 and 30 one-tile blocks


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> tuple[Path, Path, Path]:
    """(inputs, model, reference output of an uninterrupted run)."""
    d = tmp_path_factory.mktemp("resume")
    model = save_model(SlowNet(), d / "slow.ts", spec_for(4, 3, multiple=2, tile_size=TILE))
    inp = d / "in"
    inp.mkdir()
    img = smooth_image(*SIZES["a"], seed=1)
    img[:, :50, :70] = 0  # nodata corner: some blocks never reach the model
    make_raster(inp / "a.tif", img, nodata=0)
    make_raster(inp / "b.tif", smooth_image(*SIZES["b"], seed=2))
    ref = d / "ref"
    r = rerun(inp, model, ref)
    assert r.exit_code == 0, r.output
    return inp, model, ref


def start(inp: Path, model: Path, out: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "tilesegd", "-q", "run", "-i", str(inp), "-m", str(model)]
    cmd += ["-o", str(out), *GEOM]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def rerun(inp: Path, model: Path, out: Path):
    """The same command again, in-process."""
    args = ["-q", "run", "-i", str(inp), "-m", str(model), "-o", str(out), *GEOM]
    return CliRunner().invoke(cli, args, catch_exceptions=False)


def done_log(out: Path, scene: str) -> Path:
    return out / ".tilesegd" / "work" / scene / "blocks.done"


def done_ids(out: Path, scene: str) -> set[int]:
    p = done_log(out, scene)
    if not p.exists():
        return set()
    lines = p.read_text().split("\n")[:-1]  # "<block id> <pixels>"; a cut last line has no \n
    return {int(x.split()[0]) for x in lines if x.split() and x.split()[0].isdigit()}


def wait_for(proc: subprocess.Popen, ready, timeout: float = 240.0) -> None:
    """Poll every 2 ms until ``ready()``; fail if the process ends first."""
    t_end = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"the run ended (rc {proc.returncode}) before the kill point: {err}")
        if time.monotonic() > t_end:
            proc.kill()
            pytest.fail("timed out waiting for the kill point")
        time.sleep(0.002)


def n_blocks(scene: str) -> int:
    return TileGrid(*SIZES[scene], TILE, OVERLAP, 2, BLOCK).n_blocks


def chunk_files(store: Path, scene: str, ids: set[int]) -> dict[int, int]:
    """Block id -> mtime (ns) of its ``mask`` chunk file (blocks of pure fill value have none)."""
    grid = TileGrid(*SIZES[scene], TILE, OVERLAP, 2, BLOCK)
    bh, bw = grid.block_shape
    found = {}
    for b in grid.blocks():
        f = store / "mask" / "c" / str(b.window.row_off // bh) / str(b.window.col_off // bw)
        if b.id in ids and f.exists():
            found[b.id] = f.stat().st_mtime_ns
    return found


def assert_same_outputs(ref: Path, out: Path) -> None:
    for scene in SIZES:
        with (
            rasterio.open(ref / scene / "mask.tif") as a,
            rasterio.open(out / scene / "mask.tif") as b,
        ):
            assert np.array_equal(a.read(), b.read()), f"{scene}: mask.tif differs"
            assert a.transform == b.transform and a.crs == b.crs
            assert a.colormap(1) == b.colormap(1)
        za = zarr.open_array(ref / scene / "pred.zarr" / "mask", mode="r")
        zb = zarr.open_array(out / scene / "pred.zarr" / "mask", mode="r")
        assert np.array_equal(za[:], zb[:]), f"{scene}: pred.zarr mask differs"
        ra, rb = (p / scene / "areas.csv" for p in (ref, out))
        assert ra.read_text() == rb.read_text(), f"{scene}: areas.csv differs"
        assert not (out / scene / "blocks.done").exists()
    assert (ref / "summary.csv").read_text() == (out / "summary.csv").read_text()
    assert not [p for p in out.rglob("*") if ".tmp" in p.name]


def kill_and_resume(setup, tmp_path: Path, scene: str, count: int) -> None:
    """SIGKILL a run once ``scene`` has ``count`` finished blocks, rerun, compare."""
    inp, model, ref = setup
    out = tmp_path / f"kill_{scene}_{count}"
    proc = start(inp, model, out)
    wait_for(proc, lambda: len(done_ids(out, scene)) >= count)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    # after the kill: nothing at a final path claims a success
    for s in SIZES:
        if (out / s).exists():
            assert (out / s / "mask.tif").is_file() and (out / s / "areas.csv").is_file()
    done = done_ids(out, scene)
    kept = chunk_files(out / ".tilesegd" / "work" / scene / "pred.zarr", scene, done)
    r = rerun(inp, model, out)
    assert r.exit_code == 0, r.output
    run = json.loads((out / "run.json").read_text())
    assert {e["status"] for e in run["scenes"].values()} == {"done"}
    entry = run["scenes"][scene]
    if done and not entry.get("skipped"):
        # the work store survived the kill: finished blocks are reused, not recomputed
        assert entry["blocks_resumed"] == len(done)
        assert kept == chunk_files(out / scene / "pred.zarr", scene, set(kept))
    assert_same_outputs(ref, out)


@pytest.mark.parametrize("scene, count", [("a", 20), ("b", 12)])
def test_sigkill_mid_scene_then_rerun_is_identical(setup, tmp_path, scene, count) -> None:
    kill_and_resume(setup, tmp_path, scene, count)


@pytest.mark.slow
@pytest.mark.parametrize(
    "scene, count", [("a", 1), ("a", 45), ("a", n_blocks("a")), ("b", n_blocks("b"))]
)
def test_sigkill_at_more_points(setup, tmp_path, scene, count) -> None:
    """First block, late in a scene, and all blocks written (the COG / publish / run.json)."""
    kill_and_resume(setup, tmp_path, scene, count)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(4))
def test_sigkill_at_random_moments(setup, tmp_path, seed) -> None:
    """Kill after a random delay (anywhere: start-up, a block, the COG, publish, run.json),
    possibly twice, then rerun to completion."""
    inp, model, ref = setup
    rng = random.Random(seed)
    out = tmp_path / "out"
    for _ in range(2):
        proc = start(inp, model, out)
        time.sleep(rng.uniform(2.0, 12.0))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    r = rerun(inp, model, out)
    assert r.exit_code == 0, r.output
    assert_same_outputs(ref, out)


def test_sigterm_stops_cleanly_with_75_and_resumes(setup, tmp_path) -> None:
    inp, model, ref = setup
    out = tmp_path / "out"
    proc = start(inp, model, out)
    wait_for(proc, lambda: len(done_ids(out, "a")) >= 3)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 75, err
    assert "Traceback" not in err and "rerun" in err.lower()
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "interrupted"
    assert run["scenes"]["a"]["status"] == "interrupted"
    assert run["scenes"]["b"]["status"] == "pending"  # no new work after the signal
    assert not (out / "a").exists() and not (out / "b").exists()
    done = done_ids(out, "a")
    assert 3 <= len(done) < n_blocks("a")
    r = rerun(inp, model, out)
    assert r.exit_code == 0, r.output
    assert json.loads((out / "run.json").read_text())["scenes"]["a"]["blocks_resumed"] == len(done)
    assert_same_outputs(ref, out)


def wait_stopped(pid: int, timeout: float = 30.0) -> None:
    """Wait until the kernel reports the process stopped (state T in /proc/PID/stat)."""
    t_end = time.monotonic() + timeout
    while time.monotonic() < t_end:
        with open(f"/proc/{pid}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[0] in ("T", "t"):
                time.sleep(0.05)  # let in-flight I/O settle
                return
        time.sleep(0.002)
    pytest.fail("the process did not stop")


def test_second_run_on_a_busy_output_refuses(setup, tmp_path) -> None:
    inp, model, ref = setup
    out = tmp_path / "out"
    proc = start(inp, model, out)
    try:
        wait_for(proc, lambda: len(done_ids(out, "a")) >= 1)
        os.kill(proc.pid, signal.SIGSTOP)  # hold it mid-scene, lock taken
        wait_stopped(proc.pid)  # delivery is asynchronous: a loaded machine runs it on a while
        before = sorted((p, p.stat().st_mtime_ns) for p in out.rglob("*") if p.is_file())
        r = rerun(inp, model, out)
        assert r.exit_code == 5, r.output
        assert "another tilesegd run" in r.output and str(out) in r.output
        after = sorted((p, p.stat().st_mtime_ns) for p in out.rglob("*") if p.is_file())
        assert before == after  # the refused run touched nothing
    finally:
        os.kill(proc.pid, signal.SIGCONT)
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err
    assert_same_outputs(ref, out)

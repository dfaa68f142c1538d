"""A full disk on every write path of ``tilesegd run`` (issue 20, point 6).

The README's promise for exit code 6: an output that cannot be written stops the run (no next
scene), with a one-line message naming the file and saying the disk is full and what to do;
finished scenes are kept, nothing half-written appears at a final path, no temporary file is
left, and rerunning the same command resumes.

Each :class:`Fault` is the moment the disk fills: when the run starts writing one file of scene
``b`` (``a`` is finished by then, ``c`` must never start), or one of the run's own files. Two
modes per fault:

- ``real``: the output is on a small tmpfs (mounted for the test; skipped where mounting is not
  allowed) and a filler file takes all its free space at that moment, so GDAL, pyogrio, zarr,
  matplotlib and Python fail as they do on a real full disk (GDAL's errors carry no errno);
- ``injected``: the write raises what that library raises on a full disk (``OSError(ENOSPC)``
  from Python writes; GDAL's errno-less "Write failed"; pyogrio's SQLite "disk is full").
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import fnmatch
import io
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import rasterio
import shapely
from click.testing import CliRunner
from conftest import TinyConvNet, make_raster, smooth_image, spec_for, to_map, write_polygons

from tilesegd.cli.main import cli
from tilesegd.model.model_file import save_model

GEOM = ["--tile-size", "64", "--overlap", "16", "--block-size", "128", "--workers", "1"]
SCENES = ("a", "b", "c")  # run in this order: a finishes, b meets the full disk, c never starts
SIZES = {"a": (100, 90), "b": (130, 520), "c": (90, 100)}  # b: 2 x 5 blocks, overviews
REAL_OPEN = builtins.open


@dataclass(frozen=True)
class Fault:
    """The disk fills when a write matches.

    Attributes:
        name: the test id.
        hook: what is hooked: ``open`` (Python's open, for files Python writes), or a GDAL /
            pyogrio entry point (``gtiff``, ``overviews``, ``cog``, ``gpkg``).
        pattern: ``fnmatch`` pattern of the path written (a temporary name, usually).
        names: what the error message must name (the output file).
        scene: ``"b"``: only scene b's writes; ``None``: the run's files, once ``a`` is done.
        kept: the scenes whose finished folders must be there after the failure.
    """

    name: str
    hook: str
    pattern: str
    names: str
    scene: str | None = "b"
    kept: tuple[str, ...] = ("a",)


FAULTS = [
    Fault("work_json", "open", "*/.work.json.*.tmp", "work.json"),
    Fault("zarr_create", "open", "*/pred.zarr/zarr.*.partial", "pred.zarr"),
    Fault("zarr_mask_chunk", "open", "*/pred.zarr/mask/c/*.partial", "pred.zarr"),
    Fault("zarr_probs_chunk", "open", "*/pred.zarr/probs/c/*.partial", "pred.zarr"),
    Fault("blocks_done", "open", "*/blocks.done", "blocks.done"),
    Fault("mask_gtiff", "gtiff", "*/.mask.tif.tmp-gtiff", "mask.tif"),
    Fault("mask_overviews", "overviews", "*/.mask.tif.tmp-gtiff", "mask.tif"),
    Fault("mask_cog", "cog", "*/.mask.tif.tmp-cog", "mask.tif"),
    Fault("mask_qml", "open", "*/.mask.qml.tmp-style", "mask.qml"),
    Fault("mask_rat", "open", "*/.mask.tif.aux.xml.tmp-style", "mask.tif.aux.xml"),
    Fault("confidence_cog", "gtiff", "*/.confidence.tif.tmp-gtiff", "confidence.tif"),
    Fault("areas_csv", "open", "*/areas.csv", "areas.csv"),
    Fault("polygons_gpkg", "gpkg", "*/.polygons.gpkg.tmp-*", "polygons.gpkg"),
    Fault("zones_csv", "open", "*/.zones.csv.tmp-*", "zones.csv"),
    Fault("zones_gpkg", "gpkg", "*/.zones.gpkg.tmp-*", "zones.gpkg"),
    Fault("preview_png", "open", "*/.preview.png.tmp*", "preview.png"),
    Fault("run_json", "open", "*/.run.json.*.tmp", "run.json", scene=None),
    Fault("summary_csv", "open", "*/.summary.csv.tmp-*", "summary.csv", None, SCENES),
    Fault(
        "zones_summary", "open", "*/.zones_summary.csv.tmp-*", "zones_summary.csv", None, SCENES
    ),  # fmt: skip
]


def invoke(*args: str):
    return CliRunner().invoke(cli, ["-q", *args], catch_exceptions=False)


def run_cli(inputs: Path, model: Path, out: Path, zones: Path):
    products = ["--vector", "--zones", str(zones), "--save-confidence", "--save-probs"]
    args = ["run", "-i", str(inputs), "-m", str(model), "-o", str(out), *GEOM, *products]
    return invoke(*args)


def read_mask(path: Path) -> np.ndarray:
    with rasterio.open(path) as ds:
        return ds.read(1)


def leftovers(out: Path) -> list[Path]:
    """Temporary or half-written files anywhere under ``out``."""
    marks = (".tmp", ".old-", ".partial", "-journal", "-wal")
    return [p for p in out.rglob("*") if any(m in p.name for m in marks)]


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict[str, Path]:
    """Inputs, a model, a zones file and a reference run on an ordinary disk."""
    d = tmp_path_factory.mktemp("diskfull")
    inputs = d / "in"
    inputs.mkdir()
    for seed, name in enumerate(SCENES):
        make_raster(inputs / f"{name}.tif", smooth_image(*SIZES[name], seed=seed + 1))
    model = save_model(TinyConvNet(3, 4), d / "tiny.ts", spec_for(4, 3, multiple=2, tile_size=64))
    zones = write_polygons(d / "zones.gpkg", [to_map(shapely.box(5, 5, 60, 70))])
    ref = d / "ref"
    r = run_cli(inputs, model, ref, zones)
    assert r.exit_code == 0, r.output
    return {"inputs": inputs, "model": model, "zones": zones, "ref": ref}


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A ``size`` tmpfs mounted at ``path`` (a skip, with the reason, where mounting is not
    allowed: it needs root or CAP_SYS_ADMIN)."""
    if not sys.platform.startswith("linux") or shutil.which("mount") is None:
        pytest.skip("a real full disk needs Linux and mount(8)")
    path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
        capture_output=True,
        text=True,
    )
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs for a real full disk: {r.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(disk: Path) -> None:
    """Take all free space on ``disk`` with ``disk/filler`` (writes until ENOSPC)."""
    with REAL_OPEN(disk / "filler", "ab", buffering=0) as f:
        for size in (1 << 20, 1 << 16, 1 << 12, 1):
            with contextlib.suppress(OSError):
                while True:
                    f.write(b"\0" * size)


class FullFile:
    """A file being written on a full disk: part of the first write lands, then ENOSPC."""

    def __init__(self, f, name: str) -> None:
        self.f, self.name = f, name

    def write(self, data) -> int:
        self.f.write(data[: max(1, len(data) // 2)])
        self.f.flush()
        raise OSError(errno.ENOSPC, "No space left on device", self.name)

    def __enter__(self) -> FullFile:
        return self

    def __exit__(self, *exc) -> None:
        self.f.close()

    def __getattr__(self, name):
        return getattr(self.f, name)


def gdal_write_failed(path: str) -> Exception:
    """What rasterio raises when GDAL meets a full disk: no errno, the cause in a CPLE."""
    from rasterio._err import CPLE_AppDefinedError
    from rasterio.errors import RasterioIOError

    exc = RasterioIOError("Write failed. See previous exception for details.")
    exc.__cause__ = CPLE_AppDefinedError(3, 1, "TIFFAppendToStrip:Write error at scanline 64")
    return exc


@contextlib.contextmanager
def disk_fills(fault: Fault, out: Path, disk: Path, real: bool, monkeypatch) -> Iterator[None]:
    """Within the block, the disk fills when ``fault``'s write starts (see the module doc)."""
    import pyogrio.raw
    import rasterio.io
    import rasterio.shutil

    fired = [False]

    def hit(path) -> bool:
        p = Path(os.fspath(path))
        if fired[0] or not fnmatch.fnmatch(str(p), fault.pattern):
            return False
        if fault.scene is not None:
            where = (out / ".tilesegd" / "work" / fault.scene, out / fault.scene)
            if not any(str(p).startswith(str(w) + os.sep) for w in where):
                return False
        elif not (out / "a").is_dir():
            return False
        fired[0] = True
        if real:
            fill(disk)
        return True

    def opener(file, mode="r", *a, **k):
        f = REAL_OPEN(file, mode, *a, **k)
        writes = isinstance(file, (str, os.PathLike)) and any(c in mode for c in "wax+")
        if writes and hit(file) and not real:
            return FullFile(f, os.fspath(file))
        return f

    def wrap(owner, attr, path_of, fail):
        real_fn = getattr(owner, attr)

        def hooked(*a, **k):
            if hit(path_of(*a, **k)) and not real:
                fail(*a, **k)
            return real_fn(*a, **k)

        monkeypatch.setattr(owner, attr, hooked)

    def gtiff_fail(ds, *a, **k):
        raise gdal_write_failed(ds.name)

    def cog_fail(src, dst, **k):
        Path(dst).write_bytes(b"half a COG")
        raise gdal_write_failed(str(dst))

    def gpkg_fail(path, *a, **k):
        from pyogrio.errors import DataSourceError

        raise DataSourceError(f"sqlite3_exec(COMMIT) failed: database or disk is full ({path})")

    hooks = {
        "open": lambda: (
            monkeypatch.setattr(builtins, "open", opener),
            monkeypatch.setattr(io, "open", opener),
        ),
        "gtiff": lambda: wrap(
            rasterio.io.DatasetWriter, "write", lambda ds, *a, **k: ds.name, gtiff_fail
        ),  # fmt: skip
        "overviews": lambda: wrap(
            rasterio.io.DatasetWriter, "build_overviews", lambda ds, *a, **k: ds.name, gtiff_fail
        ),
        "cog": lambda: wrap(rasterio.shutil, "copy", lambda s, d, **k: d, cog_fail),
        "gpkg": lambda: wrap(pyogrio.raw, "write", lambda p, *a, **k: p, gpkg_fail),
    }
    hooks[fault.hook]()
    try:
        yield
    finally:
        monkeypatch.undo()
    assert fired[0], f"{fault.name}: the write never happened"


def check_stopped(fault: Fault, out: Path, output: str, real: bool, ref: Path) -> None:
    """Exit 6 and one message naming the file; the run stopped there; nothing half-written
    at a final path; finished scenes kept."""
    msg = [ln for ln in output.splitlines() if ln.startswith("Error:")]
    assert len(msg) == 1 and "Traceback" not in output, output
    msg = msg[0]
    assert str(out) in msg and "rerun" in msg, msg
    if real:
        assert "disk full" in msg, msg
    else:
        assert fault.names in msg, msg
    assert not [ln for ln in output.splitlines() if ln.startswith("FAILED")], output
    assert not leftovers(out), leftovers(out)
    for name in SCENES:
        folder = out / name
        if name in fault.kept:
            for f in ("mask.tif", "confidence.tif", "polygons.gpkg", "zones.csv", "preview.png"):
                assert (folder / f).is_file(), (name, f)
            assert np.array_equal(
                read_mask(folder / "mask.tif"), read_mask(ref / name / "mask.tif")
            )
        else:  # the scene that met the full disk, and the ones never started
            assert not folder.exists(), name
    if (out / "run.json").exists() and fault.scene is not None:
        scenes = json.loads((out / "run.json").read_text())["scenes"]
        assert scenes["a"]["status"] == "done"
        assert scenes.get("c", {}).get("status") in (None, "pending")
        if not real:
            assert scenes["b"]["status"] == "failed" and fault.names in scenes["b"]["error"]


@pytest.mark.parametrize("mode", ["injected", "real"])
@pytest.mark.parametrize("fault", FAULTS, ids=[f.name for f in FAULTS])
def test_a_full_disk_stops_the_run_and_the_rerun_resumes(setup, fault, mode, tmp_path) -> None:
    real = mode == "real"
    with contextlib.ExitStack() as stack:
        disk = stack.enter_context(tmpfs(tmp_path / "disk", "8m")) if real else tmp_path
        out = disk / "out"
        with pytest.MonkeyPatch.context() as mp, disk_fills(fault, out, disk, real, mp):
            r = run_cli(setup["inputs"], setup["model"], out, setup["zones"])
        assert r.exit_code == 6, r.output
        check_stopped(fault, out, r.output, real, setup["ref"])
        (disk / "filler").unlink(missing_ok=True)  # the user frees space, reruns
        r = run_cli(setup["inputs"], setup["model"], out, setup["zones"])
        assert r.exit_code == 0, r.output
        doc = json.loads((out / "run.json").read_text())
        assert {e["status"] for e in doc["scenes"].values()} == {"done"}
        for name in fault.kept:
            if fault.scene is not None:
                assert doc["scenes"][name].get("skipped"), name  # kept, not recomputed
        for name in SCENES:
            for f in ("mask.tif", "confidence.tif"):
                a, b = read_mask(out / name / f), read_mask(setup["ref"] / name / f)
                assert np.array_equal(a, b), (name, f)
            for f in ("areas.csv", "zones.csv"):
                assert (out / name / f).read_text() == (setup["ref"] / name / f).read_text()
        assert not leftovers(out)


def test_a_mask_too_large_for_a_small_disk_stops_the_run_with_exit_6(setup, tmp_path) -> None:
    """The reported case, with nothing patched: a 3 MiB tmpfs holds scene a's outputs and b's
    work store, not b's ``mask.tif``. Exit 6, the message names b's mask.tif and says the disk
    is full; a is kept, c never starts; after the disk grows the rerun skips a and builds b
    from its stored blocks."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    for name in ("a", "c"):
        shutil.copy(setup["inputs"] / f"{name}.tif", inputs / f"{name}.tif")
    make_raster(inputs / "b.tif", smooth_image(1400, 1400, seed=9))
    args = ["run", "-i", str(inputs), "-m", str(setup["model"]), "--tile-size", "256"]
    args += ["--overlap", "16", "--compress", "none", "--workers", "1"]
    with tmpfs(tmp_path / "disk", "3m") as disk:
        out = disk / "out"
        r = invoke(*args, "-o", str(out))
        assert r.exit_code == 6, r.output
        msg = [ln for ln in r.output.splitlines() if ln.startswith("Error:")]
        assert len(msg) == 1 and "Traceback" not in r.output, r.output
        assert "/b/mask.tif: disk full" in msg[0] and "MiB free" in msg[0], msg
        assert "rerun" in msg[0], msg
        assert (out / "a" / "mask.tif").is_file() and not (out / "b").exists()
        assert not (out / "c").exists() and not leftovers(out), leftovers(out)
        scenes = json.loads((out / "run.json").read_text())["scenes"]
        assert scenes["a"]["status"] == "done" and "c" not in scenes
        subprocess.run(["mount", "-o", "remount,size=64m", str(disk)], check=True)
        r = invoke(*args, "-o", str(out))
        assert r.exit_code == 0, r.output
        scenes = json.loads((out / "run.json").read_text())["scenes"]
        assert scenes["a"].get("skipped") and scenes["b"]["blocks_resumed"] == scenes["b"]["blocks"]
        assert {e["status"] for e in scenes.values()} == {"done"}


# ------------------------------------------------------ the classifier, on its own


def test_output_failure_tells_a_full_disk_from_other_errors(tmp_path) -> None:
    from rasterio.errors import RasterioIOError

    from tilesegd.errors import EXIT_OUTPUT, OutputError, output_failure

    out = tmp_path / "out"
    out.mkdir()
    f = out / "b" / "mask.tif"
    for code in (errno.ENOSPC, errno.EDQUOT):
        err = output_failure(OSError(code, os.strerror(code)), f, writing=True)
        assert isinstance(err, OutputError) and err.exit_code == EXIT_OUTPUT
        assert str(err).startswith(f"{f}: disk full") and "rerun" in str(err)
    denied = output_failure(PermissionError(errno.EACCES, "Permission denied"), f, writing=True)
    assert str(denied).startswith(f"{f}: cannot be written") and "permissions" in str(denied)
    # GDAL's "Write failed" carries no errno: on a disk with room it is not called full
    gdal = output_failure(gdal_write_failed(str(f)), f, writing=True)
    assert "cannot be written" in str(gdal) and "Write error at scanline" in str(gdal)
    # a scene's error seen by the ledger (not known to come from a write): only output
    # failures count; a bad input or a bug lets the other scenes go on
    assert output_failure(RasterioIOError("Read failed. TIFFReadEncodedTile() failed"), out) is None
    elsewhere = PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "in.tif"))
    assert output_failure(elsewhere, out) is None
    assert output_failure(ValueError("a bug"), f, writing=True) is None
    inside = OSError(errno.ENOENT, "No such file or directory", str(out / "b" / "pred.zarr"))
    assert str(output_failure(inside, out)).startswith(f"{out / 'b' / 'pred.zarr'}: cannot be")
    assert str(output_failure(OSError(errno.ENOSPC, "No space left"), out)).startswith(
        f"{out}: disk full"
    )


def test_gdal_write_failed_on_a_real_full_disk_is_a_full_disk(tmp_path) -> None:
    """What GDAL really raises on a full disk, classified by the free space left."""
    from tilesegd.errors import output_failure

    with tmpfs(tmp_path / "disk", "1m") as disk:
        path = disk / "mask.tif"
        profile = dict(driver="GTiff", width=2000, height=2000, count=1, dtype="uint8")
        data = np.random.default_rng(0).integers(0, 255, (2000, 2000), dtype=np.uint8)
        try:
            with rasterio.open(path, "w", **profile) as dst:
                dst.write(data, 1)
        except Exception as exc:  # whatever GDAL raises (RasterioIOError, CPLE_...)
            caught = exc
        else:
            pytest.fail("a 4 MB GeoTIFF fitted on a 1 MiB tmpfs")
        assert getattr(caught, "errno", None) is None  # no ENOSPC to go by
        err = output_failure(caught, path, writing=True)
        assert str(err).startswith(f"{path}: disk full") and "MiB free" in str(err), err

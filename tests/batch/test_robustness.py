"""Every bad input, bad model file and output failure of issue 5, thrown at the `tilesegd run`
CLI (click's CliRunner, in-process) with files generated in a temporary folder.

For a bad scene the promises are: a one-line error naming the file and the cause, a ``failed``
entry with the reason in ``run.json``, no ``DIR/<scene>/`` folder, no row in ``summary.csv``,
exit code 4, and the good scenes in the same run still finish. A bad model file stops the run
before any scene with exit code 3 and never runs code it carries. A full disk stops the run
with exit code 6 and removes temporary files; a rerun resumes.
"""

from __future__ import annotations

import csv
import errno
import json
import pickle
import shutil
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from click.testing import CliRunner
from conftest import TinyConvNet, disk_full_after, make_raster, smooth_image, spec_for
from rasterio.transform import Affine

from tilesegd.cli.main import cli
from tilesegd.model.model_file import META_NAME, file_sha256, save_model

GEOM = ["--tile-size", "64", "--overlap", "16", "--block-size", "64", "--workers", "2"]


def invoke(*args: str):
    return CliRunner().invoke(cli, ["-q", *args], catch_exceptions=False)


def run_cli(inputs: Path, model: Path, out: Path, *extra: str):
    return invoke("run", "-i", str(inputs), "-m", str(model), "-o", str(out), *GEOM, *extra)


def read_run(out: Path) -> dict:
    return json.loads((out / "run.json").read_text())


def summary_scenes(out: Path) -> set[str]:
    with open(out / "summary.csv", newline="") as f:
        return {r["scene"] for r in csv.DictReader(f)}


def leftovers(out: Path) -> list[Path]:
    """Temporary files anywhere under ``out``."""
    return [p for p in out.rglob("*") if ".tmp" in p.name or ".old-" in p.name]


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("model")
    return save_model(TinyConvNet(3, 4), d / "tiny.ts", spec_for(4, 3, multiple=2, tile_size=64))


# ---------------------------------------------------------------- generated bad scenes


def tiny_tiff_header(path: Path, width: int, height: int) -> Path:
    """A 138-byte classic TIFF declaring ``width`` x ``height`` 8-bit pixels in one strip."""
    n = 9
    data_at = 8 + 2 + 12 * n + 4
    entries = [
        (256, 4, width),  # ImageWidth
        (257, 4, height),  # ImageLength
        (258, 3, 8),  # BitsPerSample
        (259, 3, 1),  # Compression: none
        (262, 3, 1),  # Photometric: min-is-black
        (273, 4, data_at),  # StripOffsets
        (277, 3, 1),  # SamplesPerPixel
        (278, 4, height),  # RowsPerStrip
        (279, 4, 16),  # StripByteCounts
    ]
    b = b"II*\x00" + struct.pack("<IH", 8, n)
    for tag, typ, val in entries:
        b += struct.pack(
            "<HHII" if typ == 4 else "<HHIHH", tag, typ, 1, val, *(() if typ == 4 else (0,))
        )
    path.write_bytes(b + struct.pack("<I", 0) + bytes(16))
    return path


def truncated_geotiff(path: Path) -> Path:
    """A tiled, DEFLATE GeoTIFF cut in the middle of a tile in the middle of the image."""
    make_raster(
        path,
        smooth_image(300, 260, seed=3),
        tiled=True,
        blockxsize=64,
        blockysize=64,
        compress="deflate",
    )
    with rasterio.open(path) as ds:
        off = int(ds.get_tag_item("BLOCK_OFFSET_2_2", "TIFF", bidx=1))
        size = int(ds.get_tag_item("BLOCK_SIZE_2_2", "TIFF", bidx=1))
    with open(path, "r+b") as f:
        f.truncate(off + size // 2)
    return path


def vrt_xml(source: str, width: int = 60, height: int = 50) -> str:
    """A 3-band VRT reading ``source``."""
    bands = "".join(
        f'  <VRTRasterBand dataType="Byte" band="{b}">\n'
        f'    <SimpleSource><SourceFilename relativeToVRT="0">{source}</SourceFilename>'
        f"<SourceBand>{b}</SourceBand></SimpleSource>\n  </VRTRasterBand>\n"
        for b in (1, 2, 3)
    )
    return f'<VRTDataset rasterXSize="{width}" rasterYSize="{height}">\n{bands}</VRTDataset>\n'


#: scene name -> (words the error must contain)
BAD = {
    "empty": ("empty.tif", "0 bytes"),
    "text": ("text.tif", "not a readable raster"),
    "noise": ("noise.png", "not a readable raster"),
    "truncated": ("truncated.tif", "truncated"),
    "cutpng": ("cutpng.png", "truncated"),
    "nogeoref": ("nogeoref.tif", "no georeferencing"),
    "identity": ("identity.tif", "corrupt georeferencing"),
    "zeropixel": ("zeropixel.tif", "corrupt georeferencing"),
    "disguised": ("disguised.tif", "really a GDAL VRT"),
    "remote": ("remote.vrt", "network"),
    "huge": ("huge.tif", "pixel budget"),
    "twoband": ("twoband.tif", "2 band(s)"),
}
GOOD = ("good", "floats", "one", "allnodata", "allnan")


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("scenes")
    rng = np.random.default_rng(0)
    img = smooth_image(123, 97)
    img[:, :20, :30] = 0
    make_raster(d / "good.tif", img, nodata=0)
    f = smooth_image(70, 81, seed=1).astype(np.float32)
    f[0, 5:15, 5:15] = np.nan
    f[1, 30:40, 50:60] = np.inf
    f[2, 50:60, 10:20] = -np.inf
    make_raster(d / "floats.tif", f)
    make_raster(d / "one.tif", np.full((3, 1, 1), 77, np.uint8))
    make_raster(d / "allnodata.tif", np.zeros((3, 90, 70), np.uint8), nodata=0)
    make_raster(d / "allnan.tif", np.full((3, 40, 33), np.nan, np.float32))
    # the bad ones
    (d / "empty.tif").write_bytes(b"")
    (d / "text.tif").write_text("this is a shopping list, not an image\n" * 20)
    (d / "noise.png").write_bytes(rng.integers(0, 256, 5000, dtype=np.uint8).tobytes())
    truncated_geotiff(d / "truncated.tif")
    make_raster(d / "png_src.png", smooth_image(120, 90, seed=4), crs=None)
    (d / "cutpng.png").write_bytes(
        (d / "png_src.png").read_bytes()[: 3 * (d / "png_src.png").stat().st_size // 5]
    )
    (d / "png_src.png").unlink()
    make_raster(d / "nogeoref.tif", smooth_image(40, 50), crs=None)
    make_raster(d / "identity.tif", smooth_image(40, 50), transform=Affine.identity())
    make_raster(
        d / "zeropixel.tif", smooth_image(40, 50), transform=Affine(0, 0, 5e5, 0, 0, 4.65e6)
    )
    (d / "disguised.tif").write_text(vrt_xml(str(d / "good.tif")))
    (d / "remote.vrt").write_text(vrt_xml("/vsicurl/https://example.invalid/scene.tif"))
    tiny_tiff_header(d / "huge.tif", 150_000, 150_000)
    make_raster(d / "twoband.tif", smooth_image(40, 50, bands=2))
    for p in d.glob("*.aux.xml"):
        p.unlink()
    return d


@pytest.fixture(scope="module")
def bad_run(scenes: Path, model: Path, tmp_path_factory):
    out = tmp_path_factory.mktemp("bad") / "out"
    r = run_cli(scenes, model, out)
    return r, out, read_run(out)


def test_bad_scenes_fail_alone_and_good_ones_finish(bad_run) -> None:
    r, out, run = bad_run
    assert r.exit_code == 4, r.output
    assert "Traceback" not in r.output
    assert {n for n, e in run["scenes"].items() if e["status"] == "done"} == set(GOOD)
    assert {n for n, e in run["scenes"].items() if e["status"] == "failed"} == set(BAD)
    assert run["status"] == "failed"
    assert summary_scenes(out) == set(GOOD)
    assert not leftovers(out)
    assert not any((out / ".tilesegd" / "work").glob("*/mask.tif"))


@pytest.mark.parametrize("name", sorted(BAD))
def test_each_bad_scene_has_one_clear_error(bad_run, name: str) -> None:
    r, out, run = bad_run
    filename, cause = BAD[name]
    entry = run["scenes"][name]
    assert entry["status"] == "failed"
    assert filename in entry["error"] and cause in entry["error"], entry["error"]
    assert "\n" not in entry["error"]
    lines = [ln for ln in r.output.splitlines() if ln.startswith(f"FAILED {name}:")]
    assert len(lines) == 1 and filename in lines[0] and cause in lines[0]
    assert not (out / name).exists()  # nothing at a final path
    assert name not in summary_scenes(out)


def test_nan_and_inf_are_nodata_never_argmax_garbage(bad_run, scenes: Path) -> None:
    _, out, run = bad_run
    with rasterio.open(scenes / "floats.tif") as src:
        finite = np.isfinite(src.read()).all(axis=0)
    with rasterio.open(out / "floats" / "mask.tif") as m:
        mask = m.read(1)
    assert (~finite).sum() == 300
    assert (mask[~finite] == 255).all()
    assert (mask[finite] < 4).all()
    with open(out / "floats" / "areas.csv", newline="") as f:
        assert sum(int(r["pixels"]) for r in csv.DictReader(f)) == finite.sum()
    assert run["scenes"]["floats"]["nodata_pixels"] == 300


@pytest.mark.parametrize("name", ["allnodata", "allnan"])
def test_all_nodata_scene_gives_nodata_mask_zero_areas_and_no_model_call(bad_run, name) -> None:
    _, out, run = bad_run
    entry = run["scenes"][name]
    assert entry["status"] == "done"
    assert entry["tiles_run"] == 0 and entry["tiles_skipped"] > 0
    with rasterio.open(out / name / "mask.tif") as m:
        assert (m.read(1) == 255).all()
    with open(out / name / "areas.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4
    assert all(int(r["pixels"]) == 0 and float(r["area_m2"]) == 0 for r in rows)


def test_one_pixel_scene(bad_run) -> None:
    _, out, run = bad_run
    with rasterio.open(out / "one" / "mask.tif") as m:
        assert m.shape == (1, 1) and m.read(1)[0, 0] < 4
    assert run["scenes"]["one"]["valid_pixels"] == 1


def test_options_accept_what_is_refused_by_default(scenes: Path, model: Path, tmp_path) -> None:
    d = tmp_path / "in"
    d.mkdir()
    for n in ("nogeoref.tif", "identity.tif", "disguised.tif"):
        shutil.copy(scenes / n, d / n)
    r = run_cli(d, model, tmp_path / "o", "--allow-no-georef", "--allow-vrt")
    assert r.exit_code == 0, r.output
    for n in ("nogeoref", "identity"):
        with rasterio.open(tmp_path / "o" / n / "mask.tif") as m:
            assert m.crs is None and m.shape == (40, 50)
    with rasterio.open(tmp_path / "o" / "disguised" / "mask.tif") as m:
        assert m.shape == (50, 60)
    # the pixel budget is configurable: a 123 x 97 scene is over 0.01 megapixels
    r = run_cli(scenes / "good.tif", model, tmp_path / "o2", "--max-megapixels", "0.01")
    assert r.exit_code == 4 and "pixel budget" in r.output
    assert not (tmp_path / "o2" / "good").exists()


# ---------------------------------------------------------------- model files


class Payload:
    """Unpickling this runs code that creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').close()",))


def rewrite_zip(src: Path, dst: Path, replace: dict) -> Path:
    """Copy a zip archive, passing members whose name ends with a key through its function."""
    with zipfile.ZipFile(src) as zi, zipfile.ZipFile(dst, "w") as zo:
        for name in zi.namelist():
            data = zi.read(name)
            for suffix, fn in replace.items():
                if name.endswith(suffix):
                    data = fn(data)
            zo.writestr(name, data)
    return dst


@pytest.fixture(scope="module")
def pt2_model(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("pt2")
    return save_model(TinyConvNet(3, 4), d / "tiny.pt2", spec_for(4, 3, multiple=2, tile_size=64))


def _use_pickle(config: bytes) -> bytes:
    c = json.loads(config)
    first = next(iter(c["config"]))
    c["config"][first]["use_pickle"] = True
    return json.dumps(c).encode()


def _opaque(config: bytes) -> bytes:
    return json.dumps(
        {"config": {"obj": {"path_name": "opaque_obj_0", "use_pickle": True, "is_param": False}}}
    ).encode()


PICKLE_CASES = [
    "torchscript_data_pkl",
    "torchscript_constants_pkl",
    "pt2_pickled_weight",
    "pt2_pickled_sample_inputs",
    "pt2_opaque_object",
    "torch_save_checkpoint",
    "raw_pickle_ckpt",
]


def make_payload_model(kind: str, ts: Path, pt2: Path, d: Path, marker: Path) -> Path:
    evil = pickle.dumps(Payload(marker), protocol=2)
    meta = next(
        zipfile.ZipFile(ts).read(n) for n in zipfile.ZipFile(ts).namelist() if n.endswith(META_NAME)
    )
    if kind == "torchscript_data_pkl":
        return rewrite_zip(ts, d / "a.ts", {"/data.pkl": lambda b: evil})
    if kind == "torchscript_constants_pkl":
        return rewrite_zip(ts, d / "b.ts", {"/constants.pkl": lambda b: evil})
    if kind == "pt2_pickled_weight":
        return rewrite_zip(
            pt2,
            d / "c.pt2",
            {"weights_config.json": _use_pickle, "/weights/weight_0": lambda b: evil},
        )
    if kind == "pt2_pickled_sample_inputs":
        return rewrite_zip(pt2, d / "d.pt2", {"sample_inputs/model.pt": lambda b: evil})
    if kind == "pt2_opaque_object":
        p = rewrite_zip(pt2, d / "e.pt2", {"constants_config.json": _opaque})
        prefix = next(n for n in zipfile.ZipFile(p).namelist() if "/data/" in n).split("/data/")[0]
        with zipfile.ZipFile(p, "a") as z:
            z.writestr(f"{prefix}/data/constants/opaque_obj_0", evil)
        return p
    if kind == "torch_save_checkpoint":
        p = d / "f.pt"
        torch.save({"state_dict": Payload(marker)}, p)
        with zipfile.ZipFile(p, "a") as z:  # even with metadata it is refused
            z.writestr(f"f/extra/{META_NAME}", meta)
        return p
    p = d / "g.ckpt"
    p.write_bytes(evil)
    return p


@pytest.mark.parametrize("kind", PICKLE_CASES)
def test_pickled_code_in_a_model_file_never_runs(kind, model, pt2_model, scenes, tmp_path) -> None:
    marker = tmp_path / "PAYLOAD_RAN"
    # the payload is live: plain unpickling does create the marker
    pickle.loads(pickle.dumps(Payload(marker), protocol=2))
    assert marker.exists()
    marker.unlink()
    bad = make_payload_model(kind, model, pt2_model, tmp_path, marker)
    r = run_cli(scenes / "good.tif", bad, tmp_path / "o")
    assert r.exit_code == 3, r.output
    assert not marker.exists(), "the model file's pickled code ran"
    msg = [ln for ln in r.output.splitlines() if ln.startswith("Error:")]
    assert len(msg) == 1 and bad.name in msg[0], r.output
    assert "Traceback" not in r.output
    assert not (tmp_path / "o" / "good").exists()


def _class_mismatch(model: Path, d: Path) -> Path:
    net = torch.jit.trace(TinyConvNet(3, 3).eval(), torch.zeros(1, 3, 64, 64))
    meta = json.dumps(spec_for(4, 3, multiple=2, tile_size=64).to_dict())
    p = d / "mismatch.ts"
    torch.jit.save(net, str(p), _extra_files={META_NAME: meta})
    return p


def _truncated(model: Path, d: Path) -> Path:
    (d / "cut.ts").write_bytes(model.read_bytes()[: model.stat().st_size // 2])
    return d / "cut.ts"


def _corrupt(model: Path, d: Path) -> Path:
    return rewrite_zip(model, d / "corrupt.ts", {"/data.pkl": lambda b: bytes(len(b))})


def _noise(model: Path, d: Path) -> Path:
    (d / "noise.ts").write_bytes(np.random.default_rng(1).bytes(4000))
    return d / "noise.ts"


def _empty(model: Path, d: Path) -> Path:
    (d / "empty.ts").write_bytes(b"")
    return d / "empty.ts"


@pytest.mark.parametrize(
    "make, cause",
    [
        (_truncated, "truncated or corrupt"),
        (_corrupt, "cannot load the network"),
        (_noise, "truncated or corrupt"),
        (_empty, "0 bytes"),
        (_class_mismatch, "lists 4 classes"),
    ],
    ids=["truncated", "corrupt", "noise", "empty", "class_count"],
)
def test_bad_model_file_stops_before_any_scene(make, cause, model, scenes, tmp_path) -> None:
    bad = make(model, tmp_path)
    out = tmp_path / "o"
    r = run_cli(scenes / "good.tif", bad, out)
    assert r.exit_code == 3, r.output
    msg = [ln for ln in r.output.splitlines() if ln.startswith("Error:")]
    assert len(msg) == 1 and bad.name in msg[0] and cause in msg[0], r.output
    assert "Traceback" not in r.output
    assert not (out / "good").exists() and not (out / "run.json").exists()


def test_model_sha256_pin(model, scenes, tmp_path) -> None:
    r = run_cli(scenes / "good.tif", model, tmp_path / "a", "--model-sha256", "0" * 64)
    assert r.exit_code == 3 and "SHA-256" in r.output and model.name in r.output
    assert not (tmp_path / "a" / "good").exists()
    r = run_cli(scenes / "good.tif", model, tmp_path / "b", "--model-sha256", file_sha256(model))
    assert r.exit_code == 0, r.output
    assert read_run(tmp_path / "b")["model"]["sha256"] == file_sha256(model)


# ---------------------------------------------------------------- disk full, stale files


def test_disk_full_in_a_block_write_stops_cleanly_and_resumes(model, scenes, tmp_path) -> None:
    inp = tmp_path / "in"
    inp.mkdir()
    for n in ("good.tif", "floats.tif"):
        shutil.copy(scenes / n, inp / n)
    ref = tmp_path / "ref"
    assert run_cli(inp, model, ref).exit_code == 0
    out = tmp_path / "out"
    with disk_full_after(3):
        r = run_cli(inp, model, out, "--workers", "1")
    assert r.exit_code == 6, r.output
    msg = [ln for ln in r.output.splitlines() if ln.startswith("Error:")]
    assert len(msg) == 1 and "disk full" in msg[0] and "rerun" in msg[0], r.output
    run = read_run(out)
    assert run["status"] == "failed"
    assert run["scenes"]["floats"]["status"] == "failed"
    assert "disk full" in run["scenes"]["floats"]["error"]
    assert "good" not in run["scenes"]  # the run stopped: nothing else can be written
    assert not (out / "floats").exists() and not leftovers(out)
    done = (out / ".tilesegd" / "work" / "floats" / "blocks.done").read_text().splitlines()
    assert len(done) == 3
    r = run_cli(inp, model, out)
    assert r.exit_code == 0, r.output
    assert read_run(out)["scenes"]["floats"]["blocks_resumed"] == 3
    for n in ("good", "floats"):
        with rasterio.open(ref / n / "mask.tif") as a, rasterio.open(out / n / "mask.tif") as b:
            assert np.array_equal(a.read(), b.read())


def test_disk_full_in_gdal_removes_temporary_files(model, scenes, tmp_path, monkeypatch) -> None:
    import rasterio.shutil as rshutil

    def full(src, dst, **kw):
        Path(dst).write_bytes(b"half a COG")  # GDAL had started writing
        raise rasterio.errors.RasterioIOError(f"{dst}: Free disk space available is 0 bytes")

    monkeypatch.setattr(rshutil, "copy", full)
    out = tmp_path / "out"
    r = run_cli(scenes / "good.tif", model, out)
    assert r.exit_code == 6, r.output
    assert "disk full" in r.output and "Traceback" not in r.output
    assert not leftovers(out) and not (out / "good").exists()
    assert read_run(out)["scenes"]["good"]["status"] == "failed"


def test_run_json_write_failure_is_an_output_error(model, scenes, tmp_path, monkeypatch) -> None:
    import tilesegd.batch.ledger as ledger

    def full(path, data):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(ledger, "write_json_atomic", full)
    r = run_cli(scenes / "good.tif", model, tmp_path / "o")
    assert r.exit_code == 6 and "disk full" in r.output and "Traceback" not in r.output


def _unshare_works() -> bool:
    if not sys.platform.startswith("linux") or shutil.which("unshare") is None:
        return False
    r = subprocess.run(
        ["unshare", "--user", "--map-root-user", "--mount", "true"], capture_output=True
    )
    return r.returncode == 0


@pytest.mark.skipif(not _unshare_works(), reason="needs unprivileged user+mount namespaces")
def test_real_full_disk_on_a_tiny_tmpfs(model, scenes, tmp_path) -> None:
    """A real ENOSPC: the output directory is a 160 KiB tmpfs (in a private mount namespace),
    then the same command is rerun after the tmpfs grows."""
    inp = tmp_path / "in"
    inp.mkdir()
    make_raster(inp / "a.tif", smooth_image(300, 280, seed=5))
    make_raster(inp / "b.tif", smooth_image(290, 310, seed=6))
    mnt, res = tmp_path / "mnt", tmp_path / "res"
    mnt.mkdir()
    res.mkdir()
    cmd = [sys.executable, "-m", "tilesegd", "-q", "run", "-i", str(inp), "-m", str(model)]
    cmd += ["-o", str(mnt / "out"), *GEOM, "--compress", "none"]
    run = " ".join(cmd)
    script = f"""
        set -u
        mount -t tmpfs -o size=160k tmpfs {mnt}
        {run} 2> {res}/err1; echo $? > {res}/rc1
        (cd {mnt}/out && find . | sort) > {res}/files1
        cp {mnt}/out/run.json {res}/run1.json 2>/dev/null
        mount -o remount,size=64m {mnt}
        {run} 2> {res}/err2; echo $? > {res}/rc2
        cp {mnt}/out/run.json {res}/run2.json
        (cd {mnt}/out && find . | sort) > {res}/files2
    """
    subprocess.run(
        ["unshare", "--user", "--map-root-user", "--mount", "bash", "-c", script],
        check=True,
        timeout=300,
    )
    err1 = (res / "err1").read_text()
    assert (res / "rc1").read_text().strip() == "6", err1
    assert "disk" in err1.lower() and "Traceback" not in err1
    files1 = (res / "files1").read_text().split()
    assert not [f for f in files1 if ".tmp" in f], files1
    # a scene folder at a final path is complete (it arrives in one rename) or absent
    for scene in ("a", "b"):
        if f"./{scene}" in files1:
            for f in ("mask.tif", "areas.csv", "pred.zarr/zarr.json"):
                assert f"./{scene}/{f}" in files1, files1
    assert (res / "rc2").read_text().strip() == "0", (res / "err2").read_text()
    run2 = json.loads((res / "run2.json").read_text())
    assert {e["status"] for e in run2["scenes"].values()} == {"done"}


def test_stale_temporary_files_are_removed(model, scenes, tmp_path) -> None:
    out = tmp_path / "out"
    stale = [
        out / ".run.json.tmp-4242",
        out / ".run.json.1a2b3c4d.tmp",  # tilesegd.atomic.write_text's temporary name
        out / ".catalog.json.5e6f7a8b.tmp",
        out / ".summary.csv.tmp-4242",
        out / ".tilesegd" / "work" / "good" / ".mask.tif.tmp-gtiff",
        out / ".tilesegd" / "work" / "gone" / ".mask.tif.tmp-cog",
        out / ".tilesegd" / "trash" / "good.4242" / "mask.tif",
    ]
    for p in stale:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"stale")
    r = run_cli(scenes / "good.tif", model, out)
    assert r.exit_code == 0, r.output
    assert not [p for p in stale if p.exists()]
    assert not leftovers(out)
    assert not any((out / ".tilesegd" / "trash").iterdir())


def test_half_written_done_log_line_does_not_count(tmp_path) -> None:
    from tilesegd.outputs.zarr_store import ZarrMaskStore

    attrs = {"fingerprint": "x"}
    store = ZarrMaskStore(tmp_path / "pred.zarr", (10, 10), (5, 5), attrs, 2)
    store.log.path.write_text("0\n1\n12")  # killed while appending "123\n"
    store = ZarrMaskStore(tmp_path / "pred.zarr", (10, 10), (5, 5), attrs, 2)
    assert store.done_blocks() == {0, 1}
    assert store.log.path.read_text() == "0\n1\n"


def test_a_changed_input_is_recomputed_not_skipped(model, tmp_path) -> None:
    inp = tmp_path / "in"
    inp.mkdir()
    make_raster(inp / "s.tif", smooth_image(60, 70, seed=1))
    out = tmp_path / "out"
    assert run_cli(inp, model, out).exit_code == 0
    make_raster(inp / "s.tif", np.zeros((3, 60, 70), np.uint8), nodata=0)  # replaced
    assert run_cli(inp, model, out).exit_code == 0
    entry = read_run(out)["scenes"]["s"]
    assert not entry.get("skipped")
    with rasterio.open(out / "s" / "mask.tif") as m:
        assert (m.read(1) == 255).all()


def test_failed_scene_message_is_one_line_on_stderr(model, scenes, tmp_path) -> None:
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "tilesegd",
            "-q",
            "run",
            "-i",
            str(scenes / "text.tif"),
            "-i",
            str(scenes / "one.tif"),
            "-m",
            str(model),
            "-o",
            str(tmp_path / "o"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 4, r.stderr
    assert "Traceback" not in r.stderr
    failed = [ln for ln in r.stderr.splitlines() if "text.tif" in ln]
    assert failed and all("not a readable raster" in ln for ln in failed)
    assert (tmp_path / "o" / "one" / "mask.tif").is_file()

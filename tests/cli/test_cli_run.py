"""`tilesegd run` end to end through click's CliRunner on generated rasters."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
import zarr
from click.testing import CliRunner
from conftest import make_raster, read_png, shared_data, smooth_image
from rasterio.transform import from_origin

from tilesegd.cli.main import cli
from tilesegd.errors import EXIT_MODEL
from tilesegd.model.model_file import DEFAULT_PALETTE


def invoke(*args: str):
    return CliRunner().invoke(cli, ["-q", *args], catch_exceptions=False)


def read_areas(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture
def scenes(tmp_path: Path) -> Path:
    d = tmp_path / "scenes"
    d.mkdir()
    img = smooth_image(203, 157)
    img[:, :40, :50] = 0  # a nodata corner (all bands 0)
    make_raster(
        d / "odd.tif",
        img,
        nodata=0,
        crs="EPSG:32633",
        transform=from_origin(500000.0, 4650000.0, 0.5, 0.5),
    )
    make_raster(
        d / "one.tif",
        np.full((3, 1, 1), 100, np.uint8),
        crs="EPSG:2056",
        transform=from_origin(2.5e6, 1.2e6, 0.1, 0.1),
    )
    return d


def test_run_writes_every_output(tmp_path: Path, scenes: Path, tiny_model) -> None:
    model = tiny_model(num_classes=4)
    out = tmp_path / "out"
    r = invoke(
        "run",
        "--input",
        str(scenes),
        "--model",
        str(model),
        "--output",
        str(out),
        "--tile-size",
        "64",
        "--overlap",
        "16",
        "--block-size",
        "96",
        "--save-probs",
    )
    assert r.exit_code == 0, r.output
    with rasterio.open(scenes / "odd.tif") as src:
        valid = src.dataset_mask() > 0
        crs, transform = src.crs, src.transform
    d = out / "odd"
    with rasterio.open(d / "mask.tif") as m:
        assert (m.height, m.width) == (203, 157) and m.dtypes[0] == "uint8"
        assert m.crs == crs and m.transform.almost_equals(transform)
        assert m.nodata == 255
        mask = m.read(1)
        cmap = m.colormap(1)
        # the model's class colours (spec_for gives none: the default palette), nodata clear
        assert [cmap[i] for i in range(4)] == [(*DEFAULT_PALETTE[i], 255) for i in range(4)]
        assert cmap[255][3] == 0
        assert json.loads(m.tags()["CLASS_NAMES"]) == [f"class{i}" for i in range(4)]
        assert m.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        assert "TILESEGD_CONFIG" in m.tags()
    assert (mask[~valid] == 255).all() and (mask[valid] < 4).all()
    g = zarr.open_group(d / "pred.zarr", mode="r")
    np.testing.assert_array_equal(g["mask"][:], mask)
    assert g.attrs["crs"] == crs.to_wkt()
    assert g.attrs["transform"] == list(transform.to_gdal())
    assert [c["name"] for c in g.attrs["classes"]] == [f"class{i}" for i in range(4)]
    probs = g["probs"][:]
    assert probs.shape == (4, 203, 157) and probs.dtype == np.float16
    # the mask's class has the top probability (up to float16 rounding of near-ties)
    p_mask = np.take_along_axis(probs, np.where(valid, mask, 0)[None].astype(np.int64), 0)[0]
    assert (probs.max(0) - p_mask)[valid].max() <= 2e-3
    np.testing.assert_allclose(probs.astype(np.float32).sum(0)[valid], 1.0, atol=1e-2)
    rows = read_areas(d / "areas.csv")
    assert list(rows[0]) == ["class_id", "class_name", "pixels", "area_m2", "area_ha", "percent"]
    assert sum(int(r["pixels"]) for r in rows) == valid.sum()
    assert sum(float(r["area_m2"]) for r in rows) == pytest.approx(valid.sum() * 0.25)
    png = read_png(d / "preview.png")
    assert png.shape[0] >= 300 and png.shape[1] > png.shape[0]  # two panels side by side
    assert len(np.unique(png.reshape(-1, 3), axis=0)) >= 16  # not blank
    for colour in DEFAULT_PALETTE[1:4]:  # the legend's class colours
        assert (np.abs(png.astype(int) - colour).max(-1) <= 1).sum() >= 30, colour
    # the 1x1 scene
    with rasterio.open(out / "one" / "mask.tif") as m:
        assert (m.height, m.width) == (1, 1)
    summary = read_areas(out / "summary.csv")
    assert {r["scene"] for r in summary} == {"odd", "one"} and len(summary) == 8
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "done" and run["model"]["sha256"]
    assert run["config"]["tile_size"] == 64
    assert {e["status"] for e in run["scenes"].values()} == {"done"}
    assert run["scenes"]["odd"]["megapixels_per_s"] > 0
    # nothing left behind in the work folder
    assert not any((out / ".tilesegd" / "work").iterdir())


def test_rerun_skips_finished_scenes(tmp_path, scenes, tiny_model) -> None:
    args = [
        "run",
        "-i",
        str(scenes),
        "-m",
        str(tiny_model()),
        "-o",
        str(tmp_path / "o"),
        "--tile-size",
        "64",
        "--overlap",
        "16",
    ]
    assert invoke(*args).exit_code == 0
    before = (tmp_path / "o" / "odd" / "mask.tif").stat().st_mtime_ns
    assert invoke(*args).exit_code == 0
    run = json.loads((tmp_path / "o" / "run.json").read_text())
    assert run["scenes"]["odd"]["skipped"] is True
    assert (tmp_path / "o" / "odd" / "mask.tif").stat().st_mtime_ns == before
    assert invoke(*args, "--overwrite").exit_code == 0
    assert (tmp_path / "o" / "odd" / "mask.tif").stat().st_mtime_ns != before


def test_alpha_band_is_nodata_and_plain_png_has_no_georef(tmp_path, tiny_model) -> None:
    d = tmp_path / "in"
    d.mkdir()
    rgba = np.concatenate([smooth_image(70, 90), np.full((1, 70, 90), 255, np.uint8)])
    rgba[3, :, :30] = 0
    make_raster(d / "rgba.tif", rgba, photometric="RGB", alpha="YES")
    make_raster(d / "frame.png", smooth_image(45, 77), crs=None)
    out = tmp_path / "out"
    r = invoke("run", "-i", str(d), "-m", str(tiny_model()), "-o", str(out))
    assert r.exit_code == 0, r.output
    with rasterio.open(out / "rgba" / "mask.tif") as m:
        mask = m.read(1)
    assert (mask[:, :30] == 255).all() and (mask[:, 30:] < 4).all()
    with rasterio.open(out / "frame" / "mask.tif") as m:
        assert m.crs is None and m.shape == (45, 77)
    rows = read_areas(out / "frame" / "areas.csv")
    assert all(r["area_m2"] == "" for r in rows)
    assert sum(int(r["pixels"]) for r in rows) == 45 * 77


def test_dtypes_and_band_selection(tmp_path, tiny_model) -> None:
    d = tmp_path / "in"
    d.mkdir()
    make_raster(d / "u16.tif", (smooth_image(50, 60, 4).astype(np.uint16) * 200))
    f32 = smooth_image(50, 60).astype(np.float32)
    f32[0, 10:20, 10:20] = np.nan
    make_raster(d / "f32.tif", f32)
    make_raster(d / "i16.tif", smooth_image(33, 35).astype(np.int16) - 100)
    out = tmp_path / "out"
    r = invoke("run", "-i", str(d), "-m", str(tiny_model()), "-o", str(out))
    assert r.exit_code == 0, r.output
    with rasterio.open(out / "f32" / "mask.tif") as m:
        mask = m.read(1)
    assert (mask[10:20, 10:20] == 255).all() and (mask[25:, 25:] < 4).all()


def test_band_mismatch_fails_that_scene_only(tmp_path, tiny_model) -> None:
    d = tmp_path / "in"
    d.mkdir()
    make_raster(d / "grey.tif", smooth_image(40, 40, 1).astype(np.uint16))
    make_raster(d / "rgb.tif", smooth_image(40, 40))
    out = tmp_path / "out"
    r = invoke("run", "-i", str(d), "-m", str(tiny_model()), "-o", str(out))
    assert r.exit_code == 4
    assert "grey.tif" in r.output and "1 band" in r.output and "Traceback" not in r.output
    run = json.loads((out / "run.json").read_text())
    assert run["scenes"]["grey"]["status"] == "failed"
    assert run["scenes"]["rgb"]["status"] == "done"
    assert not (out / "grey").exists()
    # mapping the single band three times makes it runnable
    r = invoke(
        "run",
        "-i",
        str(d / "grey.tif"),
        "-m",
        str(tiny_model()),
        "-o",
        str(tmp_path / "o2"),
        "--bands",
        "1,1,1",
    )
    assert r.exit_code == 0, r.output


def test_config_file_and_flag_precedence(tmp_path, scenes, tiny_model) -> None:
    cfg = tmp_path / "run.yaml"
    cfg.write_text(
        f"input: [{scenes}]\nmodel: {tiny_model()}\noutput: {tmp_path / 'o'}\n"
        "tile-size: 64\noverlap: 16\nbatch_size: 3\n"
    )
    r = invoke("run", "--config", str(cfg), "--batch-size", "5")
    assert r.exit_code == 0, r.output
    run = json.loads((tmp_path / "o" / "run.json").read_text())
    assert run["config"]["tile_size"] == 64 and run["config"]["batch_size"] == 5
    bad = tmp_path / "bad.yaml"
    bad.write_text("tile_sise: 64\n")
    r = invoke("run", "--config", str(bad))
    assert r.exit_code == 1 and "tile_sise" in r.output and "bad.yaml" in r.output


def test_usage_errors_are_messages(tmp_path, tiny_model) -> None:
    r = invoke(
        "run", "-i", str(tmp_path / "missing"), "-m", str(tiny_model()), "-o", str(tmp_path / "o")
    )
    assert r.exit_code == 1 and "no such file" in r.output.lower()
    scene = make_raster(tmp_path / "s.tif", smooth_image(20, 30))
    missing = tmp_path / "nope.ts"
    r = invoke("run", "-i", str(scene), "-m", str(missing), "-o", str(tmp_path / "o"))
    assert r.exit_code == EXIT_MODEL, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and str(missing) in lines[0] and "not found" in lines[0]


def test_help_is_instant_and_imports_no_torch() -> None:
    code = (
        "import sys; from tilesegd.cli.main import cli\n"
        "try:\n    cli(['run', '--help'])\nexcept SystemExit:\n    pass\n"
        "assert 'torch' not in sys.modules and 'rasterio' not in sys.modules"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "--tile-size" in r.stdout and "pixels" in r.stdout


def test_real_scenes(tmp_path, tiny_model) -> None:
    scenes = shared_data() / "scenes"
    out = tmp_path / "out"
    inputs = [
        "naip_m_4709963_se_14_1_20200831.tif",
        "landsat7_bahamas_rgb.tif",
        "spacenet_atlanta_pan_uint16.tif",
    ]
    args = [a for f in inputs for a in ("-i", str(scenes / f))]
    r = invoke("run", *args, "-m", str(tiny_model()), "-o", str(out), "--tile-size", "256")
    assert r.exit_code == 4  # the 1-band uint16 scene cannot feed a 3-band model
    run = json.loads((out / "run.json").read_text())
    assert run["scenes"]["spacenet_atlanta_pan_uint16"]["status"] == "failed"
    for name in ("naip_m_4709963_se_14_1_20200831", "landsat7_bahamas_rgb"):
        assert run["scenes"][name]["status"] == "done"
        with (
            rasterio.open(scenes / f"{name}.tif") as src,
            rasterio.open(out / name / "mask.tif") as m,
        ):
            assert m.shape == src.shape and m.crs == src.crs
            assert m.transform.almost_equals(src.transform)
            valid = int((src.dataset_mask() > 0).sum())
        rows = read_areas(out / name / "areas.csv")
        assert sum(int(r["pixels"]) for r in rows) == valid
    # landsat: the rotated nodata collar is excluded; 300 m pixels
    rows = read_areas(out / "landsat7_bahamas_rgb" / "areas.csv")
    total = sum(float(r["area_m2"]) for r in rows)
    assert total == pytest.approx(
        sum(int(r["pixels"]) for r in rows) * 300.0379 * 300.0418, rel=1e-4
    )

"""Issue 20's "noise and small untruths": ``-q`` shows only what a user must act on, once; an
EXIF-rotated frame is named; ``--help`` and the error messages say the real figures; files are
written with the permissions the umask gives."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
import rasterio.shutil
from click.testing import CliRunner
from conftest import TinyConvNet, make_raster, smooth_image, spec_for, write_polygons
from rasterio.enums import Resampling
from rasterio.transform import from_origin
from shapely.geometry import box

from tilesegd.cli.main import cli
from tilesegd.errors import ConfigError, InputError
from tilesegd.inference.budget import CPU_BUDGET, CUDA_BUDGET_SHARE
from tilesegd.inference.geometry import resolve_geometry, warn_capped
from tilesegd.model.model_file import save_model
from tilesegd.raster.scene import open_scene

ROOT = Path(__file__).resolve().parents[2]


def measured_model(tmp_path: Path, overlap: int = 16, multiple: int = 2, **extra) -> Path:
    """A tiny model file with a measured overlap (the default tile rule applies)."""
    spec = spec_for(4, multiple=multiple, tile_size=64, overlap=overlap, **extra)
    return save_model(TinyConvNet(3, 4), tmp_path / "measured.ts", spec)


def run_quiet(*args: str) -> subprocess.CompletedProcess:
    """``python -m tilesegd -q run ...`` as a user runs it (Python's default warning filters)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    cmd = [sys.executable, "-m", "tilesegd", "-q", "run", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)


# 1. -q: no library noise ------------------------------------------------------------------


def test_quiet_run_of_plain_frames_prints_one_line_about_georeferencing(tmp_path) -> None:
    """Plain JPEG frames used to print rasterio's NotGeoreferencedWarning at every open (7 lines
    a frame) and GDAL's "overviews on palette index bands" for every mask of more than one
    overview level; ``-q`` now says once that such inputs get pixel coordinates."""
    d = tmp_path / "frames"
    d.mkdir()
    for i in range(3):  # 1100 px wide: overviews 2 and 4
        make_raster(d / f"frame{i}.jpg", smooth_image(600, 1100, seed=i), crs=None)
    r = run_quiet("-i", str(d), "-m", str(measured_model(tmp_path)), "-o", str(tmp_path / "o"))
    assert r.returncode == 0, r.stderr
    assert "NotGeoreferencedWarning" not in r.stderr
    assert "palette" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert "pixel coordinates" in lines[0] and "frame0.jpg" in lines[0]
    with rasterio.open(tmp_path / "o" / "frame2" / "mask.tif") as m:
        assert m.crs is None and m.overviews(1) == [2, 4]


def test_georeferenced_scenes_run_quietly_with_minus_q(tmp_path) -> None:
    d = tmp_path / "in"
    d.mkdir()
    make_raster(d / "a.tif", smooth_image(600, 1100), nodata=0)
    r = run_quiet("-i", str(d), "-m", str(measured_model(tmp_path)), "-o", str(tmp_path / "o"))
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""


def test_mask_overviews_equal_a_gdal_mode_build_and_keep_the_palette(tmp_path) -> None:
    """The overviews are built before the colour table is set (so GDAL has no reason to warn)
    and are exactly GDAL's MODE overviews of the class ids; every level shows the palette."""
    d = tmp_path / "in"
    d.mkdir()
    img = smooth_image(600, 1100, seed=4)
    img[:, :40, :70] = 0  # a nodata corner
    make_raster(d / "s.tif", img, nodata=0)
    model = measured_model(tmp_path)
    r = CliRunner().invoke(
        cli, ["-q", "run", "-i", str(d), "-m", str(model), "-o", str(tmp_path / "o")]
    )
    assert r.exit_code == 0, r.output
    mask_path = tmp_path / "o" / "s" / "mask.tif"
    with rasterio.open(mask_path) as m:
        mask, factors = m.read(1), m.overviews(1)
    assert factors == [2, 4]
    ref = tmp_path / "ref.tif"
    make_raster(ref, mask, crs=None, nodata=255, tiled=True, blockxsize=512, blockysize=512)
    with rasterio.open(ref, "r+") as dst:
        dst.build_overviews(factors, Resampling.mode)
    for level in range(len(factors)):
        with (
            rasterio.open(mask_path, overview_level=level) as o,
            rasterio.open(ref, overview_level=level) as e,
        ):
            assert np.array_equal(o.read(1), e.read(1))
            assert o.colorinterp[0].name == "palette" and o.colormap(1)[3][3] == 255


def test_quiet_georef_silences_only_the_not_georeferenced_warning(tmp_path) -> None:
    import warnings

    from tilesegd.raster.gdalenv import quiet_georef

    p = make_raster(tmp_path / "f.png", smooth_image(20, 30), crs=None)
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        with quiet_georef() as caught:
            rasterio.open(p).close()
            warnings.warn("something else", UserWarning, stacklevel=1)
    assert [w.category.__name__ for w in caught] == ["NotGeoreferencedWarning"]
    assert [str(w.message) for w in shown] == ["something else"]


def test_a_preview_read_from_a_jpeg_says_nothing(tmp_path, caplog) -> None:
    """Reading the scene again for the preview (a Dask run has no sampled image) passed the
    NUM_THREADS open option, which GDAL's JPEG driver warned it does not support."""
    from tilesegd.model.spec import ClassInfo
    from tilesegd.outputs.preview import write_preview

    scene = make_raster(tmp_path / "f.jpg", smooth_image(60, 80), crs=None)
    mask = make_raster(tmp_path / "mask.tif", np.zeros((60, 80), np.uint8), crs=None)
    classes = [ClassInfo(0, "a", (10, 20, 30))]
    with caplog.at_level("WARNING"):
        write_preview(tmp_path / "p.png", scene, mask, [1, 2, 3], classes, max_size=32)
    assert caplog.records == [] and (tmp_path / "p.png").is_file()


# 2. EXIF orientation ----------------------------------------------------------------------


def exif_jpeg(path: Path, height: int, width: int, orientation: int | None, seed: int = 0) -> Path:
    """A JPEG written by GDAL, with ``EXIF_Orientation`` in its EXIF block when given."""
    src = path.with_suffix(".src.tif")
    make_raster(src, smooth_image(height, width, seed=seed), crs=None)
    if orientation is not None:
        with rasterio.open(src, "r+") as ds:
            ds.update_tags(EXIF_Orientation=str(orientation))
    rasterio.shutil.copy(src, path, driver="JPEG")
    src.unlink()
    return path


def test_gdal_writes_and_reads_back_the_exif_orientation(tmp_path) -> None:
    p = exif_jpeg(tmp_path / "o6.jpg", 100, 150, 6)
    with rasterio.open(p) as ds:
        assert ds.tags()["EXIF_Orientation"] == "6" and (ds.height, ds.width) == (100, 150)
    assert open_scene(p).orientation == 6
    assert open_scene(exif_jpeg(tmp_path / "plain.jpg", 10, 20, None)).orientation == 1


def test_an_exif_rotated_frame_is_named_once_per_scene(tmp_path) -> None:
    d = tmp_path / "in"
    d.mkdir()
    exif_jpeg(d / "rotated.jpg", 100, 150, 6)
    exif_jpeg(d / "upside.jpg", 80, 60, 3, seed=1)
    exif_jpeg(d / "upright.jpg", 50, 70, 1, seed=2)
    r = run_quiet("-i", str(d), "-m", str(measured_model(tmp_path)), "-o", str(tmp_path / "o"))
    assert r.returncode == 0, r.stderr
    rotated = [ln for ln in r.stderr.splitlines() if "rotated.jpg" in ln and "Orientation" in ln]
    assert len(rotated) == 1, r.stderr
    assert "EXIF Orientation 6" in rotated[0]
    assert "150 x 100" in rotated[0] and "100 x 150" in rotated[0]
    upside = [ln for ln in r.stderr.splitlines() if "upside.jpg" in ln and "Orientation" in ln]
    assert len(upside) == 1 and "EXIF Orientation 3" in upside[0], r.stderr
    assert "upright.jpg" not in r.stderr
    with rasterio.open(tmp_path / "o" / "rotated" / "mask.tif") as m:
        assert (m.width, m.height) == (150, 100)  # the stored pixel order


def test_the_readme_says_masks_follow_the_stored_pixels() -> None:
    text = (ROOT / "README.md").read_text()
    inputs = text.split("### Inputs")[1].split("\n### ")[0]
    assert "EXIF" in inputs and "Orientation" in inputs and "stored" in inputs


# 3. --help tells how the tile is chosen ---------------------------------------------------


def option_help(text: str, option: str) -> str:
    """The help paragraph of ``option`` in click's ``--help`` output, on one line."""
    block = text.split(f"  {option}")[1]
    block = re.split(r"\n  -", block)[0]
    return " ".join(block.split())


def test_tile_size_help_says_how_the_default_is_chosen() -> None:
    r = CliRunner().invoke(cli, ["run", "--help"])
    assert r.exit_code == 0
    tile = option_help(r.output, "--tile-size")
    assert "usually" not in tile and "512" not in tile
    assert "halo" in tile and "memory budget" in tile and "per scene" in tile
    assert "throughput" in tile and "--memory-budget" in tile
    assert "tile_size" in tile  # files without a measured overlap keep theirs
    budget = option_help(r.output, "--memory-budget")
    assert f"{CPU_BUDGET / 2**30:g} GiB" in budget and "eighth" in budget
    assert f"{CUDA_BUDGET_SHARE:.0%}" in budget


# 4. file modes follow the umask ------------------------------------------------------------


@pytest.fixture
def group_umask():
    old = os.umask(0o002)
    try:
        yield 0o002
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("suffix", [".ts", ".pt2"])
def test_model_files_are_written_with_the_umasks_mode(tmp_path, group_umask, suffix) -> None:
    path = save_model(TinyConvNet(3, 4), tmp_path / f"m{suffix}", spec_for(4, multiple=2))
    assert mode(path) == 0o664
    os.umask(0o022)
    path = save_model(TinyConvNet(3, 4), tmp_path / f"again{suffix}", spec_for(4, multiple=2))
    assert mode(path) == 0o644


def test_checkpoints_are_written_with_the_umasks_mode(tmp_path, group_umask) -> None:
    from tilesegd.training.checkpoint import save_checkpoint

    net = TinyConvNet(3, 4)
    path = save_checkpoint(tmp_path / "best.ckpt", net.state_dict(), {"epoch": 1})
    assert mode(path) == 0o664


def test_every_output_of_a_run_follows_the_umask(tmp_path, group_umask) -> None:
    """Files written by SQLite (GeoPackages: 0644 whatever the umask), the lock file and
    everything else: group-writable under umask 002."""
    d = tmp_path / "in"
    d.mkdir()
    t = from_origin(500000.0, 4650000.0, 0.5, 0.5)
    make_raster(d / "a.tif", smooth_image(90, 120), transform=t)
    zones = write_polygons(tmp_path / "zones.gpkg", [box(500000, 4649970, 500030, 4650000)])
    out = tmp_path / "o"
    args = ["-q", "run", "-i", str(d), "-m", str(measured_model(tmp_path)), "-o", str(out)]
    r = CliRunner().invoke(cli, [*args, "--vector", "--zones", str(zones), "--save-confidence"])
    assert r.exit_code == 0, r.output
    wrong = {
        str(p.relative_to(out)): oct(mode(p))
        for p in out.rglob("*")
        if mode(p) != (0o775 if p.is_dir() else 0o664)
    }
    assert wrong == {}
    assert (out / "a" / "polygons.gpkg").is_file() and (out / "a" / "zones.gpkg").is_file()


def test_no_writer_creates_its_temporary_file_with_mkstemp() -> None:
    """mkstemp makes 0600 files; every atomic writer goes through tilesegd.atomic."""
    users = [
        str(p.relative_to(ROOT))
        for p in (ROOT / "tilesegd").rglob("*.py")
        if "mkstemp(" in p.read_text()
    ]
    assert users == []


# 5. messages that agree with themselves --------------------------------------------------


def test_a_tile_off_the_multiple_suggests_a_tile_the_model_can_use(caplog) -> None:
    spec = spec_for(4, multiple=32, tile_size=512, overlap=192)
    warn_capped.cache_clear()
    with caplog.at_level("WARNING"), pytest.raises(ConfigError) as exc:
        resolve_geometry(spec, tile_size=100)
    msg = str(exc.value)
    assert "--tile-size 100" in msg and "multiple of the model's multiple (32)" in msg
    assert "384" in msg  # the smallest seamless tile, as the overlap warning says
    assert "384 or more" in msg and "96" not in msg, msg
    assert caplog.records == []  # no overlap warning about a tile that will not run
    plain = spec_for(4, multiple=32, tile_size=512)
    with pytest.raises(ConfigError, match=r"try 96 or 128"):
        resolve_geometry(plain, tile_size=100)


def test_a_small_tile_warns_with_the_tile_it_needs(caplog) -> None:
    spec = spec_for(4, multiple=32, tile_size=512, overlap=192)
    warn_capped.cache_clear()
    with caplog.at_level("WARNING"):
        g = resolve_geometry(spec, tile_size=160)
    assert g.overlap == 128
    (rec,) = [r for r in caplog.records if "seamless" in r.getMessage()]
    assert "160" in rec.getMessage() and "128-px" in rec.getMessage()
    assert "--tile-size 384 or more" in rec.getMessage()


@pytest.mark.parametrize(
    ("budget", "said"),
    [(0.1, ("0.42 megapixels", "budget of 0.1 megapixels")), (0.4199, ("0.42 ", "0.4199"))],
)
def test_the_pixel_budget_message_prints_the_real_figures(tmp_path, budget, said) -> None:
    p = make_raster(tmp_path / "f.tif", smooth_image(600, 700))
    with pytest.raises(InputError) as exc:
        open_scene(p, max_megapixels=budget)
    msg = str(exc.value)
    assert "700 x 600 pixels" in msg and all(s in msg for s in said), msg
    found = re.search(r"\(([\d.,]+) megapixels\), over the pixel budget of ([\d.,]+)", msg)
    over, limit = found.groups()
    assert float(over.replace(",", "")) > float(limit.replace(",", "")), msg


def test_megapixel_figures_differ_where_the_values_do() -> None:
    from tilesegd.raster.scene import megapixel_figures

    assert megapixel_figures(0.42, 0.1) == ("0.42", "0.1")
    assert megapixel_figures(20_000.4, 20_000) == ("20,000.4", "20,000")
    assert megapixel_figures(25_000, 20_000) == ("25,000", "20,000")
    assert megapixel_figures(1234.5678, 1234.5) == ("1,235", "1,234")
    assert megapixel_figures(0.0123456, 0.01234) == ("0.01235", "0.01234")

"""Models at their own resolution (issue 16 part 1): GSD-driven resampling in `tilesegd run`."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner
from conftest import IdentityNet, disk_full_after, make_raster, spec_for
from rasterio.transform import from_origin

from tilesegd.api import run
from tilesegd.cli.main import cli
from tilesegd.model.model_file import save_model
from tilesegd.raster.resample import GridResample, ResampledSource, nearest_index
from tilesegd.raster.scene import open_scene
from tilesegd.raster.tiling import Win

K = 6
GEOMETRY = {"tile_size": 32, "overlap": 8, "block_size": 40, "preview_size": 0}


def blocks_image(h: int, w: int, cell: int, seed: int = 0) -> np.ndarray:
    """(3, H, W) uint8: constant ``cell`` x ``cell`` squares of values 0..K-1 in band 1."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, K, (-(-h // cell), -(-w // cell)))
    band = np.kron(coarse, np.ones((cell, cell), np.int64))[:h, :w].astype(np.uint8)
    return np.stack([band, band, band])


@pytest.fixture
def model(tmp_path: Path):
    """IdentityNet (class = band-1 value) whose model file records ``gsd``."""

    def make(gsd: float | None) -> Path:
        extra = {"gsd": gsd} if gsd is not None else {}
        spec = spec_for(K, 3, input_scale=1.0, multiple=1, tile_size=32, **extra)
        return save_model(IdentityNet(K), tmp_path / f"id_{gsd}.ts", spec)

    return make


def scene(tmp_path: Path, img: np.ndarray, pixel: float, nodata=None, name="s") -> Path:
    d = tmp_path / f"in_{name}"
    d.mkdir(exist_ok=True)
    t = from_origin(500000.0, 4650000.0, pixel, pixel)
    return make_raster(d / f"{name}.tif", img, transform=t, nodata=nodata)


def read(path: Path) -> tuple[np.ndarray, object]:
    with rasterio.open(path) as ds:
        return ds.read(1), ds.transform


def test_windows_of_the_model_grid_equal_one_gdal_read_of_the_whole_scene(tmp_path) -> None:
    img = np.random.default_rng(1).integers(1, 250, (3, 90, 110), dtype=np.uint8)
    path = scene(tmp_path, img, 0.25)
    s = open_scene(path)
    plan = GridResample((90, 110), (45, 55), (0.25, 0.25), 0.5)
    src = ResampledSource(s, (1, 2, 3), plan)
    with rasterio.open(path) as ds:
        whole = ds.read(out_shape=(3, 45, 55), resampling=rasterio.enums.Resampling.average)
    for win in (Win(0, 0, 45, 55), Win(7, 13, 20, 17), Win(-5, 40, 20, 30)):
        data, valid = src.read(win)
        r0, c0 = max(win.row_off, 0), max(win.col_off, 0)
        r1, c1 = min(win.row_off + win.height, 45), min(win.col_off + win.width, 55)
        inner = data[:, r0 - win.row_off : r1 - win.row_off, c0 - win.col_off : c1 - win.col_off]
        np.testing.assert_array_equal(inner, whole[:, r0:r1, c0:c1])
        assert valid.sum() == (r1 - r0) * (c1 - c0)  # padding outside the grid is nodata
    src.close()


def test_a_model_grid_pixel_is_nodata_when_nodata_covers_half_its_footprint(tmp_path) -> None:
    rng = np.random.default_rng(3)
    img = rng.integers(1, 250, (3, 60, 80), dtype=np.uint8)
    hole = rng.random((60, 80)) < 0.45
    img[:, hole] = 0
    path = scene(tmp_path, img, 0.25, nodata=0)
    src = ResampledSource(
        open_scene(path), (1, 2, 3), GridResample((60, 80), (30, 40), (0.25, 0.25), 0.5)
    )
    _, valid = src.read(Win(0, 0, 30, 40))
    frac = (~hole).reshape(30, 2, 40, 2).mean(axis=(1, 3))  # exact 2 x 2 footprints
    np.testing.assert_array_equal(valid, frac >= 0.5)
    src.close()


def test_nearest_index_takes_the_pixel_under_each_centre() -> None:
    assert nearest_index(4, 2, 0, 4).tolist() == [0, 0, 1, 1]
    assert nearest_index(2, 4, 0, 2).tolist() == [1, 3]  # a centre on a boundary: the next
    assert nearest_index(3, 5, 0, 3).tolist() == [0, 2, 4]
    assert nearest_index(10, 3, 7, 10).tolist() == [2, 2, 2]


@pytest.mark.parametrize(("pixel", "model_gsd", "cell"), [(0.25, 0.5, 4), (1.0, 0.5, 3)])
def test_run_resamples_to_the_model_gsd_and_writes_back_on_the_scene_grid(
    tmp_path, model, pixel, model_gsd, cell
) -> None:
    h, w = 97, 123
    img = blocks_image(h, w, cell)
    path = scene(tmp_path, img, pixel)
    doc = run(input=[str(path)], model=str(model(model_gsd)), output=str(tmp_path / "o"),
              progress=False, **GEOMETRY)  # fmt: skip
    e = doc["scenes"]["s"]
    f = pixel / model_gsd
    assert e["resample_factor"] == pytest.approx(f, rel=0.02) and e["model_gsd_m"] == model_gsd
    assert e["scene_gsd_m"] == pytest.approx(pixel)
    mh, mw = e["model_grid"]
    assert (mh, mw) == (round(h * f), round(w * f))
    ids, transform = read(tmp_path / "o" / "s" / "mask.tif")
    with rasterio.open(path) as ds:
        assert ids.shape == (h, w) and transform == ds.transform  # aligned with the input
        # the reference: GDAL's resampling of band 1 to the model grid, identity classes,
        # then the model-grid pixel under each scene pixel's centre
        how = rasterio.enums.Resampling.average if f < 1 else rasterio.enums.Resampling.bilinear
        model_band = ds.read(1, out_shape=(mh, mw), resampling=how)
    ref = np.clip(model_band, 0, K - 1)[
        np.ix_(nearest_index(h, mh, 0, h), nearest_index(w, mw, 0, w))
    ]
    np.testing.assert_array_equal(ids, ref)
    with open(tmp_path / "o" / "s" / "areas.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert sum(float(r["area_m2"]) for r in rows) == pytest.approx(h * w * pixel * pixel)


def test_tolerance_and_resample_off_run_the_scene_as_it_is(tmp_path, model) -> None:
    img = blocks_image(50, 60, 5)
    near = scene(tmp_path, img, 0.52, name="near")  # 4 % from the model's 0.5 m
    far = scene(tmp_path, img, 0.25, name="far")
    m = model(0.5)
    doc = run(input=[str(near), str(far)], model=str(m), output=str(tmp_path / "a"),
              progress=False, **GEOMETRY)  # fmt: skip
    assert doc["scenes"]["near"]["resample_factor"] == 1.0
    assert doc["scenes"]["far"]["resample_factor"] == pytest.approx(0.5)
    off = run(input=[str(far)], model=str(m), output=str(tmp_path / "b"), progress=False,
              resample="off", **GEOMETRY)  # fmt: skip
    assert off["scenes"]["far"]["resample_factor"] == 1.0
    np.testing.assert_array_equal(read(tmp_path / "b" / "far" / "mask.tif")[0], img[0])
    strict = run(input=[str(near)], model=str(m), output=str(tmp_path / "c"), progress=False,
                 gsd_tolerance=0.01, **GEOMETRY)  # fmt: skip
    assert strict["scenes"]["near"]["resample_factor"] == pytest.approx(0.52 / 0.5, rel=0.02)


def test_gsd_option_overrides_the_model_and_frames_need_scene_gsd(tmp_path, model) -> None:
    img = blocks_image(40, 48, 4)
    d = tmp_path / "frames"
    d.mkdir()
    make_raster(d / "f.png", img)
    m = model(None)  # no gsd in the file
    doc = run(input=[str(d)], model=str(m), output=str(tmp_path / "a"), progress=False,
              gsd=0.5, **GEOMETRY)  # fmt: skip
    assert doc["scenes"]["f"]["resample_factor"] == 1.0  # a frame has no GSD of its own
    doc = run(input=[str(d)], model=str(m), output=str(tmp_path / "b"), progress=False,
              gsd=0.5, scene_gsd=0.25, **GEOMETRY)  # fmt: skip
    e = doc["scenes"]["f"]
    assert e["resample_factor"] == pytest.approx(0.5) and e["model_grid"] == [20, 24]
    assert read(tmp_path / "b" / "f" / "mask.tif")[0].shape == (40, 48)


def test_resampled_runs_resume_and_keep_nodata(tmp_path, model) -> None:

    from tilesegd.errors import OutputError

    img = blocks_image(120, 130, 6)
    img[:, 90:, :] = 250
    path = scene(tmp_path, img, 0.25, nodata=250)
    opts = dict(input=[str(path)], model=str(model(0.5)), progress=False, **GEOMETRY)
    run(output=str(tmp_path / "ref"), **opts)
    with disk_full_after(2), pytest.raises(OutputError):
        run(output=str(tmp_path / "o"), **opts)
    doc = run(output=str(tmp_path / "o"), **opts)
    assert doc["scenes"]["s"]["blocks_resumed"] == 2
    a, b = read(tmp_path / "ref" / "s" / "mask.tif")[0], read(tmp_path / "o" / "s" / "mask.tif")[0]
    np.testing.assert_array_equal(a, b)
    assert (a[92:] == 255).all() and (a[:88] != 255).all()
    assert not (tmp_path / "o" / "s" / "model_grid").exists()


def test_resample_options_are_checked(tmp_path, model) -> None:
    img = blocks_image(20, 20, 4)
    path = scene(tmp_path, img, 0.5)
    r = CliRunner().invoke(cli, ["-q", "run", "-i", str(path), "-m", str(model(0.5)), "-o",
                                 str(tmp_path / "o"), "--gsd", "-1"])  # fmt: skip
    assert r.exit_code == 1 and "gsd must be metres per pixel > 0" in r.output
    r = CliRunner().invoke(cli, ["-q", "run", "-i", str(path), "-m", str(model(0.5)), "-o",
                                 str(tmp_path / "o"), "--resample", "sometimes"])  # fmt: skip
    assert r.exit_code == 2


def test_an_aoi_with_resampling_keeps_the_pixel_centre_rule_on_the_scene_grid(
    tmp_path, model
) -> None:
    import shapely
    from conftest import write_polygons

    h, w = 90, 100
    img = blocks_image(h, w, 6, seed=5)
    path = scene(tmp_path, img, 0.25)
    poly_px = shapely.Polygon([(10.3, 7.2), (80.6, 12.1), (60.2, 70.7), (15.4, 60.9)])
    t = from_origin(500000.0, 4650000.0, 0.25, 0.25)
    poly = shapely.transform(poly_px, lambda xy: np.column_stack(
        [t.c + t.a * xy[:, 0], t.f + t.e * xy[:, 1]]))  # fmt: skip
    aoi = write_polygons(tmp_path / "aoi.gpkg", [poly])
    opts = dict(input=[str(path)], model=str(model(0.5)), progress=False, **GEOMETRY)
    run(output=str(tmp_path / "full"), **opts)
    run(output=str(tmp_path / "aoi"), aoi=str(aoi), **opts)
    full = read(tmp_path / "full" / "s" / "mask.tif")[0]
    got = read(tmp_path / "aoi" / "s" / "mask.tif")[0]
    rows, cols = np.mgrid[0:h, 0:w]
    inside = shapely.contains_xy(poly_px, cols + 0.5, rows + 0.5)
    np.testing.assert_array_equal(got, np.where(inside, full, 255))


@pytest.mark.parametrize("scale", [0.5, 2.0])
def test_a_model_trained_at_a_scale_runs_and_evaluates_plain_frames_at_it(tmp_path, scale) -> None:
    """``train --scale F`` records ``scale``: ``run`` and ``eval`` resample plain frames by F
    (GDAL average / bilinear, like the training pairs) and report at the frame's own size."""
    from tilesegd.api import evaluate
    from tilesegd.errors import DatasetError
    from tilesegd.raster.regrid import Grid, read_image, to_native

    h, w = 41, 58
    img = blocks_image(h, w, 4, seed=3)
    d, md = tmp_path / "frames", tmp_path / "masks"
    d.mkdir()
    md.mkdir()
    frame = make_raster(d / "f.png", img)
    make_raster(md / "f.png", img[:1])  # the identity network's truth at native resolution
    spec = spec_for(K, 3, input_scale=1.0, multiple=1, tile_size=32, scale=scale)
    m = save_model(IdentityNet(K), tmp_path / "scaled.ts", spec)
    doc = run(input=[str(d)], model=str(m), output=str(tmp_path / "o"), progress=False,
              **GEOMETRY)  # fmt: skip
    e = doc["scenes"]["f"]
    mh, mw = round(h * scale), round(w * scale)
    assert e["model_grid"] == [mh, mw] and e["resample_factor"] == pytest.approx(scale, rel=0.02)
    ids = read(tmp_path / "o" / "f" / "mask.tif")[0]
    # the reference: the frame read onto the model grid by GDAL, identity classes, back by
    # the model-grid pixel under each frame pixel's centre
    with rasterio.open(frame) as ds:
        how = rasterio.enums.Resampling.average if scale < 1 else rasterio.enums.Resampling.bilinear
        band = ds.read(1, out_shape=(mh, mw), resampling=how)
    ref = np.clip(band, 0, K - 1)[np.ix_(nearest_index(h, mh, 0, h), nearest_index(w, mw, 0, w))]
    np.testing.assert_array_equal(ids, ref)
    off = run(input=[str(d)], model=str(m), output=str(tmp_path / "off"), progress=False,
              resample="off", **GEOMETRY)  # fmt: skip
    assert off["scenes"]["f"]["resample_factor"] == 1.0
    # eval: predicted on the same grid, scored at the mask's native size
    got = evaluate(model=m, images=d, masks=md, output=tmp_path / "ev", device="cpu",
                   tile_size=32, overlap=8)  # fmt: skip
    assert got["resampled_images"] == 1 and got["model_scale"] == scale
    image, valid = read_image(frame, Grid(h, w, mh, mw), (1, 2, 3))
    pred = to_native(np.clip(image[0], 0, K - 1).astype(np.uint8), (h, w))
    assert got["pixel_accuracy"] == pytest.approx((pred == img[0]).mean())
    assert got["pixels"] == h * w
    # a band the frames lack is a clear error on the resampled read too
    bad = spec_for(K, 3, input_scale=1.0, multiple=1, tile_size=32, scale=scale, bands=[1, 2, 4])
    m4 = save_model(IdentityNet(K), tmp_path / "bands.ts", bad)
    with pytest.raises(DatasetError, match=r"f\.png: has 3 band\(s\)"):
        evaluate(model=m4, images=d, masks=md, output=tmp_path / "ev4", device="cpu",
                 tile_size=32, overlap=8)  # fmt: skip

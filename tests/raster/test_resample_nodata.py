"""Input nodata stays nodata through resampling (issue 20 point 5).

A scene segmented on a model grid (``--gsd`` or the model file's ``scale``) is written back on
its own grid by the model-grid pixel under each scene pixel's centre; at a nodata edge a model
pixel holds scene pixels of both kinds, and used to give its class to the input's nodata
pixels. Whatever the model grid, a pixel that is nodata in the input (nodata value, internal
mask, NaN) is 255 in the mask and the confidence, so in the areas, zones and polygons.

The rule for valid pixels is unchanged: a valid scene pixel takes the class of the model-grid
pixel under its centre, and is 255 only when that model-grid pixel is nodata by the half-
footprint rule (:class:`tilesegd.raster.resample.ResampledSource`: nodata covers at least half of
its footprint when shrinking, the scene pixel under its centre is nodata when enlarging).
"""

from __future__ import annotations

import csv
import json
import math
import tempfile
from pathlib import Path

import numpy as np
import pytest
import rasterio
import shapely
from conftest import TinyConvNet, examples, make_raster, spec_for, to_map, write_polygons
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from rasterio.transform import from_origin

from tilesegd.api import run
from tilesegd.model.model_file import save_model
from tilesegd.raster.resample import GridResample, ResampledSource, nearest_index
from tilesegd.raster.scene import open_scene
from tilesegd.raster.tiling import Win

pytestmark = pytest.mark.filterwarnings("ignore::rasterio.errors.NodataShadowWarning")
K = 4
GEOMETRY = {"tile_size": 32, "overlap": 8, "block_size": 40, "preview_size": 0}
LAYOUTS = ("block", "stripes", "scattered", "mixed")
CARRIERS = ("value", "mask", "nan")  # nodata value 0, internal mask, NaN in float32


def nodata_layout(layout: str, h: int, w: int, seed: int) -> np.ndarray:
    """(H, W) bool validity: rectangles, row / column stripes, scattered pixels or all."""
    rng = np.random.default_rng(seed)
    valid = np.ones((h, w), bool)
    if layout in ("block", "mixed"):
        for _ in range(rng.integers(1, 4)):
            r0, c0 = rng.integers(0, h), rng.integers(0, w)
            valid[r0 : r0 + rng.integers(1, h), c0 : c0 + rng.integers(1, w)] = False
    if layout == "stripes":
        period, width = int(rng.integers(2, 12)), int(rng.integers(1, 6))
        rows = rng.random() < 0.5
        stripe = np.arange(h if rows else w) % period < width
        valid &= ~stripe[:, None] if rows else ~stripe[None, :]
    if layout in ("scattered", "mixed"):
        valid &= rng.random((h, w)) >= rng.choice([0.02, 0.2, 0.6])
    return valid


def write_scene(path: Path, valid: np.ndarray, carrier: str, pixel: tuple[float, float],
                seed: int) -> Path:  # fmt: skip
    """A 3-band GeoTIFF whose invalid pixels are ``~valid``, carried by ``carrier``."""
    rng = np.random.default_rng(seed)
    img = rng.integers(1, 256, (3, *valid.shape), dtype=np.uint8)
    t = from_origin(500000.0, 4650000.0, *pixel)
    if carrier == "value":
        img[:, ~valid] = 0
        return make_raster(path, img, transform=t, nodata=0)
    if carrier == "nan":
        f = img.astype(np.float32) / 255
        f[int(seed) % 3, ~valid] = np.nan  # one band is enough
        return make_raster(path, f, transform=t)
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True):
        make_raster(path, img, transform=t)
        with rasterio.open(path, "r+") as ds:
            ds.write_mask(np.where(valid, 255, 0).astype(np.uint8))
    return path


def input_valid(path: Path) -> np.ndarray:
    """(H, W) bool: the input's dataset mask, and finite pixels of float bands."""
    with rasterio.open(path) as ds:
        valid = ds.dataset_mask() > 0
        if ds.dtypes[0].startswith("float"):
            valid &= np.isfinite(ds.read()).all(0)
    return valid


def model_grid_valid(path: Path, model_grid: list[int]) -> np.ndarray:
    """(H, W) bool: the model-grid validity (the half-footprint rule) of the model-grid pixel
    under each scene pixel's centre."""
    scene = open_scene(path)
    h, w = scene.height, scene.width
    mh, mw = model_grid
    src = ResampledSource(scene, (1, 2, 3), GridResample((h, w), (mh, mw), None, None))
    try:
        valid = src.read(Win(0, 0, mh, mw))[1]
    finally:
        src.close()
    return valid[np.ix_(nearest_index(h, mh, 0, h), nearest_index(w, mw, 0, w))]


def read_outputs(d: Path) -> tuple[np.ndarray, np.ndarray, int]:
    """(mask, confidence, the pixels areas.csv counts) of one scene's output folder."""
    with rasterio.open(d / "mask.tif") as ds:
        ids = ds.read(1)
    with rasterio.open(d / "confidence.tif") as ds:
        conf = ds.read(1)
    with open(d / "areas.csv", newline="") as fh:
        counted = sum(int(r["pixels"]) for r in csv.DictReader(fh))
    return ids, conf, counted


@st.composite
def cases(draw) -> dict:
    """A scene size, a nodata layout and carrier, and a resampling factor in [0.25, 4]."""
    factor = draw(st.one_of(st.sampled_from([0.25, 0.5, 0.8, 1.25, 2.0, 4.0]),
                            st.floats(-2, 2).map(lambda e: 2.0**e)))  # fmt: skip
    return {
        "h": draw(st.integers(8, 64)),
        "w": draw(st.integers(8, 64)),
        "layout": draw(st.sampled_from(LAYOUTS)),
        "carrier": draw(st.sampled_from(CARRIERS)),
        "factor": factor,
        "how": draw(st.sampled_from(["gsd", "scale"])),
        "aspect": draw(st.sampled_from([1.0, 1.0, 0.75, 1.4])),  # --gsd: pixel rows / cols
        "seed": draw(st.integers(0, 2**16)),
    }


def check_case(case: dict, root: Path) -> None:
    """Run ``case`` through ``tilesegd run``; input nodata is 255 in every output."""
    f, aspect = case["factor"], case["aspect"] if case["how"] == "gsd" else 1.0
    valid_in = nodata_layout(case["layout"], case["h"], case["w"], case["seed"])
    path = write_scene(root / "in" / "s.tif", valid_in, case["carrier"], (0.5, 0.5 * aspect),
                       case["seed"])  # fmt: skip
    valid = input_valid(path)
    if case["carrier"] != "nan":
        np.testing.assert_array_equal(valid, valid_in)  # the carrier says what was meant
    extra = {"scale": f} if case["how"] == "scale" else {}
    spec = spec_for(K, 3, multiple=2, tile_size=32, **extra)
    model = save_model(TinyConvNet(3, K, seed=case["seed"]), root / "m.ts", spec)
    opts = {"gsd": 0.5 / f} if case["how"] == "gsd" else {}
    doc = run(input=[str(path)], model=str(model), output=str(root / "o"), progress=False,
              save_confidence=True, **opts, **GEOMETRY)  # fmt: skip
    e = doc["scenes"]["s"]
    ids, conf, counted = read_outputs(root / "o" / "s")
    assert (ids[~valid] == 255).all(), f"{int((ids[~valid] != 255).sum())} nodata pixels classed"
    assert (conf[~valid] == 255).all()
    kept = ids != 255
    assert not (kept & ~valid).any()
    if e["resample_factor"] == 1:  # within --gsd-tolerance: run as it is
        np.testing.assert_array_equal(kept, valid)
    elif case["carrier"] != "nan":
        # a valid pixel is 255 only where the model-grid pixel under its centre is nodata.
        # (Not asserted for NaN: GDAL's bilinear makes a model pixel NaN when a NaN scene
        # pixel is in its kernel, and near a read window's edge which one that is depends on
        # the window, so the whole-grid read below is not the pipeline's per-block one.)
        np.testing.assert_array_equal(kept, valid & model_grid_valid(path, e["model_grid"]))
    np.testing.assert_array_equal(conf != 255, kept)
    assert ids[kept].max(initial=0) < K
    assert counted == e["valid_pixels"] == int(kept.sum())
    assert e["nodata_pixels"] == ids.size - int(kept.sum())


@settings(
    max_examples=examples(12),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(case=cases())
@example(case={"h": 60, "w": 50, "layout": "block", "carrier": "value", "factor": 0.8,
               "how": "gsd", "aspect": 1.0, "seed": 7})  # fmt: skip
@example(case={"h": 41, "w": 37, "layout": "stripes", "carrier": "mask", "factor": 2.6,
               "how": "scale", "aspect": 1.0, "seed": 3})  # fmt: skip
@example(case={"h": 41, "w": 37, "layout": "scattered", "carrier": "nan", "factor": 2.6,
               "how": "gsd", "aspect": 1.0, "seed": 3})  # fmt: skip
def test_input_nodata_is_nodata_in_every_output_whatever_the_model_grid(case: dict) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "in").mkdir()
        check_case(case, root)


def test_issue_20_5_a_100_px_nodata_block_at_a_coarser_gsd(tmp_path: Path) -> None:
    """The reported case: 400 x 400 px of 0.25 m, a 100 x 100 nodata block, ``--gsd 0.3``
    (a 333 x 333 model grid): 10,000 nodata pixels (the mask had 9,801), 150,000 counted in
    areas.csv (was 150,199), zones and polygons alike."""
    rng = np.random.default_rng(0)
    img = rng.integers(1, 256, (3, 400, 400), dtype=np.uint8)
    img[:, 100:200, 100:200] = 0
    (tmp_path / "in").mkdir()
    t = from_origin(500000.0, 4650000.0, 0.25, 0.25)
    path = make_raster(tmp_path / "in" / "s.tif", img, transform=t, nodata=0)
    model = save_model(TinyConvNet(3, K), tmp_path / "m.ts",
                       spec_for(K, 3, multiple=2, tile_size=64))  # fmt: skip
    zone = to_map(shapely.box(0, 0, 400, 400), t)
    zones = write_polygons(tmp_path / "z.gpkg", [zone], fields={"name": ["all"]})
    doc = run(input=[str(path)], model=str(model), output=str(tmp_path / "o"), progress=False,
              gsd=0.3, save_confidence=True, vector=True, zones=str(zones), zone_field="name",
              preview_size=0)  # fmt: skip
    e = doc["scenes"]["s"]
    assert e["model_grid"] == [333, 333]
    d = tmp_path / "o" / "s"
    ids, conf, counted = read_outputs(d)
    assert int((ids == 255).sum()) == 10_000 and (ids[100:200, 100:200] == 255).all()
    assert int((conf == 255).sum()) == 10_000
    assert counted == e["valid_pixels"] == 150_000
    with open(d / "zones.csv", newline="") as fh:
        assert sum(int(r["pixels"]) for r in csv.DictReader(fh)) == 150_000
    import pyogrio

    meta, _, geoms, fields = pyogrio.raw.read(d / "polygons.gpkg")
    pixels = fields[list(meta["fields"]).index("pixels")]
    assert int(pixels.sum()) == 150_000
    hole = to_map(shapely.box(100, 100, 200, 200), t)
    covered = shapely.area(shapely.intersection(shapely.from_wkb(geoms), hole)).sum()
    assert math.isclose(covered, 0.0, abs_tol=1e-6)  # no polygon reaches into the block
    assert json.loads((tmp_path / "o" / "run.json").read_text())["scenes"]["s"]["status"] == "done"


@pytest.mark.parametrize("carrier", [*CARRIERS, "none"])
def test_scene_source_valid_equals_the_validity_of_a_full_read(tmp_path, carrier) -> None:
    """``SceneSource.valid`` (the scene-grid nodata of outputs made on a model grid) gives the
    validity ``read`` gives, for windows inside, across and outside the scene."""
    from tilesegd.raster.reader import SceneSource

    valid = nodata_layout("mixed", 30, 40, seed=5)
    if carrier == "none":
        path = make_raster(tmp_path / "s.tif", np.full((3, 30, 40), 7, np.uint8))
    else:
        path = write_scene(tmp_path / "s.tif", valid, carrier, (0.5, 0.5), seed=5)
    src = SceneSource(open_scene(path), (1, 2, 3))
    try:
        for win in (Win(0, 0, 30, 40), Win(3, 5, 11, 13), Win(-4, 30, 12, 20), Win(40, 0, 3, 3)):
            np.testing.assert_array_equal(src.valid(win), src.read(win)[1])
        want = np.ones((30, 40), bool) if carrier == "none" else valid
        np.testing.assert_array_equal(src.valid(Win(0, 0, 30, 40)), want)
    finally:
        src.close()

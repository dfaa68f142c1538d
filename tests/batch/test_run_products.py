"""`tilesegd run` with an area of interest, zones, confidence and polygons (issues 14 and 15):
end to end on small generated scenes with a real CRS, against independent computations."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
import shapely
import torch
from click.testing import CliRunner
from conftest import (
    disk_full_after,
    make_raster,
    smooth_image,
    spec_for,
    to_lonlat,
    to_map,
    write_polygons,
)

from tilesegd.api import run
from tilesegd.cli.main import cli
from tilesegd.errors import ConfigError, OutputError
from tilesegd.model.model_file import save_model

GEOMETRY = {"tile_size": 32, "overlap": 8, "block_size": 48, "preview_size": 0}
H, W = 130, 150


class Pixelwise(torch.nn.Module):
    """Per-pixel logits ``x @ weight + bias`` (a 1x1 convolution with fixed weights): the
    reference is the same affine map and softmax in NumPy."""

    def __init__(self, weight: np.ndarray, bias: np.ndarray) -> None:
        super().__init__()
        k, c = weight.shape
        self.conv = torch.nn.Conv2d(c, k, 1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.from_numpy(weight).view(k, c, 1, 1))
            self.conv.bias.copy_(torch.from_numpy(bias))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


WEIGHT = np.array([[4.0, 0, 0], [0, 4.0, 0], [0, 0, 4.0], [1.0, 1.0, 1.0]], np.float32)
BIAS = np.array([0.0, 0.1, -0.1, -1.0], np.float32)


def reference(img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(ids, top-class probability) of :class:`Pixelwise` on a (3, H, W) uint8 image."""
    x = img.astype(np.float64) / 255.0
    logits = np.einsum("kc,chw->khw", WEIGHT.astype(np.float64), x) + BIAS[:, None, None]
    p = np.exp(logits - logits.max(0))
    p /= p.sum(0)
    return logits.argmax(0).astype(np.uint8), p.max(0)


@pytest.fixture
def model(tmp_path: Path) -> Path:
    spec = spec_for(4, 3, input_scale=255.0, multiple=1, tile_size=32)
    spec = type(spec).from_dict({**spec.to_dict(), "classes": ["background", "a", "b", "c"]})
    return save_model(Pixelwise(WEIGHT, BIAS), tmp_path / "pix.ts", spec)


@pytest.fixture
def scenes(tmp_path: Path) -> Path:
    d = tmp_path / "in"
    d.mkdir()
    make_raster(d / "s.tif", smooth_image(H, W, seed=4))
    return d


def read(path: Path) -> np.ndarray:
    with rasterio.open(path) as ds:
        return ds.read(1)


def centres_inside(geom_px) -> np.ndarray:
    """(H, W) bool: pixel centres inside a pixel-coordinate polygon (shapely, independent of
    rasterio's rasterizer)."""
    rows, cols = np.mgrid[0:H, 0:W]
    return shapely.contains_xy(geom_px, cols + 0.5, rows + 0.5)


def aoi_px():
    """An L-shaped AOI (pixel coordinates) whose edges fall between pixel centres."""
    return shapely.Polygon([(10.2, 5.3), (90.7, 5.3), (90.7, 60.2), (40.4, 60.2), (40.4, 110.6),
                            (10.2, 110.6)])  # fmt: skip


def run_opts(scenes: Path, model: Path, out: Path, **extra) -> dict:
    return dict(input=[str(scenes)], model=str(model), output=str(out), progress=False,
                **GEOMETRY, **extra)  # fmt: skip


def test_aoi_clips_to_pixel_centres_and_never_runs_tiles_outside(tmp_path, scenes, model) -> None:
    full = run(**run_opts(scenes, model, tmp_path / "full"))
    aoi = write_polygons(tmp_path / "aoi.gpkg", [to_map(aoi_px())])
    doc = run(**run_opts(scenes, model, tmp_path / "aoi", aoi=str(aoi)))
    inside = centres_inside(aoi_px())
    ref = read(tmp_path / "full" / "s" / "mask.tif")
    got = read(tmp_path / "aoi" / "s" / "mask.tif")
    np.testing.assert_array_equal(got, np.where(inside, ref, 255))  # seamless inside, as before
    e, f = doc["scenes"]["s"], full["scenes"]["s"]
    assert e["tiles_outside_aoi"] > 0 and e["blocks_outside_aoi"] > 0
    assert e["tiles_run"] < f["tiles_run"]
    assert e["valid_pixels"] == int(inside.sum())
    with open(tmp_path / "aoi" / "s" / "areas.csv", newline="") as fh:
        assert sum(int(r["pixels"]) for r in csv.DictReader(fh)) == int(inside.sum())


def test_a_reprojected_aoi_gives_the_same_pixels(tmp_path, scenes, model) -> None:
    utm = write_polygons(tmp_path / "utm.gpkg", [to_map(aoi_px())])
    wgs = write_polygons(tmp_path / "wgs.geojson", [to_lonlat(to_map(aoi_px()))], crs="EPSG:4326")
    run(**run_opts(scenes, model, tmp_path / "a", aoi=str(utm)))
    run(**run_opts(scenes, model, tmp_path / "b", aoi=str(wgs)))
    a, b = read(tmp_path / "a" / "s" / "mask.tif"), read(tmp_path / "b" / "s" / "mask.tif")
    np.testing.assert_array_equal(a == 255, b == 255)


def test_a_scene_outside_the_aoi_is_all_nodata_with_a_note(tmp_path, scenes, model) -> None:
    far = shapely.box(0, 0, 50, 50)  # 50 m square far from the scene (UTM origin)
    aoi = write_polygons(tmp_path / "far.gpkg", [far])
    doc = run(**run_opts(scenes, model, tmp_path / "o", aoi=str(aoi)))
    e = doc["scenes"]["s"]
    assert e["status"] == "done" and "outside the AOI" in e["note"] and e["tiles_run"] == 0
    assert (read(tmp_path / "o" / "s" / "mask.tif") == 255).all() and e["valid_pixels"] == 0


def zone_reference(ids: np.ndarray, zones_px: list) -> dict[tuple[int, int], int]:
    """{(zone index, class id): pixels}: each zone on its own, every valid pixel whose centre it
    contains (overlapping zones both count the shared pixels)."""
    out: dict[tuple[int, int], int] = {}
    for z, zone in enumerate(zones_px):
        inside = centres_inside(zone) & (ids != 255)
        for k, n in zip(*np.unique(ids[inside], return_counts=True), strict=True):
            out[(z, int(k))] = int(n)
    return out


def test_zone_areas_match_an_independent_count_with_overlaps(tmp_path, scenes, model) -> None:
    zones_px = [shapely.box(0.3, 0.3, 80.4, 70.2), shapely.box(50.6, 40.1, 149.8, 129.7)]
    zones = write_polygons(
        tmp_path / "z.gpkg", [to_map(z) for z in zones_px], fields={"name": ["west", "east"]}
    )
    run(**run_opts(scenes, model, tmp_path / "o", zones=str(zones), zone_field="name"))
    ids = read(tmp_path / "o" / "s" / "mask.tif")
    want = zone_reference(ids, zones_px)
    with open(tmp_path / "o" / "s" / "zones.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    got = {(["west", "east"].index(r["zone"]), int(r["class_id"])): int(r["pixels"]) for r in rows}
    assert {k: v for k, v in got.items() if v} == want
    for r in rows:  # 2 m pixels: 4 m2 each
        assert float(r["area_m2"]) == pytest.approx(4.0 * int(r["pixels"]))
    with open(tmp_path / "o" / "zones_summary.csv", newline="") as fh:
        summary = list(csv.DictReader(fh))
    assert sum(int(r["pixels"]) for r in summary) == sum(want.values())
    assert (tmp_path / "o" / "s" / "zones.gpkg").is_file()


def test_a_zone_spanning_two_scenes_adds_up(tmp_path, model) -> None:
    from rasterio.transform import from_origin

    d = tmp_path / "in"
    d.mkdir()
    make_raster(d / "left.tif", smooth_image(H, W, seed=1))
    make_raster(d / "right.tif", smooth_image(H, W, seed=2),
                transform=from_origin(500000.0 + 2 * W, 4650000.0, 2.0, 2.0))  # fmt: skip
    zone = shapely.box(100.2, 20.3, 220.7, 90.1)  # pixel coords of 'left', reaching 'right'
    zones = write_polygons(tmp_path / "z.gpkg", [to_map(zone)])
    run(**run_opts(d, model, tmp_path / "o", zones=str(zones)))
    total = 0
    for name, shift in (("left", 0), ("right", W)):
        ids = read(tmp_path / "o" / name / "mask.tif")
        total += sum(zone_reference(ids, [shapely.affinity.translate(zone, -shift)]).values())
    with open(tmp_path / "o" / "zones_summary.csv", newline="") as fh:
        summary = list(csv.DictReader(fh))
    assert sum(int(r["pixels"]) for r in summary) == total > 0


def test_confidence_is_the_softmax_maximum(tmp_path, scenes, model) -> None:
    doc = run(**run_opts(scenes, model, tmp_path / "o", save_confidence=True))
    with rasterio.open(scenes / "s.tif") as ds:
        img = ds.read()
    ids, p = reference(img)
    conf = read(tmp_path / "o" / "s" / "confidence.tif")
    want = np.floor(p * 100).astype(np.int64)
    assert np.abs(conf.astype(np.int64) - want).max() <= 1  # float32 vs float64 at a boundary
    assert (conf == want).mean() > 0.999
    np.testing.assert_array_equal(read(tmp_path / "o" / "s" / "mask.tif"), ids)
    assert (tmp_path / "o" / "s" / "confidence.qml").is_file()
    assert "confidence.tif" in doc["scenes"]["s"]["outputs"]


def test_min_confidence_makes_unsure_pixels_nodata(tmp_path, scenes, model) -> None:
    with rasterio.open(scenes / "s.tif") as ds:
        img = ds.read()
    ids, p = reference(img)
    threshold = float(np.quantile(p, 0.3))  # about 30 % of the pixels are unsure
    sure = np.abs(p - threshold) > 1e-5  # away from float32 / float64 ties
    doc = run(**run_opts(scenes, model, tmp_path / "o", min_confidence=threshold))
    got = read(tmp_path / "o" / "s" / "mask.tif")
    want = np.where(p < threshold, 255, ids)
    np.testing.assert_array_equal(got[sure], want[sure])
    e = doc["scenes"]["s"]
    assert abs(e["low_confidence_pixels"] - int((p < threshold).sum())) <= int((~sure).sum())
    assert e["valid_pixels"] + e["low_confidence_pixels"] == H * W
    assert not (tmp_path / "o" / "s" / "confidence.tif").exists()  # not asked for


@pytest.mark.parametrize("option", ["aoi", "zones", "save_confidence", "min_confidence"])
def test_a_stopped_run_resumes_to_the_same_outputs(tmp_path, scenes, model, option) -> None:

    extra = {
        "aoi": {"aoi": str(write_polygons(tmp_path / "a.gpkg", [to_map(aoi_px())]))},
        "zones": {"zones": str(write_polygons(tmp_path / "z.gpkg", [to_map(aoi_px())]))},
        "save_confidence": {"save_confidence": True},
        "min_confidence": {"min_confidence": 0.5},
    }[option]
    run(**run_opts(scenes, model, tmp_path / "ref", **extra))
    with disk_full_after(3), pytest.raises(OutputError):
        run(**run_opts(scenes, model, tmp_path / "o", **extra))
    doc = run(**run_opts(scenes, model, tmp_path / "o", **extra))
    assert doc["scenes"]["s"]["blocks_resumed"] >= 3
    for f in ("mask.tif", "confidence.tif"):
        if (tmp_path / "ref" / "s" / f).exists():
            np.testing.assert_array_equal(
                read(tmp_path / "o" / "s" / f), read(tmp_path / "ref" / "s" / f)
            )
    for f in ("areas.csv", "zones.csv"):
        if (tmp_path / "ref" / "s" / f).exists():
            assert (tmp_path / "o" / "s" / f).read_text() == (
                tmp_path / "ref" / "s" / f
            ).read_text()


def test_adding_products_to_a_finished_scene_does_not_run_the_network(
    tmp_path, scenes, model, monkeypatch
) -> None:
    from tilesegd.inference.engine import Engine

    out = tmp_path / "o"
    run(**run_opts(scenes, model, out))
    zones = write_polygons(tmp_path / "z.gpkg", [to_map(aoi_px())])

    def no_network(*a, **k):
        raise AssertionError("the network ran again")

    monkeypatch.setattr(Engine, "submit", no_network)
    doc = run(**run_opts(scenes, model, out, zones=str(zones), vector=True))
    e = doc["scenes"]["s"]
    assert e["status"] == "done" and e["products_added"] == ["vector", "zones"]
    assert (out / "s" / "zones.csv").is_file() and (out / "s" / "polygons.gpkg").is_file()
    assert e["polygons"] > 0
    again = run(**run_opts(scenes, model, out, zones=str(zones), vector=True))
    assert again["scenes"]["s"].get("skipped") is True  # nothing left to add


def test_bad_product_options_fail_before_any_scene(tmp_path, scenes, model) -> None:
    with pytest.raises(ConfigError, match="no such|cannot|not found"):
        run(**run_opts(scenes, model, tmp_path / "a", aoi=str(tmp_path / "missing.gpkg")))
    zones = write_polygons(tmp_path / "z.gpkg", [to_map(aoi_px())], fields={"name": ["x"]})
    with pytest.raises(ConfigError, match="name"):
        run(**run_opts(scenes, model, tmp_path / "b", zones=str(zones), zone_field="nope"))
    with pytest.raises(ConfigError, match="background, a, b, c"):
        run(**run_opts(scenes, model, tmp_path / "c", vector=True, vector_classes=["trees"]))
    with pytest.raises(ConfigError, match="min_confidence"):
        run(**run_opts(scenes, model, tmp_path / "d", min_confidence=1.5))
    with pytest.raises(ConfigError, match="min_area must be a finite number >= 0"):
        run(**run_opts(scenes, model, tmp_path / "e", vector=True, min_area=-1.0))
    with pytest.raises(ConfigError, match="simplify must be a finite number >= 0"):
        run(**run_opts(scenes, model, tmp_path / "f", vector=True, simplify=-0.5))
    for out in "abcdef":
        assert not (tmp_path / out / "run.json").exists()


def test_a_plain_frame_with_zones_fails_alone_with_a_reason(tmp_path, scenes, model) -> None:
    make_raster(scenes / "frame.png", smooth_image(40, 50, seed=9))
    zones = write_polygons(tmp_path / "z.gpkg", [to_map(aoi_px())])
    r = CliRunner().invoke(cli, ["-q", "run", "-i", str(scenes), "-m", str(model), "-o",
                                 str(tmp_path / "o"), "--zones", str(zones), "--tile-size", "32",
                                 "--overlap", "8", "--preview-size", "0"])  # fmt: skip
    assert r.exit_code == 4, r.output
    doc = json.loads((tmp_path / "o" / "run.json").read_text())
    assert doc["scenes"]["s"]["status"] == "done"
    assert "georeferenced" in doc["scenes"]["frame"]["error"]


def test_polygons_add_up_to_the_areas_and_rasterise_back_to_the_mask(tmp_path, scenes, model):
    import pyogrio
    from rasterio.features import rasterize

    doc = run(**run_opts(scenes, model, tmp_path / "o", vector=True))
    d = tmp_path / "o" / "s"
    meta, _, geoms, fields = pyogrio.raw.read(d / "polygons.gpkg")
    assert meta["crs"] and "32633" in meta["crs"]
    cols = {n: fields[i] for i, n in enumerate(meta["fields"])}
    with open(d / "areas.csv", newline="") as fh:
        areas = {int(r["class_id"]): int(r["pixels"]) for r in csv.DictReader(fh)}
    for k in (1, 2, 3):  # class 0 is 'background': not vectorised by default
        assert int(cols["pixels"][cols["class_id"] == k].sum()) == areas[k]
    assert 0 not in set(cols["class_id"].tolist())
    shapes = shapely.from_wkb(geoms)
    assert shapely.is_valid(shapes).all()
    with rasterio.open(d / "mask.tif") as ds:
        ids, transform = ds.read(1), ds.transform
    back = rasterize(zip(shapes, cols["class_id"].tolist(), strict=True), out_shape=ids.shape,
                     transform=transform, fill=255, dtype="uint8")  # fmt: skip
    np.testing.assert_array_equal(back, np.where(ids == 0, 255, ids))
    e = doc["scenes"]["s"]
    assert e["polygons"] == len(shapes)
    with open(tmp_path / "o" / "summary.csv", newline="") as fh:
        rows = {r["class_name"]: r["polygons"] for r in csv.DictReader(fh)}
    assert rows["background"] == "" or rows["background"] == "0"
    for k, name in ((1, "a"), (2, "b"), (3, "c")):
        assert int(rows[name]) == int((cols["class_id"] == k).sum())


def test_a_dask_cluster_makes_the_same_products(tmp_path, scenes, model) -> None:
    pytest.importorskip("distributed")
    aoi = write_polygons(tmp_path / "aoi.gpkg", [to_map(aoi_px())])
    zones = write_polygons(tmp_path / "z.gpkg", [to_map(shapely.box(0.3, 0.3, 80.4, 70.2))])
    extra = dict(aoi=str(aoi), zones=str(zones), vector=True, save_confidence=True)
    run(**run_opts(scenes, model, tmp_path / "local", **extra))
    doc = run(**run_opts(scenes, model, tmp_path / "dask", cluster="local", **extra), workers=2)
    e = doc["scenes"]["s"]
    assert e["status"] == "done" and e["tiles_outside_aoi"] > 0 and e["polygons"] > 0
    for f in ("mask.tif", "confidence.tif"):
        a, b = tmp_path / "local" / "s" / f, tmp_path / "dask" / "s" / f
        np.testing.assert_array_equal(read(a), read(b))
    for f in ("areas.csv", "zones.csv"):
        assert (tmp_path / "local" / "s" / f).read_text() == (
            tmp_path / "dask" / "s" / f
        ).read_text()

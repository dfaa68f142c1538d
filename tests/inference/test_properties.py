"""Differential, property-based tests of the whole pipeline (issue 11).

A plain reference computes the whole-image class ids of a small deterministic model directly
(NumPy, no tiling); tilesegd must reproduce it pixel for pixel over randomly drawn scene sizes
(1 px, odd, several blocks), block / tile / overlap / batch geometry, reader and writer threads,
nodata layouts (strips, collars, holes, whole blocks, whole tile rows, all nodata), band counts
and dtypes: through :func:`tilesegd.inference.pipeline.segment`, through ``tilesegd run`` (GeoTIFF in,
COG / Zarr / areas out), through a run killed after N blocks and rerun, and through a Dask
cluster of 2 worker processes.

The default suite draws a few hundred cases; ``make test-slow`` runs the same properties with
ten times as many.
"""

from __future__ import annotations

import csv
import json
import tempfile
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from conftest import disk_full_after, engine_for, examples, make_raster, spec_for
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tilesegd.inference.pipeline import segment
from tilesegd.model.model_file import save_model
from tilesegd.raster.reader import ArraySource
from tilesegd.raster.tiling import TileGrid

pytestmark = pytest.mark.filterwarnings("ignore::rasterio.errors.NodataShadowWarning")
NODATA = 255
LAYOUTS = ("none", "bottom", "right", "collar", "holes", "blocks", "tile_rows", "all")
DTYPES = ("uint8", "uint16", "int16", "float32")


class BandSumNet(torch.nn.Module):
    """Per-pixel rule: class = the band sum rounded to the nearest of 0..K-1 (logits
    ``-(sum - k)^2``); the reference is ``clip(sum, 0, K - 1)`` for integer pixel values."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.register_buffer("k", torch.arange(num_classes, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return -((x.sum(1, keepdim=True) - self.k) ** 2)


def reference_ids(img: np.ndarray, valid: np.ndarray, k: int) -> np.ndarray:
    """The plain reference for :class:`BandSumNet`: (H, W) uint8, 255 where invalid."""
    s = np.nan_to_num(img.astype(np.float64)).sum(0)
    return np.where(valid, np.clip(s, 0, k - 1), NODATA).astype(np.uint8)


class IntConvStack(torch.nn.Module):
    """3x3 convolutions (stride 1, zero padding) with small integer weights: exact float32
    arithmetic, so tiled and whole-image logits are bit-identical wherever the tile's halo
    covers the receptive field (``depth`` pixels) and the scene border is farther than that."""

    def __init__(self, in_channels: int, num_classes: int, depth: int, seed: int) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        chans = [in_channels] + [6] * (depth - 1) + [num_classes]
        self.convs = torch.nn.ModuleList(
            torch.nn.Conv2d(a, b, 3, padding=1) for a, b in zip(chans[:-1], chans[1:], strict=True)
        )
        with torch.no_grad():
            for c in self.convs:
                c.weight.copy_(torch.randint(-2, 3, c.weight.shape, generator=g).float())
                c.bias.copy_(torch.randint(-2, 3, c.bias.shape, generator=g).float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, c in enumerate(self.convs):
            x = c(x) if i == len(self.convs) - 1 else torch.relu(c(x))
        return x


def nodata_layout(draw, layout: str, h: int, w: int, grid: TileGrid) -> np.ndarray:
    """(H, W) bool validity for one of :data:`LAYOUTS`."""
    valid = np.ones((h, w), bool)
    rows, cols = np.mgrid[0:h, 0:w]
    if layout == "bottom":
        valid[draw(st.integers(0, h - 1)) :] = False
    elif layout == "right":
        valid[:, draw(st.integers(0, w - 1)) :] = False
    elif layout == "collar":  # a rotated scene's triangular corners
        d = draw(st.integers(1, h + w))
        valid &= (rows + cols >= d // 2) & ((h - rows) + (w - cols) > d // 2)
        valid &= (rows + (w - cols) > d // 3) & ((h - rows) + cols > d // 3)
    elif layout == "holes":
        seed = draw(st.integers(0, 2**16))
        p = draw(st.sampled_from([0.01, 0.3, 0.9]))
        valid &= np.random.default_rng(seed).random((h, w)) >= p
    elif layout == "blocks":
        blocks = grid.blocks()
        for b in draw(st.lists(st.sampled_from(blocks), max_size=len(blocks))):
            valid[b.window.slices] = False
    elif layout == "tile_rows":  # whole rows of tile cores, e.g. the last one of each block
        ch = grid.core_shape[0]
        n = -(-h // ch)
        for r in draw(st.lists(st.integers(0, n - 1), max_size=n)):
            valid[r * ch : (r + 1) * ch] = False
    elif layout == "all":
        valid[:] = False
    return valid


@st.composite
def cases(draw, max_side: int = 200, multiple: int = 1, min_halo: int = 0) -> dict:
    """A random scene, geometry and nodata layout."""
    h = draw(st.one_of(st.just(1), st.integers(1, max_side)))
    w = draw(st.one_of(st.just(1), st.integers(1, max_side)))
    tile = draw(
        st.integers(max(4, 2 * min_halo + 1), 64).map(lambda t: -(-t // multiple) * multiple)
    )
    halo = draw(st.integers(min_halo, max(min_halo, (tile - multiple) // 2)))
    overlap = min(2 * halo, (tile - multiple) // 2 * 2)
    block = draw(st.integers(32, 160))
    grid = TileGrid(h, w, tile, overlap, multiple, block)
    layout = draw(st.sampled_from(LAYOUTS))
    return {
        "h": h,
        "w": w,
        "tile": tile,
        "overlap": overlap,
        "block": block,
        "batch": draw(st.integers(1, 9)),
        "workers": draw(st.integers(1, 3)),
        "bands": draw(st.integers(1, 4)),
        "dtype": draw(st.sampled_from(DTYPES)),
        "classes": draw(st.integers(2, 9)),
        "seed": draw(st.integers(0, 2**16)),
        "layout": layout,
        "valid": nodata_layout(draw, layout, h, w, grid),
        "grid": grid,
    }


def strip_case(**change) -> dict:
    """Issue 11's reproduction, scaled down: a nodata strip along the bottom empties the last
    row of tiles of the lower blocks, after the block's other tiles have been inferred."""
    case = dict(h=100, w=130, tile=32, overlap=8, block=96, batch=4, workers=1, bands=3)
    case.update(dtype="uint8", classes=5, seed=1, layout="bottom", **change)
    case["grid"] = TileGrid(case["h"], case["w"], case["tile"], case["overlap"], 1, case["block"])
    case["valid"] = np.ones((case["h"], case["w"]), bool)
    case["valid"][72:] = False
    return case


def image_for(case: dict) -> np.ndarray:
    """(bands, H, W) small integer pixels of the case's dtype (negatives for int16)."""
    rng = np.random.default_rng(case["seed"])
    lo = -2 if case["dtype"] == "int16" else 0
    img = rng.integers(lo, 4, (case["bands"], case["h"], case["w"]))
    return img.astype(case["dtype"])


def segment_ids(net, case: dict, img: np.ndarray, valid: np.ndarray | None) -> np.ndarray:
    spec = spec_for(case["classes"], case["bands"], input_scale=1.0, multiple=1)
    engine = engine_for(net, spec, batch_size=case["batch"])
    grid = case["grid"]
    out = np.full((case["h"], case["w"]), 77, np.uint8)  # neither a class id nor nodata
    written: list[int] = []

    def sink(block, ids):
        written.append(block.id)
        out[block.window.slices] = ids

    stats = segment(ArraySource(img, valid), grid, engine, sink, workers=case["workers"])
    assert sorted(written) == list(range(grid.n_blocks)), "every block written exactly once"
    assert stats.tiles_run + stats.tiles_skipped == sum(1 for _ in grid.iter_tiles())
    return out


def check_segment_matches_reference(case: dict) -> None:
    img, valid = image_for(case), case["valid"]
    got = segment_ids(BandSumNet(case["classes"]), case, img, valid)
    np.testing.assert_array_equal(got, reference_ids(img, valid, case["classes"]))


@settings(max_examples=examples(250), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases())
@example(strip_case())
def test_segment_equals_the_whole_image_reference(case: dict) -> None:
    check_segment_matches_reference(case)


@pytest.mark.slow
@settings(max_examples=examples(2500), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases(max_side=400))
def test_segment_equals_the_whole_image_reference_many(case: dict) -> None:
    check_segment_matches_reference(case)


def check_receptive_field_model(case: dict, depth: int) -> None:
    img, valid = image_for(case), case["valid"]
    net = IntConvStack(case["bands"], case["classes"], depth, case["seed"])
    got = segment_ids(net, case, img, valid)
    spec = spec_for(case["classes"], case["bands"], input_scale=1.0, multiple=1)
    whole = engine_for(net, spec).predict(img[None], valid[None])[0][0]
    ref = np.where(valid, whole, NODATA)
    inner = (slice(depth, -depth or None), slice(depth, -depth or None))
    np.testing.assert_array_equal(got[inner], ref[inner])
    assert (got[~valid] == NODATA).all() and (got[valid] != NODATA).all()


@settings(max_examples=examples(60), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases(max_side=120, min_halo=2), st.integers(1, 2))
def test_a_receptive_field_model_equals_whole_image_inference_inside_the_border(
    case: dict, depth: int
) -> None:
    check_receptive_field_model(case, depth)


@pytest.mark.slow
@settings(max_examples=examples(600), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases(max_side=250, min_halo=3), st.integers(1, 3))
def test_a_receptive_field_model_equals_whole_image_inference_many(case: dict, depth: int) -> None:
    check_receptive_field_model(case, depth)


# --- through `tilesegd run`: GeoTIFF in, COG / Zarr / areas / run.json out -----------------


def scene_file(case: dict, folder: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    """Write the case as a GeoTIFF with a nodata value (NaN for float32) and return
    ``(path, image, validity as GDAL will report it)``."""
    img, valid = image_for(case), case["valid"]
    img = img - img.min() if case["dtype"] != "int16" else img  # keep the nodata value free
    if case["dtype"] == "float32":
        nodata = float("nan")
        img[:, ~valid] = np.nan
    else:
        nodata = -3 if case["dtype"] == "int16" else int(img.max()) + 1 if img.size else 9
        img[:, ~valid] = nodata
    path = make_raster(folder / "scene.tif", img, nodata=nodata)
    return path, img, valid


def model_file(case: dict, folder: Path) -> Path:
    spec = spec_for(case["classes"], case["bands"], input_scale=1.0, multiple=1, tile_size=64)
    return save_model(BandSumNet(case["classes"]), folder / "sum.ts", spec)


def run_options(case: dict, model: Path, inp: Path, out: Path) -> dict:
    return dict(
        input=[str(inp)],
        model=str(model),
        output=str(out),
        tile_size=case["tile"],
        overlap=case["overlap"],
        block_size=case["block"],
        batch_size=case["batch"],
        workers=case["workers"],
        preview_size=0,
        progress=False,
    )


def check_outputs(out: Path, img: np.ndarray, valid: np.ndarray, k: int) -> None:
    """mask.tif and pred.zarr equal the reference; run.json's valid pixels equal the areas
    and the input's valid pixels."""
    import zarr

    ref = reference_ids(img, valid, k)
    with rasterio.open(out / "scene" / "mask.tif") as ds:
        np.testing.assert_array_equal(ds.read(1), ref)
    np.testing.assert_array_equal(zarr.open_group(out / "scene" / "pred.zarr")["mask"][:], ref)
    entry = json.loads((out / "run.json").read_text())["scenes"]["scene"]
    assert entry["status"] == "done"
    with open(out / "scene" / "areas.csv", newline="") as f:
        area_pixels = sum(int(r["pixels"]) for r in csv.DictReader(f))
    assert entry["valid_pixels"] == area_pixels == int(valid.sum())
    assert entry["nodata_pixels"] == valid.size - int(valid.sum())


def check_run(case: dict, resume_after: int | None = None, scheduler: str | None = None) -> None:
    from tilesegd.api import run
    from tilesegd.errors import OutputError

    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        (d / "in").mkdir()
        path, img, valid = scene_file(case, d / "in")
        opts = run_options(case, model_file(case, d), d / "in", d / "out")
        if scheduler:
            opts["scheduler"] = scheduler
        if resume_after is not None:  # the disk "fills" after N blocks: the run stops (exit 6)
            with disk_full_after(resume_after), pytest.raises(OutputError):
                run(**opts)
        run(**opts)
        check_outputs(d / "out", img, valid, case["classes"])


@settings(max_examples=examples(60), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases(max_side=150))
@example(strip_case())
def test_run_writes_the_reference_mask_and_counts_every_valid_pixel(case: dict) -> None:
    check_run(case)


@settings(max_examples=examples(40), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases(max_side=150).filter(lambda c: c["grid"].n_blocks > 1), st.integers(0, 4))
@example(strip_case(), 1)
def test_a_run_stopped_after_n_blocks_then_rerun_equals_the_reference(case, n) -> None:
    check_run(case, resume_after=min(n, case["grid"].n_blocks - 1))


@pytest.mark.slow
@settings(max_examples=examples(300), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases(max_side=300), st.one_of(st.none(), st.integers(0, 6)))
def test_run_and_resume_equal_the_reference_many(case: dict, n: int | None) -> None:
    check_run(case, resume_after=None if n is None else min(n, case["grid"].n_blocks - 1))


@pytest.fixture(scope="module")
def cluster():
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    ) as c:
        yield c


@settings(max_examples=examples(12), deadline=None, suppress_health_check=list(HealthCheck))
@given(case=cases(max_side=150))
@example(case=strip_case())
def test_a_two_worker_cluster_writes_the_reference_mask(case: dict, cluster) -> None:
    check_run(case, scheduler=cluster.scheduler_address)


@pytest.mark.slow
@settings(max_examples=examples(60), deadline=None, suppress_health_check=list(HealthCheck))
@given(case=cases(max_side=300))
def test_a_two_worker_cluster_writes_the_reference_mask_many(case: dict, cluster) -> None:
    check_run(case, scheduler=cluster.scheduler_address)


@pytest.mark.slow
def test_issue_11_reproduction_at_full_size(tmp_path: Path) -> None:
    """5000 x 5000, rows from 4900 down nodata, default settings, a 1x1 model, three runs."""
    from rasterio.transform import from_origin

    from tilesegd.api import run

    size, strip = 5000, 4900
    img = np.random.default_rng(0).integers(1, 256, (3, size, size), dtype=np.uint8)
    img[:, strip:] = 0
    scene = make_raster(
        tmp_path / "scene.tif", img, nodata=0, transform=from_origin(5e5, 4.65e6, 0.5, 0.5)
    )
    del img
    spec = spec_for(4, 3, multiple=32, tile_size=512)
    net = torch.nn.Conv2d(3, 4, 1)
    model = save_model(net, tmp_path / "trivial.ts", spec)
    for i in range(3):
        out = tmp_path / f"out{i}"
        doc = run(input=[str(scene)], model=str(model), output=str(out), progress=False)
        with rasterio.open(out / "scene" / "mask.tif") as ds:
            ids = ds.read(1)
        assert (ids[:strip] != NODATA).all() and (ids[strip:] == NODATA).all()
        assert doc["scenes"]["scene"]["valid_pixels"] == size * strip

"""Training at a chosen resolution (``--gsd`` / ``--scale``): resampled pairs stay aligned,
ignore and nodata survive, the model file records the resolution, validation scores at the
masks' native resolution."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from conftest import examples, make_raster
from hypothesis import given, settings
from hypothesis import strategies as st
from rasterio.transform import from_origin
from test_train import config, synthetic_pairs

from tilesegd.errors import ConfigError
from tilesegd.model.model_file import read_spec
from tilesegd.raster.labels import IGNORE_INDEX, find_pairs, read_classes
from tilesegd.raster.regrid import Grid, resample_array, resample_ids, to_native
from tilesegd.training.checkpoint import load_checkpoint
from tilesegd.training.config import TrainConfig
from tilesegd.training.data import PairStore
from tilesegd.training.loop import train
from tilesegd.training.resample import plan_grids, training_gsd
from tilesegd.training.setup import prepare

VALUES = np.array([10, 120, 240], np.uint8)  # image value of class id 0, 1, 2


def majority(blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Reference mode of (h, k, w, k) blocks: ``(value, unique)`` per block."""
    h, k, w, _ = blocks.shape
    flat = blocks.transpose(0, 2, 1, 3).reshape(h, w, k * k).astype(np.int64)
    counts = np.stack([(flat == v).sum(-1) for v in range(256)], -1)
    best = counts.max(-1)
    return counts.argmax(-1), (counts == best[..., None]).sum(-1) == 1


@settings(max_examples=examples(25), deadline=None)
@given(
    h=st.integers(1, 6),
    w=st.integers(1, 6),
    k=st.integers(2, 4),
    seed=st.integers(0, 2**16),
    n=st.sampled_from([2, 3]),
)
def test_mode_and_average_match_plain_block_references(h, w, k, seed, n) -> None:
    rng = np.random.default_rng(seed)
    ids = rng.choice(np.array([0, 1, IGNORE_INDEX][:n] + [2], np.uint8), (h * k, w * k))
    got = resample_ids(ids, (h, w))
    ref, unique = majority(ids.reshape(h, k, w, k))
    np.testing.assert_array_equal(got[unique], ref[unique])  # ties may go either way
    vals = rng.random((h * k, w * k)).astype(np.float32)
    avg = resample_array(vals, (h, w), "average")
    np.testing.assert_allclose(avg, vals.reshape(h, k, w, k).mean((1, 3)), rtol=1e-5)
    np.testing.assert_array_equal(to_native(got, (h * k, w * k)), got.repeat(k, 0).repeat(k, 1))


@settings(max_examples=examples(25), deadline=None)
@given(
    h=st.integers(1, 40),
    w=st.integers(1, 40),
    big_h=st.integers(1, 90),
    big_w=st.integers(1, 90),
    seed=st.integers(0, 2**16),
)
def test_to_native_is_gdal_nearest(h, w, big_h, big_w, seed) -> None:
    ids = np.random.default_rng(seed).integers(0, 256, (h, w)).astype(np.uint8)
    ref = resample_array(ids, (big_h, big_w), "nearest")  # GDAL: the pixel under each centre
    np.testing.assert_array_equal(to_native(ids, (big_h, big_w)), ref)


@settings(max_examples=examples(30), deadline=None)
@given(
    h=st.integers(2, 400),
    out=st.integers(1, 400),
    cut=st.floats(0.0, 1.0),
    frac=st.floats(0.05, 0.95),
)
def test_native_rows_of_a_row_split_partition_the_native_rows(h, out, cut, frac) -> None:
    g = Grid(h, 7, out, 7)
    r0 = int(cut * out)
    r1 = min(out, r0 + max(1, int(frac * out)))
    parts = [
        g.native_rows(slice(0, r0)),
        g.native_rows(slice(r0, r1)),
        g.native_rows(slice(r1, None)),
    ]
    covered = np.concatenate([np.arange(h)[p] for p in parts])
    np.testing.assert_array_equal(covered, np.arange(h))  # disjoint, in order, complete
    for p, (a, b) in zip(parts, [(0, r0), (r0, r1), (r1, out)], strict=True):
        centres = (np.arange(h)[p] + 0.5) * out / h  # each native row's centre lies in its strip
        assert np.all((centres >= a) & (centres < b))


def blocky_pair(root: Path, size: int, px: float, nodata: bool, width: int = 0) -> Path:
    """A georeferenced pair at ``px`` m/px: classes in 7 x 5-px blocks (odd sizes, so factors
    cut through them), image value = VALUES[class], mask value = class + 1, a mask block of
    value 0 (class ``nodata``: ignored) and, with ``nodata``, image nodata (0) in a corner."""
    (root / "i").mkdir(parents=True)
    (root / "m").mkdir()
    yy, xx = np.mgrid[0:size, 0 : width or size]
    lab = ((yy // 7) * 3 + (xx // 5) * 2) % 3
    img = np.repeat(VALUES[lab][None], 3, 0)
    mask = (lab + 1).astype(np.uint8)
    mask[size // 2 :, : size // 3] = 0
    t = from_origin(500000.0, 4650000.0, px, px)
    if nodata:
        img[:, : size // 4, size // 2 :] = 0
    make_raster(root / "i" / "a.tif", img, transform=t, nodata=0 if nodata else None)
    make_raster(root / "m" / "a.tif", mask[None], crs=None)
    (root / "c.csv").write_text(
        "value,name,r,g,b\n0,nodata,0,0,0\n1,a,1,1,1\n2,b,2,2,2\n3,c,3,3,3\n"
    )
    return root


def footprint_classes(native: np.ndarray, grid: Grid, pad: int = 0) -> np.ndarray:
    """(h, w) the class id where a training pixel's footprint (grown by ``pad`` native pixels)
    holds one class only, else -1."""
    fy, fx = grid.out_height / grid.height, grid.out_width / grid.width
    out = np.full(grid.shape, -1)
    for r in range(grid.out_height):
        rs = slice(max(0, int(np.floor(r / fy)) - pad), int(np.ceil((r + 1) / fy - 1e-9)) + pad)
        for c in range(grid.out_width):
            cs = slice(max(0, int(np.floor(c / fx)) - pad), int(np.ceil((c + 1) / fx - 1e-9)) + pad)
            u = np.unique(native[rs, cs])
            if len(u) == 1:
                out[r, c] = u[0]
    return out


@pytest.mark.parametrize("gsd", [0.37, 0.6, 0.08])  # shrink by 0.54 and 0.33, enlarge x2.5
def test_resampled_pairs_stay_aligned_and_keep_ignore_and_nodata(tmp_path: Path, gsd) -> None:
    size, width, px = 45, 52, 0.2
    root = blocky_pair(tmp_path, size, px, nodata=True, width=width)
    pairs = find_pairs(root / "i", root / "m")
    grids = plan_grids([p.image for p in pairs], gsd=gsd)
    g = grids[0]
    assert g.shape == (round(size * px / gsd), round(width * px / gsd)) and g.resampled
    assert g.training_pixel_size == pytest.approx(
        (px * width / g.out_width, px * size / g.out_height)
    )
    store = PairStore(pairs, read_classes(root / "c.csv"), grids=grids)
    image, ids = store.get(0)
    assert image.shape == (3, *g.shape) and ids.shape == g.shape and image.dtype == np.uint8
    yy, xx = np.mgrid[0:size, 0:width]
    native_ids = ((yy // 7) * 3 + (xx // 5) * 2) % 3
    native_ids[size // 2 :, : size // 3] = IGNORE_INDEX  # the ignored class
    native_ids[: size // 4, size // 2 :] = IGNORE_INDEX  # image nodata
    pure = footprint_classes(native_ids, g)
    labelled = (pure >= 0) & (pure != IGNORE_INDEX)
    assert labelled.sum() >= 4 and (pure == IGNORE_INDEX).sum() >= 2
    # alignment: on pure footprints the mask id and the image's value are those of the class
    np.testing.assert_array_equal(ids[labelled], pure[labelled])
    # (enlarging interpolates bilinearly: pure within one native pixel around the footprint)
    wide = footprint_classes(native_ids, g, pad=1) if gsd < px else pure
    lab2 = (wide >= 0) & (wide != IGNORE_INDEX)
    assert lab2.sum() >= 4
    np.testing.assert_array_equal(image[0][lab2], VALUES[wide[lab2]])
    assert (ids[pure == IGNORE_INDEX] == IGNORE_INDEX).all()  # ignore and nodata survive
    valid = np.ones((size, width), np.float32)
    valid[: size // 4, size // 2 :] = 0
    frac = resample_array(valid, g.shape, "average")
    assert (ids[frac < 0.5] == IGNORE_INDEX).all()  # nodata dominates -> ignored
    # an average never mixes the nodata value (0) into a valid pixel: no value below the classes'
    assert image[0][frac >= 0.5].min() >= VALUES.min()
    np.testing.assert_array_equal(store.native_ids(0), native_ids)


def test_scale_for_plain_frames_and_recorded_gsd(tmp_path: Path) -> None:
    geo = blocky_pair(tmp_path / "geo", 45, 0.2, nodata=False)
    (tmp_path / "png").mkdir()
    png = make_raster(tmp_path / "png" / "f.png", np.zeros((3, 30, 41), np.uint8))
    g_geo, g_png = plan_grids([geo / "i" / "a.tif", png], gsd=0.4, scale=0.5)
    assert g_geo.shape == (22, 22) and g_png.shape == (15, 20)  # round(20.5) = 20 (half to even)
    assert training_gsd([g_geo, g_png], 0.4) == 0.4
    assert training_gsd([g_geo, g_png], None) is None  # a plain frame: unknown
    (g2,) = plan_grids([geo / "i" / "a.tif"], scale=0.5)
    assert training_gsd([g2], None) == pytest.approx(0.2 * 45 / 22)
    (same,) = plan_grids([geo / "i" / "a.tif"], gsd=0.21)  # within 10 %: not resampled
    assert not same.resampled
    with pytest.raises(ConfigError, match="scale"):
        TrainConfig(scale=0.0).validate()
    with pytest.raises(ConfigError, match="gsd"):
        TrainConfig(gsd=-1.0).validate()


def test_train_at_a_gsd_records_it_and_validates_at_native_resolution(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = synthetic_pairs(tmp_path / "data", n=3, size=96)  # 2 m pixels (conftest transform)
    caplog.set_level(logging.INFO, logger="tilesegd")  # the epoch line, before the halo is known
    out = train(config(data, tmp_path / "run", gsd=3.0, epochs=1), progress=False)
    assert any("epoch 1/1" in r.getMessage() for r in caplog.records)
    spec = read_spec(out / "model.pt2")
    assert spec.extra["gsd"] == 3.0 and "scale" not in spec.extra
    _, st = load_checkpoint(out / "best.ckpt")
    # 64-px validation images fit one 64-px tile: the halo is measured once, for the best
    # weights, and recorded in the model file and best.ckpt alike
    assert spec.overlap is not None and spec.overlap >= 8
    assert st["spec"]["overlap"] == spec.overlap and st["spec"]["tile_size"] == spec.tile_size
    prep = prepare(config(data, tmp_path / "x", gsd=3.0))
    assert all(g.shape == (64, 64) for g in prep.store.grids)  # 96 px * 2 m / 3 m
    native = sum(int((prep.store.native_ids(r.index) != IGNORE_INDEX).sum()) for r in prep.val_idx)
    assert st["scores"]["pixels"] == native  # scored on the 96 x 96 masks, not at 64 x 64
    plain = train(config(data, tmp_path / "plain", epochs=1), progress=False)
    assert read_spec(plain / "model.pt2").extra["gsd"] == 2.0  # the pairs' own, recorded

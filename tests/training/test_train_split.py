"""Training / validation split: whole images, and held-out row strips (``val_split regions``)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from conftest import make_raster
from test_train import TINY

from tilesegd.errors import ConfigError
from tilesegd.raster.labels import find_pairs, read_classes
from tilesegd.training.checkpoint import load_checkpoint
from tilesegd.training.config import TrainConfig
from tilesegd.training.data import PairStore, scan
from tilesegd.training.loop import train
from tilesegd.training.split import Region, make_split, split, split_regions
from tilesegd.training.tiles import TileSampler


def test_image_split_is_deterministic_and_disjoint() -> None:
    assert split(10, 0.2, 3) == split(10, 0.2, 3)
    tr, va = split(10, 0.2, 3)
    assert len(va) == 2 and not set(tr) & set(va) and sorted(tr + va) == list(range(10))
    assert split(2, 0.9, 0)[0] and split(2, 0.01, 0)[1]  # at least one pair each side
    with pytest.raises(ValueError, match="at least 2 pairs"):
        split(1, 0.2, 0)


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_region_split_partitions_every_image(seed: int) -> None:
    heights = [100, 37, 2, 1024]
    train_r, val_r = split_regions(heights, 0.3, seed)
    assert (train_r, val_r) == split_regions(heights, 0.3, seed)
    for i, h in enumerate(heights):
        rows = np.zeros(h, np.int64)
        for r in train_r + val_r:
            if r.index == i:
                rows[r.rows] += 1
        assert (rows == 1).all(), f"image {i}: rows covered {rows.min()}-{rows.max()} times"
        (v,) = [r for r in val_r if r.index == i]
        assert v.row1 - v.row0 == min(h - 1, max(1, round(h * 0.3)))
        assert any(r.index == i for r in train_r)
    positions = {split_regions([1000], 0.2, s)[1][0].row0 for s in range(6)}
    assert len(positions) > 1  # the strip's position depends on the seed


def test_make_split_modes(tmp_path: Path, caplog) -> None:
    for n in range(3):
        make_raster(tmp_path / f"{n}.tif", np.zeros((3, 40 + n, 30), np.uint8))
    paths = [tmp_path / f"{n}.tif" for n in range(3)]
    tr, va = make_split(paths, "images", 0.34, 1)
    assert all(r.row0 == 0 and r.row1 is None for r in tr + va) and len(va) == 1
    tr, va = make_split(paths, "regions", 0.25, 1)
    assert [r.index for r in va] == [0, 1, 2]
    assert [r.row1 - r.row0 for r in va] == [10, 10, 10]  # round(0.25 * 40..42)
    with caplog.at_level(logging.WARNING):
        tr, va = make_split(paths[:1], "images", 0.25, 1)
    assert "held-out strip" in caplog.text and len(va) == 1 and va[0].row1 - va[0].row0 == 10
    with pytest.raises(ConfigError, match="val_split"):
        make_split(paths, "pixels", 0.2, 0)
    assert Region(0, 5, 9).describe("a.png") == "a.png rows 5-8"


def _strip_pair(root: Path, h: int = 90, w: int = 70, strip: tuple[int, int] = (30, 50)):
    """One pair whose class ``b`` (and pixel value 255) occurs only in rows ``strip``."""
    (root / "i").mkdir(parents=True)
    (root / "m").mkdir()
    rng = np.random.default_rng(0)
    img = rng.integers(0, 200, (3, h, w)).astype(np.uint8)
    mask = np.zeros((1, h, w), np.uint8)
    img[:, strip[0] : strip[1]] = 255
    mask[:, strip[0] : strip[1]] = 1
    make_raster(root / "i" / "s.tif", img)
    make_raster(root / "m" / "s.tif", mask)
    (root / "c.csv").write_text("value,name,r,g,b\n0,a,0,0,0\n1,b,9,9,9\n")
    classes = read_classes(root / "c.csv")
    return PairStore(find_pairs(root / "i", root / "m"), classes), img


def test_training_tiles_never_reach_into_the_held_out_strip(tmp_path: Path) -> None:
    store, img = _strip_pair(tmp_path)
    train_r = [Region(0, 0, 30), Region(0, 50, 90)]
    st = scan(store, train_r, [0])
    assert st.class_pixels.tolist() == [70 * 70, 0]  # counts come from the training rows only
    assert st.pixels.tolist() == [30 * 70, 40 * 70]
    ref = img[:, np.r_[0:30, 50:90], ::4][:, ::4].reshape(3, -1).mean(1) / 255
    assert np.all(np.asarray(st.mean) < 200 / 255)  # the strip's 255s are not in the mean
    assert np.allclose(st.mean, ref, atol=0.03)
    for augment, jitter in ((False, 0.0), (True, 0.25)):
        s = TileSampler(store, train_r, st.pixels, 32, jitter, augment, 255.0, st.mean, st.std)
        x, y = s.sample(np.random.default_rng(3), 64)
        assert 1 not in np.unique(y), "a training tile holds a label of the validation strip"
        if not augment:
            assert x.max() < (1.0 - max(st.mean)) / min(st.std)  # no 255 pixel either
    whole = TileSampler(store, [0], st.pixels[:1], 32, 0.0, False, 255.0, st.mean, st.std)
    _, y = whole.sample(np.random.default_rng(3), 64)
    assert 1 in np.unique(y)  # the check above can fail: whole-image tiles do reach the strip


def test_single_pair_trains_and_validates_on_its_strip(tmp_path: Path, caplog) -> None:
    _strip_pair(tmp_path, h=96, w=80, strip=(40, 60))
    cfg = TrainConfig(
        images=str(tmp_path / "i"),
        masks=str(tmp_path / "m"),
        classes=str(tmp_path / "c.csv"),
        output=str(tmp_path / "run"),
        **{**TINY, "epochs": 1, "steps_per_epoch": 2, "val_fraction": 0.25},
    ).validate()
    with caplog.at_level(logging.INFO):
        out = train(cfg, progress=False)
    assert "held-out strip" in caplog.text and "validating on s rows" in caplog.text
    _, st = load_checkpoint(out / "best.ckpt")
    cm = np.asarray(st["scores"]["confusion_matrix"])
    assert cm.sum() == 24 * 80  # only the 24 held-out rows are scored
    assert (out / "model.pt2").is_file()

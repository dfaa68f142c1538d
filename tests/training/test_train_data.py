"""Training data: class CSVs, mask coding (values and colours), pairing, split, tile sampling."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import make_raster, shared_data

from tilesegd.errors import ConfigError, DatasetError
from tilesegd.raster.labels import IGNORE_INDEX, find_pairs, read_classes, read_raster
from tilesegd.training.data import PairStore, scan
from tilesegd.training.tiles import TileSampler

# The Semantic Drone Dataset's class_dict.csv (TU Graz): name,r,g,b; id = row order.
SDD_CLASSES = [
    ("unlabeled", 0, 0, 0), ("paved-area", 128, 64, 128), ("dirt", 130, 76, 0),
    ("grass", 0, 102, 0), ("gravel", 112, 103, 87), ("water", 28, 42, 168),
    ("rocks", 48, 41, 30), ("pool", 0, 50, 89), ("vegetation", 107, 142, 35),
    ("roof", 70, 70, 70), ("wall", 102, 102, 156), ("window", 254, 228, 12),
    ("door", 254, 148, 12), ("fence", 190, 153, 153), ("fence-pole", 153, 153, 153),
    ("person", 255, 22, 96), ("dog", 102, 51, 0), ("car", 9, 143, 150),
    ("bicycle", 119, 11, 32), ("tree", 51, 51, 0), ("bald-tree", 190, 250, 190),
    ("ar-marker", 112, 150, 146), ("obstacle", 2, 135, 115), ("conflicting", 255, 0, 0),
]  # fmt: skip


def write_sdd_dataset(root: Path, n: int = 2, size: tuple[int, int] = (40, 56)) -> Path:
    """Images as JPEG-like RGB PNGs and colour-coded masks, plus class_dict.csv."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "class_dict.csv").write_text(
        "name,r,g,b\n" + "".join(f"{n_},{r},{g},{b}\n" for n_, r, g, b in SDD_CLASSES)
    )
    rng = np.random.default_rng(0)
    colours = np.array([c[1:] for c in SDD_CLASSES], np.uint8)
    for i in range(n):
        ids = rng.integers(0, len(SDD_CLASSES), size)
        make_raster(root / "images" / f"{i:03d}.png", rng.integers(0, 255, (3, *size), np.uint8))
        make_raster(root / "masks" / f"{i:03d}.png", colours[ids].transpose(2, 0, 1).copy())
    return root


def test_value_csv_nodata_ignored_by_default(tmp_path: Path) -> None:
    f = tmp_path / "c.csv"
    f.write_text("value,name,r,g,b\n0,nodata,0,0,0\n1,a,1,1,1\n5,b,2,2,2\n")
    cm = read_classes(f)
    assert cm.names == ["a", "b"] and cm.ignored_names == ["nodata"]
    mask = np.array([[0, 1, 5], [5, 1, 0]], np.uint8)
    assert cm.encode(mask).tolist() == [[255, 0, 1], [1, 0, 255]]
    assert cm.decode(cm.encode(mask), "value").tolist() == mask.tolist()


def test_spacenet_style_0_255_values_map_to_ids(tmp_path: Path) -> None:
    f = tmp_path / "c.csv"
    f.write_text("value,name,r,g,b\n0,background,0,0,0\n255,building,255,0,0\n")
    cm = read_classes(f)
    ids = cm.encode(np.array([[0, 255]], np.uint8))
    assert ids.tolist() == [[0, 1]] and cm.num_classes == 2


def test_sdd_colour_masks_round_trip_exactly(tmp_path: Path) -> None:
    root = write_sdd_dataset(tmp_path / "sdd")
    cm = read_classes(root / "class_dict.csv", ignore=["unlabeled"])
    assert cm.num_classes == 23 and cm.names[0] == "paved-area"
    for pair in find_pairs(root / "images", root / "masks"):
        colours, _ = read_raster(pair.mask)
        ids = cm.encode(colours, pair.mask)
        assert ids.dtype == np.uint8 and set(np.unique(ids)) <= set(range(23)) | {IGNORE_INDEX}
        assert (ids == IGNORE_INDEX).sum() == (colours.sum(0) == 0).sum()  # unlabeled = black
        np.testing.assert_array_equal(cm.decode(ids, "color"), colours)


def test_sdd_single_band_row_order_values(tmp_path: Path) -> None:
    root = write_sdd_dataset(tmp_path / "sdd", n=1)
    cm = read_classes(root / "class_dict.csv", ignore=["unlabeled"])
    assert cm.encode(np.array([[0, 1, 23]], np.uint8)).tolist() == [[255, 0, 22]]


def test_unknown_value_and_colour_name_file_and_value(tmp_path: Path) -> None:
    f = tmp_path / "c.csv"
    f.write_text("value,name,r,g,b\n0,a,0,0,0\n1,b,255,0,0\n")
    cm = read_classes(f)
    with pytest.raises(DatasetError, match=r"m\.png.*value\(s\) 7"):
        cm.encode(np.array([[0, 7]], np.uint8), "m.png")
    rgb = np.zeros((3, 1, 2), np.uint8)
    rgb[1, 0, 1] = 9
    with pytest.raises(DatasetError, match=r"rgb\.png.*\(0, 9, 0\)"):
        cm.encode(rgb, "rgb.png")


def test_bad_csv_and_ignore_names(tmp_path: Path) -> None:
    f = tmp_path / "c.csv"
    f.write_text("value,name,r,g,b\n0,a,0,0,0\n")
    with pytest.raises(ConfigError, match="no such class"):
        read_classes(f, ignore=["zebra"])
    g = tmp_path / "bad.csv"
    g.write_text("id;label\n0;a\n")
    with pytest.raises(ConfigError, match="header"):
        read_classes(g)


def test_find_pairs_by_stem_and_missing_mask(tmp_path: Path) -> None:
    (tmp_path / "i").mkdir()
    (tmp_path / "m").mkdir()
    for stem in ("a", "b"):
        make_raster(tmp_path / "i" / f"{stem}.tif", np.zeros((3, 8, 8), np.uint8))
    make_raster(tmp_path / "m" / "a.png", np.zeros((1, 8, 8), np.uint8))
    with pytest.raises(DatasetError, match="no mask for image.*b"):
        find_pairs(tmp_path / "i", tmp_path / "m")
    make_raster(tmp_path / "m" / "b.png", np.zeros((1, 8, 8), np.uint8))
    pairs = find_pairs(tmp_path / "i", tmp_path / "m")
    assert [(p.image.name, p.mask.name) for p in pairs] == [("a.tif", "a.png"), ("b.tif", "b.png")]


def _store(tmp_path: Path, images: list[np.ndarray], masks: list[np.ndarray]) -> PairStore:
    (tmp_path / "i").mkdir()
    (tmp_path / "m").mkdir()
    for n, (im, m) in enumerate(zip(images, masks, strict=True)):
        make_raster(tmp_path / "i" / f"{n}.tif", im)
        make_raster(tmp_path / "m" / f"{n}.tif", m)
    (tmp_path / "c.csv").write_text("value,name,r,g,b\n0,a,0,0,0\n1,b,9,9,9\n")
    cm = read_classes(tmp_path / "c.csv")
    return PairStore(find_pairs(tmp_path / "i", tmp_path / "m"), cm)


def test_tiles_are_native_resolution_crops_and_deterministic(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (3, 100, 90), np.uint8)
    mask = (img[0] > 127).astype(np.uint8)[None]
    store = _store(tmp_path, [img], [mask])
    st = scan(store, [0], [0])
    assert st.dtype == "uint8" and st.input_scale == 255.0 and st.bands == 3
    np.testing.assert_allclose(st.mean, img[:, ::4, ::4].reshape(3, -1).mean(1) / 255, rtol=1e-6)
    s = TileSampler(store, [0], st.pixels, 32, 0.0, False, 255.0, st.mean, st.std)
    x, y = s.sample(np.random.default_rng(1), 3)
    assert x.shape == (3, 3, 32, 32) and x.dtype == np.float32 and y.dtype == np.int64
    norm = s.normalise(img)
    for t in range(3):  # each tile is an exact crop of the normalised image
        hits = [
            (r, c)
            for r in range(100 - 31)
            for c in range(90 - 31)
            if np.array_equal(y[t], mask[0, r : r + 32, c : c + 32])
            and np.allclose(x[t], norm[:, r : r + 32, c : c + 32], atol=1e-6)
        ]
        assert hits
    x2, y2 = s.sample(np.random.default_rng(1), 3)
    np.testing.assert_array_equal(x, x2)
    aug = TileSampler(store, [0], st.pixels, 32, 0.25, True, 255.0, st.mean, st.std)
    a1, b1 = aug.sample(np.random.default_rng(5), 4)
    a2, b2 = aug.sample(np.random.default_rng(5), 4)
    np.testing.assert_array_equal(a1, a2)
    np.testing.assert_array_equal(b1, b2)
    assert set(np.unique(b1)) <= {0, 1}


def test_small_image_is_padded_with_ignore(tmp_path: Path) -> None:
    img = np.full((3, 20, 24), 100, np.uint8)
    store = _store(tmp_path, [img], [np.ones((1, 20, 24), np.uint8)])
    st = scan(store, [0], [0])
    s = TileSampler(store, [0], st.pixels, 32, 0.0, False, 255.0, st.mean, st.std)
    x, y = s.sample(np.random.default_rng(0), 1)
    assert (y[0, :20, :24] == 1).all() and (y[0, 20:] == IGNORE_INDEX).all()
    assert (y[0, :, 24:] == IGNORE_INDEX).all() and np.isfinite(x).all()


def test_scan_refuses_mixed_dtypes_and_size_mismatch(tmp_path: Path) -> None:
    a = np.zeros((3, 16, 16), np.uint8)
    b = np.zeros((3, 16, 16), np.uint16)
    store = _store(tmp_path, [a, b], [np.zeros((1, 16, 16), np.uint8)] * 2)
    with pytest.raises(DatasetError, match="all images must agree"):
        scan(store, [0, 1], [0, 1])
    make_raster(tmp_path / "m" / "0.tif", np.zeros((1, 8, 16), np.uint8))
    store2 = PairStore(store.pairs, store.classmap)
    with pytest.raises(DatasetError, match="pixel-aligned"):
        store2.get(0)


def test_real_loveda_and_spacenet_masks_encode() -> None:
    data = shared_data() / "labeled"
    lov = read_classes(data / "loveda" / "classes.csv")
    assert lov.num_classes == 7 and lov.ignored_names == ["nodata"]
    store = PairStore(find_pairs(data / "loveda" / "images", data / "loveda" / "masks"), lov)
    image, ids = store.get(0)
    assert image.shape == (3, 1024, 1024) and ids.max() < 7
    sn = read_classes(data / "spacenet_buildings" / "classes.csv")
    pairs = find_pairs(
        data / "spacenet_buildings" / "images", data / "spacenet_buildings" / "masks"
    )
    st = scan(PairStore(pairs, sn), [0], [0])
    assert st.dtype == "uint16" and st.input_scale == 65535.0 and st.class_pixels[1] > 0

"""Styled outputs: mask.qml + raster attribute table (read back through GDAL), mode overviews,
the confidence COG with its colour-ramp style, and atomic sidecars."""

from __future__ import annotations

import ctypes
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from conftest import examples, make_raster
from hypothesis import given, settings
from hypothesis import strategies as st
from rasterio.transform import from_origin

from tilesegd.model.model_file import ClassInfo
from tilesegd.outputs.cog import sidecar_paths, write_cog
from tilesegd.outputs.style import class_qml, ramp_qml, rat_aux_xml
from tilesegd.raster.tiling import TileGrid

CLASSES = [
    ClassInfo(0, "background", (10, 20, 30)),
    ClassInfo(1, "bâtiment & <toit>", (200, 0, 0)),
    ClassInfo(2, "water", (0, 0, 255)),
]
GEO = dict(crs="EPSG:32633", transform=from_origin(500000.0, 4650000.0, 2.0, 2.0))


def _libgdal() -> ctypes.CDLL:
    """The GDAL that rasterio loaded (its wheel bundles one), through its C API: rasterio has
    no raster-attribute-table API and GDAL's Python bindings are not installed."""
    import rasterio  # noqa: F401  (loads libgdal)

    maps = Path("/proc/self/maps")
    libs = maps.read_text().split() if maps.exists() else []
    paths = sorted({p for p in libs if "/libgdal" in p and ".so" in p})
    if not paths:
        pytest.skip("cannot locate the libgdal that rasterio loaded (needs Linux /proc)")
    lib = ctypes.CDLL(paths[0])
    lib.GDALOpenEx.restype = ctypes.c_void_p
    lib.GDALOpenEx.argtypes = [ctypes.c_char_p, ctypes.c_uint, *[ctypes.c_void_p] * 3]
    for name in ("GDALGetRasterBand", "GDALGetDefaultRAT"):
        getattr(lib, name).restype = ctypes.c_void_p
    lib.GDALGetRasterBand.argtypes = [ctypes.c_void_p, ctypes.c_int]
    lib.GDALGetDefaultRAT.argtypes = [ctypes.c_void_p]
    for name in ("GDALRATGetColumnCount", "GDALRATGetRowCount"):
        getattr(lib, name).argtypes = [ctypes.c_void_p]
    for name in ("GDALRATGetNameOfCol", "GDALRATGetUsageOfCol"):
        getattr(lib, name).argtypes = [ctypes.c_void_p, ctypes.c_int]
    lib.GDALRATGetNameOfCol.restype = ctypes.c_char_p
    lib.GDALRATGetValueAsString.restype = ctypes.c_char_p
    lib.GDALRATGetValueAsString.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int]
    lib.GDALClose.argtypes = [ctypes.c_void_p]
    return lib


def read_rat(path: Path) -> tuple[list[tuple[str, int]], list[tuple[str, ...]]] | None:
    """Band 1's raster attribute table as GDAL reads it: ``([(column, usage)], rows)``, or
    ``None`` when GDAL finds none."""
    lib = _libgdal()
    ds = lib.GDALOpenEx(str(path).encode(), 0x02, None, None, None)  # GDAL_OF_RASTER
    assert ds, f"GDAL cannot open {path}"
    try:
        rat = lib.GDALGetDefaultRAT(lib.GDALGetRasterBand(ds, 1))
        if not rat:
            return None
        ncol, nrow = lib.GDALRATGetColumnCount(rat), lib.GDALRATGetRowCount(rat)
        cols = [
            (lib.GDALRATGetNameOfCol(rat, j).decode(), lib.GDALRATGetUsageOfCol(rat, j))
            for j in range(ncol)
        ]
        rows = [
            tuple(lib.GDALRATGetValueAsString(rat, i, j).decode() for j in range(ncol))
            for i in range(nrow)
        ]
        return cols, rows
    finally:
        lib.GDALClose(ds)


def rat_rows(classes: list[ClassInfo]) -> list[tuple[str, ...]]:
    return [(str(c.id), c.name, *map(str, c.color), "255") for c in classes]


def palette(qml: str) -> tuple[ET.Element, list[tuple[int, str, str, str]]]:
    """The ``rasterrenderer`` element and its ``(value, colour, alpha, label)`` entries."""
    renderer = ET.fromstring(qml).find("pipe/rasterrenderer")
    assert renderer is not None
    entries = [
        (int(e.get("value")), e.get("color"), e.get("alpha"), e.get("label"))
        for e in renderer.iter("paletteEntry")
    ]
    return renderer, entries


def qml_entries(classes: list[ClassInfo]) -> list[tuple[int, str, str, str]]:
    return [(c.id, "#{:02x}{:02x}{:02x}".format(*c.color), "255", c.name) for c in classes]


def write(tmp_path: Path, data: np.ndarray, **kw) -> Path:
    """write_cog a (H, W) uint8 array through 256-px blocks."""
    h, w = data.shape
    grid = TileGrid(h, w, 128, 16, 1, 256)
    name = "confidence.tif" if kw.get("kind") == "confidence" else "mask.tif"
    path = tmp_path / name
    return write_cog(
        path, grid.blocks(), lambda b: data[b.window.slices], height=h, width=w, **GEO, **kw
    )


def test_mask_opens_styled_with_class_names(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    data = rng.integers(0, 3, (71, 97)).astype(np.uint8)
    data[:5] = 255
    path = write(tmp_path, data, classes=CLASSES)
    qml, aux = sidecar_paths(path)
    assert qml == tmp_path / "mask.qml" and aux == tmp_path / "mask.tif.aux.xml"
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "mask.qml",
        "mask.tif",
        "mask.tif.aux.xml",
    ]
    renderer, entries = palette(qml.read_text(encoding="utf-8"))
    assert renderer.get("type") == "paletted" and renderer.get("band") == "1"
    assert renderer.get("nodataColor") == ""  # nodata drawn transparent
    assert entries == qml_entries(CLASSES)  # exactly one per class, none for 255
    cols, rows = read_rat(path)
    assert cols == [
        ("Value", 5),  # GFU_MinMax
        ("Class_Name", 2),  # GFU_Name
        ("Red", 6),
        ("Green", 7),
        ("Blue", 8),
        ("Alpha", 9),
    ]
    assert rows == rat_rows(CLASSES)
    import rasterio

    with rasterio.open(path) as src:  # the mask itself is unchanged
        np.testing.assert_array_equal(src.read(1), data)
        assert src.colormap(1)[1] == (200, 0, 0, 255)


names = st.text(st.characters(codec="utf-8", exclude_categories=["Cs", "Cc", "Cn"]), min_size=1)
# (GDAL's XML parser drops a value's leading whitespace: names are stripped, as models have)
class_lists = st.lists(
    st.tuples(names, st.tuples(*[st.integers(0, 255)] * 3)), min_size=1, max_size=12
).map(lambda cs: [ClassInfo(i, n.strip() or "x", c) for i, (n, c) in enumerate(cs)])


@settings(max_examples=examples(25), deadline=None)
@given(classes=class_lists)
def test_style_and_rat_match_any_classes(tmp_path_factory, classes: list[ClassInfo]) -> None:
    """Random names (any Unicode, XML-special characters) and colours survive the round trip
    through the .qml parser and GDAL's PAM reader."""
    folder = tmp_path_factory.mktemp("rat")
    tif = make_raster(folder / "m.tif", np.zeros((3, 4), np.uint8), nodata=255)
    (folder / "m.tif.aux.xml").write_text(rat_aux_xml(classes), encoding="utf-8")
    assert palette(class_qml(classes))[1] == qml_entries(classes)
    assert read_rat(tif)[1] == rat_rows(classes)


def test_class_ids_must_leave_room_for_nodata() -> None:
    with pytest.raises(ValueError, match="255"):
        class_qml([ClassInfo(255, "oops", (1, 2, 3))])


def majority_case(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """A mask whose every 2x2 cell holds 3 pixels of one class and 1 of another, the odd pixel
    at each of the four positions in turn; and the (h/2, w/2) majority of each cell."""
    rng = np.random.default_rng(7)
    major = rng.integers(0, 3, (h // 2, w // 2)).astype(np.uint8)
    data = np.repeat(np.repeat(major, 2, 0), 2, 1)
    pos = np.arange(major.size).reshape(major.shape) % 4
    for k, (dy, dx) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)]):
        sel = pos == k
        data[dy::2, dx::2][sel] = (major[sel] + 1) % 3
    return data, major


def test_mask_overviews_keep_the_majority_class(tmp_path: Path) -> None:
    import rasterio
    from rasterio.enums import Resampling

    data, major = majority_case(520, 600)  # >= 512 px: one overview level (factor 2)
    path = write(tmp_path, data, classes=CLASSES)
    with rasterio.open(path, overview_level=0) as ov:
        assert ov.shape == major.shape
        np.testing.assert_array_equal(ov.read(1), major)
    # the control: nearest-neighbour picks one pixel per cell, so it misses the majority
    near = make_raster(tmp_path / "near.tif", data, nodata=255)
    with rasterio.open(near, "r+") as dst:
        dst.build_overviews([2], Resampling.nearest)
    with rasterio.open(near, overview_level=0) as ov:
        assert (ov.read(1) != major).mean() > 0.2


def test_confidence_cog_is_averaged_and_ramp_styled(tmp_path: Path) -> None:
    import rasterio

    rng = np.random.default_rng(3)
    data = rng.integers(0, 101, (520, 600)).astype(np.uint8)
    data[:40] = 255
    data[40:42, 0:2] = [[10, 10], [10, 255]]  # 255 left out of the average: 10, not 71
    path = write(tmp_path, data, kind="confidence")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["confidence.qml", "confidence.tif"]
    with rasterio.open(path) as src:
        assert src.dtypes[0] == "uint8" and src.nodata == 255
        assert src.descriptions[0] == "confidence (%)"
        np.testing.assert_array_equal(src.read(1), data)
        with pytest.raises(ValueError):
            src.colormap(1)  # no colour table on a continuous band
    cells = data.reshape(260, 2, 300, 2).transpose(0, 2, 1, 3).reshape(260, 300, 4)
    valid = cells != 255
    mean = np.where(valid, cells, 0).sum(-1) / np.maximum(valid.sum(-1), 1)
    want = np.where(valid.any(-1), mean, 255)
    with rasterio.open(path, overview_level=0) as ov:
        got = ov.read(1).astype(float)
    assert np.abs(got - want).max() <= 1  # GDAL rounds the mean
    assert got[19, 0] == 255 and got[20, 0] == 10
    renderer = ET.fromstring((tmp_path / "confidence.qml").read_text()).find("pipe/rasterrenderer")
    assert renderer.get("type") == "singlebandpseudocolor" and renderer.get("nodataColor") == ""
    shader = renderer.find("rastershader/colorrampshader")
    assert (shader.get("minimumValue"), shader.get("maximumValue")) == ("0", "100")
    values = [float(i.get("value")) for i in shader.iter("item")]
    assert values[0] == 0 and values[-1] == 100 and values == sorted(values)
    assert read_rat(path) is None


def test_ramp_qml_rejects_an_empty_range() -> None:
    with pytest.raises(ValueError):
        ramp_qml(5, 5)


@pytest.mark.parametrize("fail_at", ["cog", "second sidecar", "rename mask"])
def test_a_failed_write_leaves_neither_raster_nor_sidecars(
    tmp_path: Path, monkeypatch, fail_at: str
) -> None:
    """A disk that fills (or a rename that fails) at any step leaves nothing at the final
    paths and no temporary files."""
    import os

    import rasterio.shutil

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    if fail_at == "cog":
        monkeypatch.setattr(rasterio.shutil, "copy", full)
    elif fail_at == "second sidecar":
        real, calls = Path.write_text, []

        def write_text(self, *args, **kwargs):
            calls.append(self)
            return full() if len(calls) == 2 else real(self, *args, **kwargs)

        monkeypatch.setattr(Path, "write_text", write_text)
    else:
        real_replace = os.replace

        def replace(src, dst):
            return full() if Path(dst).name == "mask.tif" else real_replace(src, dst)

        monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError, match="space"):
        write(tmp_path, np.zeros((30, 40), np.uint8), classes=CLASSES)
    assert list(tmp_path.iterdir()) == []


def test_bad_kind_or_missing_classes(tmp_path: Path) -> None:
    data = np.zeros((10, 10), np.uint8)
    with pytest.raises(ValueError, match="kind"):
        write(tmp_path, data, classes=CLASSES, kind="probs")
    with pytest.raises(ValueError, match="classes"):
        write(tmp_path, data)
    assert list(tmp_path.iterdir()) == []

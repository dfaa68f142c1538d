"""README claims of `tilesegd run` that had no test (issue 13): JPEG frames, a local VRT mosaic,
GDAL internal-mask nodata, click's exit code 2 (exit 3 is in test_cli_run), ``--precision``
and ``--compile`` on the CPU, the colour table, ``preview.png`` and ``--shard``. Claims found
false are strict xfails whose reason says what is wrong.

Everything but the shard rule goes through the CLI (click's CliRunner on
``tilesegd.cli.main.cli``) on tiny generated rasters. Where a mask can be predicted exactly, the
model is ``IdentityNet`` with ``input_scale`` 64: the class of a pixel is the class ``k`` nearest
to ``band1 / 64`` (``identity_classes``), so the expected mask is computed here from the pixels,
independently of the tiling, batching and stitching under test.
"""

from __future__ import annotations

import csv
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner
from conftest import IdentityNet, examples, make_raster, read_png, smooth_image
from hypothesis import given, settings
from hypothesis import strategies as st
from rasterio.transform import from_origin

from tilesegd.cli.main import cli
from tilesegd.errors import EXIT_USAGE
from tilesegd.model.model_file import DEFAULT_PALETTE, ModelSpec, save_model

SCALE = 64.0  # IdentityNet input_scale: classes 0..3 cover pixel values 0..255
TILE = ("--tile-size", "32", "--overlap", "8", "--block-size", "48")  # many tiles and blocks


def invoke(*args: str):
    return CliRunner().invoke(cli, ["-q", *args], catch_exceptions=False)


def run_ok(inputs: list[Path], model: Path, out: Path, *flags: str) -> dict:
    """Run the CLI, assert exit 0, return ``run.json``."""
    ins = [a for p in inputs for a in ("-i", str(p))]
    r = invoke("run", *ins, "-m", str(model), "-o", str(out), *flags)
    assert r.exit_code == 0, r.output
    return json.loads((out / "run.json").read_text())


def read_mask(path: Path) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        with rasterio.open(path) as m:
            return m.read(1)


def read_areas(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def identity_classes(band: np.ndarray, k: int = 4, scale: float = SCALE) -> np.ndarray:
    """What IdentityNet predicts: argmax over classes of ``-(band / scale - class)^2``, computed
    in float32 as the network does (ties go to the lower class, as torch.argmax)."""
    x = band.astype(np.float32)[None] / np.float32(scale)
    ks = np.arange(k, dtype=np.float32).reshape(-1, 1, 1)
    return np.argmax(-((x - ks) ** 2), axis=0).astype(np.uint8)


@pytest.fixture
def identity_model(tiny_model) -> Path:
    return tiny_model(num_classes=4, kind="identity", input_scale=SCALE)


# --- inputs -------------------------------------------------------------------------------------


def test_jpeg_frame_runs_without_georeferencing(tmp_path: Path, identity_model: Path) -> None:
    """A plain .jpg frame: mask pixel-aligned with the decoded frame, no CRS, empty area columns."""
    img = smooth_image(61, 87, seed=7)
    frame = make_raster(tmp_path / "frame.jpg", img, crs=None)
    out = tmp_path / "out"
    run_ok([frame], identity_model, out, *TILE, "--preview-size", "0")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        with rasterio.open(frame) as src:
            decoded = src.read()  # JPEG is lossy: compare with what GDAL decodes
        with rasterio.open(out / "frame" / "mask.tif") as m:
            assert m.crs is None and m.transform.is_identity
            mask = m.read(1)
    expected = identity_classes(decoded[0])
    assert len(np.unique(expected)) >= 3  # several classes: alignment is really tested
    np.testing.assert_array_equal(mask, expected)
    rows = read_areas(out / "frame" / "areas.csv")
    assert all(r["area_m2"] == "" and r["area_ha"] == "" for r in rows)
    counts = np.bincount(expected.ravel(), minlength=4)
    assert {int(r["class_id"]): int(r["pixels"]) for r in rows} == dict(enumerate(counts.tolist()))


def write_vrt(path: Path, tiles: list[tuple[Path, int, int, int, int]], shape, crs, transform):
    """A GDAL VRT mosaic of single-window GeoTIFF ``tiles`` ``(file, row, col, h, w)``."""
    height, width = shape
    bands = []
    for b in (1, 2, 3):
        sources = "".join(
            f'<SimpleSource><SourceFilename relativeToVRT="1">{f.name}</SourceFilename>'
            f"<SourceBand>{b}</SourceBand>"
            f'<SrcRect xOff="0" yOff="0" xSize="{w}" ySize="{h}"/>'
            f'<DstRect xOff="{c}" yOff="{r}" xSize="{w}" ySize="{h}"/></SimpleSource>'
            for f, r, c, h, w in tiles
        )
        bands.append(
            f'<VRTRasterBand dataType="Byte" band="{b}"><NoDataValue>0</NoDataValue>'
            f"{sources}</VRTRasterBand>"
        )
    gt = ", ".join(repr(v) for v in transform.to_gdal())
    path.write_text(
        f'<VRTDataset rasterXSize="{width}" rasterYSize="{height}">'
        f"<SRS>{crs.to_wkt()}</SRS><GeoTransform>{gt}</GeoTransform>{''.join(bands)}"
        "</VRTDataset>"
    )
    return path


def test_vrt_mosaic_equals_the_same_mosaic_as_one_geotiff(tmp_path: Path, tiny_model) -> None:
    h, w, rows, cols = 131, 157, (0, 57, 131), (0, 70, 157)
    img = smooth_image(h, w, seed=11)
    img[img == 0] = 1
    img[:, :25, :30] = 0  # a nodata corner (nodata 0 in the tiles and the VRT)
    crs = rasterio.crs.CRS.from_epsg(32633)
    transform = from_origin(500000.0, 4650000.0, 0.5, 0.5)
    (tmp_path / "tiles").mkdir()
    tiles = []
    for r0, r1 in zip(rows, rows[1:], strict=False):
        for c0, c1 in zip(cols, cols[1:], strict=False):
            f = tmp_path / "tiles" / f"t{r0}_{c0}.tif"
            make_raster(f, img[:, r0:r1, c0:c1], nodata=0, crs="EPSG:32633",
                        transform=transform * transform.translation(c0, r0))  # fmt: skip
            tiles.append((f, r0, c0, r1 - r0, c1 - c0))
    vrt = write_vrt(tmp_path / "tiles" / "mosaic.vrt", tiles, (h, w), crs, transform)
    (tmp_path / "whole").mkdir()
    whole = make_raster(tmp_path / "whole" / "whole.tif", img, nodata=0, transform=transform)
    with rasterio.open(vrt) as src:  # the VRT really is that mosaic
        assert src.driver == "VRT" and src.crs == crs
        np.testing.assert_array_equal(src.read(), img)
    out = tmp_path / "out"
    doc = run_ok([vrt, whole], tiny_model(num_classes=4), out, *TILE, "--preview-size", "0")
    assert doc["scenes"]["mosaic"]["status"] == doc["scenes"]["whole"]["status"] == "done"
    a, b = read_mask(out / "mosaic" / "mask.tif"), read_mask(out / "whole" / "mask.tif")
    np.testing.assert_array_equal(a, b)
    assert (a[:25, :30] == 255).all() and len(np.unique(a[a != 255])) >= 2
    with rasterio.open(out / "mosaic" / "mask.tif") as m:
        assert m.crs == crs and m.transform.almost_equals(transform)
    assert (out / "mosaic" / "areas.csv").read_text() == (out / "whole" / "areas.csv").read_text()


def test_gdal_internal_mask_is_nodata(tmp_path: Path, identity_model: Path) -> None:
    """A GeoTIFF whose nodata is an internal mask band (no nodata value, no alpha): masked
    pixels are 255 in the mask and are left out of the areas."""
    from rasterio.enums import MaskFlags

    h, w = 77, 93
    img = smooth_image(h, w, seed=13)
    valid = np.ones((h, w), bool)
    valid[10:40, 20:50] = False
    valid[:, -7:] = False
    path = tmp_path / "masked.tif"
    prof = dict(driver="GTiff", width=w, height=h, count=3, dtype="uint8", crs="EPSG:32633",
                transform=from_origin(500000.0, 4650000.0, 2.0, 2.0))  # fmt: skip
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(path, "w", **prof) as dst:
        dst.write(img)  # the masked pixels keep ordinary values: only the mask says nodata
        dst.write_mask(np.where(valid, 255, 0).astype(np.uint8))
    assert not path.with_name("masked.tif.msk").exists()  # internal, not a sidecar
    with rasterio.open(path) as src:
        assert src.nodata is None and src.mask_flag_enums[0] == [MaskFlags.per_dataset]
    out = tmp_path / "out"
    run_ok([path], identity_model, out, *TILE, "--preview-size", "0")
    mask = read_mask(out / "masked" / "mask.tif")
    expected = np.where(valid, identity_classes(img[0]), 255)
    np.testing.assert_array_equal(mask, expected)
    rows = read_areas(out / "masked" / "areas.csv")
    counts = np.bincount(expected[valid], minlength=4)
    assert {int(r["class_id"]): int(r["pixels"]) for r in rows} == dict(enumerate(counts.tolist()))
    assert sum(float(r["area_m2"]) for r in rows) == pytest.approx(valid.sum() * 4.0)


# --- exit codes ---------------------------------------------------------------------------------


def test_click_usage_errors_exit_2(tmp_path: Path, identity_model: Path) -> None:
    r = CliRunner().invoke(cli, ["run", "--no-such-option", "-m", str(identity_model)])
    assert r.exit_code == 2 and "No such option" in r.output and "--no-such-option" in r.output
    r = CliRunner().invoke(cli, ["run", "-i", str(tmp_path), "--tile-size", "big"])
    assert r.exit_code == 2 and "--tile-size" in r.output and "Traceback" not in r.output


# --- precision and compile on the CPU ---------------------------------------------------------


@pytest.fixture
def conv_scene(tmp_path: Path) -> Path:
    img = smooth_image(90, 111, seed=17)
    img[:, :12, :20] = 0
    return make_raster(tmp_path / "s.tif", img, nodata=0)


def test_bf16_on_cpu_runs_and_agrees_with_fp32(tmp_path: Path, conv_scene: Path, tiny_model):
    model = tiny_model(num_classes=4)
    masks, probs = {}, {}
    for p in ("fp32", "bf16"):
        out = tmp_path / p
        doc = run_ok([conv_scene], model, out, *TILE, "--device", "cpu", "--precision", p,
                     "--save-probs", "--preview-size", "0")  # fmt: skip
        assert doc["config"]["precision"] == p
        masks[p] = read_mask(out / "s" / "mask.tif")
        import zarr

        probs[p] = zarr.open_group(out / "s" / "pred.zarr", mode="r")["probs"][:].astype(np.float32)
    valid = masks["fp32"] != 255
    assert (masks["bf16"] != 255).sum() == valid.sum()
    agreement = (masks["bf16"] == masks["fp32"])[valid].mean()
    assert agreement >= 0.99, agreement
    # bf16 really ran (bfloat16 keeps ~3 significant digits): the probabilities differ
    assert np.abs(probs["bf16"] - probs["fp32"])[:, valid].max() > 1e-3


def test_fp16_on_cpu_is_a_clear_error(tmp_path: Path, conv_scene: Path, tiny_model) -> None:
    r = invoke("run", "-i", str(conv_scene), "-m", str(tiny_model()), "-o", str(tmp_path / "o"),
               "--device", "cpu", "--precision", "fp16")  # fmt: skip
    assert r.exit_code == EXIT_USAGE
    assert "fp16" in r.output and "CUDA" in r.output and "bf16" in r.output
    assert "Traceback" not in r.output and len(r.output.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "suffix",
    [
        pytest.param(".pt2", marks=pytest.mark.slow),  # torch.compile: ~30 s on 2 cores
        pytest.param(".ts"),  # TorchScript cannot be compiled: a warning, then eager
    ],
)
def test_compile_on_cpu_gives_the_eager_mask(tmp_path: Path, tiny_model, suffix: str) -> None:
    scene = make_raster(tmp_path / "s.tif", smooth_image(45, 53, seed=19))
    model = tiny_model(num_classes=3, suffix=suffix)
    flags = ("--tile-size", "32", "--overlap", "8", "--device", "cpu", "--preview-size", "0")
    run_ok([scene], model, tmp_path / "eager", *flags)
    doc = run_ok([scene], model, tmp_path / "compiled", *flags, "--compile")
    assert doc["config"]["compile"] is True
    eager = read_mask(tmp_path / "eager" / "s" / "mask.tif")
    assert len(np.unique(eager)) >= 2
    np.testing.assert_array_equal(read_mask(tmp_path / "compiled" / "s" / "mask.tif"), eager)


# --- colour table and preview -------------------------------------------------------------------


def test_colour_table_is_the_model_class_colours(tmp_path: Path) -> None:
    colours = [(12, 34, 56), (200, 100, 0), (0, 255, 128)]
    meta = {
        "classes": [{"id": i, "name": f"c{i}", "color": list(c)} for i, c in enumerate(colours)],
        "in_channels": 3,
        "input_scale": 1.0,
        "multiple": 1,
        "tile_size": 32,
    }
    model = save_model(IdentityNet(3), tmp_path / "m.ts", ModelSpec.from_dict(meta))
    scene = make_raster(tmp_path / "s.tif", np.full((3, 17, 19), 1, np.uint8))
    run_ok([scene], model, tmp_path / "out", "--preview-size", "0")
    with rasterio.open(tmp_path / "out" / "s" / "mask.tif") as m:
        cmap = m.colormap(1)
    for i, c in enumerate(colours):
        assert cmap[i] == (*c, 255), i
    assert cmap[255][3] == 0  # nodata: transparent


def test_colour_table_entries_beyond_the_classes_are_black_and_nodata_transparent(
    tmp_path: Path, identity_model
) -> None:
    """A TIFF palette stores no alpha: GDAL reads every entry opaque except the nodata value's.
    Entries beyond the classes are black and never drawn (no pixel has them); mask.qml, which
    QGIS applies, lists only the classes."""
    scene = make_raster(tmp_path / "s.tif", np.full((3, 9, 11), 64, np.uint8))
    run_ok([scene], identity_model, tmp_path / "out", "--preview-size", "0")
    with rasterio.open(tmp_path / "out" / "s" / "mask.tif") as m:
        cmap = m.colormap(1)
    assert all(cmap[v][:3] == (0, 0, 0) for v in range(4, 255))
    assert cmap[255][3] == 0


def preview_scene(path: Path, h: int, w: int) -> np.ndarray:
    """Band 1 = class id by quadrant (0 top-left, 1 top-right, 2 bottom-left, 3 bottom-right);
    bands 2-3 constant. Returns the (3, h, w) image written."""
    img = np.zeros((3, h, w), np.uint8)
    img[0] = 2 * (np.arange(h)[:, None] >= h // 2) + (np.arange(w)[None] >= w // 2)
    img[1:] = 7
    make_raster(path, img)
    return img


def colour_boxes(png: np.ndarray, colours: list[tuple], tol: int = 2) -> list[tuple]:
    """For each RGB colour: ``(count, row centre, col centre, r0, r1, c0, c1)`` of the pixels of
    ``png`` (H, W, 3) uint8 within ``tol`` of it."""
    out = []
    for c in colours:
        hit = (np.abs(png.astype(int) - np.asarray(c)) <= tol).all(-1)
        rr, cc = np.nonzero(hit)
        if not len(rr):
            out.append((0, None, None, None, None, None, None))
            continue
        out.append((len(rr), rr.mean(), cc.mean(), rr.min(), rr.max() + 1, cc.min(), cc.max() + 1))
    return out


def panel_boxes(
    png_path: Path,
) -> tuple[tuple[int, int, int, int], tuple[int, int, int, int], list]:
    """Extents ``(r0, r1, c0, c1)`` in PNG pixels of the image panel and of the mask panel of a
    preview of ``preview_scene`` run with IdentityNet (input_scale 1, default palette), and the
    mask panel's boxes of classes 1-3 (see ``colour_boxes``). The image panel shows band 1
    stretched to (0, 85, 170, 255) in red (bands 2-3 are constant, so black); the mask panel
    shows 0.35 x image + 0.65 x the class colour. Class 0 is black in both panels, as is text,
    so the extents come from classes 1-3 (top-right, bottom-left, bottom-right)."""
    png = read_png(png_path)
    img_cols = [(round(v * 255 / 3), 0, 0) for v in range(4)]
    overlay = [
        tuple(0.35 * np.asarray(img_cols[v]) + 0.65 * np.asarray(DEFAULT_PALETTE[v]))
        for v in range(4)
    ]
    image_boxes = colour_boxes(png, img_cols[1:])
    mask_boxes = colour_boxes(png, overlay[1:])
    assert all(b[0] > 50 for b in image_boxes + mask_boxes), (image_boxes, mask_boxes)

    def extent(boxes):
        return (
            min(b[3] for b in boxes),
            max(b[4] for b in boxes),
            min(b[5] for b in boxes),
            max(b[6] for b in boxes),
        )

    return extent(image_boxes), extent(mask_boxes), mask_boxes


def test_preview_shows_the_image_and_the_class_colours(tmp_path: Path, tiny_model) -> None:
    h, w = 120, 180
    scene = tmp_path / "q.tif"
    preview_scene(scene, h, w)
    model = tiny_model(num_classes=4, kind="identity")
    run_ok([scene], model, tmp_path / "out", "--preview-size", "90")
    png_path = tmp_path / "out" / "q" / "preview.png"
    png = read_png(png_path)
    assert len(np.unique(png.reshape(-1, 3), axis=0)) >= 8  # not blank
    image, (r0, r1, c0, c1), (one, two, three) = panel_boxes(png_path)
    mh, mw = r1 - r0, c1 - c0
    # two panels of the same size with the scene's aspect ratio, the mask right of the image
    assert abs(image[1] - image[0] - mh) <= 2 and abs(image[3] - image[2] - mw) <= 2
    assert mw / mh == pytest.approx(w / h, rel=0.03) and image[3] <= c0
    # the mask panel's quadrants: class 1 top-right, 2 bottom-left, 3 bottom-right, 0 black
    cr, cc = (r0 + r1) / 2, (c0 + c1) / 2
    assert one[1] < cr < two[1] and one[2] > cc > two[2]
    assert three[1] > cr and three[2] > cc
    assert abs(one[2] - three[2]) < 2 and abs(two[1] - three[1]) < 2
    for b in (one, two, three):
        assert b[0] == pytest.approx(mh * mw / 4, rel=0.05)  # each class a quarter of the panel
    top_left = png[r0 + 2 : int(cr) - 2, c0 + 2 : int(cc) - 2].astype(int)
    assert top_left.size and (top_left <= 2).all()  # class 0: 0.65 x black
    # --preview-size 0: no preview
    run_ok([scene], model, tmp_path / "none", "--preview-size", "0")
    assert (tmp_path / "none" / "q" / "mask.tif").is_file()
    assert not (tmp_path / "none" / "q" / "preview.png").exists()


def test_preview_panel_longest_side_is_preview_size(tmp_path: Path, tiny_model) -> None:
    scene = tmp_path / "q.tif"
    preview_scene(scene, 200, 300)
    model = tiny_model(num_classes=4, kind="identity")
    for size in (150, 250):
        run_ok([scene], model, tmp_path / f"p{size}", "--preview-size", str(size))
        image, mask, _ = panel_boxes(tmp_path / f"p{size}" / "q" / "preview.png")
        for r0, r1, c0, c1 in (image, mask):
            assert max(r1 - r0, c1 - c0) == pytest.approx(size, abs=2)


# --- --shard I/N --------------------------------------------------------------------------------


@given(
    files=st.lists(
        st.tuples(st.sampled_from(["/d", "/e", "/d/x"]), st.text("abx", min_size=1, max_size=4)),
        max_size=12,
        unique=True,
    ),
    n=st.integers(1, 5),
)
@settings(max_examples=examples(60), deadline=None)
def test_shards_are_every_nth_scene_of_the_sorted_list(files: list[tuple], n: int) -> None:
    """README: ``--shard I/N`` keeps scenes I, I+N, I+2N... of the list sorted by path, so the
    N shards of a job array partition the scenes, whatever order they were given in."""
    from tilesegd.batch.discovery import select_shard

    paths = [Path(d) / f"{stem}.tif" for d, stem in files]
    names = [f"scene{k}" for k in range(len(paths))]
    reference = sorted(zip(paths, names, strict=True), key=lambda pn: str(pn[0]))
    seen: list[Path] = []
    for i in range(n):
        kept, kept_names = select_shard(paths[::-1], names[::-1], f"{i}/{n}")
        assert list(zip(kept, kept_names, strict=True)) == reference[i::n]
        seen += kept
    assert sorted(seen) == sorted(paths)  # each scene in exactly one shard

"""`tilesegd run` with scenes on S3 (moto on 127.0.0.1) and behind an HTTP URL gives the masks
the same scenes give on disk, byte for byte, and run.json names the URLs, never a secret."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import numpy as np
import rasterio
import zarr
from click.testing import CliRunner
from conftest import TEST_SECRET_ACCESS_KEY, make_raster, smooth_image
from rasterio.transform import from_origin

from tilesegd.cli.main import cli

SIGNATURE = "RuNSiGnAtUrE5555aaaa"


def run(*args: str) -> tuple[int, str]:
    r = CliRunner().invoke(cli, ["run", "--preview-size", "0", *args], catch_exceptions=False)
    return r.exit_code, r.output


def scenes(folder: Path) -> dict[str, Path]:
    """Three scenes: odd sizes, a nodata corner, two CRSs; two share the stem ``tile``."""
    img = smooth_image(203, 157, seed=1)
    img[:, :40, :50] = 0
    t = from_origin(500000.0, 4650000.0, 0.5, 0.5)
    (folder / "b").mkdir(parents=True)
    return {
        "a/tile.tif": make_raster(folder / "tile.tif", img, nodata=0, transform=t),
        "b/tile.tif": make_raster(folder / "b" / "tile.tif", smooth_image(70, 301, seed=2)),
        "c.tif": make_raster(
            folder / "c.tif",
            smooth_image(129, 65, seed=3),
            crs="EPSG:2056",
            transform=from_origin(2.5e6, 1.2e6, 0.1, 0.1),
        ),
    }


def mask_pixels(path: Path) -> tuple:
    with rasterio.open(path) as ds:
        return ds.read().tobytes(), ds.crs, ds.transform, ds.nodata, ds.dtypes, ds.tags()


def test_masks_from_object_storage_equal_the_local_run(
    s3, range_server, tiny_model, tmp_path: Path
) -> None:
    local = scenes(tmp_path / "scenes")
    s3.put("run/a/tile.tif", local["a/tile.tif"])
    s3.put("run/b/tile.tif", local["b/tile.tif"])
    s3.put("run/notes.txt", b"not a scene")
    http = range_server.add(f"{uuid.uuid4().hex}/c.tif", local["c.tif"].read_bytes())
    model = tiny_model(num_classes=4)
    remote_model = s3.put("models/net.ts", model)

    code, out = run(
        *(
            "-i",
            str(local["a/tile.tif"]),
            "-i",
            str(local["b/tile.tif"]),
            "-i",
            str(local["c.tif"]),
        ),
        *("-m", str(model), "-o", str(tmp_path / "local")),
    )
    assert code == 0, out
    code, out = run(
        *("-i", s3.url("run/"), "-i", f"{http}?X-Amz-Signature={SIGNATURE}"),
        *("-m", remote_model, "-o", str(tmp_path / "remote"), "-v"),
    )
    assert code == 0, out

    names = ["tile", "tile__2", "c"]
    for name in names:
        lo, re_ = tmp_path / "local" / name, tmp_path / "remote" / name
        assert mask_pixels(lo / "mask.tif")[:5] == mask_pixels(re_ / "mask.tif")[:5], name
        assert (lo / "areas.csv").read_bytes() == (re_ / "areas.csv").read_bytes(), name
        zl, zr = zarr.open_group(lo / "pred.zarr", mode="r"), zarr.open_group(re_ / "pred.zarr")
        np.testing.assert_array_equal(zl["mask"][:], zr["mask"][:])
        chunks = sorted(p.relative_to(lo) for p in (lo / "pred.zarr").rglob("c/*") if p.is_file())
        assert chunks and all((lo / c).read_bytes() == (re_ / c).read_bytes() for c in chunks)

    doc = json.loads((tmp_path / "remote" / "run.json").read_text())
    assert sorted(doc["scenes"]) == sorted(names)
    assert doc["scenes"]["tile"]["input"] == s3.url("run/a/tile.tif")
    assert doc["scenes"]["c"]["input"] == f"{http}?X-Amz-Signature=***"
    assert mask_pixels(tmp_path / "remote" / "c" / "mask.tif")[5]["TILESEGD_SOURCE"] == (
        f"{http}?X-Amz-Signature=***"
    )
    everything = out + (tmp_path / "remote" / "run.json").read_text()
    everything += (tmp_path / "remote" / "summary.csv").read_text()
    assert SIGNATURE not in everything and TEST_SECRET_ACCESS_KEY not in everything

"""Shared fixtures: generated rasters (odd sizes, real CRS, nodata) and tiny model files."""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import settings

from tilesegd.model.model_file import ModelSpec, save_model

# Hypothesis profiles (issue 26). "ci", the default (make test, .ci/run): derandomised, so a
# submission's run draws the same examples every time and no run fails on a case unrelated to
# its change; no example database in a clean clone. "explore" (make test-explore, or
# HYPOTHESIS_PROFILE=explore): new random examples on every run, EXPLORE_FACTOR times as many,
# the database kept in .hypothesis/ so a failure found replays until fixed. Every failure found
# goes into its test as an explicit @example (tests/outputs/test_zones.py has one).
EXPLORE_FACTOR = 10
settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
settings.register_profile(
    "explore", derandomize=False, print_blob=True, max_examples=100 * EXPLORE_FACTOR
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def examples(n: int) -> int:
    """``max_examples`` for a property test: ``n`` in the ci profile, ``EXPLORE_FACTOR * n``
    in the explore profile."""
    explore = os.environ.get("HYPOTHESIS_PROFILE") == "explore"
    return n * EXPLORE_FACTOR if explore else n


SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def shared_data() -> Path:
    """``../shared/data`` or a pytest skip with the reason."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real sample data not found at {SHARED_DATA} (../shared/data)")
    return SHARED_DATA


def make_raster(
    path: Path,
    data: np.ndarray,
    *,
    crs: str | None = "EPSG:32633",
    transform=None,
    nodata: float | None = None,
    driver: str | None = None,
    **profile,
) -> Path:
    """Write (C, H, W) ``data`` to ``path`` (GeoTIFF unless the suffix says JPEG/PNG)."""
    import rasterio
    from rasterio.transform import from_origin

    if data.ndim == 2:
        data = data[None]
    count, height, width = data.shape
    suffix = path.suffix.lower()
    driver = driver or {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG"}.get(suffix, "GTiff")
    prof = dict(driver=driver, width=width, height=height, count=count, dtype=data.dtype.name)
    if driver == "GTiff" and crs is not None:
        prof.update(crs=crs, transform=transform or from_origin(500000.0, 4650000.0, 2.0, 2.0))
    if nodata is not None:
        prof["nodata"] = nodata
    prof.update(profile)
    with rasterio.open(path, "w", **prof) as dst:
        dst.write(data)
    return path


def smooth_image(height: int, width: int, bands: int = 3, seed: int = 0) -> np.ndarray:
    """(bands, H, W) uint8 image with large smooth structures (like aerial imagery)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    out = np.zeros((bands, height, width), np.float32)
    for b in range(bands):
        for _ in range(4):
            fy, fx, ph = rng.uniform(0.005, 0.05), rng.uniform(0.005, 0.05), rng.uniform(0, 6)
            out[b] += np.sin(yy * fy + ph) * np.cos(xx * fx - ph)
    out += rng.normal(0, 0.2, out.shape)
    out = (out - out.min()) / (np.ptp(out) + 1e-6) * 255
    return out.astype(np.uint8)


class IdentityNet(torch.nn.Module):
    """Logits whose argmax is the (scaled) input value of channel 0: ``-(x - k)^2`` for class k.

    With ``input_scale=1, mean=0, std=1`` the stitched mask must equal the input exactly.
    """

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.register_buffer("k", torch.arange(num_classes, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return -((x[:, :1] - self.k) ** 2)


class TinyConvNet(torch.nn.Module):
    """A fast, deterministic little CNN with a 2x down/up-sampling (multiple 2)."""

    def __init__(self, in_channels: int, num_classes: int, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.c1 = torch.nn.Conv2d(in_channels, 8, 3, padding=1)
        self.c2 = torch.nn.Conv2d(8, 8, 3, stride=2, padding=1)
        self.c3 = torch.nn.Conv2d(16, num_classes, 3, padding=1)
        for p in self.parameters():
            with torch.no_grad():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = torch.relu(self.c1(x))
        b = torch.nn.functional.interpolate(torch.relu(self.c2(a)), scale_factor=2.0)
        return self.c3(torch.cat([a, b], 1))


def spec_for(num_classes: int, in_channels: int = 3, **extra) -> ModelSpec:
    """A ModelSpec with classes c0..c{K-1}."""
    meta = {
        "classes": [{"id": i, "name": f"class{i}"} for i in range(num_classes)],
        "in_channels": in_channels,
        **extra,
    }
    return ModelSpec.from_dict(meta)


@pytest.fixture
def tiny_model(tmp_path: Path) -> Callable[..., Path]:
    """Factory: ``tiny_model(num_classes=4, in_channels=3, kind="conv"|"identity", suffix)``."""

    def make(
        num_classes: int = 4, in_channels: int = 3, kind: str = "conv", suffix: str = ".ts", **extra
    ) -> Path:
        if kind == "identity":
            net = IdentityNet(num_classes)
            extra = {"input_scale": 1.0, "multiple": 1, "tile_size": 64, **extra}
        else:
            net = TinyConvNet(in_channels, num_classes)
            extra = {"multiple": 2, "tile_size": 64, **extra}
        path = tmp_path / f"model_{kind}_{num_classes}_{in_channels}{suffix}"
        return save_model(net, path, spec_for(num_classes, in_channels, **extra))

    return make


def write_polygons(
    path: Path,
    geoms,
    *,
    crs: str | None = "EPSG:32633",
    fields: dict[str, list] | None = None,
    driver: str | None = None,
) -> Path:
    """Write shapely ``geoms`` (map coordinates of ``crs``; ``None`` = null geometry) and
    attribute ``fields`` to a vector file with pyogrio (driver from the suffix)."""
    import warnings

    import pyogrio.raw
    import shapely

    geoms = np.asarray(geoms, dtype=object)
    types = {g.geom_type for g in geoms if g is not None}
    multi = types <= {"Polygon", "MultiPolygon"} and len(types) == 2
    gtype = "MultiPolygon" if multi else types.pop() if len(types) == 1 else "Unknown"
    names = list(fields or {})
    data = []
    for n in names:
        vals = fields[n]
        obj = any(v is None or isinstance(v, str) for v in vals)
        data.append(np.asarray(vals, dtype=object if obj else None))
    with warnings.catch_warnings():  # "'crs' was not provided" when a test wants none
        warnings.simplefilter("ignore", UserWarning)
        pyogrio.raw.write(
            path,
            shapely.to_wkb(geoms),
            data,
            names,
            driver=driver,
            geometry_type=gtype,
            promote_to_multi=multi or None,
            crs=crs,
        )
    return path


def to_map(g, transform=None):
    """Pixel coordinates (x = column, y = row) of shapely ``g`` -> map coordinates of
    ``transform`` (default: :func:`make_raster`'s)."""
    import shapely
    from rasterio.transform import from_origin

    transform = transform or from_origin(500000.0, 4650000.0, 2.0, 2.0)  # as make_raster
    a, b, c, d, e, f = transform[:6]
    return shapely.transform(
        g,
        lambda xy: np.column_stack(
            [a * xy[:, 0] + b * xy[:, 1] + c, d * xy[:, 0] + e * xy[:, 1] + f]
        ),
    )


def to_lonlat(g, src: str = "EPSG:32633"):
    """Densified map geometry -> EPSG:4326 (a straight UTM edge stays within mm)."""
    import shapely
    from pyproj import Transformer

    t = Transformer.from_crs(src, "EPSG:4326", always_xy=True)
    g = shapely.segmentize(g, 1.0)
    return shapely.transform(g, lambda xy: np.column_stack(t.transform(xy[:, 0], xy[:, 1])))


def read_png(path: Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB pixels of a PNG (alpha dropped), read with matplotlib."""
    import matplotlib.image

    rgba = matplotlib.image.imread(str(path))
    if rgba.dtype != np.uint8:
        rgba = np.round(rgba * 255).astype(np.uint8)
    return rgba[..., :3]


@contextlib.contextmanager
def disk_full_after(blocks: int) -> Iterator[None]:
    """Within the block, the Zarr store "fills the disk": ``ZarrMaskStore.write_block`` writes
    ``blocks`` blocks, then raises ``OSError(ENOSPC)`` (a context manager rather than a fixture,
    so Hypothesis tests can use it once per example)."""
    from tilesegd.outputs.zarr_store import ZarrMaskStore

    real, written = ZarrMaskStore.write_block, [0]

    def write_some(self, block, ids):  # noqa: ANN001, ANN202
        if written[0] >= blocks:
            raise OSError(errno.ENOSPC, "No space left on device", str(self.path))
        written[0] += 1
        real(self, block, ids)

    ZarrMaskStore.write_block = write_some  # type: ignore[method-assign]
    try:
        yield
    finally:
        ZarrMaskStore.write_block = real  # type: ignore[method-assign]


def engine_for(net, spec: ModelSpec, *, batch_size: int | None = None, **options):  # noqa: ANN001, ANN201
    """An engine for a network in memory, built as a run builds one
    (:func:`tilesegd.inference.build.build_engine`: device ``cpu`` unless ``options`` say
    otherwise; ``batch_size`` ``None``: the geometry's default); ``options`` are
    :class:`~tilesegd.inference.options.EngineOptions` fields."""
    from tilesegd.inference.build import build_engine
    from tilesegd.inference.geometry import TilingOptions
    from tilesegd.inference.options import EngineOptions

    opts = EngineOptions(**{"device": "cpu", **options})
    return build_engine(net, spec, opts, TilingOptions(batch_size=batch_size))


def engine_from(path, *, batch_size: int | None = None, **options):  # noqa: ANN001, ANN201
    """An engine for a model file, as :func:`engine_for` (through
    :func:`tilesegd.inference.build.open_engine`)."""
    from tilesegd.inference.build import open_engine
    from tilesegd.inference.geometry import TilingOptions
    from tilesegd.inference.options import EngineOptions

    opts = EngineOptions(**{"device": "cpu", **options})
    return open_engine(path, opts, TilingOptions(batch_size=batch_size))

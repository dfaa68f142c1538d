"""Shared fixtures: generated rasters (odd sizes, real CRS, nodata) and tiny model files."""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
import zarr
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


class SlowNet(torch.nn.Module):
    """A plain conv stack, slow enough (~50 ms per tile here) for a kill to land mid-scene."""

    def __init__(self, num_classes: int = 4, width: int = 16, depth: int = 4) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        chans = [3] + [width] * (depth - 1) + [num_classes]
        self.convs = torch.nn.ModuleList(
            torch.nn.Conv2d(a, b, 3, padding=1) for a, b in zip(chans, chans[1:], strict=False)
        )
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv in self.convs[:-1]:
            x = torch.relu(conv(x))
        return self.convs[-1](x)


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


# ------------------------------------------------------------------ object storage (issue 22)
# A real S3 server on 127.0.0.1 (moto in server mode) and a loopback HTTP server honouring
# Range: GDAL, s3fs and urllib talk HTTP to them, as they would to S3 or a web server.

#: credentials the S3 fixtures put in the environment; no test output may contain them
TEST_ACCESS_KEY_ID = "AKIATILESEGDTESTKEY0"
TEST_SECRET_ACCESS_KEY = "tilesegd-test-secret-Zq8wX1vN"


@pytest.fixture(autouse=True, scope="session")
def session_model_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Model files fetched by URL, converted to ONNX and timed (``--runtime auto``) go to a
    cache of this session, never to the user's ``~/.cache/tilesegd``."""
    old = os.environ.get("TILESEGD_MODEL_CACHE")
    path = tmp_path_factory.mktemp("model-cache")
    os.environ["TILESEGD_MODEL_CACHE"] = str(path)
    yield path
    if old is None:
        os.environ.pop("TILESEGD_MODEL_CACHE", None)
    else:
        os.environ["TILESEGD_MODEL_CACHE"] = old


def flat_curve(network, channels: int, sizes) -> tuple[tuple[int, float], ...]:  # noqa: ANN001
    """A throughput curve equal at every tile size: the cost model then picks each scene's tile
    by network pixels alone."""
    return tuple((int(s), 1.0) for s in sorted(sizes))


@pytest.fixture(autouse=True)
def untimed_cost_model(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Runs in the tests do not time their networks (seconds per model file, and the suite
    makes hundreds): the curve is flat. Tests marked ``timed_cost_model`` time for real."""
    if request.node.get_closest_marker("timed_cost_model") is None:
        import tilesegd.inference.costmodel as costmodel

        monkeypatch.setattr(costmodel, "measure_curve", flat_curve)


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """moto's S3 server on 127.0.0.1 (a free port) for the whole session: its endpoint URL.
    Skipped, with the reason, where moto[server] cannot be imported."""
    import logging

    try:
        from moto.server import ThreadedMotoServer
    except ImportError as exc:
        pytest.skip(f"moto[server] is not installed ({exc}); pip install 'moto[server]'")
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


class S3Bucket:
    """A bucket on the test server, and boto3 to fill it (not what tilesegd uses to read)."""

    def __init__(self, endpoint: str, name: str) -> None:
        import boto3

        self.endpoint, self.name = endpoint, name
        self.client = boto3.client(
            "s3",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id=TEST_ACCESS_KEY_ID,
            aws_secret_access_key=TEST_SECRET_ACCESS_KEY,
        )
        self.client.create_bucket(Bucket=name)

    def url(self, key: str = "") -> str:
        """``s3://<bucket>/<key>``."""
        return f"s3://{self.name}/{key}"

    def put(self, key: str, data: bytes | Path) -> str:
        """Upload ``data`` (bytes, or a file's) as ``key``; its ``s3://`` URL."""
        body = data.read_bytes() if isinstance(data, Path) else data
        self.client.put_object(Bucket=self.name, Key=key, Body=body)
        return self.url(key)

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.name, Key=key)


@pytest.fixture
def s3(s3_server: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[S3Bucket]:
    """A fresh bucket on :func:`s3_server`, and the environment a user of an S3-compatible
    store sets: ``AWS_ENDPOINT_URL``, credentials, a region (AWS config files, profiles and other
    ``AWS_*`` settings of this machine cleared); the model cache in ``tmp_path``. A new bucket
    per test: GDAL caches what it learnt of each URL for the process."""
    import uuid

    for name in list(os.environ):
        if name.startswith(("AWS_", "GDAL_HTTP", "CPL_VSIL")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", TEST_ACCESS_KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", TEST_SECRET_ACCESS_KEY)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("TILESEGD_MODEL_CACHE", str(tmp_path / "model-cache"))
    before = set(os.environ)
    yield S3Bucket(s3_server, f"tilesegd-{uuid.uuid4().hex[:12]}")
    for name in set(os.environ) - before:  # GDAL settings the run put there (the endpoint)
        os.environ.pop(name, None)


class FaultProxy:
    """A loopback reverse proxy in front of the S3 server that fails the first try of one
    request in ``every`` (chosen by a hash of method, path, query and range, so the choice does
    not depend on timing): half of them answer ``503 SlowDown``, half drop the connection
    without an answer. Retries of a request go through. ``faults`` counts what was injected."""

    def __init__(self, upstream: str, every: int = 4) -> None:
        import threading
        from http.server import ThreadingHTTPServer

        self.upstream, self.every = urlsplit_netloc(upstream), every
        self.seen: set[str] = set()
        self.faults = {"503": 0, "drop": 0}
        self.lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self.handler())
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def fault(self, key: str) -> str | None:
        import zlib

        with self.lock:
            if key in self.seen:
                return None
            self.seen.add(key)
            h = zlib.crc32(key.encode())
            if h % self.every:
                return None
            kind = "503" if (h // self.every) % 2 else "drop"
            self.faults[kind] += 1
            return kind

    def handler(self):  # noqa: ANN201
        import http.client
        from http.server import BaseHTTPRequestHandler

        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # noqa: ANN002
                pass

            def relay(self) -> None:
                body = read_body(self)
                key = f"{self.command} {self.path} {self.headers.get('Range')}"
                kind = proxy.fault(key)
                if kind == "drop":
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                if kind == "503":
                    msg = b"<Error><Code>SlowDown</Code><Message>Reduce your request rate."
                    msg += b"</Message></Error>"
                    self.send_response(503)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(msg)))
                    self.end_headers()
                    self.wfile.write(msg)
                    return
                conn = http.client.HTTPConnection(*proxy.upstream, timeout=60)
                hop = ("connection", "transfer-encoding", "content-length")
                headers = {k: v for k, v in self.headers.items() if k.lower() not in hop}
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(k, v)
                length = resp.getheader("Content-Length") if self.command == "HEAD" else None
                self.send_header("Content-Length", length or str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                conn.close()

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = relay

        return Handler


def read_body(handler) -> bytes | None:
    """A proxied request's body, whether framed by ``Content-Length`` or chunked (botocore's
    streaming uploads), to be forwarded with a ``Content-Length``."""
    if "chunked" in (handler.headers.get("Transfer-Encoding") or "").lower():
        parts = []
        while True:
            size = int(handler.rfile.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while handler.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass
                return b"".join(parts)
            parts.append(handler.rfile.read(size))
            handler.rfile.readline()
    n = int(handler.headers.get("Content-Length") or 0)
    return handler.rfile.read(n) if n else None


def urlsplit_netloc(url: str) -> tuple[str, int]:
    """``(host, port)`` of an ``http://host:port`` URL."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or 80


@pytest.fixture
def faulty_s3(s3, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[S3Bucket, FaultProxy]]:
    """:func:`s3`, with tilesegd sent through a :class:`FaultProxy` (``AWS_ENDPOINT_URL``);
    the bucket's own client still talks to the server directly."""
    proxy = FaultProxy(s3.endpoint)
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
    yield s3, proxy
    proxy.httpd.shutdown()


# Outputs on S3, fetched back for comparison with a local run's


def download(s3, prefix: str, dest: Path) -> list[str]:
    """Every object under ``prefix`` into ``dest``; the relative keys, sorted."""
    keys = []
    for page in s3.client.get_paginator("list_objects_v2").paginate(Bucket=s3.name, Prefix=prefix):
        for obj in page.get("Contents", []):
            rel = obj["Key"][len(prefix) :]
            keys.append(rel)
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            body = s3.client.get_object(Bucket=s3.name, Key=obj["Key"])["Body"].read()
            (dest / rel).write_bytes(body)
    return sorted(keys)


def local_files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def pixels(path: Path) -> tuple:
    with rasterio.open(path) as ds:
        return ds.read().tobytes(), ds.crs, ds.transform, ds.nodata, ds.dtypes


def same_scene_outputs(lo: Path, re_: Path) -> None:
    """The scene folders hold the same files, masks, areas and Zarr chunks."""
    assert local_files(lo) == local_files(re_)
    for tif in ("mask.tif", "confidence.tif"):
        if (lo / tif).exists():
            assert pixels(lo / tif) == pixels(re_ / tif), tif
    assert (lo / "areas.csv").read_bytes() == (re_ / "areas.csv").read_bytes()
    zl, zr = zarr.open_group(lo / "pred.zarr", mode="r"), zarr.open_group(re_ / "pred.zarr")
    np.testing.assert_array_equal(zl["mask"][:], zr["mask"][:])
    chunks = [c for c in local_files(lo / "pred.zarr") if "/c/" in c]
    assert chunks and all(
        (lo / "pred.zarr" / c).read_bytes() == (re_ / "pred.zarr" / c).read_bytes() for c in chunks
    )


class RangeServer:
    """A loopback HTTP server serving in-memory files, honouring ``Range`` (206 answers), with
    an ``ETag``; every request is logged as ``(method, path, Range header, bytes sent)``.
    Paths in ``denied`` answer 403, unknown paths 404."""

    def __init__(self) -> None:
        import threading
        from http.server import ThreadingHTTPServer

        self.files: dict[str, bytes] = {}
        self.denied: set[str] = set()
        self.log: list[tuple[str, str, str | None, int]] = []
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self.handler())
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/{path}"

    def add(self, path: str, data: bytes) -> str:
        """Serve ``data`` at ``/<path>``; its URL."""
        self.files["/" + path] = data
        return self.url(path)

    def requests(self, path: str) -> list[tuple[str, str, str | None, int]]:
        """The logged requests of ``/<path>`` (any query)."""
        return [r for r in self.log if r[1].split("?")[0] == "/" + path]

    def handler(self):  # noqa: ANN201
        import hashlib
        import re
        from http.server import BaseHTTPRequestHandler

        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # noqa: ANN002
                pass

            def do_HEAD(self) -> None:  # noqa: N802
                self.answer(body=False)

            def do_GET(self) -> None:  # noqa: N802
                self.answer(body=True)

            def answer(self, body: bool) -> None:
                path, rng = self.path.split("?")[0], self.headers.get("Range")
                data = server.files.get(path)
                status = 403 if path in server.denied else 404 if data is None else 200
                if status != 200:
                    server.log.append((self.command, self.path, rng, 0))
                    self.send_response(status)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                start, end = 0, len(data) - 1
                m = re.fullmatch(r"bytes=(\d+)-(\d*)", rng or "")
                if m:
                    start = int(m.group(1))
                    end = min(int(m.group(2)) if m.group(2) else end, len(data) - 1)
                chunk = data[start : end + 1]
                self.send_response(206 if m else 200)
                if m:
                    self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
                self.send_header("Content-Length", str(len(chunk)))
                self.send_header("Accept-Ranges", "bytes")
                self.send_header("ETag", '"' + hashlib.md5(data).hexdigest() + '"')
                self.end_headers()
                sent = 0
                if body:
                    try:
                        self.wfile.write(chunk)
                        sent = len(chunk)
                    except (BrokenPipeError, ConnectionResetError):  # the client had enough
                        pass
                server.log.append((self.command, self.path, rng, sent))

        return Handler

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="session")
def range_server() -> Iterator[RangeServer]:
    """:class:`RangeServer` on 127.0.0.1 for the session (tests add files under unique names:
    GDAL caches what it learnt of each URL)."""
    server = RangeServer()
    yield server
    server.close()

"""Each cloud's standard environment, turned into GDAL's settings and the listing library's.

Credentials are never handled here: GDAL and botocore / gcsfs / adlfs read them from the
environment and config files themselves (``AWS_ACCESS_KEY_ID`` / ``AWS_PROFILE`` /
``~/.aws``, ``GOOGLE_APPLICATION_CREDENTIALS``, ``AZURE_STORAGE_*``). What tilesegd passes on is
what one side does not read: an S3-compatible endpoint (``AWS_ENDPOINT_URL`` as boto3 reads
it, for MinIO, Ceph or a test server) becomes GDAL's ``AWS_S3_ENDPOINT`` / ``AWS_HTTPS`` /
``AWS_VIRTUAL_HOSTING``; ``AWS_NO_SIGN_REQUEST=YES`` becomes s3fs's anonymous access; Azure's
``AZURE_STORAGE_ACCOUNT_NAME`` / ``_KEY`` (adlfs' names) become GDAL's ``AZURE_STORAGE_ACCOUNT``
/ ``AZURE_STORAGE_ACCESS_KEY``. And GDAL gets settings tuned for Cloud-Optimized GeoTIFFs
(:data:`COG_SETTINGS`). A variable the user set in the environment always wins; tilesegd's
settings go into the process environment (:func:`configure_gdal`).
"""

from __future__ import annotations

import os
import threading
from typing import Any
from urllib.parse import urlsplit

#: GDAL settings for windowed reads of COGs over HTTP (a user's environment variable wins).
#: The directory of a scene is never listed on open (``EMPTY_DIR`` is applied to remote opens
#: only, :data:`OPEN_SETTINGS`: a local scene keeps its ``.tfw`` / ``.aux.xml`` side-car files).
COG_SETTINGS = {
    # only raster files are requested: no probing of side-car names that do not exist
    "CPL_VSIL_CURL_ALLOWED_EXTENSIONS": ".tif,.tiff,.vrt,.jpg,.jpeg,.png,.ovr,.msk",
    # neighbouring tiles of a window in one request; HTTP/2 multiplexes requests on a connection
    "GDAL_HTTP_MERGE_CONSECUTIVE_RANGES": "YES",
    "GDAL_HTTP_MULTIPLEX": "YES",
    # the ranges of one read fetched one after the other through /vsicurl's region cache: the
    # default (parallel) path bypasses that cache, so the halo tiles neighbouring blocks share
    # were fetched again (1.9 bytes fetched per scene byte on an 8192^2 scene, 1.13 with this;
    # benchmarks/bench_storage.py). Reader threads (--workers) still fetch in parallel.
    "GDAL_HTTP_MULTIRANGE": "SERIAL",
    "GDAL_HTTP_VERSION": "2",
    # a bounded cache of downloaded ranges (per process): halo tiles shared by blocks are
    # fetched once, and memory stays flat in the scene size
    "CPL_VSIL_CURL_CACHE_SIZE": str(64 << 20),
    # every request has a timeout, and throttling (429, 503 SlowDown) and 5xx are retried
    "GDAL_HTTP_CONNECTTIMEOUT": "10",
    "GDAL_HTTP_TIMEOUT": "60",
    "GDAL_HTTP_MAX_RETRY": "4",
    "GDAL_HTTP_RETRY_DELAY": "1",
}
#: set while GDAL opens a remote dataset only (see :func:`tilesegd.raster.gdalenv.open_raster`)
OPEN_SETTINGS = {"GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR"}
#: listing: seconds to connect and to read an answer, attempts per request (botocore's
#: ``AWS_MAX_ATTEMPTS`` / ``AWS_RETRY_MODE`` win)
CONNECT_TIMEOUT_S = 10
READ_TIMEOUT_S = 60
MAX_ATTEMPTS = 3

_LOCK = threading.Lock()
_applied: dict[str, str] = {}


def yes(name: str) -> bool:
    """Whether environment variable ``name`` is set to YES / TRUE / ON / 1."""
    return os.environ.get(name, "").strip().upper() in ("YES", "TRUE", "ON", "1")


def profile_endpoint() -> str | None:
    """The ``endpoint_url`` of the active AWS profile (``~/.aws/config``, its ``s3`` section
    first), as botocore reads it; ``None`` without one, or without botocore."""
    if yes("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS"):
        return None
    try:
        import botocore.session

        config = botocore.session.Session().get_scoped_config()
    except Exception:  # no botocore, an unknown AWS_PROFILE: GDAL and s3fs say so themselves
        return None
    s3 = config.get("s3")
    found = (s3.get("endpoint_url") if isinstance(s3, dict) else None) or config.get("endpoint_url")
    return str(found).strip() if found else None


def s3_endpoint() -> str | None:
    """The S3 endpoint URL boto3 would use: ``AWS_ENDPOINT_URL_S3``, else ``AWS_ENDPOINT_URL``,
    else the profile's ``endpoint_url``; ``None`` for AWS itself."""
    for name in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"):
        value = os.environ.get(name, "").strip()
        if value:
            return value
    return profile_endpoint()


def endpoint_settings(endpoint: str | None) -> dict[str, str]:
    """GDAL's settings for an S3-compatible ``endpoint`` URL: ``AWS_S3_ENDPOINT`` (host, port
    and path), ``AWS_HTTPS=NO`` for ``http://``, and path-style requests
    (``AWS_VIRTUAL_HOSTING=FALSE``, what MinIO and most S3-compatible stores need)."""
    if not endpoint:
        return {}
    parts = urlsplit(endpoint if "://" in endpoint else f"https://{endpoint}")
    out = {
        "AWS_S3_ENDPOINT": parts.netloc + parts.path.rstrip("/"),
        "AWS_VIRTUAL_HOSTING": "FALSE",
    }
    if parts.scheme.lower() == "http":
        out["AWS_HTTPS"] = "NO"
    return out


def azure_settings() -> dict[str, str]:
    """GDAL's names for the Azure account and key given under adlfs' names."""
    out = {}
    for gdal_name, names in (
        ("AZURE_STORAGE_ACCOUNT", ("AZURE_STORAGE_ACCOUNT_NAME",)),
        ("AZURE_STORAGE_ACCESS_KEY", ("AZURE_STORAGE_ACCOUNT_KEY", "AZURE_STORAGE_KEY")),
    ):
        value = next((os.environ[n] for n in names if os.environ.get(n)), None)
        if value:
            out[gdal_name] = value
    return out


def wanted_settings() -> dict[str, str]:
    """Every GDAL setting tilesegd would give: :data:`COG_SETTINGS`, the S3 endpoint's and
    Azure's account."""
    return {**COG_SETTINGS, **endpoint_settings(s3_endpoint()), **azure_settings()}


def gdal_settings() -> dict[str, str]:
    """The GDAL configuration for remote reads (:func:`wanted_settings`) less every option the
    user set in the environment: GDAL reads those itself, so the user's value holds."""
    return {
        k: v
        for k, v in wanted_settings().items()
        if os.environ.get(k) is None or os.environ.get(k) == _applied.get(k)
    }


def configure_gdal() -> dict[str, str]:
    """Put :func:`gdal_settings` into the process environment, where GDAL reads every
    configuration option it is not given otherwise: every thread sees them (rasterio's
    ``set_gdal_config`` is thread-local outside the main thread), and so do worker processes
    started later (Dask). Again whenever the environment changed what they should be; a
    variable the user set is never touched. Call it before opening a remote dataset; it is
    cheap.

    Returns:
        The settings in force (do not log them: an Azure key may be among them).
    """
    with _LOCK:
        settings = gdal_settings()
        for key, value in settings.items():
            os.environ[key] = value
            _applied[key] = value
        for key in [k for k in _applied if k not in settings]:
            if os.environ.get(key) == _applied[key]:  # ours, no longer wanted
                del os.environ[key]
            del _applied[key]
    return settings


def storage_options(scheme: str) -> dict[str, Any]:
    """Keyword arguments of the fsspec filesystem for ``scheme`` (``s3``: s3fs, ``gs``: gcsfs,
    ``az``: adlfs): timeouts and bounded retries, the S3 endpoint, anonymous access where the
    environment asks for it (``AWS_NO_SIGN_REQUEST`` / ``GS_NO_SIGN_REQUEST`` /
    ``AZURE_NO_SIGN_REQUEST`` = YES), Azure's account under either name. A fresh filesystem
    every time (``skip_instance_cache``): credentials changed since are read again."""
    opts: dict[str, Any] = {"skip_instance_cache": True}
    if scheme == "s3":
        config: dict[str, Any] = {
            "connect_timeout": CONNECT_TIMEOUT_S,
            "read_timeout": READ_TIMEOUT_S,
        }
        if not (os.environ.get("AWS_MAX_ATTEMPTS") or os.environ.get("AWS_RETRY_MODE")):
            config["retries"] = {"max_attempts": MAX_ATTEMPTS, "mode": "standard"}
        # botocore retries requests (throttling, 5xx, dropped connections); s3fs retries a
        # body cut mid-read itself (5 tries, about a second in all)
        opts["config_kwargs"] = config
        if yes("AWS_NO_SIGN_REQUEST"):
            opts["anon"] = True
        endpoint = s3_endpoint()
        if endpoint:
            opts["endpoint_url"] = endpoint
    elif scheme == "gs" and yes("GS_NO_SIGN_REQUEST"):
        opts["token"] = "anon"
    elif scheme == "az":
        account = os.environ.get("AZURE_STORAGE_ACCOUNT_NAME") or os.environ.get(
            "AZURE_STORAGE_ACCOUNT"
        )
        if account:
            opts["account_name"] = account
        key = os.environ.get("AZURE_STORAGE_ACCOUNT_KEY") or os.environ.get(
            "AZURE_STORAGE_ACCESS_KEY"
        )
        if key:
            opts["account_key"] = key
        if yes("AZURE_NO_SIGN_REQUEST"):
            opts["anon"] = True
    return opts


def endpoint_text(scheme: str) -> str:
    """Where requests for ``scheme`` go, for messages: ``the endpoint http://127.0.0.1:9000``
    (S3-compatible), or the cloud's name."""
    if scheme == "s3":
        endpoint = s3_endpoint()
        return f"the endpoint {endpoint}" if endpoint else "AWS S3"
    return {"gs": "Google Cloud Storage", "az": "Azure Blob Storage"}.get(scheme, "the server")

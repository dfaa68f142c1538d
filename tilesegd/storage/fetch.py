"""Model files by URL, fetched once into a local cache keyed by their SHA-256.

``--model s3://bucket/models/unet.ts`` (or ``gs://``, ``az://``, ``https://``) is downloaded
once into ``<cache>/<sha256>/<file name>`` (written through a temporary file and an atomic
rename: :mod:`tilesegd.atomic`) and loaded from there. The cache folder is
``$TILESEGD_MODEL_CACHE``, else ``$XDG_CACHE_HOME/tilesegd/models`` (``~/.cache/tilesegd/models``).
A later run finds it without fetching: with ``--model-sha256`` by the hash alone (no request at
all); otherwise by the object's size and ETag, asked with one small request, against what
``<cache>/sources/`` recorded for that URL (a changed object is fetched again).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from pathlib import Path
from typing import Any

from tilesegd import atomic
from tilesegd.errors import ModelFileError
from tilesegd.storage import http
from tilesegd.storage.faults import location_error
from tilesegd.storage.listing import filesystem
from tilesegd.storage.urls import RemotePath, parse_location

log = logging.getLogger(__name__)
CHUNK = 1 << 20  # bytes per read while downloading


def cache_dir() -> Path:
    """The model cache folder: ``$TILESEGD_MODEL_CACHE``, else ``$XDG_CACHE_HOME`` (default
    ``~/.cache``) ``/tilesegd/models``."""
    explicit = os.environ.get("TILESEGD_MODEL_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "tilesegd" / "models"


def safe_name(location: RemotePath) -> str:
    """The cached file's name: the URL's file name (its suffix chooses the loader), with any
    character outside ``[A-Za-z0-9._-]`` replaced."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", location.name) or "model"


def source_record(cache: Path, location: RemotePath) -> Path:
    """The file recording which SHA-256 the object at ``location`` had (keyed by the URL
    without its query: a presigned URL's signature changes, the object does not)."""
    key = location.url.partition("?")[0] if location.scheme.startswith("http") else location.url
    return cache / "sources" / (hashlib.sha256(key.encode()).hexdigest()[:32] + ".json")


def object_identity(location: RemotePath) -> dict[str, Any]:
    """``{"size", "etag", "modified"}`` of the object, from one small request.

    Raises:
        Whatever the filesystem or urllib raises (see :func:`fetch_model`).
    """
    if location.scheme in ("http", "https"):
        return http.identity(location.url)
    info = filesystem(location.scheme).info(location.store_path)
    if info.get("type") == "directory":
        raise FileNotFoundError(f"{location.store_path}: a prefix, not a model file")
    etag = info.get("ETag") or info.get("etag") or info.get("md5Hash") or info.get("generation")
    modified = info.get("LastModified") or info.get("last_modified") or info.get("updated")
    return {"size": info.get("size"), "etag": etag, "modified": str(modified) if modified else None}


def cached(cache: Path, sha256: str, name: str) -> Path | None:
    """The cached file of ``sha256`` named ``name``, if the cache holds it."""
    path = cache / sha256.lower() / name
    return path if path.is_file() and path.stat().st_size > 0 else None


def read_record(record: Path) -> dict[str, Any]:
    """What ``record`` says (:func:`source_record`), or ``{}`` if it is missing or unreadable."""
    try:
        doc = json.loads(record.read_text())
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def download(location: RemotePath, cache: Path) -> tuple[Path, str]:
    """Stream the object into a temporary file in ``cache``, hashing it as it comes.

    Returns:
        ``(temporary file, sha256)``; the caller renames or removes it.
    """
    cache.mkdir(parents=True, exist_ok=True)
    tmp = atomic.new_temporary(cache / safe_name(location), ".part")
    digest = hashlib.sha256()
    try:
        if location.scheme in ("http", "https"):
            source: Any = http.open_url(location.url)
        else:
            source = filesystem(location.scheme).open(location.store_path, "rb", block_size=8 << 20)
        with source, open(tmp, "wb") as out:
            while chunk := source.read(CHUNK):
                digest.update(chunk)
                out.write(chunk)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp, digest.hexdigest()


def fetch_model(url: str | RemotePath, sha256: str | None = None) -> Path:
    """The local copy of the model file at ``url`` (see the module docstring), fetched only
    when the cache does not hold it.

    Args:
        url: ``s3://``, ``gs://``, ``az://``, ``http(s)://`` or a ``/vsi`` path of those.
        sha256: ``--model-sha256``: with it a cached copy is used without any request, and a
            download whose hash differs is refused (and not kept).

    Raises:
        ModelFileError: the object is missing, access is denied, the endpoint cannot be
            reached, or its SHA-256 is not ``sha256`` (exit 3, before any scene).
    """
    location = parse_location(url)
    if location is None or location.scheme == "vsi":
        raise ModelFileError(f"{url}: not a model URL (s3://, gs://, az://, http(s)://)")
    cache, name = cache_dir(), safe_name(location)
    if sha256 and (hit := cached(cache, sha256, name)):
        log.info("%s: the cached copy %s (SHA-256 as pinned)", location, hit)
        return hit
    record = source_record(cache, location)
    try:
        ident = object_identity(location)
        known = read_record(record)
        if known.get("identity") == ident and (ident.get("etag") or ident.get("modified")):
            hit = cached(cache, known.get("sha256", ""), name)
            if hit and (not sha256 or known["sha256"] == sha256.lower()):
                log.info("%s: the cached copy %s (unchanged: same size and ETag)", location, hit)
                return hit
        tmp, digest = download(location, cache)
    except Exception as exc:  # OSError, urllib's and botocore's errors, a missing extra
        raise location_error(location, exc, ModelFileError, option="--model") from None
    return store(location, tmp, digest, ident, sha256)


def store(
    location: RemotePath, tmp: Path, digest: str, ident: dict[str, Any], sha256: str | None
) -> Path:
    """Rename a downloaded ``tmp`` into the cache as ``<digest>/<name>`` and record its
    source; refuse it (removing it) when it is not the pinned ``sha256``.

    Raises:
        ModelFileError: ``digest`` is not ``sha256``.
    """
    if sha256 and digest != sha256.lower():
        tmp.unlink(missing_ok=True)
        raise ModelFileError(
            f"{location}: SHA-256 is {digest}, but --model-sha256 pins {sha256}; check that "
            "this is the model you meant (the download was not kept)"
        )
    cache = tmp.parent
    final = cache / digest / safe_name(location)
    final.parent.mkdir(parents=True, exist_ok=True)
    atomic.replace(tmp, final)
    record = source_record(cache, location)
    record.parent.mkdir(parents=True, exist_ok=True)
    rec_tmp = atomic.new_temporary(record)
    doc = {"url": str(location), "identity": ident, "sha256": digest, "name": final.name}
    rec_tmp.write_text(json.dumps(doc, indent=1))
    atomic.replace(rec_tmp, record)
    log.info("%s: fetched into the model cache, %s", location, final)
    return final

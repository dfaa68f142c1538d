"""Locations on object storage or behind a URL, and the GDAL paths that read them.

``s3://bucket/key``, ``gs://bucket/key``, ``az://container/key``, ``http(s)://host/path`` and
GDAL ``/vsi...`` paths are :class:`RemotePath` objects: they carry the URL and give GDAL its
``/vsis3/``, ``/vsigs/``, ``/vsiaz/`` or ``/vsicurl/`` path (``os.fspath``), so rasterio opens
them like files and reads windows with range requests. ``str()`` of one is the URL with its
secrets masked (:func:`tilesegd.storage.redact.redact_url`): that is what logs, errors and
``run.json`` show.
"""

from __future__ import annotations

import os
import posixpath
import re
from dataclasses import dataclass
from typing import Any

from tilesegd.storage.redact import redact_url

#: URL scheme -> GDAL virtual file system prefix
VSI_PREFIXES = {
    "s3": "/vsis3/",
    "gs": "/vsigs/",
    "az": "/vsiaz/",
    "http": "/vsicurl/",
    "https": "/vsicurl/",
}
#: object stores (listed with fsspec); http(s) names one file
STORES = ("s3", "gs", "az")
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_VSI_SCHEMES = {"/vsis3/": "s3", "/vsigs/": "gs", "/vsiaz/": "az"}


@dataclass(frozen=True, order=True)
class RemotePath:
    """One object, prefix or URL (see the module docstring).

    Attributes:
        url: ``scheme://bucket/key`` (``s3``, ``gs``, ``az``), ``http(s)://...`` with its query,
            or a GDAL ``/vsi...`` path that has no URL form (``/vsizip/...``), kept as given.
    """

    url: str

    @property
    def scheme(self) -> str:
        """``s3``, ``gs``, ``az``, ``http``, ``https``, or ``vsi`` for another GDAL path."""
        m = _SCHEME.match(self.url)
        return m.group(1).lower() if m else "vsi"

    @property
    def bucket(self) -> str:
        """The bucket (container, host) part: the URL's netloc without user info."""
        if self.scheme == "vsi":
            return ""
        return self.url.split("://", 1)[1].split("/", 1)[0].rpartition("@")[2]

    @property
    def key(self) -> str:
        """The object key (path inside the bucket, no leading ``/``, no query)."""
        if self.scheme == "vsi":
            return self.url
        rest = self.url.split("://", 1)[1]
        path = rest.split("/", 1)[1] if "/" in rest else ""
        return path.partition("?")[0] if self.scheme in ("http", "https") else path

    @property
    def store_path(self) -> str:
        """``bucket/key``: the path fsspec's filesystems take."""
        return f"{self.bucket}/{self.key}"

    @property
    def vsi(self) -> str:
        """The GDAL path: ``/vsis3/bucket/key``, ``/vsicurl/https://...``; a ``/vsi`` path as
        given."""
        if self.scheme == "vsi":
            return self.url
        if self.scheme in ("http", "https"):
            return VSI_PREFIXES[self.scheme] + self.url
        return VSI_PREFIXES[self.scheme] + self.store_path

    @property
    def is_prefix(self) -> bool:
        """Whether the location names a folder: no key, or a key ending in ``/``."""
        return self.scheme in STORES and (not self.key or self.key.endswith("/"))

    @property
    def name(self) -> str:
        """The last path component, without query (``scene.tif``)."""
        return posixpath.basename(self.key.rstrip("/"))

    @property
    def suffix(self) -> str:
        """The name's extension with its dot (``.tif``), as :attr:`pathlib.PurePath.suffix`."""
        name = self.name
        i = name.rfind(".")
        return name[i:] if 0 < i < len(name) - 1 else ""

    @property
    def stem(self) -> str:
        """The name without its suffix (the scene's output name)."""
        return self.name[: len(self.name) - len(self.suffix)] if self.suffix else self.name

    def child(self, key: str) -> RemotePath:
        """The object ``key`` (a full key inside this location's bucket)."""
        return RemotePath(f"{self.scheme}://{self.bucket}/{key}")

    def as_prefix(self) -> RemotePath:
        """This location as a folder (its key with a trailing ``/``)."""
        return self if self.is_prefix else RemotePath(self.url.rstrip("/") + "/")

    def __str__(self) -> str:
        return redact_url(self.url)

    def __fspath__(self) -> str:
        return self.vsi


def parse_location(value: Any) -> RemotePath | None:
    """The :class:`RemotePath` of ``value`` (a string, a RemotePath), or ``None`` for a local
    path.

    ``s3://``, ``gs://``, ``az://``, ``http://`` and ``https://`` URLs are locations; so are GDAL
    ``/vsi`` paths: ``/vsis3/b/k``, ``/vsigs/``, ``/vsiaz/`` and ``/vsicurl/URL`` become their
    URL form, any other (``/vsizip/...``) is kept as given. Other schemes are local paths (and
    then fail as missing files).
    """
    if isinstance(value, RemotePath):
        return value
    if not isinstance(value, str | os.PathLike):
        return None
    text = os.fspath(value)
    if not isinstance(text, str):
        return None
    m = _SCHEME.match(text)
    if m:
        scheme = m.group(1).lower()
        if scheme not in VSI_PREFIXES:
            return None
        return RemotePath(scheme + text[len(scheme) :])
    if not text.startswith("/vsi"):
        return None
    for prefix, scheme in _VSI_SCHEMES.items():
        if text.startswith(prefix):
            return RemotePath(f"{scheme}://{text[len(prefix) :]}")
    if text.startswith("/vsicurl/"):
        url = re.sub(r"^(https?):/+", r"\1://", text[len("/vsicurl/") :], flags=re.I)
        if _SCHEME.match(url):
            return RemotePath(url)
    return RemotePath(text)


def is_remote(value: Any) -> bool:
    """Whether ``value`` names a location on object storage, a URL or a GDAL ``/vsi`` path."""
    return parse_location(value) is not None

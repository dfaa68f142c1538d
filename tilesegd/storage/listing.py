"""An input location expanded into the objects it names: one object, or every object under a
prefix (listed recursively through fsspec: s3fs, gcsfs, adlfs); an HTTP(S) URL checked with a
one-byte request. Every failure is an :class:`~tilesegd.errors.InputError` that names the
location and the fix (:func:`tilesegd.storage.faults.location_error`)."""

from __future__ import annotations

import logging
from typing import Any

from tilesegd.errors import InputError
from tilesegd.storage import http
from tilesegd.storage.faults import location_error
from tilesegd.storage.urls import STORES, RemotePath

log = logging.getLogger(__name__)


def filesystem(scheme: str) -> Any:
    """The fsspec filesystem for ``s3``, ``gs`` or ``az`` with tilesegd's settings, shared by
    this process (:func:`tilesegd.storage.objects.shared_filesystem`); its listings are not
    cached between calls.

    Raises:
        ImportError: the filesystem's package is not installed (s3fs, gcsfs, adlfs).
    """
    from tilesegd.storage.objects import shared_filesystem

    fs = shared_filesystem(scheme)
    fs.invalidate_cache()
    return fs


def expand(location: RemotePath, option: str = "--input") -> tuple[bool, list[RemotePath]]:
    """``(is_prefix, objects)``: ``(False, [location])`` for one object or URL, ``(True,
    [every object under it, sorted])`` for a prefix (``s3://bucket/scenes/``, or a key with no
    object that is a prefix). GDAL paths without a URL form (``/vsizip/...``) are taken as
    they are.

    Raises:
        InputError: a missing bucket or object, access denied, an unreachable endpoint, an
            HTTP(S) URL ending in ``/``, a missing extra (``tilesegd[gcs]``, ``[azure]``).
    """
    if location.scheme == "vsi":
        return False, [location]
    if location.scheme not in STORES:
        if location.key.endswith("/") or not location.key:
            raise InputError(
                f"{location}: an HTTP(S) URL names one file, not a folder; give each file's "
                "URL, or the bucket's s3:// / gs:// / az:// prefix to list it"
            )
        try:
            http.identity(location.url)
        except Exception as exc:
            raise location_error(location, exc, InputError, option=option) from None
        return False, [location]
    try:
        fs = filesystem(location.scheme)
        if not location.is_prefix:
            info = fs.info(location.store_path)
            if info.get("type") != "directory":
                return False, [location]
            location = location.as_prefix()
        keys = fs.find(location.store_path)
    except Exception as exc:
        raise location_error(location, exc, InputError, option=option) from None
    bucket = location.bucket + "/"
    objects = [location.child(k[len(bucket) :]) for k in keys if k.startswith(bucket)]
    log.debug("%s: %d object(s)", location, len(objects))
    return True, sorted(objects)

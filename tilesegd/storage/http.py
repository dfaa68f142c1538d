"""Plain HTTP(S) requests for single files (a scene's existence, a model's bytes): urllib, with a
timeout on every request and retries with backoff on throttling and server errors."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from typing import Any

#: seconds a request may wait on the network (connect, and each read)
TIMEOUT_S = 30
#: statuses worth another try (throttling, server errors), and how many tries in all
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
ATTEMPTS = 4
BACKOFF_S = 0.5


def open_url(url: str, *, first_byte_only: bool = False) -> Any:
    """``urllib.request.urlopen`` of ``url`` (a response to read and close), retried with
    exponential backoff (:data:`BACKOFF_S`, doubled each time) on :data:`RETRY_STATUSES` and
    dropped connections, :data:`ATTEMPTS` tries in all.

    Args:
        first_byte_only: ask for ``Range: bytes=0-0``, to learn whether the file is there, its
            size (``Content-Range``) and ``ETag`` without fetching it (a GET, not a HEAD: a
            presigned URL is signed for GET only).

    Raises:
        urllib.error.HTTPError: an error status (after the retries for transient ones).
        urllib.error.URLError / OSError: the server cannot be reached.
    """
    headers = {"Range": "bytes=0-0"} if first_byte_only else {}
    for attempt in range(ATTEMPTS):
        try:
            return urllib.request.urlopen(
                urllib.request.Request(url, headers=headers), timeout=TIMEOUT_S
            )
        except urllib.error.HTTPError as exc:
            if exc.code not in RETRY_STATUSES or attempt == ATTEMPTS - 1:
                raise
            exc.close()
        except (ConnectionResetError, ConnectionAbortedError, urllib.error.URLError) as exc:
            reason = getattr(exc, "reason", exc)
            if not isinstance(reason, ConnectionResetError | ConnectionAbortedError):
                raise
            if attempt == ATTEMPTS - 1:
                raise
        time.sleep(BACKOFF_S * 2**attempt)
    raise AssertionError("unreachable")  # pragma: no cover


def identity(url: str) -> dict[str, Any]:
    """What identifies the file at ``url`` without fetching it: ``{"size", "etag",
    "modified"}`` (``None`` where the server does not say).

    Raises:
        As :func:`open_url`.
    """
    with open_url(url, first_byte_only=True) as resp:
        total = resp.headers.get("Content-Range", "").rpartition("/")[2]
        size = int(total) if total.isdigit() else resp.headers.get("Content-Length")
        return {
            "size": int(size) if size is not None else None,
            "etag": resp.headers.get("ETag"),
            "modified": resp.headers.get("Last-Modified"),
        }

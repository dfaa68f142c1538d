"""What went wrong with a location, in one line that names it and says how to fix it.

Listing and fetching raise whatever their library raises (s3fs turns S3 errors into
``FileNotFoundError`` / ``PermissionError``, botocore raises ``EndpointConnectionError``, urllib
``HTTPError`` / ``URLError``, a missing extra ``ImportError``). :func:`location_error` classifies
them into the cases a user can act on: a missing bucket, a missing object, access denied, an
unreachable endpoint, a missing extra, with the URL and every secret masked.
"""

from __future__ import annotations

import socket
from typing import Any

from tilesegd.errors import TilesegdError
from tilesegd.storage.env import endpoint_text
from tilesegd.storage.redact import redact
from tilesegd.storage.urls import RemotePath

EXTRAS = {"gs": ("gcsfs", "tilesegd[gcs]"), "az": ("adlfs", "tilesegd[azure]")}
CREDENTIALS = {
    "s3": "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or AWS_PROFILE, or AWS_NO_SIGN_REQUEST=YES "
    "for a public bucket",
    "gs": "GOOGLE_APPLICATION_CREDENTIALS, or GS_NO_SIGN_REQUEST=YES for a public bucket",
    "az": "AZURE_STORAGE_CONNECTION_STRING, or AZURE_STORAGE_ACCOUNT_NAME with "
    "AZURE_STORAGE_ACCOUNT_KEY or AZURE_STORAGE_SAS_TOKEN",
}
ENDPOINT_VARIABLES = {"s3": "AWS_ENDPOINT_URL"}
_UNREACHABLE = (
    "could not connect",
    "connect timeout",
    "connection refused",
    "name or service",
    "failed to establish",
    "cannot connect",
    "timed out",
    "unreachable",
    "nodename nor servname",
    "temporary failure in name resolution",
)


def detail(exc: BaseException) -> str:
    """The error's own words, one line, at most 160 characters, secrets masked."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return redact(text[:160] + ("..." if len(text) > 160 else ""))


def status_of(exc: BaseException) -> int | None:
    """The HTTP status an exception carries (urllib's ``code``, botocore's response), if any."""
    code = getattr(exc, "code", None)
    if isinstance(code, int):
        return code
    response: Any = getattr(exc, "response", None)
    if isinstance(response, dict):
        return response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return None


def kind_of(exc: BaseException) -> str:
    """``missing-bucket``, ``missing``, ``denied``, ``unreachable``, ``extra`` or ``other``."""
    chain, e = [], exc
    while e is not None and len(chain) < 6:
        chain.append(e)
        e = e.__cause__ or e.__context__
    text = " ".join(str(c).lower() for c in chain)
    names = " ".join(type(c).__name__ for c in chain)
    if isinstance(exc, ImportError):
        return "extra"
    if "bucket does not exist" in text or "nosuchbucket" in text.replace(" ", ""):
        return "missing-bucket"
    if "container does not exist" in text or "containernotfound" in text:
        return "missing-bucket"
    status = next((s for s in map(status_of, chain) if s), None)
    if isinstance(exc, PermissionError) or status in (401, 403) or "access denied" in text:
        return "denied"
    if isinstance(exc, FileNotFoundError) or status == 404 or "nosuchkey" in text:
        return "missing"
    if (
        "EndpointConnectionError" in names
        or "ConnectTimeout" in names
        or any(isinstance(c, socket.timeout | ConnectionError | TimeoutError) for c in chain)
        or any(m in text for m in _UNREACHABLE)
    ):
        return "unreachable"
    return "other"


def location_error(
    where: RemotePath, exc: BaseException, cls: type[TilesegdError], *, option: str = "--input"
) -> TilesegdError:
    """A ``cls`` error (:class:`~tilesegd.errors.InputError`,
    :class:`~tilesegd.errors.ModelFileError`) for ``exc`` raised while listing or reading
    ``where``: what is wrong, the URL, and the fix, secrets masked."""
    kind, scheme, said = kind_of(exc), where.scheme, detail(exc)
    at = endpoint_text(scheme)
    if kind == "extra":
        module, extra = EXTRAS.get(scheme, ("?", "tilesegd"))
        return cls(f"{where}: {scheme}:// locations need {module}: pip install '{extra}'")
    if kind == "missing-bucket":
        return cls(
            f"{where}: the bucket {where.bucket!r} does not exist at {at}; check the {option} "
            f"URL{_endpoint_hint(scheme)}"
        )
    if kind == "missing":
        return cls(f"{where}: no such object or prefix at {at}; check the {option} URL")
    if kind == "denied":
        creds = CREDENTIALS.get(scheme, "the URL's signature or token, which may have expired")
        return cls(
            f"{where}: access denied by {at} ({said}); check the credentials ({creds}) and that "
            "they may list and read it"
        )
    if kind == "unreachable":
        return cls(
            f"{where}: cannot reach {at} ({said}); check the network{_endpoint_hint(scheme)}"
        )
    return cls(f"{where}: cannot be read from {at} ({type(exc).__name__}: {said})")


def _endpoint_hint(scheme: str) -> str:
    name = ENDPOINT_VARIABLES.get(scheme)
    return f" and {name} (an S3-compatible store's URL; unset for AWS)" if name else ""

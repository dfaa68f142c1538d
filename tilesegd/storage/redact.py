"""Secrets kept out of what tilesegd writes: ``run.json``, logs and error messages.

A location may carry a secret (a presigned URL's signature, a SAS token, ``user:password@``) and
an error from GDAL or botocore may quote a request (``Credential=...``, ``Authorization: ...``)
or a credential taken from the environment. :func:`redact` replaces each of them with ``***``;
:class:`RedactingFilter` does it to every log record.
"""

from __future__ import annotations

import logging
import os
import re

MASK = "***"
#: environment variables whose values are secrets (their values are masked wherever they occur)
SECRET_VARIABLES = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "GS_ACCESS_KEY_ID",
    "GS_SECRET_ACCESS_KEY",
    "GS_OAUTH2_REFRESH_TOKEN",
    "GS_OAUTH2_CLIENT_SECRET",
    "AZURE_STORAGE_ACCESS_KEY",
    "AZURE_STORAGE_ACCOUNT_KEY",
    "AZURE_STORAGE_KEY",
    "AZURE_STORAGE_SAS_TOKEN",
    "AZURE_STORAGE_ACCESS_TOKEN",
    "AZURE_STORAGE_CONNECTION_STRING",
    "AZURE_CLIENT_SECRET",
)
_URL = re.compile(r"(?:[a-z][a-z0-9+.-]*://|/vsi[a-z0-9_]*/)[^\s'\"<>]+", re.I)
_TRAILING = re.compile(r"(.*?)([:,.;)\]]*)", re.S)
_USERINFO = re.compile(r"(?<=://)[^/@\s'\"]+@")
_QUERY_VALUE = re.compile(r"([?&;][^=&#\s'\"]+=)[^&#\s'\"]*")
_HEADERS = (
    re.compile(r"(Authorization\s*[:=]\s*)[^\r\n'\"]+", re.I),
    re.compile(
        r"((?:Credential|Signature|SignedHeaders|X-Amz-Security-Token)\s*=\s*)[^,&\s'\":;]+"
    ),
    re.compile(r"(\bx-(?:amz|goog)-[a-z-]*(?:token|signature|credential)\s*:\s*)\S+", re.I),
    re.compile(r"(\bBearer\s+)[A-Za-z0-9._~+/=-]+"),
    re.compile(r"((?:AccountKey|SharedAccessSignature|SharedAccessKey)\s*=\s*)[^;\s'\"]+", re.I),
)
MIN_SECRET_LENGTH = 4  # shorter environment values are not searched for (too many false hits)


def redact_url(url: str) -> str:
    """``url`` without its secrets: ``user:password@`` becomes ``***@`` and every query value
    ``***`` (the names stay, so a reader still sees that the URL was signed)."""
    url = _USERINFO.sub(MASK + "@", url)
    head, sep, query = url.partition("?")
    if not sep:
        return url
    return head + _QUERY_VALUE.sub(lambda m: m.group(1) + MASK, "?" + query)


def _redact_match(m: re.Match[str]) -> str:
    """A URL found in text, redacted; punctuation closing the sentence stays outside it."""
    url, tail = _TRAILING.fullmatch(m.group(0)).groups()  # type: ignore[union-attr]
    return redact_url(url) + tail


def secret_values() -> list[str]:
    """The values of :data:`SECRET_VARIABLES` set in the environment, longest first."""
    values = {os.environ.get(k, "") for k in SECRET_VARIABLES}
    return sorted((v for v in values if len(v) >= MIN_SECRET_LENGTH), key=len, reverse=True)


def redact(text: object) -> str:
    """``str(text)`` with every secret masked: URL user info and query values
    (:func:`redact_url`), request credentials quoted by GDAL or botocore (``Authorization:``,
    ``Credential=``, ``Signature=``, ``Bearer``, Azure ``AccountKey=``), and the values of the
    secret environment variables (:data:`SECRET_VARIABLES`) wherever they occur."""
    out = _URL.sub(_redact_match, str(text))
    for pattern in _HEADERS:
        out = pattern.sub(lambda m: m.group(1) + MASK, out)
    for value in secret_values():
        out = out.replace(value, MASK)
    return out


class RedactingFilter(logging.Filter):
    """A logging filter that formats each record and masks its secrets (:func:`redact`);
    install it on a handler so every logger's records pass through it."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Replace the record's message by its redacted text; always keep the record."""
        message = record.getMessage()
        clean = redact(message)
        if clean != message or record.args:
            record.msg, record.args = clean, None
        if record.exc_info:  # a traceback (-vv) may quote a URL too
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        return True

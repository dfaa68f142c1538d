"""Options every command shares: ``-v`` / ``-q``, accepted on the group and on each command.

``tilesegd -q run ...`` and ``tilesegd run ... -q`` do the same; the most verbose ``-v`` count
given anywhere wins, and ``-q`` turns progress bars off.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import click

from tilesegd.storage.redact import RedactingFilter

NOISY = (
    *("rasterio", "matplotlib", "PIL", "numcodecs", "zarr", "asyncio", "fiona", "pyogrio"),
    *("botocore", "aiobotocore", "s3fs", "fsspec", "urllib3", "gcsfs", "adlfs", "azure"),
)


def configure_logging(verbose: int, quiet: bool) -> None:
    """INFO by default, DEBUG with ``-vv``, WARNING with ``-q``; third-party loggers stay at
    WARNING unless ``-vv``; every record's secrets masked
    (:class:`tilesegd.storage.redact.RedactingFilter`)."""
    level = logging.WARNING if quiet else logging.DEBUG if verbose >= 2 else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", force=True)
    for handler in logging.getLogger().handlers:  # no credential or signed URL in a log line
        handler.addFilter(RedactingFilter())
    for noisy in NOISY:
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))


def _set(ctx: click.Context, param: click.Parameter, value: Any) -> None:
    if not value:
        return
    obj = ctx.find_root().ensure_object(dict)
    if param.name == "quiet":
        obj["quiet"] = True
    else:
        obj["verbose"] = max(int(obj.get("verbose", 0)), int(value))
    configure_logging(int(obj.get("verbose", 0)), bool(obj.get("quiet", False)))


def verbosity_options(f: Callable) -> Callable:
    """Add ``-v/--verbose`` (count) and ``-q/--quiet`` to a command (values go to the root
    context's ``obj``: ``quiet``, ``verbose``)."""
    f = click.option(
        "-q",
        "--quiet",
        is_flag=True,
        expose_value=False,
        callback=_set,
        help="Only warnings and errors; no progress.",
    )(f)
    return click.option(
        "-v",
        "--verbose",
        count=True,
        expose_value=False,
        callback=_set,
        help="More logging (-vv: debug, and tracebacks of internal errors).",
    )(f)


def is_quiet(ctx: click.Context) -> bool:
    """Whether ``-q`` was given on the group or the command."""
    return bool(ctx.find_root().ensure_object(dict).get("quiet", False))

"""Warnings hidden inside a block, safely across threads.

:func:`warnings.catch_warnings` saves the process-wide filters (and ``showwarning``) on entry
and puts them back on exit, so two threads inside such blocks at once restore each other's
state: a reader thread's block could re-install a writer thread's filters after it ended, and
warnings were then hidden, or shown with another frame's file name. Every block that changes
the warning filters while a run's threads are running takes :data:`WARNINGS_LOCK` (this module's
:func:`ignoring`, :func:`tilesegd.raster.gdalenv.quiet_georef`,
:func:`tilesegd.model.model_file.quiet_torchscript`).
"""

from __future__ import annotations

import contextlib
import threading
import warnings
from collections.abc import Iterator

WARNINGS_LOCK = threading.RLock()
"""Held by every block that changes the process-wide warning filters (re-entrant)."""


@contextlib.contextmanager
def ignoring(category: type[Warning] = Warning, message: str = "") -> Iterator[None]:
    """Hide warnings of ``category`` whose text matches the regular expression ``message``
    inside the block (:func:`warnings.filterwarnings` ``"ignore"``), under
    :data:`WARNINGS_LOCK`; the filters are restored on exit."""
    with WARNINGS_LOCK, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=message, category=category)
        yield

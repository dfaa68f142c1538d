"""Blocks that change the process-wide warning filters take one lock, so two threads never
restore each other's filters (a reader's quiet_georef and a writer's ignoring)."""

from __future__ import annotations

import threading
import warnings

from tilesegd.raster.gdalenv import quiet_georef
from tilesegd.warnfilter import ignoring


def test_a_second_thread_waits_and_the_filters_come_back_as_they_were() -> None:
    before = list(warnings.filters)
    inside, release, entered = threading.Event(), threading.Event(), threading.Event()

    def reader() -> None:
        with quiet_georef():
            inside.set()
            release.wait(5)

    def writer() -> None:
        with ignoring(UserWarning, "Consolidated metadata"):
            entered.set()

    a = threading.Thread(target=reader)
    a.start()
    assert inside.wait(5)
    b = threading.Thread(target=writer)
    b.start()
    assert not entered.wait(0.3)  # held off while the reader's block is open
    release.set()
    a.join(5)
    b.join(5)
    assert entered.is_set()
    assert warnings.filters == before

"""read_ahead yields what a plain loop would, in order, whatever the depth and timing."""

from __future__ import annotations

import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tilesegd.outputs.readahead import read_ahead


@settings(max_examples=40, deadline=None)
@given(
    delays=st.lists(st.floats(0, 0.002), max_size=30),
    depth=st.integers(0, 6),
)
def test_the_same_pairs_in_the_same_order_as_a_plain_loop(delays: list[float], depth: int) -> None:
    def read(i: int) -> tuple[int, int]:
        time.sleep(delays[i])  # reads finish out of order
        return i, i * i

    blocks = list(range(len(delays)))
    assert list(read_ahead(blocks, read, depth)) == [(b, read(b)) for b in blocks]


def test_no_more_than_depth_reads_run_ahead_of_the_consumer() -> None:
    started: list[int] = []
    lock = threading.Lock()

    def read(i: int) -> int:
        with lock:
            started.append(i)
        return i

    for block, _ in read_ahead(range(20), read, depth=3):
        time.sleep(0.005)  # let the pool run as far ahead as it may
        with lock:
            assert max(started) <= block + 3


def test_a_failed_read_is_raised_at_its_block() -> None:
    def read(i: int) -> int:
        if i == 4:
            raise OSError("chunk 4 unreadable")
        return i

    seen = []
    with pytest.raises(OSError, match="chunk 4"):
        for block, _ in read_ahead(range(10), read, depth=2):
            seen.append(block)
    assert seen == [0, 1, 2, 3]

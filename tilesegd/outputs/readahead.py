"""Reading a scene's blocks a few ahead of their consumer, so that the requests of a remote
store (one or two per chunk on object storage) overlap with compression and writing instead of
adding up. Memory stays bounded: at most ``depth`` blocks wait beyond the one being used.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

B = TypeVar("B")
V = TypeVar("V")

#: blocks read ahead of the one being consumed (a 2048^2 uint8 block is 4 MiB)
DEPTH = 4


def read_ahead(
    blocks: Iterable[B], read: Callable[[B], V], depth: int = DEPTH
) -> Iterator[tuple[B, V]]:
    """``(block, read(block))`` for each block in order, with up to ``depth`` reads running in
    background threads ahead of the consumer.

    Args:
        blocks: the blocks, in the order wanted.
        read: returns one block's values (e.g. ``ZarrMaskStore.read_block``: (h, w) uint8);
            called from worker threads, so it must be thread-safe (zarr arrays are).
        depth: reads kept in flight; ``0`` reads in the caller's thread.

    Raises:
        whatever ``read`` raises, when its block's turn comes (later reads are cancelled).
    """
    if depth <= 0:
        for block in blocks:
            yield block, read(block)
        return
    pending: deque[tuple[B, Future[V]]] = deque()
    it = iter(blocks)
    with ThreadPoolExecutor(max_workers=depth, thread_name_prefix="tilesegd-read") as pool:
        try:
            for block in it:
                pending.append((block, pool.submit(read, block)))
                if len(pending) > depth:
                    done, fut = pending.popleft()
                    yield done, fut.result()
            while pending:
                done, fut = pending.popleft()
                yield done, fut.result()
        finally:
            for _, fut in pending:
                fut.cancel()

"""The streaming core: read blocks, batch tiles through the engine, stitch cores, hand off blocks.

Data flow (each stage overlaps with the others)::

    reader threads --blocks--> tile batches --engine--> class ids --stitch--> block sink
    (prefetch depth 2*workers)  (across blocks)  (2 batches in flight on CUDA)  (writer threads)

Stitching is "crop the halo" (overlap-tile strategy, Ronneberger et al. 2015): every output
pixel comes from the core of exactly one tile, whose halo gave the network context. Peak memory
is a few blocks plus one or two batches, whatever the scene size.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from tilesegd.engine import Engine, Pending
from tilesegd.errors import Interrupted
from tilesegd.reader import ArraySource, Source
from tilesegd.tiling import Block, Tile, TileGrid

BlockSink = Callable[[Block, np.ndarray], None]
ProbSink = Callable[[Tile, np.ndarray], None]


@dataclass
class _BlockState:
    block: Block
    ids: np.ndarray
    remaining: int
    queued: int = 0


@dataclass
class SegmentStats:
    """Counters from one :func:`segment` call: blocks done, tiles run, tiles skipped as nodata.

    ``times`` holds seconds per stage: ``read`` (decode, summed over reader threads),
    ``read_wait`` (main thread blocked on reads: the pipeline starved), ``batch`` (stacking
    tiles), ``h2d`` / ``infer`` / ``d2h`` / ``infer_wait`` (the engine: see
    :class:`~tilesegd.engine.EngineTimes`), ``stitch`` (copying cores into blocks),
    ``write`` (the block sink, summed over writer threads) and ``total`` (wall clock).
    """

    blocks: int = 0
    tiles_run: int = 0
    tiles_skipped: int = 0
    pixels: int = 0
    extra: dict = field(default_factory=dict)
    times: dict = field(default_factory=dict)


def segment(
    source: Source,
    grid: TileGrid,
    engine: Engine,
    on_block: BlockSink,
    *,
    on_probs: ProbSink | None = None,
    blocks: Iterable[Block] | None = None,
    workers: int = 2,
    progress: Callable[[int], None] | None = None,
    stop: threading.Event | None = None,
) -> SegmentStats:
    """Segment the blocks of ``source`` and pass each finished block to ``on_block``.

    Args:
        source: where raw pixels come from (:class:`~tilesegd.reader.SceneSource`,
            :class:`~tilesegd.reader.ArraySource`).
        grid: the tile/block geometry (its ``tile_shape`` is what the engine sees).
        engine: runs batches of tiles.
        on_block: called with ``(block, ids)``, ``ids`` (h, w) uint8 class ids of
            ``block.window`` with 255 for nodata; called from writer threads, at most
            ``workers`` at once, in any order.
        on_probs: called with ``(tile, probs)``, probs (K, h, w) float16 of ``tile.core``.
        blocks: the blocks to do (default: all; pass a subset to resume or distribute).
        workers: reader threads and writer threads.
        progress: called with the pixel count of each finished block.
        stop: when set, no new block is started; raises :class:`Interrupted` after the
            blocks in hand are written.

    Returns:
        :class:`SegmentStats`.

    Raises:
        InputError: from the source (truncated file...). Interrupted: ``stop`` was set.
    """
    todo = list(grid.blocks() if blocks is None else blocks)
    stats = SegmentStats()
    (ch, cw), (hh, hw) = grid.core_shape, grid.halo
    core_box = (hh, hw, ch, cw)
    th, tw = grid.tile_shape
    depth = max(2, 2 * workers)
    in_flight_cap = 2 if engine.device.type == "cuda" else 1
    readers = ThreadPoolExecutor(max(1, workers), thread_name_prefix="tilesegd-read")
    writers = ThreadPoolExecutor(max(1, workers), thread_name_prefix="tilesegd-write")
    write_slots = threading.Semaphore(2 * max(1, workers))
    writes: list[Future] = []
    reads: deque[tuple[Block, Future]] = deque()
    pending: deque[tuple[Pending, list[tuple[_BlockState, Tile, np.ndarray]]]] = deque()
    batch_x: list[np.ndarray] = []
    batch_v: list[np.ndarray] = []
    batch_meta: list[tuple[_BlockState, Tile, np.ndarray]] = []
    it = iter(todo)
    t_start = time.perf_counter()
    engine_t0 = engine.times.as_dict()
    times = dict.fromkeys(("read", "read_wait", "batch", "infer_wait", "stitch", "write"), 0.0)
    t_lock = threading.Lock()

    def add(key: str, t0: float) -> None:
        dt = time.perf_counter() - t0
        with t_lock:
            times[key] += dt

    def timed_read(win):
        t0 = time.perf_counter()
        try:
            return source.read(win)
        finally:
            add("read", t0)

    def finish(state: _BlockState) -> None:
        write_slots.acquire()

        def job() -> None:
            t0 = time.perf_counter()
            try:
                on_block(state.block, state.ids)
            finally:
                add("write", t0)
                write_slots.release()

        writes.append(writers.submit(job))
        stats.blocks += 1
        if progress is not None:
            progress(state.block.window.height * state.block.window.width)
        for done in [f for f in writes if f.done()]:
            done.result()  # re-raise writer errors early
            writes.remove(done)

    def drain(p: Pending, meta: list) -> None:
        t0 = time.perf_counter()
        ids, probs = p.result()
        add("infer_wait", t0)
        t0 = time.perf_counter()
        for k, (state, tile, vcore) in enumerate(meta):
            r0 = tile.core.row_off - state.block.window.row_off
            c0 = tile.core.col_off - state.block.window.col_off
            h, w = tile.core.height, tile.core.width
            out = state.ids[r0 : r0 + h, c0 : c0 + w]
            out[...] = ids[k, :h, :w]
            out[~vcore] = 255
            if on_probs is not None and probs is not None:
                on_probs(tile, probs[k, :, :h, :w])
            state.remaining -= 1
            if state.remaining == 0:
                finish(state)
        add("stitch", t0)

    def flush() -> None:
        if not batch_x:
            return
        t0 = time.perf_counter()
        xb, vb = np.stack(batch_x), np.stack(batch_v)
        add("batch", t0)
        p = engine.submit(xb, vb, core_box)
        pending.append((p, list(batch_meta)))
        batch_x.clear()
        batch_v.clear()
        batch_meta.clear()
        while len(pending) >= in_flight_cap:
            drain(*pending.popleft())

    def refill() -> None:
        while len(reads) < depth:
            b = next(it, None)
            if b is None:
                return
            reads.append((b, readers.submit(timed_read, grid.read_window(b))))

    try:
        refill()
        while reads:
            if stop is not None and stop.is_set():
                raise Interrupted("stopped by a signal; finished blocks are kept")
            block, fut = reads.popleft()
            t0 = time.perf_counter()
            data, valid = fut.result()
            add("read_wait", t0)
            refill()
            rwin = grid.read_window(block)
            tiles = grid.tiles_in_block(block)
            state = _BlockState(
                block, np.full((block.window.height, block.window.width), 255, np.uint8), len(tiles)
            )
            for tile in tiles:
                r, c = tile.read.row_off - rwin.row_off, tile.read.col_off - rwin.col_off
                v = valid[r : r + th, c : c + tw]
                vcore = v[hh : hh + tile.core.height, hw : hw + tile.core.width]
                if not vcore.any():
                    stats.tiles_skipped += 1
                    state.remaining -= 1
                    continue
                batch_x.append(data[:, r : r + th, c : c + tw])
                batch_v.append(v)
                batch_meta.append((state, tile, vcore))
                state.queued += 1
                stats.tiles_run += 1
                if len(batch_x) >= engine.batch_size:
                    flush()
            if state.queued == 0:  # every tile was nodata: finished without the model
                finish(state)
        flush()
        while pending:
            drain(*pending.popleft())
        for f in writes:
            f.result()
    finally:
        readers.shutdown(wait=True, cancel_futures=True)
        writers.shutdown(wait=True)
    stats.pixels = sum(b.window.height * b.window.width for b in todo)
    engine_t1 = engine.times.as_dict()
    times.update({k: engine_t1[k] - engine_t0[k] for k in ("h2d", "infer", "d2h")})
    times["total"] = time.perf_counter() - t_start
    stats.times = {k: round(v, 3) for k, v in times.items()}
    return stats


def predict_array(
    engine: Engine,
    image: np.ndarray,
    valid: np.ndarray | None = None,
    *,
    tile_size: int | None = None,
    overlap: int | None = None,
    block_size: int = 2048,
) -> np.ndarray:
    """Tiled, stitched inference on an in-memory image (the same path as ``tilesegd run``).

    Args:
        engine: the network and its normalisation.
        image: (C, H, W) raw values, any numeric dtype, bands already in model order.
        valid: (H, W) bool, False for nodata; ``None`` = all valid (NaN/Inf always invalid).
        tile_size: network input side in pixels (default: the model's ``tile_size``).
        overlap: pixels shared by neighbouring tiles (default: as ``tilesegd run``, the model
            file's measured ``overlap``, else 64, or a quarter of tiles smaller than 256 px).
        block_size: approximate block side in pixels.

    Returns:
        (H, W) uint8 class ids, 255 where invalid.
    """
    from tilesegd.config import RunConfig

    src = ArraySource(image, valid)
    spec = engine.spec
    tile, overlap = RunConfig(tile_size=tile_size, overlap=overlap).geometry(
        spec.tile_size, spec.multiple, spec.overlap
    )
    grid = TileGrid(src.height, src.width, tile, overlap, engine.spec.multiple, block_size)
    out = np.full((src.height, src.width), 255, np.uint8)

    def put(block: Block, ids: np.ndarray) -> None:
        out[block.window.slices] = ids

    segment(src, grid, engine, put, workers=1)
    return out

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
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from tilesegd.errors import Interrupted
from tilesegd.inference.engine import Engine, Pending
from tilesegd.inference.stitch import Stitcher, TileJob, split_block
from tilesegd.model.spec import NODATA
from tilesegd.raster.reader import ArraySource, Source
from tilesegd.raster.tiling import Block, Tile, TileGrid, Win

BlockSink = Callable[[Block, np.ndarray], None]
ProbSink = Callable[[Tile, np.ndarray], None]


class Region(Protocol):
    """An area of interest in scene pixels (e.g. :class:`tilesegd.vector.aoi.SceneAOI`)."""

    def intersects(self, win: Win) -> bool:
        """Whether any pixel of ``win`` may be inside (never False for one that is)."""
        ...

    def mask(self, win: Win) -> np.ndarray:
        """(h, w) bool, True for the pixels of ``win`` inside."""
        ...


STAGES = ("read", "read_wait", "batch", "infer_wait", "stitch", "write")


@dataclass
class SegmentStats:
    """Counters from one :func:`segment` call: blocks done, tiles run, tiles skipped as nodata.

    ``times`` holds seconds per stage: ``read`` (decode, summed over reader threads),
    ``read_wait`` (main thread blocked on reads: the pipeline starved), ``batch`` (stacking
    tiles), ``h2d`` / ``infer`` / ``d2h`` / ``infer_wait`` (the engine: see
    :class:`~tilesegd.inference.engine.EngineTimes`), ``stitch`` (copying cores into blocks),
    ``write`` (the block sink, summed over writer threads) and ``total`` (wall clock).
    """

    blocks: int = 0
    tiles_run: int = 0
    tiles_skipped: int = 0
    pixels: int = 0
    low_confidence: int = 0
    tiles_outside_aoi: int = 0
    extra: dict = field(default_factory=dict)
    times: dict = field(default_factory=dict)


class StageTimes:
    """Thread-safe seconds per pipeline stage (the keys of :data:`STAGES`)."""

    def __init__(self) -> None:
        self.seconds = dict.fromkeys(STAGES, 0.0)
        self._lock = threading.Lock()

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            dt = time.perf_counter() - t0
            with self._lock:
                self.seconds[stage] += dt


class Prefetcher:
    """Reads blocks' windows on ``workers`` threads, ``depth`` blocks ahead of the consumer.

    Iterating yields ``(block, data (C, H, W), valid (H, W) bool)`` for
    ``grid.read_window(block)``, in the order of ``blocks``.
    """

    def __init__(
        self, source: Source, grid: TileGrid, blocks: list[Block], workers: int, times: StageTimes
    ) -> None:
        self.source, self.grid, self.times = source, grid, times
        self.pool = ThreadPoolExecutor(max(1, workers), thread_name_prefix="tilesegd-read")
        self.depth = max(2, 2 * workers)
        self._todo = iter(blocks)
        self._reads: deque[tuple[Block, Future]] = deque()

    def _read(self, win: Win) -> tuple[np.ndarray, np.ndarray]:
        with self.times("read"):
            return self.source.read(win)

    def _refill(self) -> None:
        while len(self._reads) < self.depth:
            b = next(self._todo, None)
            if b is None:
                return
            self._reads.append((b, self.pool.submit(self._read, self.grid.read_window(b))))

    def __iter__(self) -> Iterator[tuple[Block, np.ndarray, np.ndarray]]:
        self._refill()
        while self._reads:
            block, fut = self._reads.popleft()
            with self.times("read_wait"):
                data, valid = fut.result()
            self._refill()
            yield block, data, valid

    def close(self) -> None:
        """Stop reading (pending reads are cancelled)."""
        self.pool.shutdown(wait=True, cancel_futures=True)


class BlockWriter:
    """The sink: calls ``on_confidence`` (if any) then ``on_block`` on ``workers`` writer
    threads, at most ``2 x workers`` blocks queued (back-pressure on the stitcher), and re-raises
    writer errors early."""

    def __init__(
        self,
        on_block: BlockSink,
        workers: int,
        times: StageTimes,
        on_confidence: BlockSink | None = None,
    ) -> None:
        self.on_block, self.on_confidence, self.times = on_block, on_confidence, times
        self.pool = ThreadPoolExecutor(max(1, workers), thread_name_prefix="tilesegd-write")
        self.slots = threading.Semaphore(2 * max(1, workers))
        self.futures: list[Future] = []

    def _job(self, block: Block, ids: np.ndarray, confidence: np.ndarray | None) -> None:
        try:
            with self.times("write"):
                if self.on_confidence is not None and confidence is not None:
                    self.on_confidence(block, confidence)
                self.on_block(block, ids)  # last: a block counts as done once it is written
        finally:
            self.slots.release()

    def submit(self, block: Block, ids: np.ndarray, confidence: np.ndarray | None = None) -> None:
        """Queue one finished block (blocks while ``2 x workers`` are queued)."""
        self.slots.acquire()
        self.futures.append(self.pool.submit(self._job, block, ids, confidence))
        for done in [f for f in self.futures if f.done()]:
            done.result()  # re-raise writer errors early
            self.futures.remove(done)

    def wait(self) -> None:
        """Wait for every queued block; re-raise the first writer error."""
        for f in self.futures:
            f.result()
        self.futures.clear()

    def close(self) -> None:
        self.pool.shutdown(wait=True)


class Batcher:
    """Groups tiles (from any number of blocks) into batches of ``size`` for the engine, and
    keeps at most ``in_flight`` batches on the device before their results are drained.

    Args:
        engine: runs the batches.
        core_box: ``(row, col, height, width)`` of the tile core, in tile pixels.
        on_result: called with ``(jobs, ids (B, h, w) uint8, probs (B, K, h, w) or None,
            confidence (B, h, w) uint8 or None)`` for each finished batch, in submission order.
    """

    def __init__(
        self,
        engine: Engine,
        core_box: tuple[int, int, int, int],
        on_result: Callable[..., None],
        times: StageTimes,
    ) -> None:
        self.engine, self.core_box, self.on_result, self.times = engine, core_box, on_result, times
        self.in_flight = 2 if engine.device.type == "cuda" else 1
        self.jobs: list[TileJob] = []
        self.pending: deque[tuple[Pending, list[TileJob]]] = deque()

    def add(self, job: TileJob) -> None:
        """Queue one tile; a full batch goes to the engine."""
        self.jobs.append(job)
        if len(self.jobs) >= self.engine.batch_size:
            self.flush()

    def flush(self) -> None:
        """Send the queued tiles (a short batch) to the engine."""
        if not self.jobs:
            return
        with self.times("batch"):
            xb = np.stack([j.x for j in self.jobs])
            vb = np.stack([j.valid for j in self.jobs])
        self.pending.append((self.engine.submit(xb, vb, self.core_box), self.jobs))
        self.jobs = []
        while len(self.pending) >= self.in_flight:
            self._drain_one()

    def _drain_one(self) -> None:
        p, jobs = self.pending.popleft()
        with self.times("infer_wait"):
            ids, probs, confidence = p.outputs()
        self.on_result(jobs, ids, probs, confidence)

    def finish(self) -> None:
        """Flush and drain everything in flight."""
        self.flush()
        while self.pending:
            self._drain_one()


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
    region: Region | None = None,
    on_confidence: BlockSink | None = None,
) -> SegmentStats:
    """Segment the blocks of ``source`` and pass each finished block to ``on_block``.

    The roles: :class:`Prefetcher` (reader threads) -> :func:`~tilesegd.inference.stitch.split_block`
    (tiles, all-nodata ones skipped) -> :class:`Batcher` (engine calls) ->
    :class:`~tilesegd.inference.stitch.Stitcher` (cores into blocks, checked) -> :class:`BlockWriter`.

    Args:
        source: where raw pixels come from (:class:`~tilesegd.raster.reader.SceneSource`,
            :class:`~tilesegd.raster.reader.ArraySource`).
        grid: the tile/block geometry (its ``tile_shape`` is what the engine sees).
        engine: runs batches of tiles.
        on_block: called with ``(block, ids)``, ``ids`` (h, w) uint8 class ids of
            ``block.window`` with 255 for nodata; called from writer threads, at most
            ``workers`` at once, in any order, exactly once per block.
        on_probs: called with ``(tile, probs)``, probs (K, h, w) float16 of ``tile.core``.
        blocks: the blocks to do (default: all; pass a subset to resume or distribute).
        workers: reader threads and writer threads.
        progress: called with the pixel count of each finished block.
        stop: when set, no new block is started; raises :class:`Interrupted` after the
            blocks in hand are written.
        region: an area of interest: pixels outside it are nodata and tiles whose core has
            none of it never run (tiles keep their full halo).
        on_confidence: called with ``(block, confidence)`` ((h, w) uint8: top-class
            probability x 100, 255 = nodata) before ``on_block``, when the engine computes
            confidence.

    Returns:
        :class:`SegmentStats`.

    Raises:
        InputError: from the source (truncated file...). Interrupted: ``stop`` was set.
        BlockCheckError: a block's ids disagree with its input's nodata, or a block was never
            finished (a bug; nothing wrong is written).
    """
    todo = list(grid.blocks() if blocks is None else blocks)
    stats, times = SegmentStats(), StageTimes()
    t_start, engine_t0 = time.perf_counter(), engine.times.as_dict()
    writer = BlockWriter(on_block, workers, times, on_confidence)

    def finished(block: Block, ids: np.ndarray, confidence: np.ndarray | None) -> None:
        writer.submit(block, ids, confidence)
        stats.blocks += 1
        if progress is not None:
            progress(block.window.height * block.window.width)

    stitcher = Stitcher(finished, confidence=engine.confidence)

    def stitch(jobs: list[TileJob], ids: np.ndarray, probs: Any, confidence: Any) -> None:
        with times("stitch"):
            for k, job in enumerate(jobs):
                if on_probs is not None and probs is not None:
                    h, w = job.tile.core.height, job.tile.core.width
                    on_probs(job.tile, probs[k, :, :h, :w])
                stitcher.place(job, ids[k], None if confidence is None else confidence[k])

    (ch, cw), (hh, hw) = grid.core_shape, grid.halo
    batcher = Batcher(engine, (hh, hw, ch, cw), stitch, times)
    reads = Prefetcher(source, grid, todo, workers, times)
    try:
        for block, data, valid in reads:
            if stop is not None and stop.is_set():
                raise Interrupted("stopped by a signal; finished blocks are kept")
            keep = None if region is None else region.mask(block.window)
            state = stitcher.open(grid, block, valid, keep)
            jobs, skipped = split_block(grid, state, data, valid)
            stats.tiles_run += len(jobs)
            stats.tiles_skipped += skipped
            for job in jobs:
                batcher.add(job)
            if skipped:  # may finish the block, if its other tiles are already stitched
                stitcher.account(state, skipped)
        batcher.finish()
        stitcher.check_all_finished()
        writer.wait()
    finally:
        reads.close()
        writer.close()
    stats.pixels = sum(b.window.height * b.window.width for b in todo)
    stats.low_confidence = stitcher.low_confidence
    stats.tiles_outside_aoi = stitcher.outside_tiles
    engine_t1 = engine.times.as_dict()
    t = dict(times.seconds)
    t.update({k: engine_t1[k] - engine_t0[k] for k in ("h2d", "infer", "d2h")})
    t["total"] = time.perf_counter() - t_start
    stats.times = {k: round(v, 3) for k, v in t.items()}
    return stats


def predict_array(
    engine: Engine,
    image: np.ndarray,
    valid: np.ndarray | None = None,
    *,
    tile_size: int | None = None,
    overlap: int | None = None,
    block_size: int = 2048,
    geometry: Any = None,
) -> np.ndarray:
    """Tiled, stitched inference on an in-memory image (the same path as ``tilesegd run``).

    Args:
        engine: the network and its normalisation (its ``batch_size`` is used as is).
        image: (C, H, W) raw values, any numeric dtype, bands already in model order.
        valid: (H, W) bool, False for nodata; ``None`` = all valid (NaN/Inf always invalid).
        tile_size, overlap: pixels; default as ``tilesegd run`` on the engine's device
            (:func:`~tilesegd.inference.geometry.geometry_for`: the model file's tile size and
            measured overlap, the device's memory budget).
        block_size: approximate block side in pixels.
        geometry: a resolved :class:`~tilesegd.inference.geometry.Geometry` (wins over the three above;
            its tile is fitted to this image as in ``tilesegd run``).

    Returns:
        (H, W) uint8 class ids, 255 where invalid.

    Raises:
        ConfigError: the tile size / overlap cannot make a tile grid.
    """
    from tilesegd.inference.budget import DeviceBudget
    from tilesegd.inference.geometry import TilingOptions, geometry_for

    src = ArraySource(image, valid)
    if geometry is None:
        tiling = TilingOptions(tile_size, overlap, block_size)
        budget = DeviceBudget.of(engine.device, engine.dtype)
        geometry = geometry_for(engine.spec, tiling, budget, save_probs=engine.save_probs)
    out = np.full((src.height, src.width), NODATA, np.uint8)

    def put(block: Block, ids: np.ndarray) -> None:
        out[block.window.slices] = ids

    segment(src, geometry.grid(src.height, src.width), engine, put, workers=1)
    return out

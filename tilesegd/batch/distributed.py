"""Run tilesegd on a Dask distributed cluster, with a block of a scene as the unit of work.

The client (this process) profiles each scene and opens its work store ``pred.zarr`` without
loading the network (planning reads only the model's ``tilesegd.json``), then submits one task
per group of blocks, for every scene at once (earlier scenes first). Each worker process loads
the model once and keeps it (:mod:`tilesegd.batch.cluster`), reopens the scene and its store by
path, segments its blocks with the same code as a local run and writes them into the shared
store: every block is one Zarr chunk, so writers never overlap. A scene is finished on the
client (COG, areas, preview, publish: :func:`tilesegd.batch.runner.finish_scene`) as soon as its
blocks are done, while the blocks of later scenes keep the workers busy.

Results do not depend on the cluster: a block is computed by the same code whatever worker runs
it, and the engine pads short batches, so a tile's class ids never depend on its batch-mates.
Tasks are idempotent: blocks already listed in ``blocks.done`` are skipped, and the blocks of a
worker that dies are recomputed by another one (Dask reschedules its tasks; errors raised in a
task are retried ``RETRIES`` times).

Workers must see the input, model and output paths at the same paths as the client (a shared
filesystem such as NFS, Lustre or GPFS).
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tilesegd.batch.cluster import SceneJob, compute_task, open_client, prepare_worker
from tilesegd.batch.ledger import RunLedger
from tilesegd.batch.local import add_products
from tilesegd.batch.progress import progress_bar
from tilesegd.batch.runner import RunSetup, aoi_fields, finish_scene, plan_scene
from tilesegd.config import RunConfig
from tilesegd.errors import DeviceError, Interrupted, ModelFileError, OutputError

if TYPE_CHECKING:  # pragma: no cover
    from tilesegd.batch.plan import ScenePlan
    from tilesegd.raster.tiling import Block

log = logging.getLogger(__name__)
RETRIES = 2  # extra tries of a task that raised (a killed worker is handled by Dask itself)
MAX_BLOCKS_PER_TASK = 16


def group_blocks(blocks: list[Block], per_task: int) -> list[list[Block]]:
    """Split ``blocks`` (row-major) into consecutive groups of ``per_task``, one task each."""
    per_task = max(1, per_task)
    return [blocks[i : i + per_task] for i in range(0, len(blocks), per_task)]


@dataclass
class SceneState:
    """A scene in flight on the cluster: its plan, run.json entry and block counters."""

    plan: ScenePlan
    entry: dict[str, Any]
    t0: float
    pending: set[str] = field(default_factory=set)
    done_ids: set[int] = field(default_factory=set)
    workers: set[str] = field(default_factory=set)
    tiles_run: int = 0
    tiles_skipped: int = 0
    tiles_outside_aoi: int = 0
    pixels: int = 0
    t_blocks: float = 0.0
    failed: bool = False


def run_distributed(
    cfg: RunConfig,
    paths: list[Path],
    names: list[str],
    output: Path,
    *,
    stop: threading.Event | None = None,
    progress: bool = True,
    blocks_per_task: int | None = None,
) -> dict[str, Any]:
    """Segment ``paths`` into ``output`` on a Dask cluster (see the module docstring).

    Called by :func:`tilesegd.api.run` (which holds the output lock) when ``cfg.scheduler``
    or ``cfg.cluster`` is set; keeps the same books as a local run (:mod:`tilesegd.batch.ledger`),
    so either kind of run resumes the other's half-done scenes.

    Args:
        cfg: the resolved configuration.
        paths, names: the scenes and their output names.
        output: the output directory.
        stop: set by SIGTERM / SIGINT: pending blocks are cancelled, finished ones kept.
        progress: show progress (megapixels).
        blocks_per_task: blocks per Dask task (default: about 4 tasks per worker per scene,
            at most ``MAX_BLOCKS_PER_TASK``).

    Returns:
        The ``run.json`` document, with a ``distributed`` section (scheduler, workers).

    Raises:
        ConfigError: no Dask distributed, unreachable scheduler, bad settings.
        ModelFileError, DeviceError: the model cannot run on a worker.
        Interrupted: ``stop`` was set. Scene errors are recorded as ``failed``.
    """
    from tilesegd.model.model_file import file_sha256, read_spec

    model = Path(cfg.model or "").resolve()
    spec = read_spec(model)
    model_sha = file_sha256(model)
    if cfg.model_sha256 and cfg.model_sha256.lower() != model_sha:
        raise ModelFileError(
            f"{model}: SHA-256 is {model_sha}, but --model-sha256 pins {cfg.model_sha256}; "
            "check that this is the model you meant"
        )
    cfg.geometry(spec)  # bad geometry: fail before any cluster
    cfg.bands_for(spec)
    client, cluster = open_client(cfg)
    try:
        threads = cfg.workers
        if cfg.cluster == "local":  # --workers counted processes: split the CPUs between them
            threads = max(1, (os.cpu_count() or 1) // cfg.workers)
        task_cfg = replace(cfg, model=str(model), output=str(output.resolve()), workers=threads)
        log.info("Dask scheduler %s; loading the model on a worker", client.scheduler.address)
        device, dtype, budget, dtype_bytes = client.submit(
            prepare_worker, task_cfg, model_sha, pure=False
        ).result()
        run = RunSetup.resolve(
            cfg, spec, output.resolve(), model_sha, device, dtype, budget, dtype_bytes
        )
        job = SceneJob(None, replace(run, cfg=task_cfg), model_sha, device, dtype, uuid.uuid4().hex)
        return DistributedRun(run, job, client).run(
            paths, names, stop or threading.Event(), progress, blocks_per_task
        )
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


class DistributedRun:
    """One distributed run: plan and submit scenes, gather blocks, finish scenes."""

    def __init__(self, run: RunSetup, job: SceneJob, client: Any) -> None:
        self.setup, self.job, self.client = run, job, client
        self.output = run.output
        self.n = max(1, len(client.scheduler_info().get("workers", {})))
        self.states: dict[str, SceneState] = {}
        self.owner: dict[Any, str] = {}  # dask future -> scene name
        self.finishing: dict[Future, str] = {}
        self.fatal: BaseException | None = None

    def header(self) -> dict[str, Any]:
        """run.json's run-level fields, with the cluster's."""
        from tilesegd.batch.local import run_header

        doc = run_header(self.setup, self.job.model_sha, self.job.device, self.job.dtype)
        doc["distributed"] = {
            "scheduler": self.client.scheduler.address,
            "cluster": self.setup.cfg.cluster or "external",
            "workers": self.n,
        }
        return doc

    def run(self, paths, names, stop, progress, per_task) -> dict[str, Any]:
        """Submit every scene (earlier scenes first), finish each as its blocks are done."""
        from distributed import as_completed

        cfg = self.setup.cfg
        self.ledger = RunLedger(self.output, names, self.header(), self.setup.fingerprint,
                                cfg.overwrite)  # fmt: skip
        self.bar = progress_bar(progress, total=0, unit="MP", desc="blocks", leave=False)
        self.finisher = ThreadPoolExecutor(2, thread_name_prefix="tilesegd-finish")
        ac = as_completed()
        try:
            for idx, (path, name) in enumerate(zip(paths, names, strict=True)):
                if self.ledger.skip(name, path, self.setup.products):
                    continue
                if self.ledger.finished(name, path) and not stop.is_set():
                    add_products(self.ledger, self.setup, path, name)  # no worker needed
                    continue
                if stop.is_set() or self.fatal is not None:
                    self.ledger.pending(name, path)
                    continue
                entry = self.ledger.start(name, path)
                self._submit_scene(Path(path).resolve(), name, entry, idx, ac, per_task)
                self._gather(ac)
            while (not ac.is_empty() or self.finishing) and self.fatal is None:
                if stop.wait(0.05):
                    break
                self._gather(ac)
        finally:
            if self.owner:
                self.client.cancel(list(self.owner))
            self.finisher.shutdown(wait=True)
            for fut in list(self.finishing):
                self._finished(fut)
            self.bar.close()
        return self._close(stop.is_set() and self.fatal is None)

    def _close(self, interrupted: bool) -> dict[str, Any]:
        why = str(self.fatal or "stopped by a signal; finished blocks are kept")
        for e in self.ledger.scenes.values():
            if e.get("status") == "running":
                e.update(status="interrupted" if interrupted else "failed", error=why)
        if self.fatal is not None:
            self.ledger.stop(self.fatal)
        self.ledger.finish(interrupted)
        if interrupted:
            raise Interrupted(
                f"{self.output}: stopped by a signal; finished scenes and blocks are kept "
                "(run.json says which); rerun the same command to resume"
            )
        return self.ledger.doc

    def _submit_scene(self, path, name, entry, idx, ac, per_task) -> None:
        """Plan one scene on the client, then submit its block groups (priority: scene order)."""
        try:
            plan = plan_scene(path, name, self.setup)
        except Exception as exc:  # recorded in run.json; the others go on
            self._failed(name, path, entry, exc)
            return
        entry["status"] = "running"
        st = self.states[name] = SceneState(plan, entry, time.perf_counter())
        entry["blocks_resumed"] = plan.grid.n_blocks - len(plan.todo)
        entry["tile_size"] = plan.grid.tile_size
        job = replace(self.job, plan=replace(plan, todo=()))
        per_task = per_task or min(MAX_BLOCKS_PER_TASK, math.ceil(len(plan.todo) / 4 / self.n))
        self.bar.total += sum(b.window.height * b.window.width for b in plan.todo)
        self.bar.refresh()
        for group in group_blocks(plan.todo, per_task):
            fut = self.client.submit(
                compute_task,
                job,
                [b.id for b in group],
                key=f"tilesegd-{name}-b{group[0].id}-{uuid.uuid4().hex[:8]}",
                pure=False,
                retries=RETRIES,
                priority=-idx,
            )
            self.owner[fut] = name
            st.pending.add(fut.key)
            ac.add(fut)
        if not st.pending:  # every block was done before (a resumed scene)
            self._start_finish(st)

    def _gather(self, ac) -> None:
        """Handle finished block tasks and finished scenes (without blocking)."""
        for fut in ac.next_batch(block=False):
            name = self.owner.pop(fut, None)
            st = self.states.get(name) if name else None
            if st is None or st.failed or fut.status == "cancelled":
                continue
            st.pending.discard(fut.key)
            if fut.status == "finished":
                r = fut.result()
                st.done_ids.update(r["blocks"])
                st.workers.add(r["worker"])
                st.tiles_run += r["tiles_run"]
                st.tiles_skipped += r["tiles_skipped"]
                st.tiles_outside_aoi += r.get("tiles_outside_aoi", 0)
                st.pixels += r["pixels"]
                self.bar.update(r["pixels"])
                if not st.pending:
                    st.t_blocks = time.perf_counter() - st.t0
                    self._start_finish(st)
                continue
            st.failed = True
            self.client.cancel([f for f, n in self.owner.items() if n == name])
            st.entry["seconds"] = round(time.perf_counter() - st.t0, 3)
            self._failed(name, st.entry["input"], st.entry, fut.exception())
        for fut in [f for f in self.finishing if f.done()]:
            self._finished(fut)

    def _start_finish(self, st: SceneState) -> None:
        # finish_scene checks that every block is in the store's log before it publishes
        self.finishing[self.finisher.submit(finish_scene, st.plan, self.setup)] = st.plan.name

    def _finished(self, fut: Future) -> None:
        name = self.finishing.pop(fut)
        st = self.states[name]
        try:
            result = fut.result()
        except Exception as exc:  # recorded in run.json; the others go on
            self._failed(name, st.entry["input"], st.entry, exc)
            return
        else:
            seconds = time.perf_counter() - st.t0
            st.entry.update(
                status="done",
                seconds=round(seconds, 3),
                megapixels_per_s=round(st.pixels / 1e6 / st.t_blocks, 3) if st.t_blocks else None,
                tiles_run=st.tiles_run,
                tiles_skipped=st.tiles_skipped,
                workers=sorted(st.workers),
                **result,
                **st.plan.resample_fields,
            )
            if st.plan.aoi is not None:
                st.entry.update(aoi_fields(st.plan, None), tiles_outside_aoi=st.tiles_outside_aoi)
            log.info("%s: done in %.1f s on %d worker(s)", name, seconds, len(st.workers))
        self._write()

    def _failed(self, name: str, path: Any, entry: dict[str, Any], exc: BaseException) -> None:
        """Record a scene's failure as a local run does; a model that cannot run, an output
        that cannot be written or a full disk end the whole run (``self.fatal``)."""
        if not isinstance(exc, Exception):  # e.g. a worker's KeyboardInterrupt
            exc = RuntimeError(str(exc))
        fatal = self.ledger.fail(entry, Path(path), exc)
        if isinstance(exc, DeviceError):
            fatal = exc
        if fatal is not None and self.fatal is None:
            self.fatal = fatal
        self._write()

    def _write(self) -> None:
        try:
            self.ledger.write()
        except OutputError as exc:
            if self.fatal is None:
                self.fatal = exc

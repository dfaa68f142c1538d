"""Run tilesegd on a Dask distributed cluster, with a block of a scene as the unit of work.

The client (this process) profiles each scene and opens its work store ``pred.zarr`` without
loading the network (planning reads only the model's ``tilesegd.json``), then submits one task
per group of blocks, for every scene at once (earlier scenes first). Each worker process loads
the model once and keeps it (:mod:`tilesegd.batch.cluster`), reopens the scene and its store by
path, segments its blocks with the same code as a local run and writes them into the shared
store: every block is one Zarr chunk, so writers never overlap. A scene is finished on the
client (COG, areas, preview, publish: :func:`tilesegd.batch.runner.finish_scene`) as soon as its
blocks are done, while the blocks of later scenes keep the workers busy. Every scene's status
goes through the same state machine as a local run (:mod:`tilesegd.batch.states`).

Results do not depend on the cluster: a block is computed by the same code whatever worker runs
it, and the engine pads short batches, so a tile's class ids never depend on its batch-mates.
Tasks are idempotent: blocks already listed in ``blocks.done`` are skipped, and the blocks of a
worker that dies are recomputed by another one (Dask reschedules its tasks; errors raised in a
task are retried ``RETRIES`` times).

Workers share no folder with the client when the inputs, the model and the output are on object
storage (``s3://``, ``gs://``, ``az://``, ``https://``): they read windows of the scenes, fetch the
model once per machine into its cache, and write the chunks and ``blocks.done`` entries of each
scene's store under the output prefix; only the client builds and uploads the other outputs.
Local paths must be seen by the workers at the same paths (a shared filesystem such as NFS,
Lustre or GPFS).
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
from tilesegd.batch.local import run_header, scene_states
from tilesegd.batch.plan import recorded_cost
from tilesegd.batch.progress import progress_bar
from tilesegd.batch.runner import RunSetup, aoi_fields, finish_scene, plan_scene
from tilesegd.config import RunConfig
from tilesegd.errors import DeviceError, ModelFileError, TilesegdError

if TYPE_CHECKING:  # pragma: no cover
    from tilesegd.batch.plan import ScenePlan
    from tilesegd.batch.states import SceneRun
    from tilesegd.raster.tiling import Block

log = logging.getLogger(__name__)
RETRIES = 2  # extra tries of a task that raised (a killed worker is handled by Dask itself)
MAX_BLOCKS_PER_TASK = 16


def group_blocks(blocks: list[Block], per_task: int) -> list[list[Block]]:
    """Split ``blocks`` (row-major) into consecutive groups of ``per_task``, one task each."""
    per_task = max(1, per_task)
    return [blocks[i : i + per_task] for i in range(0, len(blocks), per_task)]


@dataclass
class SceneTasks:
    """A scene's blocks in flight on the cluster: its state, plan and block counters."""

    scene: SceneRun
    plan: ScenePlan
    t0: float
    pending: set[str] = field(default_factory=set)
    done_ids: set[int] = field(default_factory=set)
    workers: set[str] = field(default_factory=set)
    tiles_run: int = 0
    tiles_skipped: int = 0
    tiles_outside_aoi: int = 0
    pixels: int = 0


def run_distributed(
    cfg: RunConfig,
    paths: list[Path],
    names: list[str],
    output: Path,
    *,
    stop: threading.Event | None = None,
    progress: bool = True,
    blocks_per_task: int | None = None,
    model_url: str | None = None,
    sources: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Segment ``paths`` into ``output`` on a Dask cluster (see the module docstring).

    Called by :func:`tilesegd.api.run` (which holds the output lock) when ``cfg.scheduler``
    or ``cfg.cluster`` is set; its scenes go through the same state machine as a local run
    (:mod:`tilesegd.batch.states`), so either kind of run resumes the other's half-done scenes.

    Args:
        cfg: the resolved configuration.
        paths, names: the scenes and their output names.
        output: the output directory (for outputs on object storage: the client's scratch
            folder; the workers write only to the store).
        model_url: where ``cfg.model`` (the client's cached copy) was fetched from; workers
            then fetch it into their own machine's cache (checked against its SHA-256) instead
            of reading the client's path.
        sources: the STAC sources of scenes (:attr:`RunSetup.sources`).
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
        task_model = model_url or str(model)  # a URL: each worker machine fetches it once
        task_cfg = replace(cfg, model=task_model, output=str(output.resolve()), workers=threads)
        log.info("Dask scheduler %s; loading the model on a worker", client.scheduler.address)
        found = client.submit(prepare_worker, task_cfg, model_sha, pure=False).result()
        device, dtype = found.device, found.dtype
        if found.overlap is not None and cfg.overlap is None:  # --seam-tolerance's
            cfg = replace(cfg, overlap=found.overlap)
            task_cfg = replace(task_cfg, overlap=found.overlap)
        cost = recorded_cost(cfg, output, model_sha, found.runtime, device) or found.cost
        run = RunSetup.resolve(cfg, spec, output.resolve(), model_sha, device, dtype,
                               local_budget(cfg, found.budget), found.dtype_bytes, sources,
                               found.runtime, cost)  # fmt: skip
        job = SceneJob(None, replace(run, cfg=task_cfg), model_sha, device, dtype, uuid.uuid4().hex)
        return DistributedRun(run, job, client).run(
            paths, names, stop or threading.Event(), progress, blocks_per_task
        )
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def local_budget(cfg: RunConfig, budget: int) -> int:
    """A worker's memory budget per network call: with ``--cluster local`` and no
    ``--memory-budget`` the machine's default share split between its ``--workers`` processes
    (they share the machine's memory), else ``budget`` as the worker found it."""
    if cfg.cluster == "local" and cfg.memory_budget is None and cfg.workers > 1:
        from tilesegd.inference.budget import CPU_BUDGET

        return max(CPU_BUDGET, budget // cfg.workers)
    return budget


class DistributedRun:
    """One distributed run: plan and submit scenes, gather blocks, finish scenes; every
    status goes through the scene state machine (:class:`~tilesegd.batch.states.RunStates`)."""

    def __init__(self, run: RunSetup, job: SceneJob, client: Any) -> None:
        self.setup, self.job, self.client = run, job, client
        self.output = run.output
        self.n = max(1, len(client.scheduler_info().get("workers", {})))
        self.tasks: dict[str, SceneTasks] = {}
        self.owner: dict[Any, str] = {}  # dask future -> scene name
        self.finishing: dict[Future, str] = {}

    def header(self) -> dict[str, Any]:
        """run.json's run-level fields, with the cluster's."""
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

        self.states = scene_states(self.setup, self.output, names, self.header(), stop)
        self.bar = progress_bar(progress, total=0, unit="MP", desc="blocks", leave=False)
        self.finisher = ThreadPoolExecutor(2, thread_name_prefix="tilesegd-finish")
        ac = as_completed()
        with self.states:
            try:
                for idx, (path, name) in enumerate(zip(paths, names, strict=True)):
                    scene = self.states.admit(path, name)
                    if scene is not None:
                        self._submit_scene(scene, idx, ac, per_task)
                        self._gather(ac)
                while not ac.is_empty() or self.finishing:
                    if stop.wait(0.05):
                        break  # the close marks the scenes in flight interrupted
                    self._gather(ac)
            finally:
                if self.owner:
                    self.client.cancel(list(self.owner))
                self.finisher.shutdown(wait=True)
                self._drain()
                self.bar.close()
        return self.states.doc

    def _submit_scene(self, scene: SceneRun, idx: int, ac: Any, per_task: int | None) -> None:
        """Plan one scene on the client, then submit its block groups (priority: scene order)."""
        try:
            plan = plan_scene(Path(scene.path).resolve(), scene.name, self.setup)
        except Exception as exc:  # recorded in run.json; the others go on
            scene.failed(exc)
            return
        scene.planned(plan.grid.n_blocks - len(plan.todo), plan.grid.tile_size)
        st = self.tasks[scene.name] = SceneTasks(scene, plan, time.perf_counter())
        job = replace(self.job, plan=replace(plan, todo=()))
        per_task = per_task or min(MAX_BLOCKS_PER_TASK, math.ceil(len(plan.todo) / 4 / self.n))
        self.bar.total += sum(b.window.height * b.window.width for b in plan.todo)
        self.bar.refresh()
        for group in group_blocks(plan.todo, per_task):
            fut = self.client.submit(
                compute_task,
                job,
                [b.id for b in group],
                key=f"tilesegd-{scene.name}-b{group[0].id}-{uuid.uuid4().hex[:8]}",
                pure=False,
                retries=RETRIES,
                priority=-idx,
            )
            self.owner[fut] = scene.name
            st.pending.add(fut.key)
            ac.add(fut)
        if not st.pending:  # every block was done before (a resumed scene)
            self._start_finish(st, 0.0)

    def _gather(self, ac) -> None:
        """Handle finished block tasks and finished scenes (without blocking).

        Raises:
            OutputError / DeviceError: a fatal error (the run stops).
        """
        for fut in ac.next_batch(block=False):
            name = self.owner.pop(fut, None)
            st = self.tasks.get(name) if name else None
            if st is None or st.scene.ended or fut.status == "cancelled":
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
                    self._start_finish(st, time.perf_counter() - st.t0)
                continue
            self.client.cancel([f for f, n in self.owner.items() if n == name])
            exc = fut.exception()
            if not isinstance(exc, Exception):  # e.g. a worker's KeyboardInterrupt
                exc = RuntimeError(str(exc))
            # a worker that cannot run the model (device, precision) dooms every scene
            st.scene.failed(exc, ends_run=isinstance(exc, DeviceError))
        for fut in [f for f in self.finishing if f.done()]:
            self._finished(fut)

    def _start_finish(self, st: SceneTasks, t_blocks: float) -> None:
        """Every block of the scene is done (in ``t_blocks`` s): finish it on a thread."""
        st.scene.blocks_done(
            megapixels_per_s=round(st.pixels / 1e6 / t_blocks, 3) if t_blocks else None,
            tiles_run=st.tiles_run,
            tiles_skipped=st.tiles_skipped,
            workers=sorted(st.workers),
        )
        # finish_scene checks that every block is in the store's log before it publishes
        self.finishing[self.finisher.submit(finish_scene, st.plan, self.setup)] = st.plan.name

    def _finished(self, fut: Future) -> None:
        """Record a finished (or failed) finish step.

        Raises:
            OutputError: a fatal error (the run stops).
        """
        st = self.tasks[self.finishing.pop(fut)]
        try:
            result = fut.result()
        except Exception as exc:  # recorded in run.json; the others go on
            st.scene.failed(exc)
            return
        aoi = aoi_fields(st.plan, st.tiles_outside_aoi)
        st.scene.finished({**result, **aoi, **st.plan.resample_fields})
        log.info("%s: done in %.1f s on %d worker(s)", st.scene.name, st.scene.entry["seconds"],
                 len(st.workers))  # fmt: skip

    def _drain(self) -> None:
        """Record every finish step still in hand, also after a fatal error (a scene published
        by its finisher thread is done); the run's fatal error is raised by its close."""
        for fut in list(self.finishing):
            try:
                self._finished(fut)
            except TilesegdError as exc:
                if exc is not self.states.fatal:
                    raise

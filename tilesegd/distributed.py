"""Run tilesegd on a Dask distributed cluster, with a block of a scene as the unit of work.

The client (this process) profiles each scene and opens its work store ``pred.zarr`` without
loading the network (planning reads only the model's ``tilesegd.json``), then submits one task
per group of blocks, for every scene at once (earlier scenes first). Each worker process loads
the model once and keeps it (:mod:`tilesegd.dask_cluster`), reopens the scene and its store by
path, segments its blocks with the same code as a local run and writes them into the shared
store: every block is one Zarr chunk, so writers never overlap. A scene is finished on the
client (COG, areas, preview, publish: :func:`tilesegd.runner.finish_scene`) as soon as its
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

from tilesegd.config import RunConfig, parse_shard
from tilesegd.dask_cluster import SceneJob, compute_task, open_client, prepare_worker
from tilesegd.errors import (
    DeviceError,
    Interrupted,
    ModelFileError,
    OutputError,
)

if TYPE_CHECKING:  # pragma: no cover
    from tilesegd.model_file import ModelSpec
    from tilesegd.runner import ScenePlan
    from tilesegd.tiling import Block

log = logging.getLogger(__name__)
RETRIES = 2  # extra tries of a task that raised (a killed worker is handled by Dask itself)
MAX_BLOCKS_PER_TASK = 16


def select_shard(paths: list[Path], names: list[str], shard: str) -> tuple[list[Path], list[str]]:
    """Keep this shard's scenes: sorted by path, scene ``i`` goes to shard ``i % N``.

    Deterministic and scheduler-free, for job arrays (``--shard $SLURM_ARRAY_TASK_ID/N``).
    Output names are the ones the full list gives, so shards never rename a scene.

    Raises:
        ConfigError: ``shard`` is not ``I/N`` with ``0 <= I < N``.
    """
    i, n = parse_shard(shard)
    pairs = sorted(zip(paths, names, strict=True), key=lambda pn: str(pn[0]))
    kept = [pn for k, pn in enumerate(pairs) if k % n == i]
    return [p for p, _ in kept], [nm for _, nm in kept]


@dataclass(frozen=True)
class SpecView:
    """The part of an :class:`~tilesegd.engine.Engine` that planning reads, so the client can
    call :func:`~tilesegd.runner.plan_scene` without loading the network (it may have no GPU).
    """

    spec: ModelSpec


def group_blocks(blocks: list[Block], per_task: int) -> list[list[Block]]:
    """Split ``blocks`` (row-major) into consecutive groups of ``per_task``, one task each."""
    per_task = max(1, per_task)
    return [blocks[i : i + per_task] for i in range(0, len(blocks), per_task)]


@dataclass
class _SceneState:
    plan: ScenePlan
    entry: dict[str, Any]
    t0: float
    pending: set[str] = field(default_factory=set)
    done_ids: set[int] = field(default_factory=set)
    workers: set[str] = field(default_factory=set)
    tiles_run: int = 0
    tiles_skipped: int = 0
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
    or ``cfg.cluster`` is set; writes ``run.json`` and ``summary.csv`` as a local run does, so
    either kind of run resumes the other's half-done scenes.

    Args:
        cfg: the resolved configuration.
        paths, names: the scenes and their output names.
        output: the output directory.
        stop: set by SIGTERM / SIGINT: pending blocks are cancelled, finished ones kept.
        progress: show a progress bar (megapixels).
        blocks_per_task: blocks per Dask task (default: about 4 tasks per worker per scene,
            at most ``MAX_BLOCKS_PER_TASK``).

    Returns:
        The ``run.json`` document, with a ``distributed`` section (scheduler, workers).

    Raises:
        ConfigError: no Dask distributed, unreachable scheduler, bad settings.
        ModelFileError, DeviceError: the model cannot run on a worker.
        Interrupted: ``stop`` was set. Scene errors are recorded as ``failed``.
    """
    from tilesegd.model_file import file_sha256, read_spec

    model = Path(cfg.model or "").resolve()
    spec = read_spec(model)
    model_sha = file_sha256(model)
    if cfg.model_sha256 and cfg.model_sha256.lower() != model_sha:
        raise ModelFileError(
            f"{model}: SHA-256 is {model_sha}, but --model-sha256 pins {cfg.model_sha256}; "
            "check that this is the model you meant"
        )
    cfg.geometry(
        spec.tile_size, spec.multiple, spec.overlap
    )  # bad geometry: fail before any cluster
    client, cluster = open_client(cfg)
    try:
        return _Run(cfg, spec, model, model_sha, client, output.resolve()).run(
            paths, names, stop or threading.Event(), progress, blocks_per_task
        )
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


class _Run:
    """One distributed run: plan and submit scenes, gather blocks, finish scenes."""

    def __init__(self, cfg, spec, model, model_sha, client, output) -> None:
        self.cfg, self.spec, self.model, self.model_sha = cfg, spec, model, model_sha
        self.client, self.output = client, output
        threads = cfg.workers
        if cfg.cluster == "local":  # --workers counted processes: split the CPUs between them
            threads = max(1, (os.cpu_count() or 1) // cfg.workers)
        self.task_cfg = replace(cfg, model=str(model), output=str(output), workers=threads)
        self.states: dict[str, _SceneState] = {}
        self.owner: dict[Any, str] = {}  # dask future -> scene name
        self.finishing: dict[Future, str] = {}

    def run(self, paths, names, stop, progress, per_task) -> dict[str, Any]:
        import json

        from distributed import as_completed
        from tqdm import tqdm

        from tilesegd import __version__
        from tilesegd.api import (
            RUN_JSON,
            _discard_stale_work,
            _finish,
            _input_stat,
            _output_error,
            _outputs_present,
            _stop_run,
            fingerprint,
        )

        cfg, output = self.cfg, self.output
        log.info("Dask scheduler %s; loading the model on a worker", self.client.scheduler.address)
        tile, _ = cfg.geometry(self.spec.tile_size, self.spec.multiple, self.spec.overlap)
        device, dtype = self.client.submit(
            prepare_worker, self.task_cfg, self.model_sha, tile, pure=False
        ).result()
        fp = fingerprint(self.model_sha, cfg, device, dtype)
        self.n = n_workers = max(1, len(self.client.scheduler_info().get("workers", {})))
        previous: dict[str, Any] = {}
        if (output / RUN_JSON).exists():
            try:
                previous = json.loads((output / RUN_JSON).read_text()).get("scenes", {})
            except (json.JSONDecodeError, OSError):
                previous = {}
        self.doc = doc = {
            "tilesegd_version": __version__,
            "model": {
                "path": str(self.model),
                "sha256": self.model_sha,
                "classes": [c.name for c in self.spec.classes],
            },
            "device": device,
            "precision": dtype.replace("torch.", ""),
            "config": cfg.to_dict(),
            "distributed": {
                "scheduler": self.client.scheduler.address,
                "cluster": cfg.cluster or "external",
                "workers": n_workers,
            },
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "status": "running",
            # carry the previous entries forward so a run killed part-way loses no record
            "scenes": {n: previous[n] for n in names if n in previous},
        }
        run_id = uuid.uuid4().hex
        self.bar = tqdm(
            total=0, unit="MP", unit_scale=1e-6, desc="blocks", disable=not progress, leave=False
        )
        self.finisher = ThreadPoolExecutor(2, thread_name_prefix="tilesegd-finish")
        ac = as_completed()
        self.fatal: BaseException | None = None
        try:
            for idx, (path, name) in enumerate(zip(paths, names, strict=True)):
                old, stat = previous.get(name, {}), _input_stat(path)
                if (
                    not cfg.overwrite
                    and old.get("status") == "done"
                    and old.get("fingerprint") == fp
                    and old.get("input_stat", stat) == stat
                    and _outputs_present(output / name)
                ):
                    log.info("%s: already done, skipping (use --overwrite to recompute)", name)
                    doc["scenes"][name] = {**old, "skipped": True}
                    continue
                if stop.is_set() or self.fatal is not None:
                    doc["scenes"][name] = {"status": "pending", "input": str(path)}
                    continue
                _discard_stale_work(output, name, stat, cfg.overwrite)
                entry = {"input": str(path), "fingerprint": fp, "input_stat": stat}
                doc["scenes"][name] = entry
                job = SceneJob(None, self.task_cfg, self.model_sha, device, dtype, run_id)
                self._submit_scene(Path(path).resolve(), name, entry, job, idx, ac, per_task)
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
        interrupted = stop.is_set() and self.fatal is None
        why = str(self.fatal or "stopped by a signal; finished blocks are kept")
        for e in doc["scenes"].values():
            if e["status"] == "running":
                e.update(status="interrupted" if interrupted else "failed", error=why)
        if self.fatal is not None:
            _stop_run(output, doc, self.fatal)
        statuses = {e["status"] for e in doc["scenes"].values()}
        status = "interrupted" if interrupted else "failed" if "failed" in statuses else "done"
        try:
            _finish(output, doc, status)
        except OSError as exc:
            raise _output_error(output, exc) from None
        if interrupted:
            raise Interrupted(
                f"{output}: stopped by a signal; finished scenes and blocks are kept (run.json "
                "says which); rerun the same command to resume"
            )
        return doc

    def _submit_scene(self, path, name, entry, job, idx, ac, per_task) -> None:
        """Plan one scene on the client, then submit its block groups (priority: scene order)."""
        from tilesegd.runner import plan_scene

        fp = entry["fingerprint"]
        try:
            plan = plan_scene(path, name, SpecView(self.spec), self.cfg, self.output, fp)
        except Exception as exc:  # recorded in run.json; the others go on
            self._failed(name, path, entry, exc)
            return
        entry["status"] = "running"
        st = self.states[name] = _SceneState(plan, entry, time.perf_counter())
        entry["blocks_resumed"] = plan.grid.n_blocks - len(plan.todo)
        job = replace(job, plan=replace(plan, store=None, todo=[]))
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

    def _start_finish(self, st: _SceneState) -> None:
        from tilesegd.runner import finish_scene

        missing = {b.id for b in st.plan.todo} - st.done_ids
        if missing:  # cannot happen unless a task lied; never publish a partial mask
            st.failed = True
            error = f"blocks {sorted(missing)} were not computed; rerun to resume"
            self._failed(st.plan.name, st.entry["input"], st.entry, OutputError(error))
            return
        args = (st.plan, self.spec, self.cfg, self.output, str(self.model))
        self.finishing[self.finisher.submit(finish_scene, *args)] = st.plan.name

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
            )
            log.info("%s: done in %.1f s on %d worker(s)", name, seconds, len(st.workers))
        self._write()

    def _failed(self, name: str, path: Any, entry: dict[str, Any], exc: BaseException) -> None:
        """Record a scene's failure as a local run does; a model that cannot run, an output
        that cannot be written or a full disk end the whole run (``self.fatal``)."""
        from tilesegd.api import _scene_failed

        if not isinstance(exc, Exception):  # e.g. a worker's KeyboardInterrupt
            exc = RuntimeError(str(exc))
        fatal = _scene_failed(entry, Path(path), name, self.output, exc)
        if isinstance(exc, DeviceError):
            fatal = exc
        if fatal is not None and self.fatal is None:
            self.fatal = fatal
        self._write()

    def _write(self) -> None:
        from tilesegd.api import RUN_JSON, _output_error, write_json_atomic

        try:
            write_json_atomic(self.output / RUN_JSON, self.doc)
        except OSError as exc:
            if self.fatal is None:
                self.fatal = _output_error(self.output, exc)

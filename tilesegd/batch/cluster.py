"""Dask plumbing for :mod:`tilesegd.batch.distributed`: the cluster, and what runs on its workers.

:func:`open_client` connects to a scheduler or starts a local (CPU or CUDA) cluster.
:func:`compute_task` is the unit of work: it segments a group of blocks of one scene into the
scene's shared work store. :func:`worker_network` keeps one loaded model per worker process, so
the model loads once per worker, not once per task, and :func:`worker_engine` one engine built
from it with the run's geometry (only small :class:`SceneJob` descriptions
travel with the tasks). Workers reopen the client's stores with
:meth:`~tilesegd.outputs.zarr_store.ZarrMaskStore.reopen`, which checks and repairs nothing, so
they never disturb each other's writes.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tilesegd.config import RunConfig
from tilesegd.errors import ConfigError, DeviceError, OutputError

if TYPE_CHECKING:  # pragma: no cover
    from tilesegd.batch.plan import RunSetup, ScenePlan
    from tilesegd.inference.build import Network
    from tilesegd.inference.engine import Engine
    from tilesegd.inference.geometry import Geometry
    from tilesegd.outputs.zarr_store import ZarrMaskStore

log = logging.getLogger(__name__)
CONNECT_TIMEOUT_S = 30
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
_LOCK = threading.Lock()
_NETWORKS: dict[tuple, Network] = {}  # (model path, SHA-256, EngineOptions) -> network
_ENGINES: dict[tuple, Engine] = {}  # (network, Geometry) -> engine
_STORES: OrderedDict[tuple, ZarrMaskStore] = OrderedDict()


@dataclass(frozen=True)
class SceneJob:
    """What a worker needs to compute blocks of one scene (about 2 kB per task).

    Attributes:
        plan: the client's :class:`~tilesegd.batch.plan.ScenePlan` (``todo`` empty): scene
            profile, bands, tile grid, work store path. Workers never re-plan, so every worker
            computes exactly the client's grid.
        run: the run's :class:`~tilesegd.batch.plan.RunSetup` (its ``cfg.workers`` = reader /
            writer threads per task).
        model_sha: SHA-256 of the model file: every worker must load these exact bytes.
        device, dtype: what the first worker resolved (``"cuda"``, ``"torch.float16"``); a
            worker that resolves otherwise refuses (its masks could differ).
        run_id: unique per run, so a long-lived worker never reuses another run's open store.
    """

    plan: ScenePlan | None
    run: RunSetup
    model_sha: str
    device: str
    dtype: str
    run_id: str


def network_key(cfg: RunConfig, model_sha: str) -> tuple:
    """What a worker's loaded network depends on: the model file, its SHA-256 and the engine's
    settings (:meth:`~tilesegd.config.RunConfig.engine_options`)."""
    from tilesegd.storage.urls import is_remote

    model = cfg.model or ""
    return (model if is_remote(model) else str(Path(model).resolve()), model_sha,
            cfg.engine_options())  # fmt: skip


def worker_network(cfg: RunConfig, model_sha: str) -> Network:
    """This process's loaded network for ``cfg``'s model and engine settings
    (:meth:`~tilesegd.config.RunConfig.engine_options`): loaded on first use, then kept, so a
    worker loads the model once, not once per task (one model per worker process at a time).

    Raises:
        ModelFileError: unusable model file, or its SHA-256 is not ``model_sha``.
        DeviceError: the device or precision is not available on this worker.
    """
    from tilesegd.inference.build import load_network

    options = cfg.engine_options()
    key = network_key(cfg, model_sha)
    with _LOCK:
        if key not in _NETWORKS:
            _NETWORKS.clear()
            _ENGINES.clear()
            _NETWORKS[key] = load_network(local_model(cfg.model or "", model_sha), options,
                                          sha256=model_sha or None)  # fmt: skip
        return _NETWORKS[key]


def local_model(model: str, model_sha: str) -> str:
    """The model file a worker loads: ``model`` itself, or, for a URL, its copy in this
    machine's model cache (fetched on first use, checked against ``model_sha``:
    :func:`tilesegd.storage.fetch.fetch_model`).

    Raises:
        ModelFileError: it cannot be fetched, or its SHA-256 differs.
    """
    from tilesegd.storage.urls import is_remote

    if not is_remote(model):
        return model
    from tilesegd.storage.fetch import fetch_model

    return str(fetch_model(model, model_sha or None))


def worker_engine(cfg: RunConfig, model_sha: str, geometry: Geometry) -> Engine:
    """This process's engine for ``cfg``'s model and settings with the run's ``geometry``:
    built from :func:`worker_network` on first use, then kept (one at a time).

    Raises:
        ModelFileError, DeviceError: as :func:`worker_network`.
    """
    net = worker_network(cfg, model_sha)
    key = (*network_key(cfg, model_sha), geometry)
    with _LOCK:
        if key not in _ENGINES:
            _ENGINES.clear()
            _ENGINES[key] = net.engine(geometry)
        return _ENGINES[key]


def prepare_worker(cfg: RunConfig, model_sha: str) -> WorkerTarget:
    """Dask task: load the network on a worker, build its engine with the geometry this
    worker's memory budget gives (:meth:`~tilesegd.config.RunConfig.geometry`, as the client
    then resolves it from what this returns), check it on one tile of the model's
    ``tile_size`` (so a bad model fails before any scene) and build its TensorRT engine when
    that runtime was asked for. Returns a :class:`WorkerTarget`: the resolved device, dtype and
    runtime, which go into the run's fingerprint, and the worker's memory budget, bytes per
    activation value (:class:`~tilesegd.inference.budget.DeviceBudget`) and measured throughput
    curve (:meth:`~tilesegd.inference.build.Network.measure_cost`), from which the client
    resolves the run's tile geometry (a client without a GPU plans for GPU workers).

    Raises:
        ModelFileError: the file or the network disagrees with its ``tilesegd.json``.
        DeviceError: the device or precision is not available on the worker.
    """
    from tilesegd.batch.plan import tolerant_config

    net = worker_network(cfg, model_sha)
    budget = net.target.budget
    cfg = tolerant_config(cfg, net)
    cost = net.measure_cost(cfg.tiling())
    geometry = cfg.geometry(net.spec, budget.bytes, budget.dtype_bytes, cost)
    engine = worker_engine(cfg, model_sha, geometry)
    tile = (engine.spec.tile_size, engine.spec.tile_size)
    engine.check(tile)
    engine.build_tensorrt(tile)
    device, dtype = str(engine.device), str(engine.dtype)
    found = (device, dtype, engine.runtime, budget.bytes, budget.dtype_bytes, cost, cfg.overlap)
    return WorkerTarget(*found)


@dataclass(frozen=True)
class WorkerTarget:
    """What :func:`prepare_worker` found on a worker: the resolved ``device``, ``dtype`` and
    ``runtime`` (strings), its memory ``budget`` (bytes per network call) and ``dtype_bytes``
    (bytes per activation value), and the network's measured throughput curve ``cost``
    (``((tile px, megapixels per second), ...)``), and the overlap ``--seam-tolerance`` gave
    (``None``: the options' own)."""

    device: str
    dtype: str
    runtime: str
    budget: int
    dtype_bytes: int
    cost: tuple[tuple[int, float], ...] = ()
    overlap: int | None = None


def _worker_store(plan: ScenePlan, run_id: str) -> ZarrMaskStore:
    """The scene's work store, reopened (cached per run and scene)."""
    from tilesegd.outputs.zarr_store import ZarrMaskStore

    key = (run_id, plan.name)
    with _LOCK:
        if key in _STORES:
            _STORES.move_to_end(key)
            return _STORES[key]
    try:
        store = ZarrMaskStore.reopen(plan.store_path)
    except FileNotFoundError:
        raise OutputError(
            f"{plan.store_path}: the work store of scene {plan.name} is gone "
            "(removed by another run with --overwrite?); rerun the same command to resume"
        ) from None
    with _LOCK:
        _STORES[key] = store
        while len(_STORES) > 8:
            _STORES.popitem(last=False)
    return store


def compute_task(job: SceneJob, block_ids: list[int]) -> dict[str, Any]:
    """Dask task: segment blocks ``block_ids`` of ``job``'s scene into its work store.

    Blocks already listed in ``blocks.done`` are skipped, so a retried or recomputed task
    repeats no finished work; rewriting a block writes the same bytes (idempotent).

    Returns:
        ``{"blocks": block_ids, "computed", "tiles_run", "tiles_skipped", "pixels",
        "seconds", "worker": "host:pid"}`` (pixels of the blocks computed here).

    Raises:
        ModelFileError, DeviceError: the model cannot run here (the whole run stops).
        InputError: the scene cannot be decoded. OutputError: the work store is gone.
    """
    from tilesegd.batch.runner import compute_blocks

    t0 = time.perf_counter()
    engine = worker_engine(job.run.cfg, job.model_sha, job.run.geometry)
    found = (str(engine.device), str(engine.dtype), engine.runtime)
    if found != (job.device, job.dtype, job.run.runtime):
        raise DeviceError(
            f"worker {socket.gethostname()} runs the model on {' '.join(found)}, but the run "
            f"was planned for {job.device} {job.dtype} {job.run.runtime}; give --device, "
            "--precision and --runtime explicitly (and install the same extras on every "
            "worker) so every worker computes the same masks"
        )
    plan = job.plan
    store = _worker_store(plan, job.run_id)
    done = store.done_blocks()
    by_id = {b.id: b for b in plan.grid.blocks()}
    todo = [by_id[i] for i in block_ids if i not in done]
    out = {"blocks": list(block_ids), "computed": len(todo), "tiles_run": 0}
    out.update(tiles_skipped=0, pixels=0, worker=f"{socket.gethostname()}:{os.getpid()}")
    if todo:
        # the preview is drawn on the client, from the scene (no sampler on workers)
        stats = compute_blocks(plan, engine, job.run, todo, store=store, progress=False)
        out.update(tiles_run=stats.tiles_run, tiles_skipped=stats.tiles_skipped)
        out["tiles_outside_aoi"] = stats.tiles_outside_aoi
        out["pixels"] = stats.pixels
    out["seconds"] = round(time.perf_counter() - t0, 3)
    return out


def open_client(cfg: RunConfig) -> tuple[Any, Any]:
    """Connect to ``cfg.scheduler`` (an address, or a scheduler file) or start the
    ``cfg.cluster`` cluster.

    ``--cluster local`` starts ``cfg.workers`` worker processes of one task thread each (torch
    and the readers then use CPU count / workers threads apiece); ``local-cuda`` starts
    dask-cuda's LocalCUDACluster, one worker per visible GPU.

    Returns:
        ``(client, cluster)``; ``cluster`` is ``None`` for an external scheduler.

    Raises:
        ConfigError: Dask distributed (or dask-cuda) is not installed, or the scheduler
            cannot be reached.
    """
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise ConfigError(
            "--scheduler / --cluster need Dask distributed: pip install 'tilesegd[distributed]'"
        ) from None
    if not log.isEnabledFor(logging.DEBUG):  # Dask's INFO lines would drown ours (-vv: all)
        logging.getLogger("distributed").setLevel(logging.WARNING)
    if cfg.scheduler:
        where = {"address": cfg.scheduler}
        if Path(cfg.scheduler).is_file():  # written by `dask scheduler --scheduler-file F`
            where = {"scheduler_file": cfg.scheduler}
        try:
            return Client(**where, timeout=CONNECT_TIMEOUT_S), None
        except (OSError, TimeoutError, ValueError) as exc:
            raise ConfigError(
                f"--scheduler {cfg.scheduler}: cannot reach a Dask scheduler there ({exc}); "
                "check the address and that `dask scheduler` is running"
            ) from None
    if cfg.cluster == "local-cuda":
        try:
            from dask_cuda import LocalCUDACluster
        except ImportError:
            raise ConfigError(
                "--cluster local-cuda needs dask-cuda: pip install 'tilesegd[distributed-cuda]' "
                "on a machine with NVIDIA GPUs (or use --cluster local)"
            ) from None
        if cfg.device not in ("auto", "cuda"):
            raise ConfigError(
                f"--cluster local-cuda gives each worker one GPU; use --device auto or cuda, "
                f"not {cfg.device!r}"
            )
        cluster = LocalCUDACluster(
            threads_per_worker=1,
            dashboard_address=None,
            scheduler_kwargs={"dashboard_address": ":0"},
        )
    else:
        # Torch reads OMP_NUM_THREADS when a worker imports it; the nanny passes the
        # parent's environment (which wins over Dask's config) to the worker processes.
        threads = str(max(1, (os.cpu_count() or 1) // cfg.workers))
        saved = {v: os.environ.get(v) for v in THREAD_VARS}
        os.environ.update(dict.fromkeys(THREAD_VARS, threads))
        try:
            cluster = LocalCluster(
                n_workers=cfg.workers,
                threads_per_worker=1,
                processes=True,
                dashboard_address=None,
                scheduler_kwargs={"dashboard_address": ":0"},  # no fixed port: runs side by side
            )
        finally:
            for v, old in saved.items():
                if old is None:
                    os.environ.pop(v, None)
                else:
                    os.environ[v] = old
    return Client(cluster), cluster

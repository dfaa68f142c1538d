"""Run the scenes on this machine, one after the other, with one loaded engine.

The same scene state machine as a distributed run (:mod:`tilesegd.batch.states`): scenes already
done are skipped, half-done ones resume, a bad scene is recorded as failed and the others carry
on, and an output that cannot be written (a full disk) ends the run. Only the blocks are
computed differently: here, in this process.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tilesegd.batch.finish import add_scene_products
from tilesegd.batch.plan import recorded_cost, tolerant_config
from tilesegd.batch.runner import RunSetup, run_scene
from tilesegd.batch.states import RunStates
from tilesegd.config import RunConfig

if TYPE_CHECKING:  # pragma: no cover
    from tilesegd.inference.engine import Engine

log = logging.getLogger(__name__)


def run_header(run: RunSetup, model_sha: str, device: str, dtype: str) -> dict[str, Any]:
    """The run-level fields of ``run.json``: model, device, precision, resolved config."""
    return {
        "model": {
            "path": str(Path(run.model).resolve()),
            "sha256": model_sha,
            "classes": [c.name for c in run.spec.classes],
        },
        "device": device,
        "precision": dtype.replace("torch.", ""),
        "runtime": run.runtime,
        "config": run.cfg.to_dict(),
        "geometry": {
            "tile_size": run.geometry.tile_size,
            "min_tile": run.geometry.min_tile,
            "overlap": run.geometry.overlap,
            "block_size": run.geometry.block_size,
            "batch_size": run.geometry.batch_size,
            "throughput_mpx_s": [list(p) for p in run.geometry.cost],
        },
    }


def load_engine(
    cfg: RunConfig, output: Path, sources: dict[str, dict[str, Any]] | None = None
) -> tuple[Engine, RunSetup, str]:
    """Load the model, resolve the run's setup (its geometry on this device's memory budget),
    build the engine with that geometry, check the network on one tile and build its TensorRT
    engine when that runtime was asked for, all before any scene
    (:mod:`tilesegd.inference.build`: model, device and budget, geometry, engine).

    Returns:
        ``(engine, setup, model_sha256)``.

    Raises:
        ModelFileError: the model file is unusable or disagrees with its metadata.
        DeviceError: the device or precision is not available. ConfigError: bad geometry or
            bands.
    """
    from tilesegd.inference.build import load_network

    net = load_network(cfg.model or "", cfg.engine_options(), sha256=cfg.model_sha256)
    model_sha = net.sha256
    cfg = tolerant_config(cfg, net)
    device, dtype, budget = net.target.device, net.target.dtype, net.target.budget
    recorded = recorded_cost(cfg, output, model_sha, net.runtime, str(device))
    cost = recorded or net.measure_cost(cfg.tiling())
    run = RunSetup.resolve(cfg, net.spec, output, model_sha, str(device), str(dtype),
                           budget.bytes, budget.dtype_bytes, sources, net.runtime, cost)  # fmt: skip
    engine = net.engine(run.geometry)
    tile = run.geometry.min_tile or run.geometry.tile_size  # the cheapest tile a scene may use
    engine.check((tile, tile))  # class count / output size vs tilesegd.json, before any scene
    engine.build_tensorrt((tile, tile))  # --runtime tensorrt: compiled now, not mid-scene
    return engine, run, model_sha


def scene_states(
    run: RunSetup, output: Path, names: list[str], header: dict[str, Any], stop: threading.Event
) -> RunStates:
    """The scene state machine of a run into the folder ``output`` or the run's object-storage
    prefix (:meth:`RunSetup.ledger`; local or distributed):
    products a finished scene lacks are added from its stored mask (the network does not
    run)."""

    def add_products(path: Path, name: str, which: set[str]) -> dict[str, Any]:
        return add_scene_products(path, name, run, which)

    return RunStates(
        run.ledger(),
        names,
        header,
        run.fingerprint,
        overwrite=run.cfg.overwrite,
        stop=stop,
        products=run.products,
        add_products=add_products,
    )


def run_local(
    cfg: RunConfig,
    paths: list[Path],
    names: list[str],
    output: Path,
    *,
    stop: threading.Event,
    progress: bool = True,
    sources: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Segment ``paths`` into ``output`` in this process (see :func:`tilesegd.api.run`, which
    holds the output lock), one scene after the other (:func:`tilesegd.batch.runner.run_scene`).

    Returns:
        The ``run.json`` document.

    Raises:
        ModelFileError, DeviceError, ConfigError: before any scene.
        OutputError: an output cannot be written (the run stops).
        Interrupted: ``stop`` was set; finished work is kept.
    """
    engine, run, model_sha = load_engine(cfg, output, sources)
    header = run_header(run, model_sha, str(engine.device), str(engine.dtype))
    with scene_states(run, output, names, header, stop) as states:
        for path, name in zip(paths, names, strict=True):
            scene = states.admit(path, name)
            if scene is not None:
                run_scene(scene, engine, run, stop=stop, progress=progress)
    return states.doc

"""Run the scenes on this machine, one after the other, with one loaded engine.

The same bookkeeping as a distributed run (:mod:`tilesegd.batch.ledger`): scenes already done are
skipped, half-done ones resume, a bad scene is recorded as failed and the others carry on, and
an output that cannot be written (a full disk) ends the run.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tilesegd.batch.finish import add_scene_products
from tilesegd.batch.ledger import RunLedger
from tilesegd.batch.runner import RunSetup, run_scene
from tilesegd.config import RunConfig
from tilesegd.errors import Interrupted

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
        "config": run.cfg.to_dict(),
        "geometry": {
            "tile_size": run.geometry.tile_size,
            "min_tile": run.geometry.min_tile,
            "overlap": run.geometry.overlap,
            "block_size": run.geometry.block_size,
            "batch_size": run.geometry.batch_size,
        },
    }


def load_engine(cfg: RunConfig, output: Path) -> tuple[Engine, RunSetup, str]:
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
    from tilesegd.model.model_file import file_sha256

    model_sha = file_sha256(cfg.model) if Path(cfg.model or "").is_file() else ""
    net = load_network(cfg.model or "", cfg.engine_options(), sha256=cfg.model_sha256)
    device, dtype, budget = net.target.device, net.target.dtype, net.target.budget
    run = RunSetup.resolve(
        cfg, net.spec, output, model_sha, str(device), str(dtype), budget.bytes, budget.dtype_bytes
    )
    engine = net.engine(run.geometry)
    tile = run.geometry.min_tile or run.geometry.tile_size  # the cheapest tile a scene may use
    engine.check((tile, tile))  # class count / output size vs tilesegd.json, before any scene
    engine.build_tensorrt((tile, tile))  # --runtime tensorrt: compiled now, not mid-scene
    return engine, run, model_sha


def add_products(ledger: RunLedger, run: RunSetup, path: Path, name: str) -> None:
    """Add the products a finished scene lacks (from its stored mask), recording them, or
    the failure, in ``run.json``.

    Raises:
        OutputError: a file cannot be written (the run stops).
    """
    which = ledger.products_to_add(name, run.products)
    try:
        fields = add_scene_products(path, name, run, which)
    except Exception as exc:
        entry = {**ledger.previous[name]}
        ledger.scenes[name] = entry
        fatal = ledger.fail(entry, path, exc)
        if fatal is not None:
            ledger.stop(fatal)
    else:
        ledger.added(name, fields, {p: run.products[p] for p in which})
    ledger.write()


def run_local(
    cfg: RunConfig,
    paths: list[Path],
    names: list[str],
    output: Path,
    *,
    stop: threading.Event,
    progress: bool = True,
) -> dict[str, Any]:
    """Segment ``paths`` into ``output`` in this process (see :func:`tilesegd.api.run`, which
    holds the output lock).

    Returns:
        The ``run.json`` document.

    Raises:
        ModelFileError, DeviceError, ConfigError: before any scene.
        OutputError: an output cannot be written (the run stops).
        Interrupted: ``stop`` was set; finished work is kept.
    """
    engine, run, model_sha = load_engine(cfg, output)
    header = run_header(run, model_sha, str(engine.device), str(engine.dtype))
    ledger = RunLedger(output, names, header, run.fingerprint, cfg.overwrite)
    interrupted = False
    for path, name in zip(paths, names, strict=True):
        if ledger.skip(name, path, run.products):
            continue
        if ledger.finished(name, path) and not stop.is_set():
            add_products(ledger, run, path, name)
            continue
        if stop.is_set():
            interrupted = True
            ledger.pending(name, path)
            continue
        t0 = time.perf_counter()
        entry = ledger.start(name, path)
        try:
            entry.update(run_scene(path, name, engine, run, stop=stop, progress=progress))
            log.info(
                "%s: done in %.1f s (%.2f MP/s)",
                name,
                entry["seconds"],
                entry["megapixels_per_s"] or 0,
            )
        except Interrupted as exc:
            interrupted = True
            entry.update(status="interrupted", error=str(exc))
        except Exception as exc:  # one bad scene never stops the others...
            fatal = ledger.fail(entry, path, exc)
            if fatal is not None:  # ...unless no later scene could succeed either
                ledger.stop(fatal)
        entry.setdefault("seconds", round(time.perf_counter() - t0, 3))
        try:
            ledger.write()
        except Exception as exc:
            ledger.stop(exc)
    ledger.finish(interrupted)
    if interrupted:
        raise Interrupted(
            f"{output}: stopped by a signal; finished scenes and blocks are kept (run.json "
            "says which); rerun the same command to resume"
        )
    return ledger.doc

"""Workers of the trained-model suite (``trained.py``): tilesegd at any geometry, the network
alone on the same tiles, and whole-image inference on a crop (the seamlessness reference).

Each runs in a fresh process started by ``trained.py`` and returns a JSON-ready dict with
``seconds`` (model loading and warm-up excluded, as for every tool), ``network_pixels`` (input
pixels the network ran, padding included) and ``peak_rss_mb`` (this process's peak).
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from common import load_net, peak_rss_mb, write_mask


def model_norm(model: str) -> dict[str, Any]:
    """The model file's normalisation as :func:`common.normalise_` keywords."""
    from tilesegd.model.model_file import load_model

    sp = load_model(model).spec
    return {"mean": tuple(sp.mean), "std": tuple(sp.std), "scale": sp.input_scale}


def run_tilesegd(
    scene: str,
    model: str,
    out: str,
    keep_mask: str,
    *,
    tile: int | None = None,
    overlap: int | None = None,
    activation_bytes: float | None = None,
    workers: int = 2,
) -> dict[str, Any]:
    """``tilesegd run`` on one scene through the runner's plan / compute / finish steps (as
    ``workers.run_tilesegd``), at ``tile`` / ``overlap`` (``None``: the default rule of
    :func:`tilesegd.inference.geometry.resolve_geometry`). ``activation_bytes`` stands in for the model
    file's ``activation_bytes_per_pixel`` (what ``tilesegd train`` would record)."""
    from tilesegd.batch.runner import RunSetup, compute_blocks, finish_scene, plan_scene
    from tilesegd.config import RunConfig
    from tilesegd.inference.build import load_network
    from tilesegd.inference.options import EngineOptions
    from tilesegd.model.spec import ACTIVATION_KEY

    out_dir = Path(out)
    shutil.rmtree(out_dir, ignore_errors=True)
    cfg = RunConfig(
        input=[scene], model=model, output=str(out_dir), tile_size=tile, overlap=overlap
    )
    cfg.workers = workers
    net = load_network(model, EngineOptions(device="cpu"))
    spec = net.spec
    if activation_bytes:
        spec = dataclasses.replace(spec, extra={**spec.extra, ACTIVATION_KEY: activation_bytes})
        net = dataclasses.replace(net, spec=spec)
    run = RunSetup.resolve(cfg.validate(), spec, out_dir, "", str(net.target.device), "bench")
    engine = net.engine(run.geometry)
    height, width = _scene_size(scene)
    grid = run.geometry.grid(height, width)
    th, tw = grid.tile_shape
    zeros = np.zeros((engine.batch_size, spec.in_channels, th, tw), np.uint8)
    ones = np.ones((engine.batch_size, th, tw), bool)
    engine.predict(zeros, ones)  # warm-up on the run's tile shape (untimed, as for the peers)
    engine.slots = engine.tiles = 0
    t0 = time.perf_counter()
    plan = plan_scene(Path(scene), "scene", run)
    t1 = time.perf_counter()
    stats = compute_blocks(plan, engine, run, progress=False)
    t2 = time.perf_counter()
    finish_scene(plan, run)
    t3 = time.perf_counter()
    shutil.copy(out_dir / "scene" / "mask.tif", keep_mask)
    shutil.rmtree(out_dir, ignore_errors=True)
    g = run.geometry
    return {
        "tool": "tilesegd",
        "megapixels": round(height * width / 1e6, 3),
        "seconds": round(t3 - t0, 3),
        "compute_seconds": round(t2 - t1, 3),
        "network_pixels": engine.slots * th * tw,
        "tile": grid.tile_size,
        "tile_shape": [th, tw],
        "overlap": g.overlap,
        "max_tile": g.tile_size,
        "batch": g.batch_size,
        "tiles_run": stats.tiles_run,
        "slots": engine.slots,
        "stages": {
            "plan": round(t1 - t0, 3),
            "compute": round(t2 - t1, 3),
            **{f"compute.{k}": v for k, v in stats.times.items()},
            "finish": round(t3 - t2, 3),
        },
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }


def run_model_only(model: str, tile_shape: list[int], slots: int, batch: int) -> dict[str, Any]:
    """The network alone (through the engine's path minus I/O: float32 NHWC tensors already
    in memory) on ``slots`` tiles of ``tile_shape`` in calls of ``batch``: the ceiling for the
    tilesegd run that ran those tiles."""
    from tilesegd.inference.build import open_engine
    from tilesegd.inference.options import EngineOptions

    engine = open_engine(model, EngineOptions(device="cpu"))
    net = engine.module
    th, tw = tile_shape
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, engine.spec.in_channels, th, tw, generator=g)
    x = x.contiguous(memory_format=torch.channels_last)
    calls = -(-slots // batch)
    with torch.inference_mode():
        net(x)  # warm-up
        t0 = time.perf_counter()
        for _ in range(calls):
            net(x)
        dt = time.perf_counter() - t0
    return {
        "tool": "model only",
        "seconds": round(dt, 3),
        "network_pixels": calls * batch * th * tw,
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }


def run_reference(scene: str, model: str, out_mask: str, crop: list[int]) -> dict[str, Any]:
    """Whole-image inference on the ``crop = [row, col, side]`` window of ``scene`` (one
    network call, NCHW as ``seams.py``): the reference every tool's mask is compared with."""
    import rasterio
    from common import normalise_
    from rasterio.windows import Window

    r0, c0, side = crop
    with rasterio.open(scene) as ds:
        img = ds.read([1, 2, 3], window=Window(c0, r0, side, side))
    net = load_net(model, torch.device("cpu"))
    t0 = time.perf_counter()
    x = normalise_(torch.from_numpy(img)[None].float(), **model_norm(model))
    with torch.inference_mode():
        ids = net(x)[0].max(0).indices.to(torch.uint8).numpy()
    dt = time.perf_counter() - t0
    write_mask(Path(out_mask), ids, scene)
    return {
        "tool": "whole-image reference",
        "megapixels": round(side * side / 1e6, 3),
        "seconds": round(dt, 3),
        "network_pixels": side * side,
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }


def _scene_size(scene: str) -> tuple[int, int]:
    import rasterio

    with rasterio.open(scene) as ds:
        return ds.height, ds.width

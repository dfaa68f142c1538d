"""Benchmark workers for tilesegd itself: end to end, model only, codec limit, reference.

Each function runs inside a fresh process started by ``bench.py`` and returns a JSON-ready dict
with ``seconds``, ``megapixels`` and ``peak_rss_mb`` (this process's peak resident memory).
"""

from __future__ import annotations

import math
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from common import GpuSampler, load_net, peak_rss_mb, write_mask


def _scene_size(scene: str) -> tuple[int, int]:
    import rasterio

    with rasterio.open(scene) as ds:
        return ds.height, ds.width


def geometry(
    model: str,
    device: str,
    precision: str,
    tile: int | None,
    overlap: int | None,
    batch: int | None,
) -> Any:
    """The run's :class:`~tilesegd.inference.geometry.Geometry`: ``tile`` / ``overlap`` / ``batch`` as
    given, ``None`` = tilesegd's default rule for this model on this device, as a run resolves it
    (:meth:`tilesegd.inference.build.Network.geometry`: the device's memory budget, the
    precision's bytes per value)."""
    from tilesegd.inference.build import load_network
    from tilesegd.inference.geometry import TilingOptions
    from tilesegd.inference.options import EngineOptions

    net = load_network(model, EngineOptions(device=device, precision=precision))
    return net.geometry(TilingOptions(tile_size=tile, overlap=overlap, batch_size=batch))


def run_tilesegd(
    scene: str,
    model: str,
    out: str,
    *,
    device: str = "auto",
    precision: str = "auto",
    runtime: str = "auto",
    batch: int | None = 8,
    tile: int | None = 512,
    overlap: int | None = 64,
    workers: int = 2,
    compress: str = "deflate",
    keep_mask: str | None = None,
) -> dict[str, Any]:
    """``tilesegd run`` on one scene through the runner's own plan / compute / finish steps
    (the same calls as :func:`tilesegd.batch.runner.run_scene`), timing each; outputs are removed
    afterwards (the mask is first copied to ``keep_mask`` when given). ``tile`` / ``overlap`` /
    ``batch`` ``None``: tilesegd's default geometry rule on this device (:func:`geometry`)."""
    import dataclasses

    from tilesegd.batch.runner import RunSetup, compute_blocks, finish_scene, plan_scene
    from tilesegd.config import RunConfig
    from tilesegd.inference.build import load_network
    from tilesegd.inference.options import EngineOptions

    out_dir = Path(out)
    shutil.rmtree(out_dir, ignore_errors=True)
    geo = geometry(model, device, precision, tile, overlap, batch)
    cfg = RunConfig(
        input=[scene],
        model=model,
        output=str(out_dir),
        tile_size=geo.tile_size if tile else None,
        overlap=geo.overlap,
        batch_size=geo.batch_size,
        workers=workers,
        device=device,
        precision=precision,
        compress=compress,
    ).validate()
    t0 = time.perf_counter()
    options = EngineOptions(device=device, precision=precision, runtime=runtime)
    engine = load_network(model, options).engine(geo)
    grid = geo.grid(*_scene_size(scene))
    (th, tw), (hh, hw), (ch, cw) = grid.tile_shape, grid.halo, grid.core_shape
    engine.check((th, tw))
    engine.build_tensorrt((th, tw))
    zeros = np.zeros((geo.batch_size, engine.spec.in_channels, th, tw), np.uint8)
    for _ in range(2):  # warm up through the engine: the same layout and code path as the run
        engine.predict(zeros, np.ones((geo.batch_size, th, tw), bool), (hh, hw, ch, cw))
    engine.slots = 0
    t_load = time.perf_counter() - t0
    with GpuSampler() as gpu:
        t0 = time.perf_counter()
        run = RunSetup.resolve(cfg, engine.spec, out_dir, "", str(engine.device), "bench")
        run = dataclasses.replace(run, geometry=geo)  # the device's budget (the rule) as resolved
        plan = plan_scene(Path(scene), "scene", run)
        t1 = time.perf_counter()
        stats = compute_blocks(plan, engine, run, progress=False)
        t2 = time.perf_counter()
        entry = finish_scene(plan, run)
        t3 = time.perf_counter()
    mp = plan.scene.megapixels
    if keep_mask:
        shutil.copy(out_dir / "scene" / "mask.tif", keep_mask)
    shutil.rmtree(out_dir, ignore_errors=True)
    return {
        "tool": "tilesegd",
        "megapixels": round(mp, 3),
        "seconds": round(t3 - t0, 3),
        "mp_per_s": round(mp / (t3 - t0), 3),
        "compute_mp_per_s": round(mp / (t2 - t1), 3),
        "stages": {
            "plan": round(t1 - t0, 3),
            "compute": round(t2 - t1, 3),
            **{f"compute.{k}": v for k, v in stats.times.items()},
            "finish (COG + areas + preview)": round(t3 - t2, 3),
        },
        "model_load_s": round(t_load, 3),
        "tiles_run": stats.tiles_run,
        "tile_shape": [th, tw],
        "overlap": geo.overlap,
        "batch": geo.batch_size,
        "network_pixels": engine.slots * th * tw,
        "device": str(engine.device),
        "precision": str(engine.dtype).replace("torch.", ""),
        "runtime": engine.runtime,
        "oom_retries": engine.oom_retries,
        "gpu_util_pct": gpu.mean,
        "valid_pixels": entry["valid_pixels"],
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }


def run_model_only(
    scene: str,
    model: str,
    *,
    device: str = "auto",
    precision: str = "auto",
    batch: int | None = 8,
    tile: int | None = 512,
    overlap: int | None = 64,
    max_seconds: float = 30.0,
) -> dict[str, Any]:
    """The network alone on float32 NHWC tensors already in device memory, on as many tiles as
    tilesegd runs for ``scene`` at the same geometry (:func:`geometry`; default 512-px tiles,
    64-px overlap), in batches of the same size (the last padded, as tilesegd may). After
    ``max_seconds`` the time is extrapolated per batch."""
    from tilesegd.inference.engine import resolve_device, resolve_precision

    dev = resolve_device(device)
    dtype = resolve_precision(precision, dev)
    h, w = _scene_size(scene)
    geo = geometry(model, device, precision, tile, overlap, batch)
    batch = geo.batch_size
    grid = geo.grid(h, w)
    th, tw = grid.tile_shape
    n_tiles = sum(len(grid.tiles_in_block(b)) for b in grid.blocks())
    n_batches = math.ceil(n_tiles / batch)
    net = load_net(model, dev)
    # the layout tilesegd's engine feeds (NHWC input; on CUDA NHWC weights too), so this is
    # the network's best speed, not a slower NCHW baseline that would flatter the efficiency
    if dev.type == "cuda":
        net = net.to(memory_format=torch.channels_last)
    x = torch.randn(batch, 3, th, tw, generator=torch.Generator().manual_seed(0)).to(dev)
    x = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        for _ in range(2):  # warm-up (profiling executor, allocator, cuDNN autotune)
            net(x)
    cast = torch.autocast(dev.type, dtype=dtype, enabled=dtype != torch.float32)
    done = 0
    with GpuSampler() as gpu, torch.inference_mode(), cast:
        t0 = time.perf_counter()
        while done < n_batches:
            net(x)
            done += 1
            if dev.type == "cuda" and done % 8 == 0:
                torch.cuda.synchronize()
            if time.perf_counter() - t0 > max_seconds:
                break
        if dev.type == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
    seconds = dt * n_batches / done
    mp = h * w / 1e6
    return {
        "tool": "model only",
        "megapixels": round(mp, 3),
        "tiles": n_tiles,
        "tile_shape": [th, tw],
        "batches_timed": done,
        "batches": n_batches,
        "seconds": round(seconds, 3),
        "mp_per_s": round(mp / seconds, 3),
        "device": str(dev),
        "precision": str(dtype).replace("torch.", ""),
        "gpu_util_pct": gpu.mean,
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }


def run_codec(scene: str, out: str, *, workers: int = 2, window: int = 2048) -> dict[str, Any]:
    """The codec limit: read + decode every pixel of ``scene`` in ``window``-px windows with
    ``workers`` threads, then encode a same-size uint8 mask as tiled (512 px) DEFLATE GeoTIFF
    with ``workers`` GDAL threads, at the DEFLATE level tilesegd's ``mask.tif`` uses. The mask
    is band 1 quantised to 23 classes (piecewise constant like a class map), repeated window by
    window."""
    import threading

    import rasterio
    from rasterio.windows import Window

    from tilesegd.outputs.cog import COMPRESSION_LEVEL

    h, w = _scene_size(scene)
    wins = [
        Window(c, r, min(window, w - c), min(window, h - r))
        for r in range(0, h, window)
        for c in range(0, w, window)
    ]
    local = threading.local()
    handles: list = []

    def read(win: Window) -> int:
        ds = getattr(local, "ds", None)
        if ds is None:
            ds = local.ds = rasterio.open(scene)
            handles.append(ds)
        return int(ds.read(window=win)[0, 0, 0])

    t0 = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(read, wins))
    t_read = time.perf_counter() - t0
    for ds in handles:
        ds.close()
    with rasterio.open(scene) as ds:
        first = ds.read(1, window=Window(0, 0, min(window, w), min(window, h)))
    mask = (first.astype(np.uint16) * 23 >> 8).astype(np.uint8)
    profile = dict(
        driver="GTiff",
        width=w,
        height=h,
        count=1,
        dtype="uint8",
        tiled=True,
        blockxsize=512,
        blockysize=512,
        compress="deflate",
        zlevel=COMPRESSION_LEVEL["DEFLATE"],  # the level tilesegd's mask.tif uses
        BIGTIFF="IF_SAFER",
        NUM_THREADS=str(workers),
    )
    t0 = time.perf_counter()
    with rasterio.open(out, "w", **profile) as dst:
        for win in wins:
            dst.write(mask[: win.height, : win.width], 1, window=win)
    t_write = time.perf_counter() - t0
    Path(out).unlink()
    mp = h * w / 1e6
    return {
        "tool": "codec limit",
        "megapixels": round(mp, 3),
        "seconds": round(t_read + t_write, 3),
        "mp_per_s": round(mp / (t_read + t_write), 3),
        "stages": {"read+decode": round(t_read, 3), "mask encode": round(t_write, 3)},
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }


def run_reference(scene: str, model: str, out_mask: str) -> dict[str, Any]:
    """Whole-image inference (no tiling; the image zero-padded to a multiple of 32): the
    reference for seamlessness. Only for small scenes (memory grows with the image)."""
    import rasterio
    from common import normalise_

    with rasterio.open(scene) as ds:
        img = ds.read([1, 2, 3])
    h, w = img.shape[1:]
    ph, pw = -h % 32, -w % 32
    net = load_net(model, torch.device("cpu"))
    t0 = time.perf_counter()
    x = normalise_(torch.from_numpy(img)[None].float())
    x = torch.nn.functional.pad(x, (0, pw, 0, ph))
    with torch.inference_mode():
        ids = net(x)[0, :, :h, :w].max(0).indices.to(torch.uint8).numpy()
    dt = time.perf_counter() - t0
    write_mask(Path(out_mask), ids, scene)
    return {
        "tool": "whole-image reference",
        "megapixels": round(h * w / 1e6, 3),
        "seconds": round(dt, 3),
        "mp_per_s": round(h * w / 1e6 / dt, 3),
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }

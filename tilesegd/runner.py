"""One scene, end to end: profile, check, segment block by block, then COG, areas, preview.

Work happens in ``DIR/.tilesegd/work/<scene>/``; only when every output is complete are they
renamed into ``DIR/<scene>/`` (each rename is atomic), so nothing at a final path ever claims a
success that did not happen. A killed scene resumes from the blocks listed in its work folder's
``blocks.done``.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any

from tilesegd import __version__
from tilesegd.areas import AreaCounter, row_pixel_areas, write_areas_csv
from tilesegd.config import RunConfig
from tilesegd.engine import Engine
from tilesegd.pipeline import segment
from tilesegd.reader import SceneSource
from tilesegd.scene import check_compatible, open_scene
from tilesegd.tiling import TileGrid
from tilesegd.writers.cog import write_cog
from tilesegd.writers.zarr_store import ZarrMaskStore

log = logging.getLogger(__name__)
WORK_DIR = ".tilesegd"
OUTPUT_FILES = ("mask.tif", "areas.csv", "preview.png")


def work_dir(output: Path, name: str) -> Path:
    """The scene's private work folder inside the output directory."""
    return output / WORK_DIR / "work" / name


def scene_attrs(scene: Any, engine: Engine, cfg: RunConfig, fingerprint: str) -> dict[str, Any]:
    """Metadata written into ``pred.zarr`` (and, JSON-encoded, the GeoTIFF tags)."""
    return {
        "crs": scene.crs.to_wkt() if scene.crs is not None else None,
        "transform": list(scene.transform.to_gdal()) if scene.transform is not None else None,
        "classes": [{"id": c.id, "name": c.name, "color": list(c.color)}
                    for c in engine.spec.classes],
        "nodata": 255,
        "source": str(scene.path),
        "tilesegd_version": __version__,
        "fingerprint": fingerprint,
        "config": cfg.to_dict(),
    }


def run_scene(
    path: Path,
    name: str,
    engine: Engine,
    cfg: RunConfig,
    output: Path,
    fingerprint: str,
    *,
    stop: threading.Event | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Segment one scene into ``output/<name>/`` and return its ``run.json`` entry.

    Args:
        path: the input raster.
        name: output folder name.
        engine: the loaded network.
        cfg: the resolved run configuration.
        output: the run's output directory.
        fingerprint: identifies model + settings; a work folder with another one is discarded.
        stop: set by SIGTERM; the scene stops after the blocks in hand (resumable).
        progress: show a tqdm bar (megapixels/s).

    Returns:
        ``{"status": "done", "seconds", "megapixels", "megapixels_per_s", "tiles_run",
        "tiles_skipped", "blocks", "blocks_resumed", "outputs": {...}}``.

    Raises:
        InputError, IncompatibleInputError: bad scene (before any inference where possible).
        ModelFileError: the network disagrees with its metadata.
        Interrupted: ``stop`` was set.
        OutputError: an output could not be written.
    """
    from tqdm import tqdm

    t0 = time.perf_counter()
    spec = engine.spec
    scene = open_scene(path, name, max_megapixels=cfg.max_megapixels, allow_vrt=cfg.allow_vrt,
                       allow_no_georef=cfg.allow_no_georef)
    bands = tuple(cfg.bands) if cfg.bands else spec.bands
    if len(bands) != spec.in_channels:
        from tilesegd.errors import ConfigError

        raise ConfigError(f"--bands lists {len(bands)} bands but the model takes "
                          f"{spec.in_channels} input channels")
    check_compatible(scene, bands, spec.extra.get("dtypes"))
    grid = TileGrid(scene.height, scene.width, cfg.tile_size or spec.tile_size, cfg.overlap,
                    spec.multiple, cfg.block_size)
    work = work_dir(output, name)
    work.mkdir(parents=True, exist_ok=True)
    store = ZarrMaskStore(
        work / "pred.zarr", (scene.height, scene.width), grid.block_shape,
        scene_attrs(scene, engine, cfg, fingerprint), spec.num_classes,
        probs_chunks=grid.core_shape if cfg.save_probs else None,
    )
    done = store.done_blocks()
    blocks = grid.blocks()
    todo = [b for b in blocks if b.id not in done]
    done_px = sum(b.window.height * b.window.width for b in blocks if b.id in done)
    if done:
        log.info("%s: resuming, %d of %d blocks already done", name, len(done), len(blocks))
    source = SceneSource(scene, bands)
    bar = tqdm(total=scene.megapixels, initial=done_px / 1e6, unit="MP", desc=name[:30],
               disable=not progress, leave=False, dynamic_ncols=True, mininterval=0.5,
               bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.1f}/{total:.1f} MP "
                          "[{elapsed}<{remaining}, {rate_noinv_fmt}]")
    try:
        stats = segment(
            source, grid, engine, store.write_block,
            on_probs=store.write_probs if cfg.save_probs else None, blocks=todo,
            workers=cfg.workers, progress=lambda px: bar.update(px / 1e6), stop=stop,
        )
    finally:
        bar.close()
        source.close()
    t_seg = time.perf_counter() - t0
    counter = AreaCounter(spec.num_classes,
                          row_pixel_areas(scene.crs, scene.transform, scene.height, scene.width))
    tags = {"TILESEGD_VERSION": __version__, "TILESEGD_MODEL": str(engine.source),
            "TILESEGD_CONFIG": cfg.to_dict(), "TILESEGD_SOURCE": str(scene.path)}
    write_cog(work / "mask.tif", blocks, store.read_block, height=scene.height,
              width=scene.width, crs=scene.crs, transform=scene.transform, classes=spec.classes,
              tags=tags, compress=cfg.compress,
              on_block=lambda b, ids: counter.add(b.window.row_off, ids))
    rows = counter.rows(spec.classes)
    write_areas_csv(work / "areas.csv", rows)
    if cfg.preview_size > 0:
        from tilesegd.writers.preview import write_preview

        write_preview(work / "preview.png", scene.path, work / "mask.tif", bands, spec.classes,
                      rows, cfg.preview_size, title=f"{name} ({scene.width} x {scene.height})")
    final = publish(work, output / name, cfg.save_probs)
    seconds = time.perf_counter() - t0
    computed_mp = stats.pixels / 1e6
    return {
        "status": "done",
        "seconds": round(seconds, 3),
        "megapixels": round(scene.megapixels, 4),
        "megapixels_per_s": round(computed_mp / t_seg, 3) if t_seg > 0 else None,
        "width": scene.width,
        "height": scene.height,
        "tiles_run": stats.tiles_run,
        "tiles_skipped": stats.tiles_skipped,
        "blocks": len(blocks),
        "blocks_resumed": len(done),
        "valid_pixels": int(sum(r["pixels"] for r in rows)),
        "nodata_pixels": counter.nodata_pixels,
        "outputs": {k: str(final / k) for k in ("mask.tif", "pred.zarr", "areas.csv",
                                               "preview.png") if (final / k).exists()},
    }


def publish(work: Path, final: Path, save_probs: bool) -> Path:
    """Rename every finished output from ``work`` into ``final`` (each rename atomic), then
    remove the work folder."""
    final.mkdir(parents=True, exist_ok=True)
    old = final / "pred.zarr"
    if old.exists():
        trash = final / f".pred.zarr.old-{os.getpid()}"
        os.replace(old, trash)
        shutil.rmtree(trash, ignore_errors=True)
    os.replace(work / "pred.zarr", old)
    for f in OUTPUT_FILES:
        if (work / f).exists():
            os.replace(work / f, final / f)
    shutil.rmtree(work, ignore_errors=True)
    return final

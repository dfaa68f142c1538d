"""One scene, end to end: profile, check, segment block by block, then COG, areas, preview.

Work happens in ``DIR/.tilesegd/work/<scene>/``; only when every output is complete does that
folder become ``DIR/<scene>/``, in one directory rename (:func:`publish`), so nothing at a final
path ever claims a success that did not happen. A killed scene resumes from the blocks listed in
its work folder's ``blocks.done``.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tilesegd import __version__
from tilesegd.areas import AreaCounter, row_pixel_areas, write_areas_csv
from tilesegd.config import RunConfig
from tilesegd.engine import Engine
from tilesegd.errors import ConfigError
from tilesegd.gdalenv import gdal_env
from tilesegd.model_file import ModelSpec
from tilesegd.pipeline import SegmentStats, segment
from tilesegd.reader import SceneSource, Source
from tilesegd.scene import Scene, check_compatible, open_scene
from tilesegd.stitch import BlockCheckError
from tilesegd.tiling import Block, TileGrid, Win
from tilesegd.writers.cog import write_cog
from tilesegd.writers.preview import PreviewSampler, preload, write_preview
from tilesegd.writers.zarr_store import DONE_LOG, ZarrMaskStore

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
        "classes": [
            {"id": c.id, "name": c.name, "color": list(c.color)} for c in engine.spec.classes
        ],
        "nodata": 255,
        "source": str(scene.path),
        "source_stat": _source_stat(scene.path),
        "tilesegd_version": __version__,
        "fingerprint": fingerprint,
        "config": cfg.to_dict(),
    }


def _source_stat(path: Any) -> list[int] | None:
    """``[size, mtime_ns]`` of the input (a changed input is recomputed, not resumed)."""
    try:
        st = os.stat(path)
    except (OSError, TypeError):
        return None
    return [st.st_size, st.st_mtime_ns]


@dataclass
class ScenePlan:
    """Everything needed to compute and finish one scene (see :func:`plan_scene`).

    Attributes:
        scene: the profiled input.
        name: output folder name.
        bands: 1-based bands fed to the network.
        grid: tile / block geometry.
        work: the scene's work folder; ``store`` lives in it.
        store: the (possibly half-done) ``pred.zarr``.
        todo: blocks still to compute.
        preview: the preview image sampled from the blocks decoded by :func:`compute_blocks`.
    """

    scene: Scene
    name: str
    bands: tuple[int, ...]
    grid: TileGrid
    work: Path
    store: ZarrMaskStore
    todo: list[Block]
    preview: PreviewSampler | None = None

    @property
    def done_pixels(self) -> int:
        """Pixels of the blocks already finished."""
        todo = {b.id for b in self.todo}
        return sum(b.window.height * b.window.width for b in self.grid.blocks() if b.id not in todo)


def plan_scene(
    path: Path, name: str, engine: Engine, cfg: RunConfig, output: Path, fingerprint: str
) -> ScenePlan:
    """Profile and check a scene, open (or resume) its work store, list the blocks to do.

    Raises:
        InputError, IncompatibleInputError: bad scene, found before any inference.
        ConfigError: ``--bands`` does not match the model's input channels.
    """
    spec = engine.spec
    scene = open_scene(
        path,
        name,
        max_megapixels=cfg.max_megapixels,
        allow_vrt=cfg.allow_vrt,
        allow_no_georef=cfg.allow_no_georef,
    )
    bands = tuple(cfg.bands) if cfg.bands else spec.bands
    if len(bands) != spec.in_channels:
        raise ConfigError(
            f"--bands lists {len(bands)} bands but the model takes "
            f"{spec.in_channels} input channels"
        )
    check_compatible(scene, bands, spec.extra.get("dtypes"))
    tile, overlap = cfg.geometry(spec.tile_size, spec.multiple, spec.overlap)
    grid = TileGrid(scene.height, scene.width, tile, overlap, spec.multiple, cfg.block_size)
    work = work_dir(output, name)
    work.mkdir(parents=True, exist_ok=True)
    store = ZarrMaskStore(
        work / "pred.zarr",
        (scene.height, scene.width),
        grid.block_shape,
        scene_attrs(scene, engine, cfg, fingerprint),
        spec.num_classes,
        probs_chunks=grid.core_shape if cfg.save_probs else None,
    )
    done = store.done_blocks()
    todo = [b for b in grid.blocks() if b.id not in done]
    if done:
        log.info("%s: resuming, %d of %d blocks already done", name, len(done), grid.n_blocks)
    return ScenePlan(scene, name, bands, grid, work, store, todo)


def compute_blocks(
    plan: ScenePlan,
    engine: Engine,
    cfg: RunConfig,
    blocks: list[Block] | None = None,
    *,
    stop: threading.Event | None = None,
    progress: bool = True,
    sample_preview: bool = True,
) -> SegmentStats:
    """Segment ``blocks`` (default: ``plan.todo``) of a planned scene into its store.

    With ``sample_preview`` (and a preview asked for), the decoded windows also fill
    ``plan.preview``, which :func:`finish_scene` uses instead of reading the scene again.
    """
    from tqdm import tqdm

    blocks = plan.todo if blocks is None else blocks
    source: Source = SceneSource(plan.scene, plan.bands)
    if cfg.preview_size > 0 and sample_preview:
        preload()  # matplotlib, in the background
        scene = plan.scene
        if plan.preview is None:
            plan.preview = PreviewSampler(
                scene.height, scene.width, len(plan.bands), scene.dtype, cfg.preview_size
            )
        source = _Sampling(source, plan.preview)
    bar = tqdm(
        total=plan.scene.megapixels,
        initial=plan.done_pixels / 1e6,
        unit="MP",
        desc=plan.name[:30],
        disable=not progress,
        leave=False,
        dynamic_ncols=True,
        mininterval=0.5,
        bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.1f}/{total:.1f}"
        " MP [{elapsed}<{remaining}, {rate_noinv_fmt}]",
    )
    try:
        with gdal_env():  # a bounded GDAL block cache: memory flat in the scene size
            return segment(
                source,
                plan.grid,
                engine,
                plan.store.write_block,
                on_probs=plan.store.write_probs if cfg.save_probs else None,
                blocks=blocks,
                workers=cfg.workers,
                progress=lambda px: bar.update(px / 1e6),
                stop=stop,
            )
    except BlockCheckError as exc:
        raise BlockCheckError(f"{plan.scene.path}: {exc}") from None
    finally:
        bar.close()
        source.close()


class _Sampling:
    """A :class:`~tilesegd.reader.Source` that also hands each decoded window to a
    :class:`~tilesegd.writers.preview.PreviewSampler`."""

    def __init__(self, source: SceneSource, sampler: PreviewSampler) -> None:
        self.source, self.sampler = source, sampler
        self.height, self.width = source.height, source.width

    def read(self, win: Win) -> tuple[np.ndarray, np.ndarray]:
        data, valid = self.source.read(win)
        self.sampler.add(win.row_off, win.col_off, data)
        return data, valid

    def close(self) -> None:
        self.source.close()


def finish_scene(
    plan: ScenePlan, spec: ModelSpec, cfg: RunConfig, output: Path, model_source: str = ""
) -> dict[str, Any]:
    """Build ``mask.tif`` (and count areas in the same pass), ``areas.csv`` and
    ``preview.png`` from the finished store, then publish everything to ``output/<name>/``.

    Returns:
        Partial ``run.json`` entry: sizes, pixel counts and output paths.
    """
    scene, blocks = plan.scene, plan.grid.blocks()
    written = check_blocks_done(plan)
    counter = AreaCounter(
        spec.num_classes, row_pixel_areas(scene.crs, scene.transform, scene.height, scene.width)
    )
    tags = {
        "TILESEGD_VERSION": __version__,
        "TILESEGD_MODEL": model_source,
        "TILESEGD_CONFIG": cfg.to_dict(),
        "TILESEGD_SOURCE": str(scene.path),
    }
    write_cog(
        plan.work / "mask.tif",
        blocks,
        plan.store.read_block,
        height=scene.height,
        width=scene.width,
        crs=scene.crs,
        transform=scene.transform,
        classes=spec.classes,
        tags=tags,
        compress=cfg.compress,
        on_block=lambda b, ids: counter.add(b.window.row_off, ids),
    )
    rows = counter.rows(spec.classes)
    counted = int(sum(r["pixels"] for r in rows))
    if written is not None and written != counted:
        raise BlockCheckError(
            f"{scene.path}: the blocks' log records {written} class-id pixels written, but "
            f"{counted} were read back from pred.zarr; nothing was published. This is a "
            "tilesegd bug (or the work store was changed by hand): please report it"
        )
    valid_pixels = counted  # == the input's valid pixels: every block was checked on writing
    write_areas_csv(plan.work / "areas.csv", rows)
    if cfg.preview_size > 0:
        write_preview(
            plan.work / "preview.png",
            scene.path,
            plan.work / "mask.tif",
            plan.bands,
            spec.classes,
            rows,
            cfg.preview_size,
            title=f"{plan.name} ({scene.width} x {scene.height})",
            sampled=plan.preview,
        )
    final = publish(plan.work, output / plan.name)
    return {
        "megapixels": round(scene.megapixels, 4),
        "width": scene.width,
        "height": scene.height,
        "blocks": len(blocks),
        "valid_pixels": valid_pixels,
        "nodata_pixels": counter.nodata_pixels,
        "outputs": {
            k: str(final / k)
            for k in ("mask.tif", "pred.zarr", "areas.csv", "preview.png")
            if (final / k).exists()
        },
    }


def check_blocks_done(plan: ScenePlan) -> int | None:
    """Check that every block of the scene is in the store's ``blocks.done`` log before the
    scene is finished (a block never written would read back as all nodata).

    Returns:
        The class-id pixels the blocks' log records (``None`` if an older log lacks counts).

    Raises:
        BlockCheckError: blocks are missing (named; the scene is not published).
    """
    done = plan.store.done_counts()
    missing = [b.id for b in plan.grid.blocks() if b.id not in done]
    if missing:
        raise BlockCheckError(
            f"{plan.scene.path}: {len(missing)} block(s) were never written (ids "
            f"{missing[:10]}); nothing was published. Rerun the same command to compute them"
        )
    counts = list(done.values())
    return None if any(c is None for c in counts) else int(sum(counts))


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
        "tiles_skipped", "blocks", "blocks_resumed", "outputs": {...}, ...}``.

    Raises:
        InputError, IncompatibleInputError: bad scene (before any inference).
        ModelFileError: the network disagrees with its metadata.
        Interrupted: ``stop`` was set.
        OutputError / OSError: an output could not be written.
    """
    t0 = time.perf_counter()
    plan = plan_scene(path, name, engine, cfg, output, fingerprint)
    resumed = plan.grid.n_blocks - len(plan.todo)
    stats = compute_blocks(plan, engine, cfg, stop=stop, progress=progress)
    t_seg = time.perf_counter() - t0
    entry = finish_scene(plan, engine.spec, cfg, output, str(engine.source))
    return {
        "status": "done",
        "seconds": round(time.perf_counter() - t0, 3),
        "megapixels_per_s": round(stats.pixels / 1e6 / t_seg, 3) if t_seg > 0 else None,
        "tiles_run": stats.tiles_run,
        "tiles_skipped": stats.tiles_skipped,
        "blocks_resumed": resumed,
        **entry,
    }


def publish(work: Path, final: Path) -> Path:
    """Make a scene's finished work folder its final folder ``final`` in one directory rename.

    ``final`` never holds a mix of old and new outputs: a new folder is renamed in whole; an
    existing one (``--overwrite``, or left by a run killed before ``run.json`` recorded the
    scene) is swapped with the work folder atomically (Linux ``renameat2(RENAME_EXCHANGE)``), or,
    where that is not available, first moved to ``DIR/.tilesegd/trash/`` (then ``final`` is
    briefly absent, never partial). The old folder and ``blocks.done`` are then removed. The
    scene only counts as done once ``run.json`` says so (written after this).

    Raises:
        OSError: a rename failed (the work folder is left intact, so a rerun resumes).
    """
    if final.exists():
        if not _exchange(work, final):
            trash = final.parent / WORK_DIR / "trash"
            trash.mkdir(parents=True, exist_ok=True)
            old = trash / f"{final.name}.{os.getpid()}"
            os.replace(final, old)
            os.replace(work, final)
            work = old
        shutil.rmtree(work, ignore_errors=True)  # after an exchange, ``work`` is the old folder
    else:
        os.replace(work, final)
    (final / DONE_LOG).unlink(missing_ok=True)
    return final


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux ``renameat2`` with ``RENAME_EXCHANGE``); False when the
    platform or filesystem cannot."""
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    rc = fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange)
    return rc == 0

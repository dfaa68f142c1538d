"""One scene, end to end: profile, check, segment block by block, then COG, areas, preview.

Work happens in ``DIR/.tilesegd/work/<scene>/``; only when every output is complete does that
folder become ``DIR/<scene>/``, in one directory rename (:func:`tilesegd.batch.folder.publish`), so
nothing at a final path ever claims a success that did not happen. A killed scene resumes from
the blocks listed in its work folder's ``blocks.done``. Outputs on object storage keep the same
layout under their prefix (:mod:`tilesegd.batch.objects`: the store is written in place, the
other files are built in a local scratch folder and uploaded, a marker written last).

Everything a run's scenes share (the model's spec, the resolved tile geometry, the bands, the
fingerprint) is resolved once into a :class:`RunSetup`; planning reads only the spec, so a Dask
client plans scenes without loading the network.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tilesegd.batch.finish import finish_scene, open_store, scene_attrs
from tilesegd.batch.layout import work_dir
from tilesegd.batch.plan import RunSetup, ScenePlan
from tilesegd.batch.progress import progress_bar
from tilesegd.errors import Interrupted
from tilesegd.inference.pipeline import SegmentStats, segment
from tilesegd.inference.stitch import BlockCheckError
from tilesegd.model.spec import NODATA
from tilesegd.outputs.preview import PreviewSampler, preload
from tilesegd.outputs.zarr_store import ZarrMaskStore
from tilesegd.raster.exif import orientation_note
from tilesegd.raster.gdalenv import gdal_env
from tilesegd.raster.reader import SceneSource, Source
from tilesegd.raster.resample import GrownRegion, ResampledSource, plan_resample
from tilesegd.raster.scene import Scene, check_compatible, open_run_scene
from tilesegd.raster.tiling import Block, TileGrid, Win

if TYPE_CHECKING:  # pragma: no cover
    from tilesegd.batch.states import SceneRun
    from tilesegd.inference.engine import Engine
    from tilesegd.vector.aoi import SceneAOI

log = logging.getLogger(__name__)


def plan_scene(path: Path, name: str, run: RunSetup) -> ScenePlan:
    """Profile and check a scene, open (or resume) its work store, write the blocks outside the
    area of interest, list the blocks to do.

    The work folder must have been prepared (:meth:`tilesegd.batch.states.RunStates.admit`).

    Raises:
        InputError, IncompatibleInputError: bad scene, found before any inference.
    """
    cfg, spec = run.cfg, run.spec
    scene = open_run_scene(cfg, path, name)
    check_compatible(scene, run.bands, spec.dtypes)
    say_what_scene_is(scene, run)
    if run.zones is not None:
        from tilesegd.vector.pixelgrid import require_georeferenced

        require_georeferenced(scene.crs, scene.transform, str(scene.path), "--zones")
    resample, fields = plan_resample(
        scene,
        run.model_gsd,
        enabled=cfg.resample != "off",
        tolerance=cfg.gsd_tolerance,
        scene_gsd=cfg.scene_gsd,
        model_scale=spec.scale,
    )
    shape = resample.model_shape if resample else (scene.height, scene.width)
    transform = resample.model_transform(scene.transform) if resample else scene.transform
    aoi = scene_aoi(run, scene, shape, transform)
    if aoi is not None and resample is not None:
        aoi = GrownRegion(aoi)  # the scene grid applies the AOI exactly at the end
    grid = run.geometry.grid(*shape)
    work = work_dir(run.output, name)
    path = run.store_location(name, model_grid=resample is not None)
    if isinstance(path, Path):
        path.parent.mkdir(parents=True, exist_ok=True)
    store = open_store(path, shape, grid, scene_attrs(scene, run, transform), run)
    done = store.done_blocks()
    todo = tuple(b for b in grid.blocks() if b.id not in done)
    if done:
        log.info("%s: resuming, %d of %d blocks already done", name, len(done), grid.n_blocks)
    outside = 0
    if aoi is not None:
        todo, outside = skip_outside(store, grid, aoi, todo, name)
    return ScenePlan(scene, name, run.bands, grid, work, path, todo, aoi, outside, resample,
                     fields)  # fmt: skip


def say_what_scene_is(scene: Scene, run: RunSetup) -> None:
    """Warn about what the outputs of ``scene`` will be that a user might not expect: an EXIF
    orientation the outputs do not follow (once per scene), and, once per run, that inputs
    without georeferencing get pixel coordinates."""
    note = orientation_note(scene)
    if note:
        log.warning("%s", note)
    if not scene.georeferenced:
        run.warn_once(
            "no-georef",
            f"{scene.path} has no georeferencing: its outputs are in pixel coordinates (x = "
            "column, y = row; no CRS) and areas.csv counts pixels without m2; so are those of "
            "every other input without georeferencing in this run (said once)",
        )


def scene_aoi(
    run: RunSetup, scene: Scene, shape: tuple[int, int], transform: Any
) -> SceneAOI | None:
    """The run's AOI placed on a ``shape`` grid of the scene with ``transform`` (``None``
    without an AOI).

    Raises:
        InputError: the scene is not georeferenced.
    """
    if run.aoi is None:
        return None
    from tilesegd.vector.aoi import SceneAOI

    return SceneAOI(run.aoi, scene.crs, transform, *shape, scene=str(scene.path))


def skip_outside(
    store: ZarrMaskStore,
    grid: TileGrid,
    aoi: SceneAOI | GrownRegion,
    todo: tuple[Block, ...],
    name: str,
) -> tuple[tuple[Block, ...], int]:
    """Write the blocks of ``todo`` outside the area of interest into ``store`` as nodata
    without reading them.

    Returns:
        ``(the blocks of todo left to compute, the scene's blocks outside the AOI)``.
    """
    outside = {b.id for b in grid.blocks() if not aoi.intersects(b.window)}
    for b in (b for b in todo if b.id in outside):
        store.write_block(b, np.full((b.window.height, b.window.width), NODATA, np.uint8))
    log.info(
        "%s: %d of %d blocks outside the AOI (never read); %.1f%% of the scene inside it",
        name,
        len(outside),
        grid.n_blocks,
        100 * aoi.fraction,
    )
    return tuple(b for b in todo if b.id not in outside), len(outside)


class PreviewSampling:
    """A :class:`~tilesegd.raster.reader.Source` that also hands each decoded window to a
    :class:`~tilesegd.outputs.preview.PreviewSampler` (so the preview never decodes the scene
    a second time)."""

    def __init__(self, source: SceneSource, sampler: PreviewSampler) -> None:
        self.source, self.sampler = source, sampler
        self.height, self.width = source.height, source.width

    def read(self, win: Win) -> tuple[np.ndarray, np.ndarray]:
        """See :class:`~tilesegd.raster.reader.Source`."""
        data, valid = self.source.read(win)
        self.sampler.add(win.row_off, win.col_off, data)
        return data, valid

    def close(self) -> None:
        """Close the underlying source."""
        self.source.close()


def preview_sampler(plan: ScenePlan, run: RunSetup) -> PreviewSampler | None:
    """An empty preview image for :func:`compute_blocks` to fill from the windows it decodes
    (on the grid the tiles run on), or ``None`` when the run draws no preview."""
    if run.cfg.preview_size <= 0:
        return None
    preload()  # matplotlib, in the background
    grid = plan.grid
    return PreviewSampler(grid.height, grid.width, len(plan.bands), plan.scene.dtype,
                          run.cfg.preview_size)  # fmt: skip


def compute_blocks(
    plan: ScenePlan,
    engine: Engine,
    run: RunSetup,
    blocks: Sequence[Block] | None = None,
    *,
    store: ZarrMaskStore | None = None,
    preview: PreviewSampler | None = None,
    stop: threading.Event | None = None,
    progress: bool = True,
) -> SegmentStats:
    """Segment ``blocks`` (default: ``plan.todo``) of a planned scene into its work store.

    Args:
        store: the scene's open work store (default: ``plan.store_path`` reopened).
        preview: filled with the decoded windows (:func:`preview_sampler`), which
            :func:`finish_scene` then draws instead of reading the scene again; ``None``: none.

    Raises:
        InputError: the scene cannot be decoded. BlockCheckError: a block failed its check.
        Interrupted: ``stop`` was set.
    """
    cfg, scene = run.cfg, plan.scene
    blocks = plan.todo if blocks is None else blocks
    store = store or ZarrMaskStore.reopen(plan.store_path)
    source: Source = SceneSource(scene, plan.bands)
    if plan.resample is not None:
        source = ResampledSource(scene, plan.bands, plan.resample)
    if preview is not None:
        source = PreviewSampling(source, preview)
    bar = progress_bar(
        progress,
        total=round(scene.megapixels, 2),
        initial=plan.done_pixels / 1e6,
        unit="MP",
        desc=plan.name[:30],
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
                store.write_block,
                on_probs=store.write_probs if cfg.save_probs else None,
                blocks=blocks,
                workers=cfg.workers,
                progress=lambda px: bar.update(px / 1e6),
                stop=stop,
                region=plan.aoi,
                on_confidence=store.write_confidence if run.confidence else None,
            )
    except BlockCheckError as exc:
        raise BlockCheckError(f"{scene.path}: {exc}") from None
    finally:
        bar.close()
        source.close()


def run_scene(
    scene: SceneRun,
    engine: Engine,
    run: RunSetup,
    *,
    stop: threading.Event | None = None,
    progress: bool = True,
) -> None:
    """Segment one started scene into ``output/<name>/`` in this process, moving it through
    its states (:mod:`tilesegd.batch.states`): planned, blocks done, finished; or failed /
    interrupted, recorded in its ``run.json`` entry (``seconds``, ``megapixels_per_s``,
    ``tiles_run``, ``tiles_skipped``, ``blocks``, ``blocks_resumed``, ``outputs``...).

    A bad scene (a bad input, a block that fails its check) is recorded and the run goes on.

    Raises:
        OutputError: an output cannot be written, so no later scene could succeed
            (:meth:`~tilesegd.batch.states.SceneRun.failed` raises it).
    """
    t0 = time.perf_counter()
    try:
        plan = plan_scene(scene.path, scene.name, run)
        scene.planned(plan.grid.n_blocks - len(plan.todo), plan.grid.tile_size)
        preview = preview_sampler(plan, run)
        stats = compute_blocks(plan, engine, run, preview=preview, stop=stop, progress=progress)
        t_seg = time.perf_counter() - t0
        scene.blocks_done(
            megapixels_per_s=round(stats.pixels / 1e6 / t_seg, 3) if t_seg > 0 else None,
            tiles_run=stats.tiles_run,
            tiles_skipped=stats.tiles_skipped,
        )
        entry = finish_scene(plan, run, preview)
    except Interrupted as exc:
        scene.interrupted(str(exc))
        return
    except Exception as exc:  # one bad scene never stops the others (unless none could succeed)
        scene.failed(exc)
        return
    scene.finished({**entry, **aoi_fields(plan, stats.tiles_outside_aoi), **plan.resample_fields})
    done = scene.entry
    log.info("%s: done in %.1f s (%.2f MP/s)", scene.name, done["seconds"],
             done["megapixels_per_s"] or 0)  # fmt: skip


def aoi_fields(plan: ScenePlan, tiles_outside: int) -> dict[str, Any]:
    """``run.json`` fields of the area of interest (empty without one); ``tiles_outside``:
    the tiles of computed blocks skipped for lying outside it."""
    if plan.aoi is None:
        return {}
    out: dict[str, Any] = {
        "aoi_fraction": round(plan.aoi.fraction, 6),
        "blocks_outside_aoi": plan.blocks_outside,
        "tiles_outside_aoi": tiles_outside,
    }
    if plan.aoi.empty:
        out["note"] = "the scene is outside the AOI: nothing was computed, every pixel is nodata"
    return out

"""One scene, end to end: profile, check, segment block by block, then COG, areas, preview.

Work happens in ``DIR/.tilesegd/work/<scene>/``; only when every output is complete does that
folder become ``DIR/<scene>/``, in one directory rename (:func:`tilesegd.ledger.publish`), so
nothing at a final path ever claims a success that did not happen. A killed scene resumes from
the blocks listed in its work folder's ``blocks.done``.

Everything a run's scenes share (the model's spec, the resolved tile geometry, the bands, the
fingerprint) is resolved once into a :class:`RunSetup`; planning reads only the spec, so a Dask
client plans scenes without loading the network.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tilesegd import __version__
from tilesegd.areas import AreaCounter, row_pixel_areas, write_areas_csv
from tilesegd.config import RunConfig
from tilesegd.gdalenv import gdal_env
from tilesegd.geometry import Geometry
from tilesegd.ledger import fingerprint, input_stat, publish, work_dir
from tilesegd.pipeline import SegmentStats, segment
from tilesegd.progress import progress_bar
from tilesegd.reader import SceneSource, Source
from tilesegd.scene import Scene, check_compatible, open_scene
from tilesegd.spec import NODATA, ModelSpec
from tilesegd.stitch import BlockCheckError
from tilesegd.tiling import Block, TileGrid, Win
from tilesegd.writers.cog import write_cog
from tilesegd.writers.preview import PreviewSampler, preload, write_preview
from tilesegd.writers.zarr_store import ZarrMaskStore

if TYPE_CHECKING:  # pragma: no cover
    from tilesegd.engine import Engine

log = logging.getLogger(__name__)
SCENE_OUTPUTS = ("mask.tif", "pred.zarr", "areas.csv", "preview.png")


@dataclass(frozen=True)
class RunSetup:
    """What every scene of a run shares, resolved once per run.

    Attributes:
        cfg: the resolved configuration.
        spec: the model's metadata.
        geometry: tile size, overlap, block size and batch size (pixels / tiles).
        bands: 1-based raster bands fed to the network, in model input order.
        output: the run's output directory.
        fingerprint: identifies model + settings + device (what may be resumed or skipped).
        model: the model file's path (recorded in the masks' tags).
    """

    cfg: RunConfig
    spec: ModelSpec
    geometry: Geometry
    bands: tuple[int, ...]
    output: Path
    fingerprint: str
    model: str

    @classmethod
    def resolve(
        cls, cfg: RunConfig, spec: ModelSpec, output: Path, model_sha: str, device: str, dtype: str
    ) -> RunSetup:
        """Resolve geometry and bands against the model and compute the fingerprint.

        Raises:
            ConfigError: the tile geometry cannot work, or ``--bands`` does not list the
                model's number of input channels.
        """
        geometry, bands = cfg.geometry(spec), cfg.bands_for(spec)
        settings = (*geometry.settings(), bands, cfg.save_probs)
        fp = fingerprint(model_sha, settings, device, dtype)
        return cls(cfg, spec, geometry, bands, Path(output), fp, str(cfg.model or ""))


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
    store: ZarrMaskStore | None
    todo: list[Block]
    preview: PreviewSampler | None = None

    @property
    def done_pixels(self) -> int:
        """Pixels of the blocks already finished."""
        todo = {b.id for b in self.todo}
        return sum(b.window.height * b.window.width for b in self.grid.blocks() if b.id not in todo)


def scene_attrs(scene: Scene, run: RunSetup) -> dict[str, Any]:
    """Metadata written into ``pred.zarr`` (and, JSON-encoded, the GeoTIFF tags)."""
    return {
        "crs": scene.crs.to_wkt() if scene.crs is not None else None,
        "transform": list(scene.transform.to_gdal()) if scene.transform is not None else None,
        "classes": [{"id": c.id, "name": c.name, "color": list(c.color)} for c in run.spec.classes],
        "nodata": NODATA,
        "source": str(scene.path),
        "source_stat": input_stat(scene.path),
        "tilesegd_version": __version__,
        "fingerprint": run.fingerprint,
        "config": run.cfg.to_dict(),
    }


def plan_scene(path: Path, name: str, run: RunSetup) -> ScenePlan:
    """Profile and check a scene, open (or resume) its work store, list the blocks to do.

    The work folder must have been prepared (:meth:`tilesegd.ledger.RunLedger.start`).

    Raises:
        InputError, IncompatibleInputError: bad scene, found before any inference.
    """
    cfg, spec = run.cfg, run.spec
    scene = open_scene(
        path,
        name,
        max_megapixels=cfg.max_megapixels,
        allow_vrt=cfg.allow_vrt,
        allow_no_georef=cfg.allow_no_georef,
    )
    check_compatible(scene, run.bands, spec.extra.get("dtypes"))
    grid = run.geometry.grid(scene.height, scene.width)
    work = work_dir(run.output, name)
    work.mkdir(parents=True, exist_ok=True)
    store = ZarrMaskStore(
        work / "pred.zarr",
        (scene.height, scene.width),
        grid.block_shape,
        scene_attrs(scene, run),
        spec.num_classes,
        probs_chunks=grid.core_shape if cfg.save_probs else None,
    )
    done = store.done_blocks()
    todo = [b for b in grid.blocks() if b.id not in done]
    if done:
        log.info("%s: resuming, %d of %d blocks already done", name, len(done), grid.n_blocks)
    return ScenePlan(scene, name, run.bands, grid, work, store, todo)


class PreviewSampling:
    """A :class:`~tilesegd.reader.Source` that also hands each decoded window to a
    :class:`~tilesegd.writers.preview.PreviewSampler` (so the preview never decodes the scene
    a second time)."""

    def __init__(self, source: SceneSource, sampler: PreviewSampler) -> None:
        self.source, self.sampler = source, sampler
        self.height, self.width = source.height, source.width

    def read(self, win: Win) -> tuple[np.ndarray, np.ndarray]:
        """See :class:`~tilesegd.reader.Source`."""
        data, valid = self.source.read(win)
        self.sampler.add(win.row_off, win.col_off, data)
        return data, valid

    def close(self) -> None:
        """Close the underlying source."""
        self.source.close()


def compute_blocks(
    plan: ScenePlan,
    engine: Engine,
    run: RunSetup,
    blocks: list[Block] | None = None,
    *,
    stop: threading.Event | None = None,
    progress: bool = True,
    sample_preview: bool = True,
) -> SegmentStats:
    """Segment ``blocks`` (default: ``plan.todo``) of a planned scene into its store.

    With ``sample_preview`` (and a preview asked for), the decoded windows also fill
    ``plan.preview``, which :func:`finish_scene` uses instead of reading the scene again.

    Raises:
        InputError: the scene cannot be decoded. BlockCheckError: a block failed its check.
        Interrupted: ``stop`` was set.
    """
    cfg, scene = run.cfg, plan.scene
    blocks = plan.todo if blocks is None else blocks
    source: Source = SceneSource(scene, plan.bands)
    if cfg.preview_size > 0 and sample_preview:
        preload()  # matplotlib, in the background
        if plan.preview is None:
            plan.preview = PreviewSampler(
                scene.height, scene.width, len(plan.bands), scene.dtype, cfg.preview_size
            )
        source = PreviewSampling(source, plan.preview)
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
                plan.store.write_block,
                on_probs=plan.store.write_probs if cfg.save_probs else None,
                blocks=blocks,
                workers=cfg.workers,
                progress=lambda px: bar.update(px / 1e6),
                stop=stop,
            )
    except BlockCheckError as exc:
        raise BlockCheckError(f"{scene.path}: {exc}") from None
    finally:
        bar.close()
        source.close()


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


def write_mask_and_areas(plan: ScenePlan, run: RunSetup) -> AreaCounter:
    """Build ``mask.tif`` from the finished store, counting the areas in the same pass, and
    write ``areas.csv``.

    Raises:
        BlockCheckError: the store holds another number of class-id pixels than its blocks'
            log records. OSError: an output cannot be written.
    """
    scene, spec = plan.scene, run.spec
    written = check_blocks_done(plan)
    counter = AreaCounter(
        spec.num_classes, row_pixel_areas(scene.crs, scene.transform, scene.height, scene.width)
    )
    tags = {
        "TILESEGD_VERSION": __version__,
        "TILESEGD_MODEL": run.model,
        "TILESEGD_CONFIG": run.cfg.to_dict(),
        "TILESEGD_SOURCE": str(scene.path),
    }
    write_cog(
        plan.work / "mask.tif",
        plan.grid.blocks(),
        plan.store.read_block,
        height=scene.height,
        width=scene.width,
        crs=scene.crs,
        transform=scene.transform,
        classes=spec.classes,
        tags=tags,
        compress=run.cfg.compress,
        on_block=lambda b, ids: counter.add(b.window.row_off, ids),
    )
    counted = counter.valid_pixels
    if written is not None and written != counted:
        raise BlockCheckError(
            f"{scene.path}: the blocks' log records {written} class-id pixels written, but "
            f"{counted} were read back from pred.zarr; nothing was published. This is a "
            "tilesegd bug (or the work store was changed by hand): please report it"
        )
    write_areas_csv(plan.work / "areas.csv", counter.rows(spec.classes))
    return counter


def finish_scene(plan: ScenePlan, run: RunSetup) -> dict[str, Any]:
    """Build ``mask.tif``, ``areas.csv`` and ``preview.png`` from the finished store, then
    publish everything to ``output/<name>/``.

    Returns:
        Partial ``run.json`` entry: sizes, pixel counts and output paths.

    Raises:
        BlockCheckError: blocks missing or miscounted. OSError: an output cannot be written.
    """
    scene = plan.scene
    counter = write_mask_and_areas(plan, run)
    if run.cfg.preview_size > 0:
        write_preview(
            plan.work / "preview.png",
            scene.path,
            plan.work / "mask.tif",
            plan.bands,
            run.spec.classes,
            counter.rows(run.spec.classes),
            run.cfg.preview_size,
            title=f"{plan.name} ({scene.width} x {scene.height})",
            sampled=plan.preview,
        )
    final = publish(plan.work, run.output / plan.name)
    return {
        "megapixels": round(scene.megapixels, 4),
        "width": scene.width,
        "height": scene.height,
        "blocks": plan.grid.n_blocks,
        # == the input's valid pixels: every block's nodata count was checked on writing
        "valid_pixels": counter.valid_pixels,
        "nodata_pixels": counter.nodata_pixels,
        "outputs": {k: str(final / k) for k in SCENE_OUTPUTS if (final / k).exists()},
    }


def run_scene(
    path: Path,
    name: str,
    engine: Engine,
    run: RunSetup,
    *,
    stop: threading.Event | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Segment one scene into ``output/<name>/`` and return its ``run.json`` entry.

    Returns:
        ``{"status": "done", "seconds", "megapixels", "megapixels_per_s", "tiles_run",
        "tiles_skipped", "blocks", "blocks_resumed", "outputs": {...}, ...}``.

    Raises:
        InputError, IncompatibleInputError: bad scene (before any inference).
        ModelFileError: the network disagrees with its metadata.
        Interrupted: ``stop`` was set.
        BlockCheckError: a block failed its check (a bug; nothing is published).
        OutputError / OSError: an output could not be written.
    """
    t0 = time.perf_counter()
    plan = plan_scene(path, name, run)
    resumed = plan.grid.n_blocks - len(plan.todo)
    stats = compute_blocks(plan, engine, run, stop=stop, progress=progress)
    t_seg = time.perf_counter() - t0
    entry = finish_scene(plan, run)
    return {
        "status": "done",
        "seconds": round(time.perf_counter() - t0, 3),
        "megapixels_per_s": round(stats.pixels / 1e6 / t_seg, 3) if t_seg > 0 else None,
        "tiles_run": stats.tiles_run,
        "tiles_skipped": stats.tiles_skipped,
        "blocks_resumed": resumed,
        **entry,
    }

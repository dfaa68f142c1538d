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
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tilesegd.config import RunConfig
from tilesegd.finish import finish_scene, open_store, scene_attrs
from tilesegd.gdalenv import gdal_env
from tilesegd.geometry import Geometry
from tilesegd.ledger import fingerprint, input_stat, work_dir
from tilesegd.pipeline import SegmentStats, segment
from tilesegd.progress import progress_bar
from tilesegd.reader import SceneSource, Source
from tilesegd.resample import GrownRegion, ResampledSource, plan_resample
from tilesegd.scene import Scene, check_compatible, open_scene
from tilesegd.spec import NODATA, ModelSpec
from tilesegd.stitch import BlockCheckError
from tilesegd.tiling import Block, TileGrid, Win
from tilesegd.writers.preview import PreviewSampler, preload
from tilesegd.writers.zarr_store import ZarrMaskStore

if TYPE_CHECKING:  # pragma: no cover
    from tilesegd.engine import Engine

log = logging.getLogger(__name__)


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
        aoi: the area of interest's polygons, or ``None``.
        zones: the zones' polygons, or ``None``.
        products: the optional products asked for (:func:`tilesegd.products.requested_products`).
    """

    cfg: RunConfig
    spec: ModelSpec
    geometry: Geometry
    bands: tuple[int, ...]
    output: Path
    fingerprint: str
    model: str
    aoi: Any = None
    zones: Any = None
    products: dict[str, Any] = field(default_factory=dict)

    @property
    def model_gsd(self) -> float | None:
        """The model's GSD in metres (``--gsd``, else the model file's ``gsd``), or ``None``."""
        gsd = self.cfg.gsd or self.spec.extra.get("gsd")
        return None if gsd is None else float(gsd)

    @property
    def confidence(self) -> bool:
        """Whether the engine computes the top-class confidence (stored in pred.zarr)."""
        return self.cfg.save_confidence or self.cfg.min_confidence is not None

    @classmethod
    def resolve(
        cls, cfg: RunConfig, spec: ModelSpec, output: Path, model_sha: str, device: str, dtype: str
    ) -> RunSetup:
        """Resolve geometry and bands against the model, read the AOI and zones files, check
        the vector options, and compute the fingerprint.

        Raises:
            ConfigError: the tile geometry cannot work, ``--bands`` does not list the model's
                number of input channels, an AOI / zones file is unusable, or
                ``--vector-classes`` names a class the model does not have.
        """
        from tilesegd.products import requested_products

        geometry, bands = cfg.geometry(spec), cfg.bands_for(spec)
        aoi, zones = load_layers(cfg)
        if cfg.vector:
            from tilesegd.writers.polygons import resolve_keep

            resolve_keep(spec.classes, cfg.vector_classes)  # unknown names: fail now
        aoi_id = (str(Path(cfg.aoi).resolve()), input_stat(cfg.aoi), cfg.aoi_crs) if aoi else None
        confidence = (cfg.save_confidence, cfg.min_confidence)
        gsd = (cfg.resample, cfg.gsd or spec.extra.get("gsd"), cfg.gsd_tolerance, cfg.scene_gsd)
        settings = (*geometry.settings(), bands, cfg.save_probs, *confidence, aoi_id, *gsd)
        fp = fingerprint(model_sha, settings, device, dtype)
        return cls(
            cfg,
            spec,
            geometry,
            bands,
            Path(output),
            fp,
            str(cfg.model or ""),
            aoi,
            zones,
            requested_products(cfg),
        )


def load_layers(cfg: RunConfig) -> tuple[Any, Any]:
    """The AOI and zones polygon layers of a run (``None`` when not asked for), read once.

    Raises:
        ConfigError: a file cannot be read, has no polygons, no CRS (and no override), or
            lacks the zone field.
    """
    from tilesegd.vectors import load_polygons

    aoi = load_polygons(cfg.aoi, option="--aoi", crs=cfg.aoi_crs) if cfg.aoi else None
    zones = None
    if cfg.zones:
        zones = load_polygons(cfg.zones, option="--zones", crs=cfg.zones_crs, field=cfg.zone_field)
    return aoi, zones


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
        aoi: the area of interest on the grid the tiles run on (:class:`tilesegd.aoi.SceneAOI`),
            or ``None``.
        blocks_outside: blocks outside the area of interest (written as nodata, never read).
        resample: how the scene maps onto its model grid (:class:`tilesegd.resample.GridResample`)
            when it runs at the model's GSD, else ``None``; ``grid``, ``store`` and ``aoi`` are
            then on the model grid, and the finish step writes the scene-grid outputs.
        resample_fields: ``run.json`` fields of the GSDs and the factor.
        store_path: where ``store`` lives (workers reopen it by path).
    """

    scene: Scene
    name: str
    bands: tuple[int, ...]
    grid: TileGrid
    work: Path
    store: ZarrMaskStore | None
    todo: list[Block]
    preview: PreviewSampler | None = None
    aoi: Any = None
    blocks_outside: int = 0
    resample: Any = None
    resample_fields: dict[str, Any] = field(default_factory=dict)
    store_path: Path | None = None

    @property
    def done_pixels(self) -> int:
        """Pixels of the blocks already finished."""
        todo = {b.id for b in self.todo}
        return sum(b.window.height * b.window.width for b in self.grid.blocks() if b.id not in todo)


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
    if run.zones is not None:
        from tilesegd.pixelgrid import require_georeferenced

        require_georeferenced(scene.crs, scene.transform, str(scene.path), "--zones")
    resample, fields = plan_resample(
        scene,
        run.model_gsd,
        enabled=cfg.resample != "off",
        tolerance=cfg.gsd_tolerance,
        scene_gsd=cfg.scene_gsd,
    )
    shape = resample.model_shape if resample else (scene.height, scene.width)
    transform = resample.model_transform(scene.transform) if resample else scene.transform
    aoi = scene_aoi(run, scene, shape, transform)
    if aoi is not None and resample is not None:
        aoi = GrownRegion(aoi)  # the scene grid applies the AOI exactly at the end
    grid = run.geometry.grid(*shape)
    work = work_dir(run.output, name)
    path = work / "model_grid" / "pred.zarr" if resample else work / "pred.zarr"
    path.parent.mkdir(parents=True, exist_ok=True)
    store = open_store(path, shape, grid, scene_attrs(scene, run, transform), run)
    done = store.done_blocks()
    todo = [b for b in grid.blocks() if b.id not in done]
    if done:
        log.info("%s: resuming, %d of %d blocks already done", name, len(done), grid.n_blocks)
    plan = ScenePlan(scene, name, run.bands, grid, work, store, todo, aoi=aoi)
    plan.resample, plan.resample_fields, plan.store_path = resample, fields, path
    if aoi is not None:
        skip_outside(plan)
    return plan


def scene_aoi(run: RunSetup, scene: Scene, shape: tuple[int, int], transform: Any) -> Any:
    """The run's AOI placed on a ``shape`` grid of the scene with ``transform`` (``None``
    without an AOI).

    Raises:
        InputError: the scene is not georeferenced.
    """
    if run.aoi is None:
        return None
    from tilesegd.aoi import SceneAOI

    return SceneAOI(run.aoi, scene.crs, transform, *shape, scene=str(scene.path))


def skip_outside(plan: ScenePlan) -> None:
    """Write the blocks outside the area of interest as nodata without reading them, and take
    them off ``plan.todo``."""
    outside = [b for b in plan.grid.blocks() if not plan.aoi.intersects(b.window)]
    plan.blocks_outside = len(outside)
    ids = {b.id for b in outside}
    for b in (b for b in plan.todo if b.id in ids):
        plan.store.write_block(b, np.full((b.window.height, b.window.width), NODATA, np.uint8))
    plan.todo = [b for b in plan.todo if b.id not in ids]
    log.info(
        "%s: %d of %d blocks outside the AOI (never read); %.1f%% of the scene inside it",
        plan.name,
        len(outside),
        plan.grid.n_blocks,
        100 * plan.aoi.fraction,
    )


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
    if plan.resample is not None:
        source = ResampledSource(scene, plan.bands, plan.resample)
    if cfg.preview_size > 0 and sample_preview:
        preload()  # matplotlib, in the background
        if plan.preview is None:
            plan.preview = PreviewSampler(
                source.height, source.width, len(plan.bands), scene.dtype, cfg.preview_size
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
                region=plan.aoi,
                on_confidence=plan.store.write_confidence if run.confidence else None,
            )
    except BlockCheckError as exc:
        raise BlockCheckError(f"{scene.path}: {exc}") from None
    finally:
        bar.close()
        source.close()


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
    entry.update(aoi_fields(plan, stats))
    return {
        "status": "done",
        "seconds": round(time.perf_counter() - t0, 3),
        "megapixels_per_s": round(stats.pixels / 1e6 / t_seg, 3) if t_seg > 0 else None,
        "tiles_run": stats.tiles_run,
        "tiles_skipped": stats.tiles_skipped,
        "blocks_resumed": resumed,
        **entry,
        **plan.resample_fields,
    }


def aoi_fields(plan: ScenePlan, stats: SegmentStats | None) -> dict[str, Any]:
    """``run.json`` fields of the area of interest (empty without one)."""
    if plan.aoi is None:
        return {}
    out: dict[str, Any] = {
        "aoi_fraction": round(plan.aoi.fraction, 6),
        "blocks_outside_aoi": plan.blocks_outside,
    }
    if stats is not None:
        out["tiles_outside_aoi"] = stats.tiles_outside_aoi
    if plan.aoi.empty:
        out["note"] = "the scene is outside the AOI: nothing was computed, every pixel is nodata"
    return out


def add_scene_products(path: Path, name: str, run: RunSetup, which: set[str]) -> dict[str, Any]:
    """Add products ``which`` (``"vector"``, ``"zones"``) to a scene finished earlier, from
    its published ``pred.zarr``: the network does not run.

    Returns:
        The ``run.json`` fields of the products.

    Raises:
        InputError: the scene cannot be profiled (or zones on a plain frame). OutputError:
            a file cannot be written. FileNotFoundError: the published store is gone.
    """
    from tilesegd.finish import add_products

    cfg = run.cfg
    scene = open_scene(
        path,
        name,
        max_megapixels=cfg.max_megapixels,
        allow_vrt=cfg.allow_vrt,
        allow_no_georef=cfg.allow_no_georef,
    )
    folder = run.output / name
    store = ZarrMaskStore.reopen(folder / "pred.zarr")
    plan = ScenePlan(scene, name, run.bands, run.geometry.grid(scene.height, scene.width),
                     folder, store, [])  # fmt: skip
    return add_products(plan, run, which)

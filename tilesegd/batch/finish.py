"""A scene's outputs from its finished store, in one pass over its blocks, then publication.

The finished ``pred.zarr`` is read block by block once to build ``mask.tif`` (with its QGIS
style and attribute table), count ``areas.csv``, and feed the optional products
(``polygons.gpkg``, ``zones.csv`` / ``zones.gpkg``: :mod:`tilesegd.batch.products`); a second pass
builds ``confidence.tif`` when asked for. Then ``preview.png`` is drawn and the work folder is
published in one rename. Before anything is written, every block must be in the store's log,
and the class-id pixels read back must equal the pixels the log recorded as written: a lost
block is an error, never a quiet hole.

:func:`add_products` makes products for a scene finished earlier, from its published store,
without running the network.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import numpy as np

from tilesegd.batch.layout import SCENE_OUTPUTS, input_stat
from tilesegd.batch.plan import RunSetup, ScenePlan
from tilesegd.batch.products import ProductSinks
from tilesegd.errors import writing
from tilesegd.inference.stitch import BlockCheckError
from tilesegd.model.spec import NODATA
from tilesegd.outputs.areas import AreaCounter, row_pixel_areas, write_areas_csv
from tilesegd.outputs.cog import write_cog
from tilesegd.outputs.donelog import StorePlace
from tilesegd.outputs.preview import PreviewSampler, write_preview
from tilesegd.outputs.readahead import read_ahead
from tilesegd.outputs.zarr_store import ZarrMaskStore
from tilesegd.raster.scene import Scene, open_run_scene
from tilesegd.raster.tiling import TileGrid
from tilesegd.version import __version__

log = logging.getLogger(__name__)


def scene_attrs(scene: Scene, run: RunSetup, transform: Any = None) -> dict[str, Any]:
    """Metadata written into ``pred.zarr`` (and, JSON-encoded, the GeoTIFF tags); ``transform``
    overrides the scene's (a model grid's)."""
    transform = transform or scene.transform
    return {
        "crs": scene.crs.to_wkt() if scene.crs is not None else None,
        "transform": list(transform.to_gdal()) if transform is not None else None,
        "classes": [{"id": c.id, "name": c.name, "color": list(c.color)} for c in run.spec.classes],
        "nodata": NODATA,
        "source": str(scene.path),
        "source_stat": input_stat(scene.path),
        "tilesegd_version": __version__,
        "fingerprint": run.fingerprint,
        "config": run.cfg.to_dict(),
    }


def open_store(
    path: Path | str,
    shape: tuple[int, int],
    grid: TileGrid,
    attrs: dict[str, Any],
    run: RunSetup,
) -> ZarrMaskStore:
    """Create or reopen a scene's Zarr store for the run's arrays (mask, probs, confidence)."""
    return ZarrMaskStore(
        path,
        shape,
        grid.block_shape,
        attrs,
        run.spec.num_classes,
        probs_chunks=grid.core_shape if run.cfg.save_probs else None,
        confidence=run.confidence,
    )


def check_blocks_done(plan: ScenePlan, store: ZarrMaskStore) -> int | None:
    """Check that every block of the scene is in its ``store``'s ``blocks.done`` log before
    the scene is finished (a block never written would read back as all nodata).

    Returns:
        The class-id pixels the blocks' log records (``None`` if an older log lacks counts).

    Raises:
        BlockCheckError: blocks are missing (named; the scene is not published).
    """
    done = store.done_counts()
    missing = [b.id for b in plan.grid.blocks() if b.id not in done]
    if missing:
        raise BlockCheckError(
            f"{plan.scene.path}: {len(missing)} block(s) were never written (ids "
            f"{missing[:10]}); nothing was published. Rerun the same command to compute them"
        )
    counts = list(done.values())
    return None if any(c is None for c in counts) else int(sum(counts))


def mask_tags(plan: ScenePlan, run: RunSetup) -> dict[str, Any]:
    """GeoTIFF metadata of the masks: version, model, resolved config, source."""
    return {
        "TILESEGD_VERSION": __version__,
        "TILESEGD_MODEL": run.model,
        "TILESEGD_CONFIG": run.cfg.to_dict(),
        "TILESEGD_SOURCE": str(plan.scene.path),
    }


class MaskPass:
    """What the ``mask.tif`` pass does with each block: areas, products, low-confidence
    pixels (valid input whose top-class probability was below ``--min-confidence``)."""

    def __init__(
        self, plan: ScenePlan, store: ZarrMaskStore, run: RunSetup, sinks: ProductSinks
    ) -> None:
        scene = plan.scene
        self.store, self.sinks = store, sinks
        self.areas = AreaCounter(
            run.spec.num_classes,
            row_pixel_areas(scene.crs, scene.transform, scene.height, scene.width),
        )
        self.low_confidence = 0 if store.confidence is not None else None
        self.entry: dict[str, Any] = {}

    def __call__(self, block: Any, ids: np.ndarray) -> None:
        self.areas.add(block.window.row_off, ids)
        self.sinks.add(block, ids)
        if self.low_confidence is not None:
            conf = self.store.read_confidence(block)
            self.low_confidence += int(np.count_nonzero((ids == NODATA) & (conf != NODATA)))


def scene_cog(plan: ScenePlan, run: RunSetup, name: str, read: Any, **options: Any) -> None:
    """Write ``plan.work / name`` as a COG of the scene's grid (CRS, transform, the run's tags
    and compression) from ``read(block)`` arrays (:func:`tilesegd.outputs.cog.write_cog`,
    whose keyword ``options`` pass through).

    Raises:
        OSError / OutputError: the file cannot be written.
    """
    scene = plan.scene
    write_cog(
        plan.work / name,
        plan.grid.blocks(),
        read,
        height=scene.height,
        width=scene.width,
        crs=scene.crs,
        transform=scene.transform,
        tags=mask_tags(plan, run),
        compress=run.cfg.compress,
        **options,
    )


def write_mask_and_products(
    plan: ScenePlan, store: ZarrMaskStore, run: RunSetup, which: set[str]
) -> MaskPass:
    """Build ``mask.tif`` from the finished ``store``, with ``areas.csv`` and the products
    ``which`` in the same pass.

    Raises:
        BlockCheckError: blocks missing, or the store holds another number of class-id pixels
            than its blocks' log records. OSError / OutputError: an output cannot be written.
    """
    scene, spec = plan.scene, run.spec
    written = check_blocks_done(plan, store)
    sinks = ProductSinks(plan.work, scene, plan.grid, spec, run.cfg, which, run.zones)
    with sinks:
        done = MaskPass(plan, store, run, sinks)
        scene_cog(plan, run, "mask.tif", store.read_block, classes=spec.classes,
                  on_block=done)  # fmt: skip
        counted = done.areas.valid_pixels
        if written is not None and written != counted:
            raise BlockCheckError(
                f"{scene.path}: the blocks' log records {written} class-id pixels written, but "
                f"{counted} were read back from pred.zarr; nothing was published. This is a "
                "tilesegd bug (or the work store was changed by hand): please report it"
            )
    done.entry = sinks.entry()
    with writing(plan.work / "areas.csv"):
        write_areas_csv(plan.work / "areas.csv", done.areas.rows(spec.classes))
    return done


def finish_scene(
    plan: ScenePlan, run: RunSetup, preview: PreviewSampler | None = None
) -> dict[str, Any]:
    """Build the scene's outputs from its finished store, then publish them to
    ``output/<name>/``; ``preview`` holds the image sampled while the blocks were computed
    (:func:`tilesegd.batch.runner.preview_sampler`; ``None`` or incomplete: the preview reads
    the scene).

    Returns:
        Partial ``run.json`` entry: sizes, pixel counts, products and output paths.

    Raises:
        BlockCheckError: blocks missing or miscounted. OSError / OutputError: an output cannot
            be written.
    """
    scene = plan.scene
    clear_outputs(plan.work)
    if plan.resample is not None:
        plan, store = on_scene_grid(plan, run)
    else:
        store = ZarrMaskStore.reopen(plan.store_path)
    done = write_mask_and_products(plan, store, run, set(run.products))
    if run.cfg.save_confidence:
        scene_cog(plan, run, "confidence.tif", store.read_confidence, kind="confidence")
    if run.cfg.preview_size > 0:
        write_preview(
            plan.work / "preview.png",
            scene.path,
            plan.work / "mask.tif",
            plan.bands,
            run.spec.classes,
            done.areas.rows(run.spec.classes),
            run.cfg.preview_size,
            title=f"{plan.name} ({scene.width} x {scene.height})",
            sampled=preview,
        )
    if plan.resample is not None:
        remove_model_grid(run, plan.name)
    write_item(plan.work, plan, run)
    outputs = run.ledger().publish(plan.name, plan.work)
    entry = {
        "megapixels": round(scene.megapixels, 4),
        "width": scene.width,
        "height": scene.height,
        "blocks": plan.grid.n_blocks,
        # == the input's valid pixels: every block's nodata count was checked on writing
        "valid_pixels": done.areas.valid_pixels,
        "nodata_pixels": done.areas.nodata_pixels,
        "products": run.products,
        **done.entry,
        "outputs": outputs,
    }
    if done.low_confidence is not None:
        entry["low_confidence_pixels"] = done.low_confidence
    return entry


def write_item(folder: Path, plan: ScenePlan, run: RunSetup) -> None:
    """Write the scene's STAC Item, ``item.json``, from the outputs in ``folder``
    (:func:`tilesegd.outputs.stac.write_scene_item`): its source Item's id, time and link when
    the scene came from STAC, else the scene's own acquisition time, else the run's start.

    Raises:
        OutputError: it cannot be written.
    """
    from tilesegd.outputs.stac import ItemContext, write_scene_item

    source = run.sources.get(plan.name, {})
    ctx = ItemContext(
        classes=run.spec.classes,
        model_name=Path(str(run.cfg.model or run.model)).name,
        model_sha256=run.model_sha256,
        run_time=run.started,
        source_datetime=source.get("datetime"),
        source_href=source.get("href"),
        scene_datetime=plan.scene.acquired,
    )
    # on object storage pred.zarr is on the store, not here: an empty folder lists it the
    # same (publish uploads files only)
    (folder / "pred.zarr").mkdir(exist_ok=True)
    write_scene_item(folder, plan.name, ctx)


def clear_outputs(work: Path) -> None:
    """Remove every output file but the store from a scene's work folder before it is
    finished: a resumed folder may hold products of a finish that was cut short, made for
    options this run does not ask for (the finished folder must hold only what this finish
    makes, as ``run.json`` lists)."""
    for name in SCENE_OUTPUTS:
        if name != "pred.zarr":
            (work / name).unlink(missing_ok=True)


def on_scene_grid(plan: ScenePlan, run: RunSetup) -> tuple[ScenePlan, ZarrMaskStore]:
    """The plan of a scene segmented on its model grid, moved to the scene's own grid, and its
    scene-grid store: every
    model-grid block must be done; ``pred.zarr`` on the scene grid is then written from it
    (nearest neighbour, :func:`tilesegd.raster.resample.to_scene_grid`), with the AOI applied on the
    scene grid by the pixel-centre rule and the input's own nodata (dataset mask, NaN / Inf)
    read again on the scene grid, block by block: a pixel that is nodata in the input is 255
    in the mask, the confidence, the areas, zones and polygons whatever the model grid.

    Raises:
        BlockCheckError: model-grid blocks are missing. InputError: GDAL cannot decode the
            scene's mask (or float bands) again. OutputError: ``pred.zarr`` cannot be written.
    """
    from tilesegd.raster.reader import SceneSource
    from tilesegd.raster.resample import to_scene_grid

    model_store = ZarrMaskStore.reopen(plan.store_path)
    check_blocks_done(plan, model_store)
    scene = plan.scene
    shape = (scene.height, scene.width)
    grid = run.geometry.grid(*shape)
    path = run.store_location(plan.name)
    store = open_store(path, shape, grid, scene_attrs(scene, run), run)
    keep = None
    if plan.aoi is not None:
        from tilesegd.vector.aoi import SceneAOI

        keep = SceneAOI(run.aoi, scene.crs, scene.transform, *shape, scene=str(scene.path))
    source = SceneSource(scene, plan.bands) if scene.has_mask else None
    try:
        to_scene_grid(model_store, store, grid, plan.resample, keep,
                      None if source is None else source.valid)  # fmt: skip
    finally:
        if source is not None:
            source.close()
    return dataclasses.replace(plan, grid=grid, store_path=store.path), store


def remove_model_grid(run: RunSetup, name: str) -> None:
    """Remove a resampled scene's model-grid store and its log once the scene-grid store is
    written (the published folder holds only the scene grid's)."""
    StorePlace(run.store_location(name, model_grid=True)).remove(with_log=True)


def add_products(plan: ScenePlan, run: RunSetup, which: set[str]) -> dict[str, Any]:
    """Make products ``which`` for a scene finished earlier, from its published
    ``pred.zarr`` (``plan.store_path``; ``plan.work`` is the published folder), without
    running the network.

    Returns:
        The ``run.json`` fields of the products written.

    Raises:
        ConfigError / InputError: bad product options for this scene. OutputError: a file
            cannot be written.
    """
    store = ZarrMaskStore.reopen(plan.store_path)
    sinks = ProductSinks(plan.work, plan.scene, plan.grid, run.spec, run.cfg, which, run.zones)
    with sinks:
        for block, values in read_ahead(plan.grid.blocks(), store.read_block):
            sinks.add(block, values)
    log.info("%s: added %s from the stored mask", plan.name, ", ".join(sorted(which)))
    return sinks.entry()


def add_scene_products(path: Path, name: str, run: RunSetup, which: set[str]) -> dict[str, Any]:
    """Add products ``which`` (``"vector"``, ``"zones"``) to a scene finished earlier, from
    its published ``pred.zarr``: the network does not run.

    Returns:
        The ``run.json`` fields of the products.

    Raises:
        InputError: the scene cannot be profiled (or zones on a plain frame). OutputError:
            a file cannot be written. FileNotFoundError: the published store is gone.
    """
    scene = open_run_scene(run.cfg, path, name)
    grid = run.geometry.grid(scene.height, scene.width)
    ledger = run.ledger()
    work, store = ledger.products_work(name)
    plan = ScenePlan(scene, name, run.bands, grid, work, store)
    fields = add_products(plan, run, which)
    if (work / "mask.tif").exists():  # a folder: the Item lists the new products too
        write_item(work, plan, run)
    ledger.deliver_products(name, work)
    return fields

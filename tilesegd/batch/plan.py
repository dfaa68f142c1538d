"""What a run's scenes share (:class:`RunSetup`), and what one scene's work needs
(:class:`ScenePlan`): immutable plain data, resolved once, passed to the runner, the finish
step and the Dask workers (both pickle). Neither holds an open file: each phase opens the
scene's work store by its path (:attr:`ScenePlan.store_path`) and closes it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tilesegd.batch.layout import fingerprint, input_stat, work_dir
from tilesegd.config import RunConfig
from tilesegd.inference.geometry import Geometry
from tilesegd.model.spec import ModelSpec
from tilesegd.raster.scene import Scene
from tilesegd.raster.tiling import Block, TileGrid

if TYPE_CHECKING:  # pragma: no cover
    from tilesegd.batch.ledger import Ledger
    from tilesegd.raster.resample import GridResample, GrownRegion
    from tilesegd.storage.urls import RemotePath
    from tilesegd.vector.aoi import SceneAOI
    from tilesegd.vector.layers import PolygonLayer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunSetup:
    """What every scene of a run shares, resolved once per run.

    Attributes:
        cfg: the resolved configuration.
        spec: the model's metadata.
        geometry: tile size, overlap, block size and batch size (pixels / tiles).
        bands: 1-based raster bands fed to the network, in model input order.
        output: the run's output directory; for outputs on object storage, the local scratch
            folder where each scene's files are built before upload.
        fingerprint: identifies model + settings + device (what may be resumed or skipped).
        model: the model file's path (recorded in the masks' tags).
        aoi: the area of interest's polygons, or ``None``.
        zones: the zones' polygons, or ``None``.
        products: the optional products asked for (:func:`tilesegd.batch.products.requested_products`).
        said: keys of the notes already given in this run (:meth:`warn_once`).
        remote: the output prefix on object storage (``--output s3://...``), or ``None``.
        sources: ``{scene name: source}`` of the scenes that come from STAC Items
            (:meth:`tilesegd.stac.inputs.StacScene.source`), recorded in their output Items.
        started: when the run started (ISO 8601 UTC), the output Items' datetime of last resort.
        model_sha256: the model file's SHA-256 (hex), as the output Items record it.
        runtime: what runs the network (``eager``, ``onnxruntime``, ``tensorrt``...), as
            ``run.json`` records it.
    """

    cfg: RunConfig
    spec: ModelSpec
    geometry: Geometry
    bands: tuple[int, ...]
    output: Path
    fingerprint: str
    model: str
    aoi: PolygonLayer | None = None
    zones: PolygonLayer | None = None
    products: dict[str, dict[str, Any]] = field(default_factory=dict)
    said: set[str] = field(default_factory=set, compare=False, repr=False)
    remote: RemotePath | None = None
    sources: dict[str, dict[str, Any]] = field(default_factory=dict)
    started: str = ""
    model_sha256: str = ""
    runtime: str = "eager"

    def store_location(self, name: str, model_grid: bool = False) -> Path | str:
        """Where scene ``name``'s work ``pred.zarr`` is written: in its work folder, or, for
        outputs on object storage, under the prefix's ``.tilesegd/work/<name>/`` (a URL);
        ``model_grid``: the store on the model grid of a resampled scene."""
        if self.remote is not None:
            from tilesegd.batch.objects import scene_store_url

            return scene_store_url(self.remote, name, model_grid)
        work = work_dir(self.output, name)
        return work / "model_grid" / "pred.zarr" if model_grid else work / "pred.zarr"

    def ledger(self) -> Ledger:
        """The run's :class:`~tilesegd.batch.ledger.Ledger` (its output folder or prefix)."""
        from tilesegd.batch.ledger import open_ledger

        return open_ledger(self.output, self.remote)

    def warn_once(self, key: str, message: str) -> None:
        """Log ``message`` as a warning the first time ``key`` comes up in this run (a note
        true of many scenes is given once, not once a scene)."""
        if key not in self.said:
            self.said.add(key)
            log.warning("%s", message)

    @property
    def model_gsd(self) -> float | None:
        """The model's GSD in metres (:func:`model_gsd`), as a float, or ``None``."""
        gsd = model_gsd(self.cfg, self.spec)
        return None if gsd is None else float(gsd)

    @property
    def confidence(self) -> bool:
        """Whether the engine computes the top-class confidence (stored in pred.zarr)."""
        return self.cfg.save_confidence or self.cfg.min_confidence is not None

    @classmethod
    def resolve(
        cls,
        cfg: RunConfig,
        spec: ModelSpec,
        output: Path,
        model_sha: str,
        device: str,
        dtype: str,
        budget: int | None = None,
        dtype_bytes: int = 4,
        sources: dict[str, dict[str, Any]] | None = None,
        runtime: str = "eager",
        cost: tuple[tuple[int, float], ...] = (),
    ) -> RunSetup:
        """Resolve geometry and bands against the model, read the AOI and zones files, check
        the vector options, and compute the fingerprint (the runtime that runs the network
        and its measured throughput ``cost``, which picks each scene's tile, are part of it).

        Raises:
            ConfigError: the tile geometry cannot work, ``--bands`` does not list the model's
                number of input channels, an AOI / zones file is unusable, or
                ``--vector-classes`` names a class the model does not have.
        """
        from tilesegd.batch.products import requested_products
        from tilesegd.storage.objects import output_location

        geometry, bands = cfg.geometry(spec, budget, dtype_bytes, cost), cfg.bands_for(spec)
        aoi, zones = load_layers(cfg)
        if cfg.vector:
            from tilesegd.outputs.polygons import resolve_keep

            resolve_keep(spec.classes, cfg.vector_classes)  # unknown names: fail now
        aoi_id = (str(Path(cfg.aoi).resolve()), input_stat(cfg.aoi), cfg.aoi_crs) if aoi else None
        confidence = (cfg.save_confidence, cfg.min_confidence)
        gsd = (cfg.resample, model_gsd(cfg, spec), cfg.gsd_tolerance, cfg.scene_gsd)
        settings = (*geometry.settings(), bands, cfg.save_probs, *confidence, aoi_id, *gsd, runtime)
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
            remote=output_location(cfg.output),
            sources=dict(sources or {}),
            started=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            model_sha256=model_sha,
            runtime=runtime,
        )


def model_gsd(cfg: RunConfig, spec: ModelSpec) -> float | None:
    """The model's GSD in metres per pixel: ``--gsd``, else the model file's ``gsd``, else
    ``None``; the number as given (the run's fingerprint records it so)."""
    return cfg.gsd or spec.gsd


def load_layers(cfg: RunConfig) -> tuple[PolygonLayer | None, PolygonLayer | None]:
    """The AOI and zones polygon layers of a run (``None`` when not asked for), read once.

    Raises:
        ConfigError: a file cannot be read, has no polygons, no CRS (and no override), or
            lacks the zone field.
    """
    from tilesegd.vector.layers import load_polygons

    aoi = load_polygons(cfg.aoi, option="--aoi", crs=cfg.aoi_crs) if cfg.aoi else None
    zones = None
    if cfg.zones:
        zones = load_polygons(cfg.zones, option="--zones", crs=cfg.zones_crs, field=cfg.zone_field)
    return aoi, zones


@dataclass(frozen=True)
class ScenePlan:
    """Everything needed to compute and finish one scene (see
    :func:`tilesegd.batch.runner.plan_scene`); a phase that changes it returns a new plan
    (:func:`dataclasses.replace`).

    Attributes:
        scene: the profiled input.
        name: output folder name.
        bands: 1-based bands fed to the network.
        grid: tile / block geometry.
        work: the scene's work folder (the published folder for a finished scene).
        store_path: the scene's (possibly half-done) ``pred.zarr``: in ``work``, or its URL for
            outputs on object storage (:meth:`RunSetup.store_location`); each phase
            opens it (:meth:`tilesegd.outputs.zarr_store.ZarrMaskStore.reopen`), Dask workers
            too.
        todo: blocks still to compute.
        aoi: the area of interest on the grid the tiles run on, or ``None``.
        blocks_outside: blocks outside the area of interest (written as nodata, never read).
        resample: how the scene maps onto its model grid when it runs at the model's GSD, else
            ``None``; ``grid``, ``store_path`` and ``aoi`` are then on the model grid, and the
            finish step writes the scene-grid outputs.
        resample_fields: ``run.json`` fields of the GSDs and the factor.
    """

    scene: Scene
    name: str
    bands: tuple[int, ...]
    grid: TileGrid
    work: Path
    store_path: Path | str
    todo: tuple[Block, ...] = ()
    aoi: SceneAOI | GrownRegion | None = None
    blocks_outside: int = 0
    resample: GridResample | None = None
    resample_fields: dict[str, Any] = field(default_factory=dict)

    @property
    def done_pixels(self) -> int:
        """Pixels of the blocks already finished."""
        todo = {b.id for b in self.todo}
        return sum(b.window.height * b.window.width for b in self.grid.blocks() if b.id not in todo)


def recorded_cost(
    cfg: RunConfig, output: Path, sha256: str, runtime: str, device: str
) -> tuple[tuple[int, float], ...] | None:
    """The throughput curve the output's ``run.json`` recorded, when a previous run of the same
    model file on the same runtime and device wrote it (``None`` otherwise, or with
    ``--overwrite``): a resumed run reuses it, so it picks each scene's tile as the killed run
    did (the same masks and fingerprint), even on another machine of a cluster."""
    from tilesegd.batch.layout import RUN_JSON
    from tilesegd.batch.ledger import open_ledger
    from tilesegd.storage.objects import output_location

    if cfg.overwrite or not sha256:
        return None
    doc = open_ledger(Path(output), output_location(cfg.output)).read_json(RUN_JSON)
    if not isinstance(doc, dict):
        return None
    same = (doc.get("model") or {}).get("sha256") == sha256
    if not same or (doc.get("runtime"), doc.get("device")) != (runtime, device):
        return None
    curve = (doc.get("geometry") or {}).get("throughput_mpx_s") or ()
    try:
        return tuple((int(t), float(v)) for t, v in curve) or None
    except (TypeError, ValueError):
        return None


def tolerant_config(cfg: RunConfig, net: Any) -> RunConfig:
    """``cfg`` with the overlap ``--seam-tolerance`` asks of this network
    (:meth:`~tilesegd.inference.build.Network.tolerant_overlap`), when no ``--overlap`` is
    given; ``cfg`` itself otherwise (the overlap is then recorded in ``run.json``'s config).

    Raises:
        ConfigError: the model file has no measured overlap.
    """
    import dataclasses

    if cfg.seam_tolerance is None or cfg.overlap is not None:
        return cfg
    return dataclasses.replace(cfg, overlap=net.tolerant_overlap(cfg.seam_tolerance))

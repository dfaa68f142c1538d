"""The scenes of a run: raster files and folders (:mod:`tilesegd.batch.discovery`), STAC
documents (:mod:`tilesegd.stac.inputs`) and a STAC API search (:mod:`tilesegd.stac.search`),
with their output names and, for STAC scenes, what their output Items record of the source.
Never imports torch.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tilesegd.batch.discovery import discover, unique_names

if TYPE_CHECKING:  # pragma: no cover
    from tilesegd.batch.ledger import Ledger
    from tilesegd.config import RunConfig
    from tilesegd.stac.inputs import StacScene
    from tilesegd.storage.urls import RemotePath

log = logging.getLogger(__name__)


@dataclass
class RunScenes:
    """The scenes of a run.

    Attributes:
        paths: each scene's raster (a local path or a location), in run order.
        names: their output names (unique).
        sources: ``{name: StacScene.source()}`` for the scenes that come from STAC Items.
    """

    paths: list[Path | RemotePath] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    sources: dict[str, dict[str, Any]] = field(default_factory=dict)


def find_scenes(cfg: RunConfig, local_output: Path | None, ledger: Ledger) -> RunScenes:
    """Every scene ``cfg`` names: ``--input`` files, folders, prefixes and STAC documents, then
    the Items of ``--stac-api`` (its result read from, or saved to, ``search.json`` through
    ``ledger``). Names: file stems and Item ids, de-duplicated with ``__2``, ``__3``...

    Raises:
        InputError: an input is missing or unusable, nothing was found, a STAC document or
            search fails. ConfigError: bad search options.
    """
    from tilesegd.stac.inputs import is_stac_input, stac_scenes

    plain = [i for i in cfg.input if not is_stac_input(i)]
    stac = stac_scenes([str(i) for i in cfg.input if is_stac_input(i)], cfg.asset)
    if cfg.stac_api:
        stac += searched_scenes(cfg, ledger)
    paths: list[Path | RemotePath] = discover(plain, local_output) if plain else []
    names = unique_names([p.stem for p in paths] + [s.item_id for s in stac])
    sources = {n: s.source() for n, s in zip(names[len(paths) :], stac, strict=True)}
    return RunScenes(paths + [s.location for s in stac], names, sources)


def searched_scenes(cfg: RunConfig, ledger: Ledger) -> list[StacScene]:
    """The scenes of the ``--stac-api`` search: the saved ``search.json`` when a previous run
    made the same search, else a new search, saved before any scene runs.

    Raises:
        InputError / ConfigError: as :func:`tilesegd.stac.search.run_search` and
            :func:`tilesegd.stac.search.search_parameters`.
    """
    from tilesegd.stac.inputs import collection_items, scene_of
    from tilesegd.stac.search import SEARCH_JSON, run_search, saved_search, search_parameters

    bbox = cfg.bbox if cfg.bbox is not None else aoi_bbox(cfg)
    params = search_parameters(cfg.stac_api or "", cfg.collections, bbox=bbox,
                               datetime=cfg.datetime, query=cfg.query,
                               max_items=cfg.max_items)  # fmt: skip
    doc = saved_search(ledger.read_json(SEARCH_JSON), params)
    if doc is not None:
        log.info("%s: the Items of the saved search (%d)", SEARCH_JSON, len(doc["features"]))
    else:
        doc = run_search(params)
        ledger.write_json(SEARCH_JSON, doc)
        log.info("%s: %d Items found, saved in %s", cfg.stac_api, len(doc["features"]),
                 SEARCH_JSON)  # fmt: skip
    return [scene_of(item, cfg.asset) for item in collection_items(doc, None)]


def aoi_bbox(cfg: RunConfig) -> list[float] | None:
    """The ``--aoi`` polygons' bounds in degrees (EPSG:4326), the search's default bbox, or
    ``None`` without an AOI.

    Raises:
        ConfigError: the AOI file is unusable (:func:`tilesegd.vector.layers.load_polygons`).
    """
    if not cfg.aoi:
        return None
    import shapely
    from pyproj import CRS, Transformer

    from tilesegd.vector.layers import load_polygons

    layer = load_polygons(cfg.aoi, option="--aoi", crs=cfg.aoi_crs)
    to_4326 = Transformer.from_crs(layer.crs, CRS.from_epsg(4326), always_xy=True)
    w, s, e, n = shapely.total_bounds(layer.geoms)
    return [round(v, 7) for v in to_4326.transform_bounds(w, s, e, n, densify_pts=21)]

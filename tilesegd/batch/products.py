"""What is made from a scene's finished class mask besides ``mask.tif`` and ``areas.csv``:
``polygons.gpkg`` (``--vector``) and ``zones.csv`` / ``zones.gpkg`` (``--zones``).

They are fed the blocks of the finished store in the same pass that builds ``mask.tif``
(:class:`ProductSinks`), or, when a rerun only adds them to a finished scene, in a pass of
their own over the published ``pred.zarr`` (the network does not run again; the state machine
decides: :meth:`tilesegd.batch.states.RunStates.products_to_add`). Each file is
written atomically. The settings of each product are recorded in the scene's ``run.json``
entry (``products``), so the run knows which products a finished scene already has.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from tilesegd.batch.layout import input_stat
from tilesegd.config import RunConfig
from tilesegd.model.spec import ModelSpec
from tilesegd.raster.tiling import Block, TileGrid


def requested_products(cfg: RunConfig) -> dict[str, dict[str, Any]]:
    """The products a run asks for, with the settings that change them (JSON-able)."""
    out: dict[str, dict[str, Any]] = {}
    if cfg.vector:
        out["vector"] = {
            "classes": cfg.vector_classes,
            "min_area_m2": float(cfg.min_area),
            "simplify_px": float(cfg.simplify),
        }
    if cfg.zones:
        out["zones"] = {
            "file": str(Path(cfg.zones).resolve()),
            "file_stat": input_stat(cfg.zones),
            "crs": cfg.zones_crs,
            "field": cfg.zone_field,
        }
    return out


class ProductSinks:
    """Receives a scene's finished blocks and writes the products asked for into ``folder``.

    A context manager: ``with ProductSinks(...) as sinks: for b in blocks: sinks.add(b, ids)``;
    the files appear when the block loop ends without an error (:meth:`entry` then says what
    was written).

    Args:
        folder: where the files go (the scene's work folder, or its published folder).
        scene: the scene's profile (CRS, transform, size, name).
        grid: its tile / block geometry (blocks are fed in this grid's row-major order).
        spec: the model's metadata (class names and colours).
        cfg: the run's settings (``vector_classes``, ``min_area``, ``simplify``).
        which: the products to make (``"vector"``, ``"zones"``).
        zones: the zones layer (:func:`tilesegd.vector.layers.load_polygons`) for ``"zones"``.

    Raises:
        ConfigError: bad vector options (unknown class names). InputError: zones on a scene
            without georeferencing. OutputError: a file cannot be written.
    """

    def __init__(
        self,
        folder: Path,
        scene: Any,
        grid: TileGrid,
        spec: ModelSpec,
        cfg: RunConfig,
        which: set[str],
        zones: Any = None,
    ) -> None:
        self.folder, self.spec, self.which = Path(folder), spec, set(which)
        self.polygons = self.zones = None
        if "vector" in self.which:
            from tilesegd.outputs.polygons import PolygonWriter, resolve_keep

            self.polygons = PolygonWriter(
                self.folder / "polygons.gpkg",
                grid.blocks(),
                height=scene.height,
                width=scene.width,
                crs=scene.crs,
                transform=scene.transform,
                classes=spec.classes,
                keep=resolve_keep(spec.classes, cfg.vector_classes),
                min_area_m2=cfg.min_area,
                simplify=cfg.simplify,
            )
        if "zones" in self.which:
            from tilesegd.outputs.zones import ZoneCounter

            self.zones = ZoneCounter(
                zones,
                scene.crs,
                scene.transform,
                scene.height,
                scene.width,
                spec.num_classes,
                scene=scene.name,
            )

    def __enter__(self) -> ProductSinks:
        if self.polygons is not None:
            self.polygons.__enter__()
        return self

    def add(self, block: Block, ids: np.ndarray) -> None:
        """Feed one finished block's (h, w) uint8 class ids (255 = nodata)."""
        if self.polygons is not None:
            self.polygons.add(block, ids)
        if self.zones is not None:
            self.zones.add(block.window, ids)

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if self.polygons is not None:
            self.polygons.__exit__(exc_type, exc, tb)
        if exc_type is None and self.zones is not None:
            self.zones.write_csv(self.folder / "zones.csv", self.spec.classes)
            self.zones.write_gpkg(self.folder / "zones.gpkg", self.spec.classes)

    def entry(self) -> dict[str, Any]:
        """``run.json`` fields of the products written: ``polygons`` (count),
        ``polygons_per_class`` ({class name: count}), ``zones`` (zones that meet the scene)."""
        out: dict[str, Any] = {}
        if self.polygons is not None:
            stats = self.polygons.stats
            out["polygons"] = stats.features
            names = {c.id: c.name for c in self.spec.classes}
            per_class = getattr(stats, "features_per_class", None)
            if per_class is not None:
                out["polygons_per_class"] = {names[k]: int(v) for k, v in per_class.items()}
        if self.zones is not None:
            out["zones"] = int(len(self.zones.index))
        return out

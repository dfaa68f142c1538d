"""``polygons.gpkg``: the class mask as polygons, one per connected region, in bounded memory.

One GeoPackage layer, :data:`LAYER` (``polygons``), in the scene's CRS, one Polygon feature per
4-connected region of one kept class (holes kept), with the fields of :data:`FIELDS`:

* ``class_id`` (int32), ``class_name`` (text);
* ``area_m2``, ``perimeter_m`` (metres) of the written polygon: projected CRS: planar area and
  length of all rings (outer and holes) times the CRS's linear unit; geographic CRS: geodesic
  area and ring lengths on the CRS's ellipsoid (``pyproj.Geod``, after Karney, *Algorithms for
  geodesics*, J. Geodesy 2013), never square degrees; no CRS: NULL;
* ``pixels`` (int64): the region's pixel count in the mask.

Without simplification and minimum area, every region's polygon is its exact pixel outline, so
per class the features' ``pixels`` add up to the class's pixel count in ``areas.csv``, and
rasterising the layer onto the mask's grid gives the mask back (nodata and classes not kept
aside). How regions are traced, merged across blocks and simplified:
:mod:`tilesegd.outputs.regions`. Written with pyogrio (GDAL's GPKG driver) to
``.polygons.gpkg.tmp-*.gpkg`` beside the final path, then renamed into place.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import secrets
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tilesegd import atomic
from tilesegd.errors import ConfigError, OutputError, output_failure
from tilesegd.model.spec import ClassInfo
from tilesegd.outputs.readahead import read_ahead
from tilesegd.outputs.regions import Region, RegionTracer
from tilesegd.raster.tiling import Block

log = logging.getLogger(__name__)

LAYER = "polygons"
FIELDS = ("class_id", "class_name", "area_m2", "perimeter_m", "pixels")
BACKGROUND = "background"
FLUSH_FEATURES = 20_000  # features buffered between two appends to the GeoPackage
SQLITE_SIDE_FILES = ("-journal", "-wal", "-shm")


def check_options(min_area_m2: float, simplify: float) -> None:
    """Raise :class:`ConfigError` unless both are finite numbers >= 0: the one check of the
    ``min_area`` and ``simplify`` options (:meth:`tilesegd.config.RunConfig.validate` calls it)."""
    for name, value, unit in (("min_area", min_area_m2, "m2"), ("simplify", simplify, "px")):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{name} must be a number ({unit}), got {value!r}")
        if not math.isfinite(value) or value < 0:
            raise ConfigError(f"{name} must be a finite number >= 0 ({unit}), got {value}")


@dataclass
class VectorOptions:
    """What ``--vector`` does (carried by the run config).

    Attributes:
        classes: names of the classes to vectorise (a list, or one comma-separated string);
            ``None``: every class except one named ``background``. Nodata (255) never is.
        min_area_m2: minimum mapping unit (m2): regions whose polygon is smaller are left out
            of ``polygons.gpkg``. The mask and ``areas.csv`` are NOT changed. Not applied to
            scenes without a CRS (no metres; a warning says so).
        simplify: simplification tolerance in pixels (0 = exact pixel outlines); shared
            boundaries stay shared (no gaps or overlaps between neighbours).

    Raises:
        ConfigError: a negative or non-finite ``min_area_m2`` or ``simplify``.
    """

    classes: list[str] | None = None
    min_area_m2: float = 0.0
    simplify: float = 0.0

    def __post_init__(self) -> None:
        check_options(self.min_area_m2, self.simplify)

    def keep(self, classes: Sequence[ClassInfo]) -> set[int]:
        """The class ids to vectorise for a model's ``classes`` (see :func:`resolve_keep`)."""
        return resolve_keep(classes, self.classes)


def resolve_keep(classes: Sequence[ClassInfo], names: Sequence[str] | str | None) -> set[int]:
    """Class ids to vectorise.

    Args:
        classes: the model's classes.
        names: class names (case-insensitive; a comma-separated string is split), or ``None``
            for every class except one named ``background``.

    Raises:
        ConfigError: an unknown name (the message lists the model's classes) or no name.
    """
    if names is None:
        return {c.id for c in classes if c.name.casefold() != BACKGROUND}
    if isinstance(names, str):
        names = names.split(",")
    wanted = [n.strip() for n in names if n.strip()]
    by_name = {c.name.casefold(): c.id for c in classes}
    known = ", ".join(c.name for c in classes)
    if not wanted:
        raise ConfigError(f"--vector-classes is empty; name one or more of: {known}")
    unknown = [n for n in wanted if n.casefold() not in by_name]
    if unknown:
        raise ConfigError(
            f"--vector-classes: unknown class {', '.join(map(repr, unknown))}; the model's "
            f"classes are: {known}"
        )
    return {by_name[n.casefold()] for n in wanted}


@dataclass
class PolygonStats:
    """What :func:`write_polygons` wrote: ``features``; ``pixels`` and ``features_per_class``
    per class id (of the features written); ``dropped`` regions under the minimum area;
    ``seconds``."""

    features: int = 0
    features_per_class: dict[int, int] = field(default_factory=dict)
    pixels: dict[int, int] = field(default_factory=dict)
    dropped: int = 0
    seconds: float = 0.0


class _Georef:
    """Pixel -> CRS coordinates, and areas / perimeters in metres (NaN without a CRS)."""

    def __init__(self, crs: Any, transform: Any) -> None:
        self.crs, self.transform = crs, transform
        self.geod = None
        self.factor = 1.0
        if crs is not None and crs.is_geographic:
            from pyproj import CRS, Geod

            self.geod = CRS.from_wkt(crs.to_wkt()).get_geod() or Geod(ellps="WGS84")
        elif crs is not None:
            self.factor = crs.linear_units_factor[1] if crs.linear_units_factor else 1.0

    def to_world(self, geoms: np.ndarray) -> np.ndarray:
        """(N,) pixel-space geometries -> (N,) geometries in the CRS (pixel coordinates
        without a transform), exterior rings counter-clockwise."""
        import shapely

        if self.transform is not None:
            t = self.transform
            m = np.array([[t.a, t.d], [t.b, t.e]])
            off = np.array([t.c, t.f])
            geoms = shapely.transform(geoms, lambda xy: xy @ m + off)
        return shapely.orient_polygons(geoms, exterior_cw=False)

    def measure(self, world: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(area m2, perimeter m) of each CRS-space polygon, float64 (N,) each."""
        import shapely

        if self.crs is None:
            nan = np.full(len(world), np.nan)
            return nan, nan.copy()
        if self.geod is None:
            return shapely.area(world) * self.factor**2, shapely.length(world) * self.factor
        area, perimeter = np.empty(len(world)), np.empty(len(world))
        for k, g in enumerate(world):
            area[k] = abs(self.geod.geometry_area_perimeter(g)[0])
            rings = [g.exterior, *g.interiors]
            perimeter[k] = sum(self.geod.geometry_length(r) for r in rings)
        return area, perimeter


class PolygonWriter:
    """Writes ``polygons.gpkg`` from blocks fed in row-major order; a context manager.

    ``with PolygonWriter(...) as w: for b in blocks: w.add(b, ids)`` writes the GeoPackage to a
    temporary file beside ``path`` and renames it into place when the block loop ends without
    an error; on an error the temporary file (and SQLite's journal files) is removed and
    nothing appears at ``path``. The arguments are those of :func:`write_polygons`.

    Raises:
        ConfigError: bad options or class ids (at construction).
        OutputError: the GeoPackage cannot be written (disk full, permissions).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        blocks: Sequence[Block],
        *,
        height: int,
        width: int,
        crs: Any,
        transform: Any,
        classes: Sequence[ClassInfo],
        keep: set[int],
        min_area_m2: float = 0.0,
        simplify: float = 0.0,
    ) -> None:
        check_options(min_area_m2, simplify)
        self.names = {c.id: c.name for c in classes}
        if not set(keep) <= set(self.names):
            raise ConfigError(f"class ids {sorted(set(keep) - set(self.names))} are not classes")
        self.path = Path(path)
        self.tracer = RegionTracer(blocks, height, width, set(keep), simplify)
        self.georef = _Georef(crs if transform is not None else None, transform)
        self.min_area = float(min_area_m2)
        if self.min_area > 0 and self.georef.crs is None:
            log.warning("%s: no CRS, so the minimum area is not applied", self.path)
            self.min_area = 0.0
        keep_ids = sorted(keep)
        self.stats = PolygonStats(
            pixels=dict.fromkeys(keep_ids, 0), features_per_class=dict.fromkeys(keep_ids, 0)
        )
        self._buffer: list[Region] = []
        self._tmp = self.path.with_name(
            f".{self.path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}.gpkg"
        )
        self._t0 = time.perf_counter()

    def __enter__(self) -> PolygonWriter:
        try:  # an empty, valid layer with its fields, even if no region comes
            self._write([])
        except BaseException:
            self._remove_temporary()
            raise
        return self

    def add(self, block: Block, ids: np.ndarray) -> None:
        """Trace one block's (h, w) uint8 class ids; write the regions it finished."""
        self._buffer += self.tracer.add(block, ids)
        if len(self._buffer) >= FLUSH_FEATURES:
            self._flush()

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        try:
            if exc_type is None:
                self.tracer.finish()
                self._flush()
                self._commit()
        finally:
            self._remove_temporary()
        self.stats.seconds = time.perf_counter() - self._t0

    def _flush(self) -> None:
        import shapely

        if not self._buffer:
            return
        regions, self._buffer = self._buffer, []
        world = self.georef.to_world(np.array([r.geometry for r in regions], dtype=object))
        area, perimeter = self.georef.measure(world)
        keep = ~(area < self.min_area)  # NaN (no CRS) compares False: kept
        self.stats.dropped += int((~keep).sum())
        regions = [r for r, k in zip(regions, keep, strict=True) if k]
        cls = np.array([r.class_id for r in regions], np.int32)
        pixels = np.array([r.pixels for r in regions], np.int64)
        for c, p in zip(cls.tolist(), pixels.tolist(), strict=True):
            self.stats.pixels[c] += p
            self.stats.features_per_class[c] = self.stats.features_per_class.get(c, 0) + 1
        self.stats.features += len(regions)
        data = [
            cls,
            np.array([self.names[c] for c in cls.tolist()], dtype=object),
            area[keep],
            perimeter[keep],
            pixels,
        ]
        self._write(shapely.to_wkb(world[keep]), data)

    def _write(self, wkb: Any, data: list[np.ndarray] | None = None) -> None:
        """Append features to the temporary GeoPackage (``data`` None: create the empty
        layer)."""
        from pyogrio.errors import DataLayerError, DataSourceError
        from pyogrio.raw import write

        if data is None:
            empty = (np.int32, object, np.float64, np.float64, np.int64)
            data = [np.array([], dtype=t) for t in empty]
        crs = self.georef.crs.to_wkt() if self.georef.crs is not None else None
        try:
            with warnings.catch_warnings():  # no CRS is what a plain frame has: not news
                warnings.filterwarnings("ignore", "'crs' was not provided", UserWarning)
                write(
                    self._tmp,
                    np.asarray(wkb, dtype=object),
                    data,
                    list(FIELDS),
                    layer=LAYER,
                    driver="GPKG",
                    geometry_type="Polygon",
                    crs=crs,
                    append=self._tmp.exists(),
                )
        except (OSError, DataSourceError, DataLayerError) as e:
            raise output_failure(e, self.path, writing=True) or OutputError(
                f"{self.path}: {e}"
            ) from e

    def _commit(self) -> None:
        try:
            fd = os.open(self._tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            atomic.replace(self._tmp, self.path)  # SQLite made it 0644
        except OSError as e:
            raise output_failure(e, self.path, writing=True) or OutputError(
                f"{self.path}: {e}"
            ) from e

    def _remove_temporary(self) -> None:
        for p in (self._tmp, *(Path(f"{self._tmp}{s}") for s in SQLITE_SIDE_FILES)):
            with contextlib.suppress(OSError):
                p.unlink()


def write_polygons(
    path: str | os.PathLike[str],
    blocks: Iterable[Block],
    read_block: Callable[[Block], np.ndarray],
    *,
    height: int,
    width: int,
    crs: Any,
    transform: Any,
    classes: Sequence[ClassInfo],
    keep: set[int],
    min_area_m2: float = 0.0,
    simplify: float = 0.0,
) -> PolygonStats:
    """Write ``polygons.gpkg`` (layer ``polygons``) from a finished class mask, block by block.

    Args:
        path: final GeoPackage path (written as ``.<name>.tmp-*.gpkg`` beside it, renamed).
        blocks: the scene's blocks (``TileGrid.blocks()``); read in row-major order.
        read_block: returns a block's (h, w) uint8 class ids, 255 = nodata (e.g.
            ``ZarrMaskStore.read_block``).
        height, width: scene size in pixels.
        crs: ``rasterio.crs.CRS`` or ``None`` (no CRS on the layer; NULL metre fields).
        transform: ``affine.Affine`` pixel -> CRS, or ``None`` (pixel coordinates: x = column,
            y = row; no CRS either, as in ``areas.csv``).
        classes: the model's classes (names for ``class_name``).
        keep: class ids to vectorise (:func:`resolve_keep`).
        min_area_m2: leave out regions whose polygon area is under this (m2); the mask is not
            changed. Ignored, with a warning, without a CRS.
        simplify: tolerance in pixels for ``shapely.coverage_simplify`` (0 = exact outlines).

    Returns:
        :class:`PolygonStats`.

    Raises:
        ConfigError: bad options, or blocks that do not tile the scene.
        InputError: a block of the wrong shape or dtype.
        OutputError: the GeoPackage cannot be written (disk full: nothing is left at ``path``
            nor beside it; the run exits with code 6).
    """
    blocks = sorted(blocks, key=lambda b: b.index)
    writer = PolygonWriter(
        path,
        blocks,
        height=height,
        width=width,
        crs=crs,
        transform=transform,
        classes=classes,
        keep=keep,
        min_area_m2=min_area_m2,
        simplify=simplify,
    )
    with writer:
        for block, values in read_ahead(blocks, read_block):
            writer.add(block, values)
    return writer.stats

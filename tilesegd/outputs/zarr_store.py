"""The Zarr v3 output store: ``pred.zarr`` with ``mask`` (H, W) uint8 and optional ``probs``.

The mask is chunked by block, so each block is one chunk: blocks write in parallel without
locks and a finished chunk is the unit of resume. A block counts as finished once its id is in
the append-only ``blocks.done`` log next to the store (the chunk is written first, then the id
is appended and flushed), so a kill at any moment loses at most the blocks in flight. Each log
line is ``"<block id> <class-id pixels>"``: the count of non-nodata ids written, which the
finish step checks against the areas it counts from the store (nothing lost on the way).

The store follows the CF / GeoZarr conventions that xarray, rioxarray and odc-geo read, so
``xr.open_zarr("pred.zarr").mask.rio.bounds()`` places it on the map (see
:func:`write_georeferencing`). Its metadata is consolidated at creation (after that only the
group attributes may change, and consolidation does not copy those), so ``xr.open_zarr`` needs
no ``consolidated=False`` and gives no warning.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from tilesegd.model.spec import NODATA
from tilesegd.outputs.donelog import DONE_LOG, StorePlace
from tilesegd.raster.tiling import Block, Tile

__all__ = ["DONE_LOG", "ZarrMaskStore"]


class ZarrMaskStore:
    """Create or reopen ``pred.zarr`` for one scene.

    Args:
        path: the ``pred.zarr`` folder (created), or its URL on object storage
            (``s3://bucket/prefix/pred.zarr``: one object per chunk,
            :class:`~tilesegd.outputs.donelog.StorePlace`).
        shape: (H, W) of the scene in pixels.
        chunks: (rows, cols) of one block: the ``mask`` (and ``confidence``) chunk shape.
        attrs: group attributes (``crs`` WKT, ``transform`` GDAL geotransform, ``classes``...).
            ``attrs["fingerprint"]`` identifies the model + settings: a store with another
            fingerprint is discarded, not resumed.
        num_classes: K, for ``probs``.
        probs_chunks: (rows, cols) of one ``probs`` chunk (a tile core), or ``None`` for no
            ``probs`` array.
        confidence: also hold ``confidence`` (H, W) uint8: the top class's probability x 100,
            255 = nodata.

    Raises:
        OutputError: a new store cannot be written (disk full, permissions: nothing is left).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        shape: tuple[int, int],
        chunks: tuple[int, int],
        attrs: dict[str, Any],
        num_classes: int,
        probs_chunks: tuple[int, int] | None = None,
        confidence: bool = False,
    ) -> None:
        self.place = StorePlace(path)
        self.path, self.log = self.place.path, self.place.log
        wanted = ["mask"] + ["probs"] * (probs_chunks is not None) + ["confidence"] * confidence
        group = self._existing(attrs.get("fingerprint"), wanted)
        if group is None:
            self.log.clear()
            try:
                with self.place.writing():
                    group = create_store(self.place.zarr_store(), shape, chunks, attrs,
                                         num_classes, probs_chunks)  # fmt: skip
                    if confidence:
                        create_confidence(group, shape, chunks, attrs)
                    consolidate(group)
            except BaseException:  # no half-made store: the next run starts it afresh
                self.place.remove()
                raise
        self.log.repair()
        self._bind(group)

    def _existing(self, fingerprint: Any, arrays: list[str]) -> Any:
        """The store already at ``path`` if it has this fingerprint and every array, else
        ``None`` (anything else there is removed, with its log)."""
        import zarr

        if not self.place.exists():
            self.place.remove()  # chunks without metadata: a creation cut short
            return None
        try:
            group = zarr.open_group(self.place.zarr_store(), mode="r+")
            if group.attrs.get("fingerprint") == fingerprint and all(a in group for a in arrays):
                return group
        except Exception:  # unreadable leftovers of a killed run: start over
            pass
        self.place.remove()
        self.log.clear()
        return None

    def _bind(self, group: Any) -> None:
        self.group = group
        self.mask = group["mask"]
        self.probs = group["probs"] if "probs" in group else None
        self.confidence = group["confidence"] if "confidence" in group else None

    def done_blocks(self) -> set[int]:
        """Ids of the blocks whose chunks are complete: the newline-terminated lines of
        ``blocks.done`` (a line without its newline was cut mid-write and does not count)."""
        return set(self.done_counts())

    def done_counts(self) -> dict[int, int | None]:
        """``{block id: class-id (non-nodata) pixels written}`` of the finished blocks
        (``None`` for a line of an older log that carries no count)."""
        return self.log.counts()

    def write_block(self, block: Block, ids: np.ndarray) -> None:
        """Write one block's (h, w) uint8 ids, then record it as done with its count of
        class-id (non-255) pixels (thread-safe).

        Raises:
            OutputError: the chunk or the log cannot be written (disk full, permissions).
        """
        with self.place.writing():
            self.mask[block.window.slices] = ids
        self.log.add(block.id, ids.size - int(np.count_nonzero(ids == NODATA)))

    def write_probs(self, tile: Tile, probs: np.ndarray) -> None:
        """Write one tile core's (K, h, w) float16 probabilities.

        Raises:
            OutputError: the chunks cannot be written.
        """
        if self.probs is not None:
            with self.place.writing():
                self.probs[(slice(None), *tile.core.slices)] = probs

    def write_confidence(self, block: Block, confidence: np.ndarray) -> None:
        """Write one block's (h, w) uint8 confidence (before :meth:`write_block` logs it).

        Raises:
            OutputError: the chunk cannot be written.
        """
        if self.confidence is not None:
            with self.place.writing():
                self.confidence[block.window.slices] = confidence

    def read_block(self, block: Block) -> np.ndarray:
        """(h, w) uint8 ids of one block."""
        return np.asarray(self.mask[block.window.slices])

    def read_confidence(self, block: Block) -> np.ndarray:
        """(h, w) uint8 confidence of one block (255 = nodata).

        Raises:
            ValueError: the store holds no confidence.
        """
        if self.confidence is None:
            raise ValueError(f"{self.path}: this store holds no confidence array")
        return np.asarray(self.confidence[block.window.slices])

    @classmethod
    def reopen(cls, path: str | os.PathLike[str]) -> ZarrMaskStore:
        """Open a store that another process created (and checked), to write blocks into it.

        Nothing is checked, repaired or removed, so it is safe while other processes write
        chunks and append to ``blocks.done`` (how distributed workers share one store).

        Raises:
            FileNotFoundError: there is no store at ``path``.
        """
        import zarr

        self = cls.__new__(cls)
        self.place = StorePlace(path)
        self.path, self.log = self.place.path, self.place.log
        if not self.place.exists():
            raise FileNotFoundError(f"{self.place}: no Zarr store here")
        self._bind(zarr.open_group(self.place.zarr_store(), mode="r+"))
        return self


def create_store(
    path: Any,
    shape: tuple[int, int],
    chunks: tuple[int, int],
    attrs: dict[str, Any],
    num_classes: int,
    probs_chunks: tuple[int, int] | None,
) -> Any:
    """A new group at ``path`` (a folder or a zarr store) with ``attrs``, CF georeferencing, ``mask`` and, with
    ``probs_chunks``, ``probs``."""
    import zarr

    group = zarr.open_group(path, mode="w", zarr_format=3)
    group.attrs.update(attrs)
    var_attrs = write_georeferencing(group, shape, attrs.get("crs"), attrs.get("transform"))
    group.create_array(
        "mask",
        shape=shape,
        chunks=chunks,
        dtype="uint8",
        fill_value=NODATA,
        dimension_names=("y", "x"),
        attributes={**var_attrs, "long_name": "class id", "_FillValue": NODATA},
    )
    if probs_chunks is not None:
        group.create_array(
            "probs",
            shape=(num_classes, *shape),
            chunks=(num_classes, *probs_chunks),
            dtype="float16",
            fill_value=0.0,
            dimension_names=("class", "y", "x"),
            attributes={**var_attrs, "long_name": "class probability"},
        )
    return group


def create_confidence(
    group: Any, shape: tuple[int, int], chunks: tuple[int, int], attrs: dict[str, Any]
) -> None:
    """Add ``confidence`` (H, W) uint8 (top-class probability x 100, 255 = nodata), placed on
    the map like ``mask``."""
    mask_attrs = dict(group["mask"].attrs)
    georef = {k: mask_attrs[k] for k in ("grid_mapping", "coordinates") if k in mask_attrs}
    group.create_array(
        "confidence",
        shape=shape,
        chunks=chunks,
        dtype="uint8",
        fill_value=NODATA,
        dimension_names=("y", "x"),
        attributes={
            **georef,
            "long_name": "top-class probability",
            "units": "percent",
            "_FillValue": NODATA,
        },
    )


def write_georeferencing(
    group: Any, shape: tuple[int, int], crs_wkt: str | None, transform: Sequence[float] | None
) -> dict[str, str]:
    """Add CF georeferencing to a Zarr group that will hold (..., y, x) rasters of ``shape``.

    - ``x`` (W,) and ``y`` (H,) float64 coordinate arrays at pixel centres, in the CRS's units
      (metres, or degrees for a geographic CRS), with CF axis attributes from pyproj
      (``CRS.cs_to_cf``); 1-D, so cheap for any scene size;
    - a 0-d ``spatial_ref`` variable with pyproj's CF grid-mapping attributes
      (``CRS.to_cf``: ``crs_wkt``, ``grid_mapping_name``...), ``spatial_ref`` (WKT) and
      ``GeoTransform`` (GDAL order, space-separated), as rioxarray writes them.

    Georeferenced: both; rioxarray then gives the same ``rio.crs``, ``rio.transform()`` and
    ``rio.bounds()`` as for ``mask.tif``. A rotated or sheared transform cannot be expressed by
    1-D coordinates: then only ``spatial_ref`` is written (no ``x``/``y``), and rioxarray reads
    the exact transform from its ``GeoTransform`` (its ``rio.bounds()`` then ignores the
    rotation, as it does for a rotated GeoTIFF). Not georeferenced (``crs_wkt`` or
    ``transform`` ``None``: plain images): pixel-index coordinates (column + 0.5, row + 0.5;
    rioxarray's transform is then the identity, as rasterio's is) and no ``spatial_ref``.

    Args:
        group: an open, writable zarr v3 group.
        shape: (H, W) in pixels.
        crs_wkt: the CRS as WKT, or ``None``.
        transform: the GDAL geotransform ``(c, a, b, f, d, e)``, or ``None``.

    Returns:
        The attributes for the data variables: ``{"grid_mapping": "spatial_ref",
        "coordinates": "spatial_ref"}`` when ``spatial_ref`` was written, else ``{}``.
    """
    import warnings

    import numpy as np

    height, width = shape
    georef = crs_wkt is not None and transform is not None
    c, a, b, f, d, e = transform if georef else (0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    axes: dict[str, dict[str, str]] = {"X": {"long_name": "column"}, "Y": {"long_name": "row"}}
    if georef:
        from pyproj import CRS

        crs = CRS.from_wkt(crs_wkt)
        axes.update({ax["axis"]: ax for ax in crs.cs_to_cf() if ax.get("axis") in axes})
        with warnings.catch_warnings():  # e.g. "angle ... lost in conversion to CF" (oblique
            warnings.simplefilter("ignore", UserWarning)  # Mercator): crs_wkt keeps it all
            cf = crs.to_cf()
        gt = " ".join(map(repr, transform))
        group.create_array(
            "spatial_ref",
            shape=(),
            dtype="int64",
            fill_value=0,
            attributes={**cf, "spatial_ref": crs_wkt, "GeoTransform": gt},
        )
    if b == 0 and d == 0:
        for name, n, origin, step, axis in (("x", width, c, a, "X"), ("y", height, f, e, "Y")):
            arr = group.create_array(
                name,
                shape=(n,),
                chunks=(max(n, 1),),
                dtype="float64",
                fill_value=0.0,
                dimension_names=(name,),
                attributes=axes[axis],
            )
            arr[:] = origin + step * (np.arange(n, dtype=np.float64) + 0.5)
    return {"grid_mapping": "spatial_ref", "coordinates": "spatial_ref"} if georef else {}


def consolidate(group: Any) -> None:
    """Consolidate the metadata of ``group``'s store (zarr warns that this is not yet in the v3
    spec; xarray reads it, and warns on every open without it)."""
    import zarr

    from tilesegd.warnfilter import ignoring

    with ignoring(UserWarning, "Consolidated metadata"):
        zarr.consolidate_metadata(group.store)

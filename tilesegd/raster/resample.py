"""Models at their own resolution: scenes read on the model's grid, masks written on the scene's.

A model learns objects at the ground sampling distance (GSD) it was trained at (the model file's
``gsd`` key, metres per pixel). When a scene's GSD (:func:`tilesegd.raster.gsd.pixel_size_m`) differs
from it by more than ``--gsd-tolerance``, the scene is segmented on a *model grid*: the scene's
extent cut into pixels of the model's GSD.

* **Reading** (:class:`ResampledSource`): windows of the model grid are read from the scene by
  GDAL with floating-point source windows, by the rules of :mod:`tilesegd.raster.footprint`
  (shared with ``tilesegd eval`` and training): ``average`` when shrinking (nodata values are
  left out of the averages), ``bilinear`` when enlarging. **Nodata rule**: a model-grid pixel is
  nodata when nodata covers more than half of its footprint (shrinking), or, when enlarging,
  when the scene pixel under its centre is nodata.
* **Tiles run on the model grid**, so the seamless stitching holds there.
* **Writing back** (:func:`to_scene_grid`): every scene pixel takes the class id (and
  confidence, and probabilities) of the model-grid pixel under its centre (nearest neighbour),
  block by block, so
  ``mask.tif``, ``pred.zarr``, the areas, zones and polygons stay on the scene's own grid and
  aligned with the input; areas stay in metres. A pixel that is nodata in the input (its own
  validity on the scene grid, :meth:`tilesegd.raster.reader.SceneSource.valid`) is nodata in the ids
  and the confidence whatever its model-grid pixel was: at a nodata edge a model-grid pixel
  holds scene pixels of both kinds.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from tilesegd.model.spec import NODATA
from tilesegd.raster.footprint import grid_shape, nearest_index, read_onto, valid_onto
from tilesegd.raster.gsd import GsdXY, gsd_of, pixel_size_m, resample_factors
from tilesegd.raster.reader import SceneSource, finite
from tilesegd.raster.scene import Scene
from tilesegd.raster.tiling import Block, TileGrid, Win, clip_window

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GridResample:
    """How one scene maps onto its model grid.

    Attributes:
        scene_shape: (H, W) of the scene, pixels.
        model_shape: (H', W') of the model grid, pixels.
        scene_gsd: (across, down) metres per scene pixel (``None``: a plain frame).
        model_gsd: metres per model-grid pixel (``None``: resampled by the model's scale).
    """

    scene_shape: tuple[int, int]
    model_shape: tuple[int, int]
    scene_gsd: GsdXY | None
    model_gsd: float | None

    @property
    def step(self) -> tuple[float, float]:
        """(rows, cols) of scene pixels per model-grid pixel (> 1: the scene is shrunk)."""
        (h, w), (mh, mw) = self.scene_shape, self.model_shape
        return h / mh, w / mw

    def model_transform(self, transform: Any) -> Any:
        """The model grid's pixel -> CRS transform (``None`` for a plain frame)."""
        if transform is None:
            return None
        from affine import Affine

        sy, sx = self.step
        return transform * Affine.scale(sx, sy)

    def record(self) -> dict[str, Any]:
        """``run.json`` fields: scene and model GSD (m), the factor and the model grid."""
        sy, sx = self.step
        return {
            "scene_gsd_m": None if self.scene_gsd is None else round(gsd_of(self.scene_gsd), 6),
            "model_gsd_m": self.model_gsd,
            "resample_factor": round(1 / math.sqrt(sx * sy), 6),
            "model_grid": list(self.model_shape),
        }


def plan_resample(
    scene: Scene,
    model_gsd: float | None,
    *,
    enabled: bool = True,
    tolerance: float = 0.1,
    scene_gsd: float | None = None,
    model_scale: float | None = None,
) -> tuple[GridResample | None, dict[str, Any]]:
    """Decide whether (and how) a scene is resampled to the model's resolution.

    The model's GSD wins when both it and the scene's pixel size are known; otherwise the
    model's ``scale`` (``tilesegd train --scale F`` on plain frames: every scene pixel becomes
    ``F`` model-grid pixels per axis) applies, as it did to the training frames.

    Args:
        scene: the profiled scene.
        model_gsd: the model's GSD (metres; ``--gsd`` or the model file's ``gsd``), or ``None``.
        enabled: ``False`` with ``--resample off``.
        tolerance: relative GSD difference (or ``|scale - 1|``) that still runs the scene as it
            is.
        scene_gsd: ``--scene-gsd``: the GSD of plain frames (no georeferencing).
        model_scale: the model file's ``scale``, or ``None``.

    Returns:
        ``(resample or None, run.json fields)``: the fields record the scene's and the model's
        GSD and the factor (1 when not resampled).
    """
    size = pixel_size_m(scene.crs, scene.transform, scene.height, scene.width)
    if size is None and scene_gsd is not None:
        size = (scene_gsd, scene_gsd)
    fields: dict[str, Any] = {"scene_gsd_m": None if size is None else round(gsd_of(size), 6)}
    fields["model_gsd_m"] = model_gsd
    if not enabled:
        return None, {**fields, "resample_factor": 1.0}
    if model_gsd is not None and size is not None:
        factors = resample_factors(size, model_gsd, tolerance)
        why = f"{gsd_of(size):.3g} m pixels, the model's are {model_gsd:.3g} m"
    elif model_scale is not None and abs(float(model_scale) - 1.0) > tolerance:
        factors = (float(model_scale), float(model_scale))
        why = f"the model was trained on frames resampled by {float(model_scale):g}"
    else:
        if model_gsd is not None:
            log.info("%s: a plain frame has no GSD; run as it is (give --scene-gsd M)", scene.path)
        return None, {**fields, "resample_factor": 1.0}
    if factors is None:
        return None, {**fields, "resample_factor": 1.0}
    shape = grid_shape((scene.height, scene.width), factors)
    plan = GridResample((scene.height, scene.width), shape, size, model_gsd)
    log.info("%s: %s: segmenting on a %d x %d grid", scene.path, why, shape[1], shape[0])
    return plan, plan.record()


class ResampledSource(SceneSource):
    """A :class:`~tilesegd.raster.reader.Source` of a scene on its model grid (see the module
    docstring for the resampling and nodata rules); thread-safe like its base.

    Args:
        scene: the profiled scene.
        bands: 1-based bands, in model input order.
        resample: the scene's :class:`GridResample`.
    """

    def __init__(self, scene: Scene, bands: tuple[int, ...], resample: GridResample) -> None:
        super().__init__(scene, bands)
        self.resample = resample
        self.height, self.width = resample.model_shape

    def read(self, win: Win) -> tuple[np.ndarray, np.ndarray]:
        """``(data (C, h, w) in the scene's dtype, valid (h, w) bool)`` of a model-grid window
        (padded with nodata outside the grid).

        Raises:
            InputError: GDAL cannot decode the scene there.
        """
        inner, (dr, dc) = clip_window(win, self.height, self.width)
        data = np.zeros((len(self.bands), win.height, win.width), self.scene.dtype)
        valid = np.zeros((win.height, win.width), bool)
        if inner.height and inner.width:
            native, grid = self.resample.scene_shape, self.resample.model_shape
            dst = (slice(dr, dr + inner.height), slice(dc, dc + inner.width))
            with self.decoding(inner):
                ds = self._ds()
                data[(slice(None), *dst)] = read_onto(ds, self.bands, native, grid, inner)
                valid[dst] = valid_onto(ds, native, grid, inner) if self.scene.has_mask else True
        finite(data, valid)
        return data, valid


class GrownRegion:
    """An area of interest on a model grid, grown by ``pixels`` model pixels (binary dilation,
    ``scipy.ndimage``): a model pixel whose centre is just outside the AOI can hold scene
    pixels whose centres are inside it, and must be computed. The scene-grid outputs then apply
    the AOI by the pixel-centre rule on the scene grid (:func:`to_scene_grid`).

    Has the :class:`tilesegd.inference.pipeline.Region` interface, and ``empty`` / ``fraction`` of the
    wrapped :class:`tilesegd.vector.aoi.SceneAOI`.
    """

    def __init__(self, region: Any, pixels: int = 1) -> None:
        self.region, self.pixels = region, pixels

    @property
    def empty(self) -> bool:
        """The AOI does not reach the scene."""
        return bool(self.region.empty)

    @property
    def fraction(self) -> float:
        """Approximate share of the scene inside the AOI (not grown)."""
        return float(self.region.fraction)

    def _grown(self, win: Win) -> Win:
        p = self.pixels
        return Win(win.row_off - p, win.col_off - p, win.height + 2 * p, win.width + 2 * p)

    def intersects(self, win: Win) -> bool:
        """Whether the grown AOI may reach ``win``."""
        return bool(self.region.intersects(self._grown(win)))

    def mask(self, win: Win) -> np.ndarray:
        """(h, w) bool: pixels within ``pixels`` of an AOI pixel (8-neighbourhood)."""
        from scipy.ndimage import binary_dilation

        p = self.pixels
        m = self.region.mask(self._grown(win))
        if p and m.any():
            m = binary_dilation(m, structure=np.ones((3, 3), bool), iterations=p)
        return m[p : p + win.height, p : p + win.width]


def scene_nodata(win: Win, keep: Any = None, valid: Any = None) -> np.ndarray | None:
    """(h, w) bool of the scene-grid pixels of ``win`` that are nodata in every output,
    whatever the model grid made of them: outside the area of interest ``keep``
    (``mask(win) -> bool``) or nodata in the input (``valid(win) -> bool``, the input's own
    validity on the scene grid); ``None`` when neither is given."""
    out = None if keep is None else ~keep.mask(win)
    if valid is not None:
        bad = ~valid(win)
        out = bad if out is None else out | bad
    return out


def to_scene_grid(
    model_store: Any,
    scene_store: Any,
    grid: TileGrid,
    resample: GridResample,
    keep: Any = None,
    valid: Any = None,
) -> None:
    """Write the scene-grid ``scene_store`` from the finished model-grid ``model_store``:
    each scene pixel takes the ids (and confidence, and probabilities) of the model-grid pixel
    under its centre, block by block (memory: a few arrays of one block).

    Args:
        grid: the scene-grid block geometry (``scene_store``'s chunks).
        keep: the scene's area of interest (``mask(win) -> bool``), or ``None``: pixels outside
            are nodata on the scene grid too (pixel-centre rule on the output grid).
        valid: the input's validity on the scene grid (``valid(win) -> (h, w) bool``,
            :meth:`tilesegd.raster.reader.SceneSource.valid`), or ``None`` (every pixel valid): a
            pixel that is nodata in the input is nodata (255) in the ids and the confidence
            however its model-grid pixel was classed (a model-grid pixel holds scene pixels
            of both kinds at a nodata edge). Probabilities are copied as they are, as on the
            scene's own grid (the ids say which pixels are nodata).
    """
    (h, w), (mh, mw) = resample.scene_shape, resample.model_shape
    for block in grid.blocks():
        win = block.window
        rows = nearest_index(h, mh, win.row_off, win.row_off + win.height)
        cols = nearest_index(w, mw, win.col_off, win.col_off + win.width)
        pick = np.ix_(rows - rows[0], cols - cols[0])
        src = Block(block.id, block.index, Win(int(rows[0]), int(cols[0]),
                                                int(rows[-1] - rows[0] + 1),
                                                int(cols[-1] - cols[0] + 1)))  # fmt: skip
        ids = model_store.read_block(src)[pick]
        nodata = scene_nodata(win, keep, valid)
        if nodata is not None:
            ids[nodata] = NODATA
        if scene_store.confidence is not None and model_store.confidence is not None:
            conf = model_store.read_confidence(src)[pick]
            if nodata is not None:
                conf[nodata] = NODATA
            scene_store.write_confidence(block, conf)
        if scene_store.probs is not None and model_store.probs is not None:
            probs = np.asarray(model_store.probs[(slice(None), *src.window.slices)])
            scene_store.probs[(slice(None), *win.slices)] = probs[(slice(None), *pick)]
        scene_store.write_block(block, ids)  # last: logs the block as done

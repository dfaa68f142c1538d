"""``--aoi``: the area of interest of one scene, answered in pixels.

**Pixel-centre rule.** A pixel is inside the AOI when its centre is inside the AOI polygons
(``rasterio.features.rasterize`` with ``all_touched=False``, GDAL's pixel-centre rule). The
polygons are dissolved first (``shapely.union_all``), so a centre on an edge shared by two
adjacent AOI polygons is inside. Pixels outside the AOI are to be nodata (255) everywhere.

:meth:`SceneAOI.intersects` is the cheap test for skipping blocks and tiles: it asks whether the
AOI meets the rectangle spanned by the window's pixel centres (grown by
:data:`CENTRE_TOLERANCE` pixels), on a prepared geometry. It never says False where
:meth:`SceneAOI.mask` has a True pixel; it may say True for a window whose mask is empty when
the AOI only grazes it.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from tilesegd.raster.tiling import Win
from tilesegd.vector.layers import PolygonLayer, polygonal
from tilesegd.vector.pixelgrid import place, rasterize_window

log = logging.getLogger(__name__)

# Slack around the pixel-centre rectangle in :meth:`SceneAOI.intersects`, in pixels: far above
# floating-point rounding in GDAL's scanline fill, far below the 0.5 px to the next pixel edge.
CENTRE_TOLERANCE = 0.01


class SceneAOI:
    """The AOI placed on one scene (only geometry is held; masks are rasterised per window).

    Args:
        layer: the AOI polygons (:func:`tilesegd.vector.layers.load_polygons` with
            ``option="--aoi"``).
        crs, transform: the scene's georeferencing (rasterio CRS and ``affine.Affine``).
        height, width: scene size in pixels.
        scene: the scene's name, for messages.

    Raises:
        InputError: the scene is not georeferenced (plain JPEG frame).

    A scene the AOI does not reach (:attr:`empty`) is logged as a warning. Instances pickle
    (for Dask workers); memory is the AOI's geometry clipped to the scene.
    """

    def __init__(
        self,
        layer: PolygonLayer,
        crs: Any,
        transform: Any,
        height: int,
        width: int,
        *,
        scene: str = "scene",
    ) -> None:
        import shapely

        self.height, self.width, self.scene = height, width, scene
        _, px = place(layer, crs, transform, height, width, scene=scene)
        geom = shapely.clip_by_rect(shapely.union_all(px), 0, 0, width, height)
        # only polygons: a stray line would be burnt along every pixel it crosses
        self.geom = polygonal(np.array([geom], dtype=object))[0] or shapely.Polygon()
        shapely.prepare(self.geom)
        self.empty = not self.intersects(Win(0, 0, height, width))
        if self.empty:
            log.warning(
                "%s: the AOI %s does not overlap this scene; nothing is computed and every "
                "output pixel is nodata",
                scene,
                layer.path,
            )

    def __setstate__(self, state: dict) -> None:
        """Unpickled (e.g. on a Dask worker): prepare the geometry again."""
        import shapely

        self.__dict__.update(state)
        shapely.prepare(self.geom)

    @property
    def covers_nothing(self) -> bool:
        """Same as :attr:`empty`: no pixel centre of the scene is inside the AOI."""
        return self.empty

    @property
    def fraction(self) -> float:
        """Approximate share (0-1) of the scene's area inside the AOI (polygon area / scene
        area, for logs; the pixel count can differ slightly)."""
        return float(self.geom.area) / (self.height * self.width)

    def intersects(self, win: Win) -> bool:
        """Does the AOI meet the pixel centres of ``win`` (scene pixels, may reach outside)?

        Tests the rectangle from the first to the last pixel centre of the window, grown by
        :data:`CENTRE_TOLERANCE` px, against the prepared AOI: conservative w.r.t.
        :meth:`mask` (True whenever the mask has a True pixel).
        """
        import shapely

        if self.geom.is_empty or win.height < 1 or win.width < 1:
            return False
        t = 0.5 - CENTRE_TOLERANCE
        box = shapely.box(
            win.col_off + t,
            win.row_off + t,
            win.col_off + win.width - t,
            win.row_off + win.height - t,
        )
        return bool(self.geom.intersects(box))

    def mask(self, win: Win) -> np.ndarray:
        """(h, w) bool, True where the pixel centre is inside the AOI (pixel-centre rule).

        ``win`` may reach outside the scene; pixels there are False.
        """
        if not self.intersects(win):
            return np.zeros((win.height, win.width), bool)
        return rasterize_window([self.geom], win, np.uint8).astype(bool)

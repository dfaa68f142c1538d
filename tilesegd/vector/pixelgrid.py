"""Polygons on a scene's pixel grid: reprojection into pixel coordinates, per-window burning.

:func:`place` reprojects a :class:`~tilesegd.vector.layers.PolygonLayer` (pyproj, ``always_xy``) onto
one scene and maps it through the inverse of the scene's affine transform into **pixel
coordinates**: ``x`` = column, ``y`` = row, pixel ``(r, c)`` covering ``[c, c+1) x [r, r+1)``
with its centre at ``(c + 0.5, r + 0.5)``. AOI masks and zone rasters work in those
coordinates, so rotated transforms and geographic scenes need no special case.
:func:`rasterize_window` burns such polygons into one window with GDAL's pixel-centre rule
(``rasterio.features.rasterize``, ``all_touched=False``).

**Ties: a pixel centre exactly on an edge.** GDAL's scanline fill counts a centre that lies on
an edge in one fixed way: on each row it fills the columns
whose centre ``cx`` satisfies ``x_left < cx <= x_right`` (a centre on a left edge is out, on a
right edge is in) and takes an edge for the rows with ``y_top <= cy < y_bottom`` (a centre on a
top edge is in, on a bottom edge is out). Equivalently: **a centre on an edge belongs to the
polygon when the point moved an infinitesimal step left (-x), and then a smaller step down
(+y, rows grow downwards), is inside**. Left alone, floating-point rounding decides such ties
(subtracting each window's origin rounds differently), so the same centre could fall either side
in two windows. :func:`rasterize_window` therefore moves the centres by
(-:data:`TIE_SHIFT_X`, +:data:`TIE_SHIFT_Y`) pixels before GDAL sees them: exact ties follow the
rule above in every window, and any other centre moves by under 1e-6 px (a centre nearer
than that to an edge is decided as if it were on it).
:func:`centre_rule` is the same rule as a point-in-polygon test (for checks and references).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from tilesegd.errors import InputError
from tilesegd.raster.tiling import Win
from tilesegd.vector.layers import PolygonLayer, polygonal, repair

log = logging.getLogger(__name__)

# Geometries with more vertices than this are clipped to the window (plus 1 px) before they
# are rasterised: GDAL's scanline fill visits every edge on every row, so a district with 10^5
# vertices would cost 10^5 x rows per block. Clipping adds vertices on the clip lines, outside
# the window, so the pixel-centre result is unchanged up to floating-point rounding of ties.
CLIP_VERTICES = 1000
# Reprojected edges are densified to about this many pixels first, so that a straight edge in
# the file's CRS stays (nearly) straight in that CRS after reprojection, as GIS software draws it.
DENSIFY_PIXELS = 64.0
# The tie-breaking move of the pixel centres (pixels; powers of two, so adding them to a window
# origin is exact): far above GDAL's rounding (~1e-10 px at 10^5 px coordinates), far below
# anything a user could see.
TIE_SHIFT_X = 2.0**-20  # ~9.5e-7 px, to the left
TIE_SHIFT_Y = 2.0**-27  # ~7.5e-9 px, downwards


def centre_rule(geom: Any, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Whether points (pixel centres) are inside ``geom`` by the module's tie rule.

    Args:
        geom: a shapely polygon in pixel coordinates (x = column, y = row).
        x, y: float arrays of the same shape (pixel coordinates, e.g. ``col + 0.5``).

    Returns:
        bool array of that shape: ``shapely.contains_xy`` at the points moved by
        (-:data:`TIE_SHIFT_X`, +:data:`TIE_SHIFT_Y`), which is what :func:`rasterize_window`
        burns.
    """
    import shapely

    return shapely.contains_xy(geom, np.asarray(x) - TIE_SHIFT_X, np.asarray(y) + TIE_SHIFT_Y)


def to_pyproj(crs: Any) -> Any:
    """A ``pyproj.CRS`` from a rasterio CRS, a pyproj CRS, WKT, ``EPSG:n`` or ``None``."""
    from pyproj import CRS

    if crs is None:
        return None
    if hasattr(crs, "to_wkt") and not isinstance(crs, CRS):
        crs = crs.to_wkt()
    return CRS.from_user_input(crs)


def require_georeferenced(crs: Any, transform: Any, scene: str, option: str) -> None:
    """Raise :class:`~tilesegd.errors.InputError` when a scene has no CRS or transform.

    Args:
        scene: the scene's name or path, for the message.
        option: ``--aoi`` or ``--zones``, for the message.
    """
    if crs is None or transform is None:
        raise InputError(
            f"{scene}: the scene is not georeferenced (a plain image frame: no CRS or "
            f"transform), so {option} polygons cannot be placed on it; {option} needs "
            "georeferenced scenes (GeoTIFF with a CRS), or run this scene without "
            f"{option}"
        )


def rasterize_window(geoms: list[Any], win: Win, dtype: Any, values: Any = None) -> np.ndarray:
    """Burn pixel-coordinate polygons into a ``win``-sized array (pixel-centre rule).

    Args:
        geoms: shapely polygons in scene pixel coordinates (x = column, y = row).
        win: the window (scene pixels).
        dtype: output dtype (``np.uint8``, ``np.int32``).
        values: one burn value per geometry (default 1); later geometries are drawn over
            earlier ones (GDAL's order).

    Returns:
        (win.height, win.width) array of ``dtype``, 0 where no geometry's centre rule holds.

    Geometries over :data:`CLIP_VERTICES` vertices are first clipped to the
    window plus one pixel (same pixels, fewer edges for GDAL's scanline fill). Centres exactly
    on an edge follow the module's tie rule, whatever the window (:func:`centre_rule`).
    """
    import shapely
    from affine import Affine
    from rasterio.features import rasterize

    values = [1] * len(geoms) if values is None else values
    r0, c0, h, w = win.row_off, win.col_off, win.height, win.width
    shapes = []
    for g, v in zip(geoms, values, strict=True):
        if shapely.get_num_coordinates(g) > CLIP_VERTICES:
            g = shapely.clip_by_rect(g, c0 - 1, r0 - 1, c0 + w + 1, r0 + h + 1)
            g = polygonal(np.array([g], dtype=object))[0]  # never burn a stray line
        if g is not None and not g.is_empty:
            shapes.append((g, int(v)))
    if not shapes:
        return np.zeros((h, w), dtype)
    return rasterize(
        shapes,
        out_shape=(h, w),
        # the window's pixel centres, moved by the tie-breaking shift (see the module doc)
        transform=Affine(1.0, 0.0, c0 - TIE_SHIFT_X, 0.0, 1.0, r0 + TIE_SHIFT_Y),
        fill=0,
        all_touched=False,
        dtype=dtype,
    )


def place(
    layer: PolygonLayer, crs: Any, transform: Any, height: int, width: int, *, scene: str = "scene"
) -> tuple[np.ndarray, np.ndarray]:
    """The features of ``layer`` that touch a scene, in that scene's pixel coordinates.

    Args:
        layer: the polygons (file CRS).
        crs: the scene's CRS (rasterio / pyproj CRS, WKT...).
        transform: the scene's ``affine.Affine`` pixel -> CRS transform.
        height, width: scene size in pixels.
        scene: the scene's name, for messages.

    Returns:
        ``(index, geoms)``: (m,) int64 positions in ``layer`` (ascending, so the file's
        order is kept) and (m,) object array of valid Polygon / MultiPolygon in pixel
        coordinates (x = column, y = row), for the m features that intersect the scene's
        rectangle ``[0, width] x [0, height]``.

    Raises:
        InputError: the scene is not georeferenced.
    """
    import shapely

    require_georeferenced(crs, transform, scene, layer.option)
    scene_crs = to_pyproj(crs)
    cand, frame = _candidates(layer, scene_crs, transform, height, width)
    geoms = layer.geoms[cand]
    if not scene_crs.equals(layer.crs):
        if frame is not None:  # densify only what reaches the scene (huge zones stay cheap)
            geoms = shapely.clip_by_rect(geoms, *frame)
        geoms = _reproject(geoms, layer.crs, scene_crs, transform, height, width)
    inv = ~transform
    coef = np.array([[inv.a, inv.b], [inv.d, inv.e]])
    off = np.array([inv.c, inv.f])
    px = shapely.transform(geoms, lambda xy: xy @ coef.T + off)
    bounds = shapely.bounds(px)
    ok = np.isfinite(bounds).all(axis=1)
    if not ok.all():
        log.warning(
            "%s: %d polygon(s) of %s could not be reprojected onto scene %s (outside the "
            "CRS's area of use); they are left out",
            layer.path,
            int((~ok).sum()),
            layer.option,
            scene,
        )
    cand, px = cand[ok], px[ok]
    px, _ = repair(px)  # reprojection can make rings touch or cross (silently repaired)
    keep = ~shapely.is_missing(px)
    keep[keep] = shapely.intersects(px[keep], shapely.box(0, 0, width, height))
    return cand[keep], px[keep]


def _candidates(
    layer: PolygonLayer, scene_crs: Any, transform: Any, height: int, width: int
) -> tuple[np.ndarray, tuple[float, float, float, float] | None]:
    """Positions of the features whose bounds meet the scene's footprint, and that footprint's
    bounds in the file's CRS grown by 1 % (``None`` when they cannot be computed: all features)."""
    from pyproj import Transformer

    corners = np.array(
        [transform * xy for xy in ((0, 0), (width, 0), (0, height), (width, height))]
    )
    x0, y0 = corners.min(axis=0)
    x1, y1 = corners.max(axis=0)
    if not scene_crs.equals(layer.crs):
        try:
            t = Transformer.from_crs(scene_crs, layer.crs, always_xy=True)
            x0, y0, x1, y1 = t.transform_bounds(x0, y0, x1, y1, densify_pts=21)
        except Exception:  # noqa: BLE001 - pyproj raises several types; fall back to all
            return np.arange(len(layer)), None
        if not all(np.isfinite((x0, y0, x1, y1))) or x1 < x0:
            return np.arange(len(layer)), None  # antimeridian or out of the area of use
        mx, my = 0.01 * (x1 - x0), 0.01 * (y1 - y0)
        x0, y0, x1, y1 = x0 - mx, y0 - my, x1 + mx, y1 + my
    import shapely

    frame = (x0, y0, x1, y1)
    return np.sort(layer.tree.query(shapely.box(*frame))).astype(np.int64), frame


def _reproject(
    geoms: np.ndarray, src_crs: Any, scene_crs: Any, transform: Any, height: int, width: int
) -> np.ndarray:
    """File CRS -> scene CRS, edges densified to about :data:`DENSIFY_PIXELS` pixels."""
    import shapely
    from pyproj import Transformer

    fwd = Transformer.from_crs(src_crs, scene_crs, always_xy=True)
    back = Transformer.from_crs(scene_crs, src_crs, always_xy=True)
    cx, cy = transform * (width / 2, height / 2)
    ex, ey = transform * (width / 2 + DENSIFY_PIXELS, height / 2 + DENSIFY_PIXELS)
    (x0, x1), (y0, y1) = back.transform([cx, ex], [cy, ey])
    step = float(np.hypot(x1 - x0, y1 - y0)) / np.sqrt(2)  # file units per DENSIFY_PIXELS
    if np.isfinite(step) and step > 0:
        geoms = shapely.segmentize(geoms, step)

    def project(xy: np.ndarray) -> np.ndarray:
        x, y = fwd.transform(xy[:, 0], xy[:, 1])
        return np.column_stack([x, y])

    return shapely.transform(geoms, project)

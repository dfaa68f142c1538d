"""Geometry on the pieces that :mod:`tilesegd.outputs.regions` traces in each block.

All coordinates are scene pixel coordinates: every vertex GDAL traces is an integer pixel
corner, so the operations here (snapping corners onto outlines, coverage unions, dropping
collinear vertices) are exact.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def dissolve(pieces: list[Any]) -> Any:
    """One polygon from the pieces of one region, traced in different blocks.

    The pieces' outer rings are merged with ``shapely.coverage_union_all`` (they must match
    vertex for vertex along the block edges they share: ``tilesegd.outputs.regions`` snaps the
    corners there); the pieces' holes lie inside a single block and are unchanged by the merge,
    so they are added back as they are. This keeps a region with many holes cheap (a
    scene-wide background with every building as a hole: an overlay of all 38,000 holes at
    16384^2 took 25-40 s and 1 GB; the merge of the outer rings ~4 s).

    Args:
        pieces: polygons (pixel coordinates) of one 4-connected region.

    Returns:
        The region's Polygon.
    """
    import shapely

    arr = np.array(pieces, dtype=object)
    merged = shapely.coverage_union_all(shapely.polygons(shapely.get_exterior_ring(arr)))
    if merged.geom_type != "Polygon":  # pragma: no cover - pieces of one region are connected
        raise RuntimeError(f"the pieces of one region dissolved into a {merged.geom_type}")
    counts = shapely.get_num_interior_rings(arr) + 1
    holes = np.delete(shapely.get_rings(arr), np.cumsum(counts) - counts)  # minus the shells
    rings = np.concatenate([shapely.get_rings(merged), holes])  # the merged shell comes first
    return shapely.polygons(rings, indices=np.zeros(len(rings), np.intp))[0]


def drop_collinear(polygons: np.ndarray) -> np.ndarray:
    """Remove the vertices that lie on a straight line between their neighbours (the point
    set is unchanged): Douglas-Peucker with tolerance 0 on each ring, which is linear in the
    vertices (on whole polygons GEOS's simplifiers also index or repair them: a minute on a
    polygon with 38,000 holes).

    Args:
        polygons: (N,) shapely Polygons.

    Returns:
        (N,) Polygons.
    """
    import shapely

    if not len(polygons):
        return polygons
    counts = shapely.get_num_interior_rings(polygons) + 1
    rings = shapely.simplify(shapely.get_rings(polygons), 0.0, preserve_topology=False)
    return shapely.polygons(rings, indices=np.repeat(np.arange(len(polygons)), counts))


def node_coverage(lab: np.ndarray, pieces: np.ndarray, col_off: int, row_off: int) -> np.ndarray:
    """Make a block's traced pieces an edge-matched coverage, as ``coverage_simplify`` needs.

    GDAL puts vertices only where a piece's outline turns, so where one piece's straight edge
    passes another's corner (a T-junction) the neighbours' shared edges have different
    vertices. This adds, to every piece, the pixel corners inside the block where three or four
    pieces meet (found on the labels), with ``shapely.snap`` (tolerance 1e-6 px: the corner is
    on the edge, so only that vertex is inserted, exactly).

    Args:
        lab: (h, w) int32 labels of the block, every pixel labelled 1..N.
        pieces: (N,) polygons of labels 1..N in scene pixel coordinates.
        col_off, row_off: the block's offset in the scene (pixels).

    Returns:
        (N,) polygons with those vertices added.
    """
    import shapely

    a, b, c, d = lab[:-1, :-1], lab[:-1, 1:], lab[1:, :-1], lab[1:, 1:]
    distinct = 1 + (b != a) + ((c != a) & (c != b)) + ((d != a) & (d != b) & (d != c))
    r, q = np.nonzero(distinct >= 3)
    if not len(r):
        return pieces
    labels = np.concatenate([a[r, q], b[r, q], c[r, q], d[r, q]]).astype(np.int64)
    xy = np.tile(np.stack([q + 1 + col_off, r + 1 + row_off], axis=1), (4, 1))
    key = np.unique(np.column_stack([labels, xy]), axis=0)
    owners = np.unique(key[:, 0])
    points = shapely.multipoints(
        key[:, 1:].astype(np.float64), indices=np.searchsorted(owners, key[:, 0])
    )
    out = pieces.copy()
    out[owners - 1] = shapely.snap(pieces[owners - 1], points, 1e-6)
    return out

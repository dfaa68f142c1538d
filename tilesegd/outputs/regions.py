"""Connected regions of a class mask as polygons, traced block by block in bounded memory.

:class:`RegionTracer` takes a scene's blocks in row-major order (``TileGrid.blocks()``) with
their (h, w) uint8 class ids, and returns each finished region as one polygon in scene
**pixel coordinates** (x = column, y = row, pixel corners on integers).

* **Regions** are 4-connected (pixels sharing an edge; a diagonal-only contact separates two
  regions): with 8-connectivity two pixels touching at a corner would make a self-touching,
  invalid polygon, while every 4-connected region is a valid OGC polygon (holes may touch the
  shell at a point). Holes are kept.
* **Per block**, ``scipy.ndimage.label`` (4-connectivity) labels the kept classes' pixels and
  GDAL's polygonize (``rasterio.features.shapes``, 4-connectivity) traces one polygon per label.
* **Across blocks** (union-find), pieces of one class that share a block edge belong to one
  region; they get a vertex at every corner along that edge where a piece on either side
  starts or ends, and are dissolved with ``shapely.coverage_union_all``
  (:func:`tilesegd.outputs.pieces.dissolve`; exact: every vertex is an integer pixel corner),
  so a region crossing block boundaries is one polygon without a seam line.
* **Bounded memory**: a region is emitted as soon as it can no longer grow, i.e. as soon as no
  piece of it touches an edge whose far side is still unread (the bottom edge of the last block
  row read, or the right edge of the last block read). Only regions on that frontier are held.
* **Simplification** (``simplify`` > 0, in pixels) runs per block, before merging, with
  ``shapely.coverage_simplify`` (GEOS's coverage simplifier: Visvalingam-Whyatt on the edges
  shared by the polygons of a coverage, topology preserving) on *every* piece of the block,
  with the pixels of classes not kept and nodata traced as filler pieces so the block is fully
  covered, and ``simplify_boundary=False`` so the block's border stays exact. T-junction
  corners are first added to the pieces (:func:`tilesegd.outputs.pieces.node_coverage`) so
  that shared edges match vertex for vertex. Each edge inside a block is thus simplified once,
  for both its sides, and the exact block borders still dissolve exactly: neighbouring
  polygons share identical edges (no gaps, no overlaps) whenever each of them closes, at no
  extra memory. Along a block border every piece, not only those dissolved across it, gets
  the corners where the piece on either side changes, and no vertex is dropped afterwards
  (even where it lies on a straight line), so the polygons written are an edge-matched
  coverage (``shapely.coverage_is_valid``): two polygons or two rings of one polygon meet only
  at vertices of both. That is what keeps them valid and gap-free in the CRS: the pixel -> CRS
  transform rounds coordinates (x * 0.1 + 315000.0), which moves a vertex lying on another
  ring's edge off that edge (issue 20.2: a hole touching its shell on the shell's dropped
  collinear vertex became a self-intersection at 10 cm pixels). The price: a boundary keeps
  its exact pixel corner where it crosses a block border (one pinned vertex per crossing), so
  the result depends (slightly) on the block size, and a node where three regions meet stays
  a vertex of all three, also of the one whose outline runs straight through it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import chain
from typing import Any

import numpy as np

from tilesegd.errors import ConfigError, InputError
from tilesegd.model.spec import NODATA
from tilesegd.outputs.pieces import dissolve, drop_collinear, node_coverage
from tilesegd.raster.tiling import Block

VOID = NODATA  # class value of pixels that are not vectorised (nodata, classes not kept)


@dataclass
class Region:
    """One finished region: ``class_id``, ``pixels`` (its pixel count in the mask) and
    ``geometry``, a shapely Polygon in scene pixel coordinates (simplified when asked)."""

    class_id: int
    pixels: int
    geometry: Any


class _Open:
    """A region still on the frontier: its pieces (piece id -> polygon), pixel count and
    open edge contacts."""

    __slots__ = ("class_id", "pixels", "open", "pieces")

    def __init__(self, class_id: int, pixels: int, open_: int, piece: Any, gid: int) -> None:
        self.class_id, self.pixels, self.open = class_id, pixels, open_
        self.pieces = {gid: piece}


def block_grid(blocks: Sequence[Block], height: int, width: int) -> tuple[int, int]:
    """Check that ``blocks`` tile a ``height x width`` scene as a row-major grid.

    Returns:
        (block rows, block columns).

    Raises:
        ConfigError: the blocks do not tile the scene (gaps, overlaps, ragged rows).
    """
    if not blocks:
        raise ConfigError("no blocks given: a scene has at least one block")
    n_rows = 1 + max(b.index[0] for b in blocks)
    n_cols = 1 + max(b.index[1] for b in blocks)
    rows: dict[int, tuple[int, int]] = {}
    cols: dict[int, tuple[int, int]] = {}
    for b in blocks:
        w = b.window
        rows.setdefault(b.index[0], (w.row_off, w.height))
        cols.setdefault(b.index[1], (w.col_off, w.width))
        if rows[b.index[0]] != (w.row_off, w.height) or cols[b.index[1]] != (w.col_off, w.width):
            raise ConfigError(f"block {b.index} is not aligned with its block row and column")
    ok = len(blocks) == n_rows * n_cols and len(rows) == n_rows and len(cols) == n_cols
    for spans, total in ((rows, height), (cols, width)):
        edge = 0
        for k in range(len(spans)):
            ok = ok and k in spans and spans[k][0] == edge and spans[k][1] > 0
            edge += spans[k][1] if k in spans else 0
        ok = ok and edge == total
    if not ok:
        raise ConfigError(f"the blocks do not tile the {height}x{width} scene row-major")
    return n_rows, n_cols


class RegionTracer:
    """Traces the 4-connected regions of the kept classes, block by block.

    Args:
        blocks: every block of the scene (``tilesegd.raster.tiling.Block``); fed to :meth:`add` in
            row-major order (the order of ``TileGrid.blocks()``).
        height, width: scene size in pixels.
        keep: class ids to vectorise (0..254; nodata 255 never is).
        simplify: coverage-simplification tolerance in pixels (0 = exact pixel outlines).

    Raises:
        ConfigError: blocks that do not tile the scene, a class id out of range, a negative
            tolerance.
    """

    def __init__(
        self,
        blocks: Sequence[Block],
        height: int,
        width: int,
        keep: set[int],
        simplify: float = 0.0,
    ) -> None:
        self.blocks = sorted(blocks, key=lambda b: b.index)
        self.n_rows, self.n_cols = block_grid(self.blocks, height, width)
        if any(not 0 <= k < NODATA for k in keep):
            raise ConfigError(f"class ids to vectorise must be 0..254, got {sorted(keep)}")
        if not simplify >= 0:
            raise ConfigError(f"simplify tolerance must be >= 0 pixels, got {simplify}")
        self.simplify = float(simplify)
        self._lut = np.full(256, VOID, np.uint8)
        self._lut[sorted(keep)] = sorted(keep)
        self._parent: dict[int, int] = {}
        self._open: dict[int, _Open] = {}
        self._next_gid = 1
        self._bottom: list[tuple[np.ndarray, np.ndarray] | None] = [None] * self.n_cols
        self._right: tuple[np.ndarray, np.ndarray] | None = None
        self._done = 0

    @property
    def open_regions(self) -> int:
        """Regions held on the frontier now."""
        return len(self._open)

    def add(self, block: Block, ids: np.ndarray) -> list[Region]:
        """Trace one block and return the regions that this block finished.

        Args:
            block: the next block in row-major order.
            ids: its (h, w) uint8 class ids (255 = nodata).

        Raises:
            InputError: ``ids`` has the wrong shape or dtype, or the block is out of order.
        """
        if self._done >= len(self.blocks) or block.index != self.blocks[self._done].index:
            raise InputError(f"block {block.index} given out of row-major order")
        w = block.window
        ids = np.asarray(ids)
        if ids.shape != (w.height, w.width) or ids.dtype != np.uint8:
            raise InputError(
                f"block {block.index}: expected ({w.height}, {w.width}) uint8 class ids, got "
                f"{ids.shape} {ids.dtype}"
            )
        self._done += 1
        i, j = block.index
        cls = self._lut[ids]
        lab, piece_cls, n_kept = self._label(cls)
        geoms = self._trace(lab, block, len(piece_cls) - 1, n_kept)
        pixels = np.bincount(lab.ravel(), minlength=len(piece_cls))
        base = self._next_gid - 1
        self._next_gid += n_kept

        def gid(line: np.ndarray) -> np.ndarray:  # labels along an edge -> piece ids (0: none)
            return np.where((line > 0) & (line <= n_kept), line.astype(np.int64) + base, 0)

        top, left, bottom, right = gid(lab[0]), gid(lab[:, 0]), gid(lab[-1]), gid(lab[:, -1])
        below, after = i < self.n_rows - 1, j < self.n_cols - 1  # unread blocks beyond the edge
        contacts = np.zeros(n_kept + 1, np.int64)
        for edge, unread in ((bottom, below), (right, after)):
            if unread:
                contacts[np.unique(edge[edge > 0]) - base] += 1
        touched = []
        for label in range(1, n_kept + 1):
            g = base + label
            self._parent[g] = g
            self._open[g] = _Open(
                int(piece_cls[label]), int(pixels[label]), int(contacts[label]), geoms[label], g
            )
            touched.append(g)
        r0, c0 = w.row_off, w.col_off
        if i > 0:
            corners = np.column_stack([c0 + np.arange(w.width + 1), np.full(w.width + 1, r0)])
            touched += self._join(self._bottom[j], top, cls[0], corners)
        if j > 0:
            corners = np.column_stack([np.full(w.height + 1, c0), r0 + np.arange(w.height + 1)])
            touched += self._join(self._right, left, cls[:, 0], corners)
        self._bottom[j] = (bottom, cls[-1].copy()) if below else None
        self._right = (right, cls[:, -1].copy()) if after else None
        roots = sorted({self._find(g) for g in touched})
        return self._emit([r for r in roots if self._open[r].open == 0])

    def finish(self) -> None:
        """Check that every block was added and every region emitted.

        Raises:
            InputError: blocks are missing.
        """
        if self._done != len(self.blocks):
            raise InputError(f"only {self._done} of {len(self.blocks)} blocks were traced")
        if self._open:  # pragma: no cover - an internal invariant
            raise RuntimeError(f"{len(self._open)} regions left open after the last block")

    # -- labelling and tracing ------------------------------------------------------------

    def _label(self, cls: np.ndarray) -> tuple[np.ndarray, list[int], int]:
        """4-connected labels of one block: kept classes get 1..n_kept, then (only when
        simplifying) the not-vectorised pixels get n_kept+1.. as filler pieces.

        Returns:
            (labels (h, w) int32, class of each label (index 0 unused), n_kept).
        """
        from scipy import ndimage

        lab = np.zeros(cls.shape, np.int32)
        piece_cls = [VOID]
        present = np.flatnonzero(np.bincount(cls.ravel(), minlength=256))
        kept = [int(c) for c in present if c != VOID]
        order = kept + ([VOID] if self.simplify > 0 and VOID in present else [])
        for c in order:
            inside = cls == c
            comp, n = ndimage.label(inside, output=np.int32)  # default: the 4-connected cross
            np.add(comp, len(piece_cls) - 1, out=comp, where=inside)
            lab += comp
            piece_cls += [c] * n
        n_kept = sum(1 for c in piece_cls[1:] if c != VOID)
        return lab, piece_cls, n_kept

    def _trace(self, lab: np.ndarray, block: Block, n: int, n_kept: int) -> np.ndarray:
        """(n + 1,) polygons of the labels (index = label; 0 unused), pixel coordinates; with
        ``simplify`` the block's whole coverage is simplified, its border kept exact."""
        import shapely
        from rasterio.features import shapes
        from rasterio.transform import Affine

        geoms = np.full(n + 1, None, dtype=object)
        if n == 0:
            return geoms
        w = block.window
        mask = None if n > n_kept else lab > 0
        values, rings, owner = [], [], []
        traced = shapes(
            lab, mask=mask, connectivity=4, transform=Affine.translation(w.col_off, w.row_off)
        )
        for k, (geom, value) in enumerate(traced):
            values.append(int(value))
            rings += geom["coordinates"]
            owner += [k] * len(geom["coordinates"])
        coords = np.array(list(chain.from_iterable(rings)), np.float64)
        ring_of = np.repeat(np.arange(len(rings)), [len(r) for r in rings])
        geoms[values] = shapely.polygons(
            shapely.linearrings(coords, indices=ring_of), indices=owner
        )
        if self.simplify > 0:
            pieces = node_coverage(lab, geoms[1:], w.col_off, w.row_off)
            out = shapely.coverage_simplify(pieces, self.simplify, simplify_boundary=False)
            geoms[1 : n_kept + 1] = out[:n_kept]
        return geoms

    # -- union-find over pieces ------------------------------------------------------------

    def _find(self, g: int) -> int:
        parent = self._parent
        while parent[g] != g:
            parent[g] = parent[parent[g]]
            g = parent[g]
        return g

    def _union(self, a: int, b: int) -> int:
        ra, rb = self._find(a), self._find(b)
        if ra == rb:
            return ra
        n_a, n_b = len(self._open[ra].pieces), len(self._open[rb].pieces)
        big, small = (ra, rb) if n_a >= n_b else (rb, ra)
        keep, gone = self._open[big], self._open.pop(small)
        keep.pixels += gone.pixels
        keep.open += gone.open
        keep.pieces.update(gone.pieces)
        self._parent[small] = big
        return big

    def _join(
        self,
        previous: tuple[np.ndarray, np.ndarray] | None,
        gids: np.ndarray,
        cls: np.ndarray,
        corners: np.ndarray,
    ) -> list[int]:
        """Close the contacts of the pieces along a block edge already read (``previous``:
        their ids and classes) and merge them with this block's pieces (``gids``, ``cls``)
        across that edge, whose (n + 1, 2) pixel ``corners`` are given in scene pixels."""
        assert previous is not None
        prev_ids, prev_cls = previous
        touched = []
        for g in np.unique(prev_ids[prev_ids > 0]).tolist():
            root = self._find(g)
            self._open[root].open -= 1
            touched.append(root)
        same = (prev_ids > 0) & (gids > 0) & (prev_cls == cls)
        pairs = np.unique(np.stack([prev_ids[same], gids[same]], axis=1), axis=0)
        # exact outlines: node only the pieces to dissolve (GDAL's output, unchanged);
        # simplified ones: every piece, so neighbours across the edge match vertex for vertex
        noded = np.concatenate([prev_ids, gids]) if self.simplify > 0 else pairs.ravel()
        noded = np.unique(noded[noded > 0])
        if len(noded):
            self._node_edge(prev_ids, gids, corners, noded)
        for a, b in pairs.tolist():
            touched.append(self._union(a, b))
        return touched

    def _node_edge(
        self, prev_ids: np.ndarray, gids: np.ndarray, corners: np.ndarray, joined: np.ndarray
    ) -> None:
        """Add to the ``joined`` pieces on both sides of a block edge the corners along it where
        the piece on either side changes, so that pieces of one region match vertex for vertex
        along the edge, as ``shapely.coverage_union_all`` needs (``shapely.snap``, tolerance
        1e-6 px: each corner lies on the outline, so only that vertex is inserted, exactly);
        when simplifying, ``joined`` is every piece on the edge."""
        import shapely

        k = np.flatnonzero((prev_ids[1:] != prev_ids[:-1]) | (gids[1:] != gids[:-1])) + 1
        owners = np.concatenate([prev_ids[k - 1], prev_ids[k], gids[k - 1], gids[k]])
        at = np.tile(k, 4)
        sel = np.isin(owners, joined)
        if not sel.any():
            return
        key = np.unique(np.stack([owners[sel], at[sel]], axis=1), axis=0)
        gs = np.unique(key[:, 0])
        points = shapely.multipoints(
            corners[key[:, 1]].astype(np.float64), indices=np.searchsorted(gs, key[:, 0])
        )
        holders = [self._open[self._find(g)].pieces for g in gs.tolist()]
        old = np.array([h[g] for h, g in zip(holders, gs.tolist(), strict=True)], dtype=object)
        for h, g, new in zip(holders, gs.tolist(), shapely.snap(old, points, 1e-6), strict=True):
            h[g] = new

    def _emit(self, roots: list[int]) -> list[Region]:
        """Dissolve each finished region's pieces into one polygon and forget the region."""
        out, touched = [], []
        for root in roots:
            region = self._open.pop(root)
            for g in region.pieces:
                del self._parent[g]
            pieces = list(region.pieces.values())
            if len(pieces) > 1 and self.simplify == 0:
                touched.append(len(out))
            geom = dissolve(pieces) if len(pieces) > 1 else pieces[0]
            out.append(Region(region.class_id, region.pixels, geom))
        # exact outlines: drop the collinear vertices left where pieces were dissolved (GDAL's
        # own outlines have none); simplified ones keep them (see the module's docstring)
        clean = drop_collinear(np.array([out[k].geometry for k in touched], dtype=object))
        for k, g in zip(touched, clean, strict=True):
            out[k].geometry = g
        return out

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
  region; the pieces are dissolved with ``shapely.union_all`` (exact: every vertex is an integer
  pixel corner), so a region crossing block boundaries is one polygon without a seam line.
* **Bounded memory**: a region is emitted as soon as it can no longer grow, i.e. as soon as no
  piece of it touches an edge whose far side is still unread (the bottom edge of the last block
  row read, or the right edge of the last block read). Only regions on that frontier are held.
* **Simplification** (``simplify`` > 0, in pixels) runs per block, before merging, with
  ``shapely.coverage_simplify`` (GEOS's coverage simplifier: Visvalingam-Whyatt on the shared
  edges of a polygon coverage, topology preserving) on *every* piece of the block, the pixels
  of classes that are not kept and nodata included as filler pieces, with
  ``simplify_boundary=False``. Each shared edge inside a block is simplified exactly once, for
  both of its sides; the block's own border is kept exact, so pieces still dissolve exactly
  across block boundaries. Neighbouring polygons therefore share identical edges (no gaps, no
  overlaps), whenever each of them closes. The price: a boundary keeps its exact pixel corner
  where it crosses a block border (one pinned vertex per crossing).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from tilesegd.errors import ConfigError, InputError
from tilesegd.tiling import Block

NODATA = 255
VOID = 255  # class value of pixels that are not vectorised (nodata, classes not kept)


@dataclass
class Region:
    """One finished region: ``class_id``, ``pixels`` (its pixel count in the mask) and
    ``geometry``, a shapely Polygon in scene pixel coordinates (simplified when asked)."""

    class_id: int
    pixels: int
    geometry: Any


class _Open:
    """A region still on the frontier: its pieces, pixel count and open edge contacts."""

    __slots__ = ("class_id", "pixels", "open", "pieces", "ids")

    def __init__(self, class_id: int, pixels: int, open_: int, piece: Any, gid: int) -> None:
        self.class_id, self.pixels, self.open = class_id, pixels, open_
        self.pieces, self.ids = [piece], [gid]


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
        blocks: every block of the scene (``tilesegd.tiling.Block``); fed to :meth:`add` in
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
        gids = np.where((lab > 0) & (lab <= n_kept), lab.astype(np.int64) + base, 0)
        contacts = np.zeros(n_kept + 1, np.int64)
        if i < self.n_rows - 1:
            contacts[np.unique(gids[-1] - base).clip(0)] += 1
        if j < self.n_cols - 1:
            contacts[np.unique(gids[:, -1] - base).clip(0)] += 1
        touched = []
        for label in range(1, n_kept + 1):
            g = base + label
            self._parent[g] = g
            self._open[g] = _Open(
                int(piece_cls[label]), int(pixels[label]), int(contacts[label]), geoms[label], g
            )
            touched.append(g)
        if i > 0:
            touched += self._join(self._bottom[j], gids[0], cls[0])
        if j > 0:
            touched += self._join(self._right, gids[:, 0], cls[:, 0])
        self._bottom[j] = (gids[-1].copy(), cls[-1].copy()) if i < self.n_rows - 1 else None
        self._right = (gids[:, -1].copy(), cls[:, -1].copy()) if j < self.n_cols - 1 else None
        roots = {self._find(g) for g in touched}
        return [self._emit(r) for r in sorted(roots) if self._open[r].open == 0]

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
            comp, n = ndimage.label(cls == c)  # default structure: the 4-connected cross
            comp = comp.astype(np.int32, copy=False)
            inside = comp > 0
            lab[inside] = comp[inside] + (len(piece_cls) - 1)
            piece_cls += [c] * n
        n_kept = sum(1 for c in piece_cls[1:] if c != VOID)
        return lab, piece_cls, n_kept

    def _trace(self, lab: np.ndarray, block: Block, n: int, n_kept: int) -> list[Any]:
        """Polygon of each label (index = label; index 0 unused), pixel coordinates; with
        ``simplify`` the block's whole coverage is simplified, its border kept exact."""
        import shapely
        from rasterio.features import shapes
        from rasterio.transform import Affine

        geoms: list[Any] = [None] * (n + 1)
        if n == 0:
            return geoms
        offset = Affine.translation(block.window.col_off, block.window.row_off)
        mask = None if n > n_kept else lab > 0
        for geom, value in shapes(lab, mask=mask, connectivity=4, transform=offset):
            rings = geom["coordinates"]
            geoms[int(value)] = shapely.Polygon(rings[0], rings[1:])
        if self.simplify > 0:
            # Coverage edges must match vertex for vertex: put a vertex on every pixel corner
            # (exact on integer coordinates; rint guards it), so T-junctions are shared nodes.
            dense = shapely.transform(shapely.segmentize(np.array(geoms[1:]), 1.0), np.rint)
            out = shapely.coverage_simplify(dense, self.simplify, simplify_boundary=False)
            geoms[1 : n_kept + 1] = list(out[:n_kept])
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
        big, small = (ra, rb) if len(self._open[ra].ids) >= len(self._open[rb].ids) else (rb, ra)
        keep, gone = self._open[big], self._open.pop(small)
        keep.pixels += gone.pixels
        keep.open += gone.open
        keep.pieces += gone.pieces
        keep.ids += gone.ids
        self._parent[small] = big
        return big

    def _join(
        self,
        previous: tuple[np.ndarray, np.ndarray] | None,
        gids: np.ndarray,
        cls: np.ndarray,
    ) -> list[int]:
        """Close the contacts of the pieces along a block edge already read (``previous``:
        their ids and classes) and merge them with this block's pieces across that edge."""
        assert previous is not None
        prev_ids, prev_cls = previous
        touched = []
        for g in np.unique(prev_ids[prev_ids > 0]).tolist():
            root = self._find(g)
            self._open[root].open -= 1
            touched.append(root)
        same = (prev_ids > 0) & (gids > 0) & (prev_cls == cls)
        if same.any():
            pairs = np.unique(np.stack([prev_ids[same], gids[same]], axis=1), axis=0)
            for a, b in pairs.tolist():
                touched.append(self._union(a, b))
        return touched

    def _emit(self, root: int) -> Region:
        """Dissolve a finished region's pieces into one polygon and forget the region."""
        import shapely

        region = self._open.pop(root)
        for g in region.ids:
            del self._parent[g]
        geom = region.pieces[0] if len(region.pieces) == 1 else shapely.union_all(region.pieces)
        # drop collinear vertices: where pieces were dissolved, and the pixel-corner vertices
        # the coverage simplification kept along block borders (the point set is unchanged)
        geom = shapely.simplify(geom, 0.0)
        return Region(region.class_id, region.pixels, geom)

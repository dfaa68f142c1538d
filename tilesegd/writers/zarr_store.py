"""The Zarr v3 output store: ``pred.zarr`` with ``mask`` (H, W) uint8 and optional ``probs``.

The mask is chunked by block, so each block is one chunk: blocks write in parallel without
locks and a finished chunk is the unit of resume. A block counts as finished once its id is in
the append-only ``blocks.done`` log next to the store (the chunk is written first, then the id
is appended and flushed), so a kill at any moment loses at most the blocks in flight. Each log
line is ``"<block id> <class-id pixels>"``: the count of non-nodata ids written, which the
finish step checks against the areas it counts from the store (nothing lost on the way).
"""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path
from typing import Any

import numpy as np

from tilesegd.spec import NODATA
from tilesegd.tiling import Block, Tile

DONE_LOG = "blocks.done"


class ZarrMaskStore:
    """Create or reopen ``pred.zarr`` for one scene.

    Args:
        path: the ``pred.zarr`` folder (created).
        shape: (H, W) of the scene in pixels.
        chunks: (rows, cols) of one block: the ``mask`` chunk shape.
        attrs: group attributes (``crs`` WKT, ``transform`` GDAL geotransform, ``classes``...).
            ``attrs["fingerprint"]`` identifies the model + settings: a store with another
            fingerprint is discarded, not resumed.
        num_classes: K, for ``probs``.
        probs_chunks: (rows, cols) of one ``probs`` chunk (a tile core), or ``None`` for no
            ``probs`` array.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        shape: tuple[int, int],
        chunks: tuple[int, int],
        attrs: dict[str, Any],
        num_classes: int,
        probs_chunks: tuple[int, int] | None = None,
    ) -> None:
        import zarr

        self.path = Path(path)
        self.log_path = self.path.parent / DONE_LOG
        self._lock = threading.Lock()
        fingerprint = attrs.get("fingerprint")
        group = None
        if self.path.exists():
            try:
                group = zarr.open_group(self.path, mode="r+")
                if group.attrs.get("fingerprint") != fingerprint or "mask" not in group:
                    group = None
                elif probs_chunks is not None and "probs" not in group:
                    group = None
            except Exception:  # unreadable leftovers of a killed run: start over
                group = None
            if group is None:
                shutil.rmtree(self.path, ignore_errors=True)
                self.log_path.unlink(missing_ok=True)
        if group is None:
            self.log_path.unlink(missing_ok=True)
            group = zarr.open_group(self.path, mode="w", zarr_format=3)
            group.attrs.update(attrs)
            group.create_array(
                "mask",
                shape=shape,
                chunks=chunks,
                dtype="uint8",
                fill_value=NODATA,
                dimension_names=("y", "x"),
            )
            if probs_chunks is not None:
                group.create_array(
                    "probs",
                    shape=(num_classes, *shape),
                    chunks=(num_classes, *probs_chunks),
                    dtype="float16",
                    fill_value=0.0,
                    dimension_names=("class", "y", "x"),
                )
        self._repair_log()
        self.group = group
        self.mask = group["mask"]
        self.probs = group["probs"] if probs_chunks is not None else None

    def _repair_log(self) -> None:
        """Cut a half-written last line (a kill or a full disk in mid-append) off
        ``blocks.done``, so the next id appended is not glued to it."""
        if not self.log_path.exists():
            return
        data = self.log_path.read_bytes()
        if data and not data.endswith(b"\n"):
            with open(self.log_path, "r+b") as f:
                f.truncate(data.rfind(b"\n") + 1)

    def done_blocks(self) -> set[int]:
        """Ids of the blocks whose chunks are complete: the newline-terminated lines of
        ``blocks.done`` (a line without its newline was cut mid-write and does not count)."""
        return set(self.done_counts())

    def done_counts(self) -> dict[int, int | None]:
        """``{block id: class-id (non-nodata) pixels written}`` of the finished blocks
        (``None`` for a line of an older log that carries no count)."""
        if not self.log_path.exists():
            return {}
        done: dict[int, int | None] = {}
        for line in self.log_path.read_text().split("\n")[:-1]:
            parts = line.split()
            if not parts or not all(p.isdigit() for p in parts) or len(parts) > 2:
                continue
            done[int(parts[0])] = int(parts[1]) if len(parts) == 2 else None
        return done

    def write_block(self, block: Block, ids: np.ndarray) -> None:
        """Write one block's (h, w) uint8 ids, then record it as done with its count of
        class-id (non-255) pixels (thread-safe)."""
        self.mask[block.window.slices] = ids
        n = ids.size - int(np.count_nonzero(ids == NODATA))
        with self._lock, open(self.log_path, "a") as f:
            f.write(f"{block.id} {n}\n")
            f.flush()
            os.fsync(f.fileno())

    def write_probs(self, tile: Tile, probs: np.ndarray) -> None:
        """Write one tile core's (K, h, w) float16 probabilities."""
        if self.probs is not None:
            self.probs[(slice(None), *tile.core.slices)] = probs

    def read_block(self, block: Block) -> np.ndarray:
        """(h, w) uint8 ids of one block."""
        return np.asarray(self.mask[block.window.slices])

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
        self.path = Path(path)
        self.log_path = self.path.parent / DONE_LOG
        self._lock = threading.Lock()
        if not (self.path / "zarr.json").is_file():
            raise FileNotFoundError(f"{self.path}: no Zarr store here")
        self.group = zarr.open_group(self.path, mode="r+")
        self.mask = self.group["mask"]
        self.probs = self.group["probs"] if "probs" in self.group else None
        return self

"""``preview.png``: the image beside the mask overlay, with a legend of class names and shares."""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tilesegd import atomic
from tilesegd.errors import writing
from tilesegd.model.spec import NODATA, ClassInfo
from tilesegd.raster.gdalenv import gdal_env, quiet_georef

_preloading: threading.Thread | None = None


def preload() -> None:
    """Import matplotlib (~0.5-1 s) in a background thread, once per process, so the first
    scene's preview does not wait for it: started while blocks compute, when the main thread
    mostly waits on the network with the GIL released."""
    global _preloading
    if _preloading is None:

        def load() -> None:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot  # noqa: F401

        _preloading = threading.Thread(target=load, name="tilesegd-preload", daemon=True)
        _preloading.start()


class PreviewSampler:
    """Collects the preview image from the windows the pipeline decodes anyway, so a scene is
    never decoded a second time just for ``preview.png`` (a decimated GDAL read of a scene
    without overviews decodes every pixel: ~12 s for a 32768^2 DEFLATE scene on 2 cores).

    Keeps every ``step``-th row and column of the scene (nearest-neighbour decimation).
    Thread-safe: readers write disjoint or identical pixels.

    Args:
        height, width: scene size in pixels.
        bands: bands read (the model's input bands).
        dtype: the raster's dtype.
        max_size: longest side of the preview in pixels.

    Attributes:
        step: decimation step in pixels, ``ceil(max(height, width) / max_size)``.
        image: (bands, ceil(height / step), ceil(width / step)) of ``dtype``.
    """

    def __init__(self, height: int, width: int, bands: int, dtype: Any, max_size: int) -> None:
        self.height, self.width = height, width
        self.step = max(1, -(-max(height, width) // max(1, max_size)))
        shape = (-(-height // self.step), -(-width // self.step))
        self.image = np.zeros((bands, *shape), dtype)
        self._seen = np.zeros(shape, bool)

    def add(self, row_off: int, col_off: int, data: np.ndarray) -> None:
        """Keep the sampled pixels of ``data`` (C, h, w), a window whose top-left pixel is
        scene pixel ``(row_off, col_off)`` (it may reach outside the scene)."""
        k = self.step

        def axis(off: int, n: int, size: int) -> tuple[int, int, int]:
            first = max(off, 0)
            first += -first % k  # first sampled scene index inside the window
            last = min(off + n, size)
            count = max(0, -(-(last - first) // k))
            return first - off, first // k, count

        (dr, pr, nr), (dc, pc, nc) = (
            axis(row_off, data.shape[1], self.height),
            axis(col_off, data.shape[2], self.width),
        )
        if nr and nc:
            src = data[:, dr : dr + (nr - 1) * k + 1 : k, dc : dc + (nc - 1) * k + 1 : k]
            self.image[:, pr : pr + nr, pc : pc + nc] = src
            self._seen[pr : pr + nr, pc : pc + nc] = True

    @property
    def complete(self) -> bool:
        """Whether every preview pixel was sampled (False after a resume: the blocks done
        before were not decoded in this process)."""
        return bool(self._seen.all())


def _display(img: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """(C, h, w) any dtype -> (h, w, 3) float in [0, 1], 2-98 % stretch per band."""
    img = img.astype(np.float32)
    if img.shape[0] < 3:
        img = np.repeat(img[:1], 3, axis=0)
    img = img[:3]
    out = np.zeros(img.shape[1:] + (3,), np.float32)
    for b in range(3):
        band = img[b]
        vals = band[valid] if valid.any() else band.ravel()
        lo, hi = np.percentile(vals, (2, 98)) if vals.size else (0.0, 1.0)
        out[..., b] = np.clip((band - lo) / max(hi - lo, 1e-6), 0, 1)
    out[~valid] = 1.0
    return out


PANEL_MARGIN = 12  # pixels around and between the panels
TITLE_SPACE = 48  # pixels above the panels: the figure title and the panel titles
LEGEND_WIDTH = 230  # pixels right of the panels
LEGEND_ROW = 15  # pixels per legend entry
DPI = 100


def _figure(plt: Any, shape: tuple[int, ...], panel: int, n_classes: int) -> Any:
    """A figure with two side-by-side axes whose longest side is exactly ``panel`` pixels
    (the image's aspect ratio kept), room for the titles above and the legend on the right."""
    h, w = shape[0], shape[1]
    ph, pw = (
        (panel, max(1, round(panel * w / h))) if h >= w else (max(1, round(panel * h / w)), panel)
    )
    fw = 3 * PANEL_MARGIN + 2 * pw + LEGEND_WIDTH
    fh = max(TITLE_SPACE + ph + PANEL_MARGIN, TITLE_SPACE + LEGEND_ROW * n_classes)
    fig = plt.figure(figsize=(fw / DPI, fh / DPI), dpi=DPI)
    bottom = (fh - TITLE_SPACE - ph) / fh
    for i in range(2):
        left = (PANEL_MARGIN + i * (pw + PANEL_MARGIN)) / fw
        fig.add_axes((left, bottom, pw / fw, ph / fh))
    return fig


def write_preview(
    path: str | os.PathLike[str],
    scene_path: str | os.PathLike[str],
    mask_path: str | os.PathLike[str],
    bands: Sequence[int],
    classes: Sequence[ClassInfo],
    area_rows: list[dict[str, Any]] | None = None,
    max_size: int = 1024,
    title: str = "",
    sampled: PreviewSampler | None = None,
) -> Path:
    """Render ``preview.png`` (atomically) from decimated reads of the scene and the COG.

    Decimated reads use the files' overviews where present, so memory stays small; with a
    complete ``sampled`` image the scene is not read again.

    Args:
        path: destination PNG.
        scene_path: the input raster; ``bands`` (1-based, first three shown) are displayed.
        mask_path: the finished ``mask.tif``.
        classes: names and colours for the legend.
        area_rows: ``areas.csv`` rows for the legend's percentages.
        max_size: longest side of each panel in pixels (the data is decimated to at most
            this size, never enlarged; a smaller scene is drawn with nearest-neighbour pixels).
        sampled: the image collected while the scene was segmented (used when complete).

    Raises:
        OutputError: the PNG cannot be written (disk full, permissions); nothing is left at
            ``path`` nor beside it.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import rasterio
    from matplotlib.patches import Patch
    from rasterio.enums import Resampling

    show = list(bands)[:3]
    if sampled is not None and not sampled.complete:
        sampled = None
    # GDAL decodes the blocks of a decimated read in parallel with GDAL_NUM_THREADS (a config
    # option, read at open: the NUM_THREADS open option made JPEG / PNG drivers warn)
    with gdal_env(GDAL_NUM_THREADS="ALL_CPUS"):
        with quiet_georef():  # a plain frame's mask
            m = rasterio.open(mask_path)
        with m:
            if sampled is not None:
                shape = sampled.image.shape[1:]
            else:
                scale = min(1.0, max_size / max(m.height, m.width))
                shape = (max(1, round(m.height * scale)), max(1, round(m.width * scale)))
            mask = m.read(1, out_shape=shape, resampling=Resampling.nearest)
        if sampled is not None:
            img = sampled.image[: len(show)]
        else:
            with quiet_georef():  # ...and image
                s = rasterio.open(scene_path)
            with s:
                img = s.read(show, out_shape=(len(show), *shape), resampling=Resampling.average)
    valid = mask != NODATA
    rgb = _display(img, valid)
    lut = np.zeros((256, 3), np.float32)
    for c in classes:
        lut[c.id] = np.asarray(c.color, np.float32) / 255.0
    overlay = rgb.copy()
    overlay[valid] = 0.35 * rgb[valid] + 0.65 * lut[mask[valid]]
    fig = _figure(plt, shape, max_size, len(classes))
    for ax, picture, name in zip(fig.axes, (rgb, overlay), ("image", "class mask"), strict=True):
        ax.imshow(picture, interpolation="nearest", aspect="auto")
        ax.set_title(name, fontsize=9)
        ax.set_axis_off()
    pct = {r["class_id"]: r["percent"] for r in (area_rows or [])}
    handles = [
        Patch(
            facecolor=lut[c.id],
            edgecolor="k",
            label=f"{c.name} ({pct.get(c.id, 0):.1f}%)" if pct else c.name,
        )
        for c in classes
    ]
    fig.legend(handles=handles, loc="center right", fontsize=8, frameon=False)
    fig.suptitle(title, fontsize=10)
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp.png")
    try:
        with writing(path):
            fig.savefig(tmp)
            atomic.replace(tmp, path)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)
    return path

"""``preview.png``: the image beside the mask overlay, with a legend of class names and shares."""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tilesegd.model_file import ClassInfo

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


def write_preview(
    path: str | os.PathLike[str],
    scene_path: str | os.PathLike[str],
    mask_path: str | os.PathLike[str],
    bands: Sequence[int],
    classes: Sequence[ClassInfo],
    area_rows: list[dict[str, Any]] | None = None,
    max_size: int = 1024,
    title: str = "",
) -> Path:
    """Render ``preview.png`` (atomically) from decimated reads of the scene and the COG.

    Decimated reads use the files' overviews where present, so memory stays small.

    Args:
        path: destination PNG.
        scene_path: the input raster; ``bands`` (1-based, first three shown) are displayed.
        mask_path: the finished ``mask.tif``.
        classes: names and colours for the legend.
        area_rows: ``areas.csv`` rows for the legend's percentages.
        max_size: longest side of each panel in pixels.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import rasterio
    from matplotlib.patches import Patch
    from rasterio.enums import Resampling

    # GDAL decodes the blocks of a decimated read in parallel with NUM_THREADS
    with rasterio.open(mask_path, num_threads="ALL_CPUS") as m:
        scale = min(1.0, max_size / max(m.height, m.width))
        shape = (max(1, round(m.height * scale)), max(1, round(m.width * scale)))
        mask = m.read(1, out_shape=shape, resampling=Resampling.nearest)
    with rasterio.open(scene_path, num_threads="ALL_CPUS") as s:
        show = list(bands)[:3]
        img = s.read(show, out_shape=(len(show), *shape), resampling=Resampling.average)
    valid = mask != 255
    rgb = _display(img, valid)
    lut = np.zeros((256, 3), np.float32)
    for c in classes:
        lut[c.id] = np.asarray(c.color, np.float32) / 255.0
    overlay = rgb.copy()
    overlay[valid] = 0.35 * rgb[valid] + 0.65 * lut[mask[valid]]
    aspect = shape[1] / shape[0]
    fig, axes = plt.subplots(1, 2, figsize=(min(16, 2 * 5 * aspect + 3), 5.5), dpi=110)
    axes[0].imshow(rgb, interpolation="nearest")
    axes[0].set_title("image")
    axes[1].imshow(overlay, interpolation="nearest")
    axes[1].set_title("class mask")
    for ax in axes:
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
    # fixed margins: tight_layout costs a whole extra render (~0.35 s a scene)
    fig.subplots_adjust(left=0.01, right=0.8, bottom=0.02, top=0.88, wspace=0.04)
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)
    return path

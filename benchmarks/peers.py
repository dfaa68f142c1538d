"""What users would otherwise run, on the same scene, model file, device and threads.

* ``monai``: ``monai.inferers.sliding_window_inference`` (512-px ROI, overlap 0.25, gaussian
  blending), fed the whole image as one tensor, as it requires.
* ``toolbelt``: pytorch-toolbelt ``ImageSlicer`` / ``TileMerger`` as in its README (tiles of the
  whole image in memory, pyramid weights, step 448 = tilesegd's 64-px overlap).
* ``loop``: a plain rasterio windowed loop, 512-px windows without overlap, written window by
  window (bounded memory, but seams at every tile edge).

Every peer normalises like tilesegd, runs the same TorchScript file, takes the class with
``max(dim).indices`` (the fast argmax tilesegd uses, so the comparison is about the pipeline)
and writes a tiled DEFLATE GeoTIFF mask. :func:`memory_needed` gives the bytes a whole-image peer
needs, to report the peers that cannot fit.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from common import Counted, GpuSampler, load_net, normalise_, peak_rss_mb, warm_up, write_mask


def memory_needed(tool: str, height: int, width: int, classes: int, bands: int = 3) -> int:
    """Bytes of the whole-image buffers a peer allocates (model and tiles not counted).

    * monai: uint8 image + float32 input + float32 output (K) + float32 count map + int64
      argmax (``sliding_window_inference`` keeps the output and count map at full size).
    * toolbelt: uint8 image + padded copy + uint8 tile tensors (~1.3 x image at step 448) +
      float32 accumulator (K) + norm mask + merged float32 (K) + int64 argmax.
    * loop / tilesegd: independent of the scene size (0 here).
    """
    px = height * width
    if tool == "monai":
        return px * (bands + 4 * bands + 4 * classes + 4 + 8)
    if tool == "toolbelt":
        return int(px * (bands * (2 + 1.31) + 4 * classes * 2 + 4 + 8))
    return 0


def _read_all(scene: str) -> np.ndarray:
    import rasterio

    with rasterio.open(scene) as ds:
        return ds.read([1, 2, 3])


def run_monai(
    scene: str,
    model: str,
    out_mask: str,
    *,
    batch: int = 8,
    overlap: float = 0.25,
    roi: int = 512,
    norm: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """MONAI sliding-window inference, gaussian blending, ``roi``-px windows at ``overlap``
    (default 0.25; see module doc). ``norm``: ``mean`` / ``std`` / ``scale`` of the model file
    (default ImageNet, raw / 255)."""
    from monai.inferers import sliding_window_inference

    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    net = load_net(model, dev)
    warm_up(net, batch, dev)
    with GpuSampler() as gpu:
        t0 = time.perf_counter()
        img = _read_all(scene)
        t1 = time.perf_counter()
        x = normalise_(torch.from_numpy(img)[None].float(), **(norm or {}))
        del img
        counted = Counted(net)
        with torch.inference_mode():
            out = sliding_window_inference(
                x, (roi, roi), batch, counted, overlap=overlap, mode="gaussian", sw_device=dev
            )
            del x
            ids = out[0].max(0).indices.to(torch.uint8).numpy()
            del out
        t2 = time.perf_counter()
        write_mask(Path(out_mask), ids, scene)
        t3 = time.perf_counter()
    mp = ids.size / 1e6
    return {
        "tool": "monai",
        "network_pixels": counted.pixels,
        "megapixels": round(mp, 3),
        "seconds": round(t3 - t0, 3),
        "mp_per_s": round(mp / (t3 - t0), 3),
        "stages": {
            "read": round(t1 - t0, 3),
            "infer+blend": round(t2 - t1, 3),
            "write": round(t3 - t2, 3),
        },
        "gpu_util_pct": gpu.mean,
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }


def run_toolbelt(
    scene: str,
    model: str,
    out_mask: str,
    *,
    batch: int = 8,
    norm: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """pytorch-toolbelt ImageSlicer / TileMerger (README usage; see module doc)."""
    from pytorch_toolbelt.inference.tiles import ImageSlicer, TileMerger

    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    net = load_net(model, dev)
    warm_up(net, batch, dev)
    with GpuSampler() as gpu:
        t0 = time.perf_counter()
        img = np.ascontiguousarray(_read_all(scene).transpose(1, 2, 0))  # (H, W, 3)
        t1 = time.perf_counter()
        slicer = ImageSlicer(img.shape, tile_size=512, tile_step=448, weight="pyramid")
        tiles = [torch.from_numpy(t.transpose(2, 0, 1).copy()) for t in slicer.split(img)]
        del img
        merger, counted = None, Counted(net)
        with torch.inference_mode():
            for i in range(0, len(tiles), batch):
                x = normalise_(torch.stack(tiles[i : i + batch]).to(dev).float(), **(norm or {}))
                pred = counted(x)
                if merger is None:
                    merger = TileMerger(slicer.target_shape, pred.shape[1], slicer.weight, dev)
                merger.integrate_batch(pred, slicer.crops[i : i + batch])
            del tiles
            merged = merger.merge()
            del merger
            ids = merged.max(0).indices.to(torch.uint8).cpu().numpy()
            del merged
        ids = np.ascontiguousarray(slicer.crop_to_orignal_size(ids))
        t2 = time.perf_counter()
        write_mask(Path(out_mask), ids, scene)
        t3 = time.perf_counter()
    mp = ids.size / 1e6
    return {
        "tool": "toolbelt",
        "network_pixels": counted.pixels,
        "megapixels": round(mp, 3),
        "seconds": round(t3 - t0, 3),
        "mp_per_s": round(mp / (t3 - t0), 3),
        "stages": {
            "read": round(t1 - t0, 3),
            "infer+merge": round(t2 - t1, 3),
            "write": round(t3 - t2, 3),
        },
        "gpu_util_pct": gpu.mean,
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }


def run_loop(
    scene: str,
    model: str,
    out_mask: str,
    *,
    batch: int = 8,
    norm: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Plain rasterio windowed loop: read 512-px windows (no overlap, edge windows padded),
    batch them, infer, write each window's ids (see module doc)."""
    import rasterio
    from rasterio.windows import Window

    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    net = load_net(model, dev)
    warm_up(net, batch, dev)
    times = {"read": 0.0, "infer": 0.0, "write": 0.0}
    counted = Counted(net)
    with GpuSampler() as gpu, rasterio.open(scene) as src:
        profile = dict(
            driver="GTiff",
            width=src.width,
            height=src.height,
            count=1,
            dtype="uint8",
            crs=src.crs,
            transform=src.transform,
            tiled=True,
            blockxsize=512,
            blockysize=512,
            compress="deflate",
            BIGTIFF="IF_SAFER",
        )
        wins = [
            Window(c, r, min(512, src.width - c), min(512, src.height - r))
            for r in range(0, src.height, 512)
            for c in range(0, src.width, 512)
        ]
        t0 = time.perf_counter()
        with rasterio.open(out_mask, "w", **profile) as dst, torch.inference_mode():
            for i in range(0, len(wins), batch):
                ta = time.perf_counter()
                group = wins[i : i + batch]
                x = np.zeros((len(group), 3, 512, 512), np.uint8)
                for k, win in enumerate(group):
                    x[k, :, : win.height, : win.width] = src.read([1, 2, 3], window=win)
                tb = time.perf_counter()
                x = normalise_(torch.from_numpy(x).to(dev).float(), **(norm or {}))
                ids = counted(x).max(1).indices
                ids = ids.to(torch.uint8).cpu().numpy()
                tc = time.perf_counter()
                for k, win in enumerate(group):
                    dst.write(ids[k, : win.height, : win.width], 1, window=win)
                td = time.perf_counter()
                times["read"] += tb - ta
                times["infer"] += tc - tb
                times["write"] += td - tc
        t1 = time.perf_counter()
    mp = src.width * src.height / 1e6
    return {
        "tool": "rasterio loop",
        "network_pixels": counted.pixels,
        "megapixels": round(mp, 3),
        "seconds": round(t1 - t0, 3),
        "mp_per_s": round(mp / (t1 - t0), 3),
        "stages": {k: round(v, 3) for k, v in times.items()},
        "gpu_util_pct": gpu.mean,
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }

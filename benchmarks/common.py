"""Helpers shared by the benchmark workers: peak memory, GPU sampling, normalisation, mask I/O.

Every configuration runs in its own fresh Python process (see ``bench.py``), so the peak
resident set size reported by ``getrusage(RUSAGE_SELF).ru_maxrss`` is that configuration's own.
"""

from __future__ import annotations

import resource
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def normalise_(
    x: torch.Tensor,
    mean: tuple[float, ...] = MEAN,
    std: tuple[float, ...] = STD,
    scale: float = 255.0,
) -> torch.Tensor:
    """In place: float32 (B, 3, H, W) raw values -> ``(x / scale - mean) / std`` (as tilesegd;
    ImageNet statistics unless the model file gives others)."""
    m = torch.tensor(mean, device=x.device).view(1, -1, 1, 1)
    s = torch.tensor(std, device=x.device).view(1, -1, 1, 1)
    return x.div_(scale).sub_(m).div_(s)


class Counted:
    """Wraps a network and counts the input pixels it runs (``pixels``: B x H x W per call)."""

    def __init__(self, net: Any) -> None:
        self.net, self.pixels = net, 0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.pixels += x.shape[0] * x.shape[-2] * x.shape[-1]
        return self.net(x)


def load_net(model: str | Path, device: torch.device) -> Any:
    """The same model file every tool runs (``.ts`` TorchScript or ``.pt2`` torch.export,
    through :func:`tilesegd.model.model_file.load_model`: torch itself, never a conversion), on
    ``device``."""
    from tilesegd.model.model_file import load_model

    return load_model(model, device).module


def warm_up(net: Any, batch: int, device: torch.device, tile: int = 512) -> None:
    """Two calls on a zero batch (TorchScript profiling, allocator, cuDNN autotune), untimed."""
    x = torch.zeros(batch, 3, tile, tile, device=device)
    with torch.inference_mode():
        for _ in range(2):
            net(x)
    if device.type == "cuda":
        torch.cuda.synchronize()


def write_mask(path: Path, ids: np.ndarray, scene: str | Path) -> None:
    """Write (H, W) uint8 ids as a tiled DEFLATE GeoTIFF georeferenced like ``scene``."""
    import rasterio

    with rasterio.open(scene) as src:
        crs, transform = src.crs, src.transform
    profile = dict(
        driver="GTiff",
        width=ids.shape[1],
        height=ids.shape[0],
        count=1,
        dtype="uint8",
        crs=crs,
        transform=transform,
        tiled=True,
        blockxsize=512,
        blockysize=512,
        compress="deflate",
        BIGTIFF="IF_SAFER",
    )
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(ids, 1)


class GpuSampler:
    """Sample GPU utilisation (%) every ``period`` s in a thread; ``None`` without CUDA/NVML."""

    def __init__(self, period: float = 0.1) -> None:
        self.period = period
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> GpuSampler:
        if torch.cuda.is_available():
            try:
                torch.cuda.utilization()
            except Exception:  # no NVML (pynvml): leave samples empty
                return self
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append(float(torch.cuda.utilization()))
            time.sleep(self.period)

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    @property
    def mean(self) -> float | None:
        """Mean utilisation over the samples, or ``None``."""
        return round(float(np.mean(self.samples)), 1) if self.samples else None

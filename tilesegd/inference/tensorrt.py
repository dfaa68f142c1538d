"""TensorRT compilation through torch-tensorrt: the only module that imports ``torch_tensorrt``
(an import-linter contract keeps it so).

``torch_tensorrt`` is an optional dependency (``pip install 'tilesegd[tensorrt]'``) and needs a
CUDA GPU; without either, :func:`require_tensorrt` raises a :class:`~tilesegd.errors.DeviceError`
saying so. Both ``tilesegd run --runtime tensorrt`` (an engine built at start-up for the run's
tile shape, batch 1..N) and ``tilesegd export --format tensorrt`` (a saved engine with a fixed
batch) compile through :func:`compile_tensorrt`.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from tilesegd.errors import DeviceError

log = logging.getLogger(__name__)
INSTALL_HINT = (
    "TensorRT needs the torch-tensorrt package (pip install 'tilesegd[tensorrt]') and a CUDA GPU"
)


def require_tensorrt() -> Any:
    """Import and return ``torch_tensorrt``.

    Raises:
        DeviceError: no CUDA GPU, or torch-tensorrt is not installed.
    """
    if not torch.cuda.is_available():
        raise DeviceError(f"{INSTALL_HINT}; no CUDA GPU is visible on this machine")
    try:
        import torch_tensorrt
    except ImportError as exc:
        raise DeviceError(f"{INSTALL_HINT}; import failed ({exc})") from None
    return torch_tensorrt


def compile_tensorrt(
    module: Any,
    in_channels: int,
    tile_shape: tuple[int, int],
    batch_size: int,
    dtype: torch.dtype,
    device: torch.device | str = "cuda",
    min_batch: int = 1,
) -> Any:
    """Build a TensorRT engine for float32 ``(min_batch..batch_size, in_channels, *tile_shape)``
    input (``torch_tensorrt.compile``: ``ir="ts"`` for TorchScript modules, else ``dynamo``).

    Args:
        module: network on CUDA mapping float32 (B, C, H, W) -> logits (B, K, H, W).
        tile_shape: (H, W) pixels, fixed.
        batch_size: largest (and optimal) batch; ``min_batch == batch_size`` fixes it.
        dtype: kernel precision allowed besides float32 (``torch.float16`` for fp16).

    Returns:
        A callable module (TorchScript when ``module`` was, so it can be saved with
        ``torch.jit.save``).

    Raises:
        DeviceError: TensorRT unavailable. Anything torch-tensorrt raises on a network it
            cannot compile (``tilesegd run`` then falls back to eager).
    """
    trt = require_tensorrt()
    h, w = tile_shape
    inputs = [
        trt.Input(
            min_shape=(min_batch, in_channels, h, w),
            opt_shape=(batch_size, in_channels, h, w),
            max_shape=(batch_size, in_channels, h, w),
            dtype=torch.float32,
        )
    ]
    ir = "ts" if isinstance(module, torch.jit.ScriptModule) else "dynamo"
    log.info(
        "building a TensorRT engine (%s, batch %d..%d, %dx%d)", ir, min_batch, batch_size, h, w
    )
    return trt.compile(
        module, ir=ir, inputs=inputs, enabled_precisions={torch.float32, dtype}, device=device
    )

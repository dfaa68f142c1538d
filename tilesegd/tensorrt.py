"""TensorRT compilation through torch-tensorrt: the only module that imports ``torch_tensorrt``.

``torch_tensorrt`` is an optional dependency (``pip install 'tilesegd[tensorrt]'``) and needs a
CUDA GPU; without either, :func:`require_tensorrt` raises a :class:`~tilesegd.errors.DeviceError`
saying so.
"""

from __future__ import annotations

import importlib
from typing import Any

import torch

from tilesegd.errors import DeviceError

INSTALL_HINT = (
    "TensorRT export needs the torch-tensorrt package (pip install 'tilesegd[tensorrt]') "
    "and a CUDA GPU"
)


def require_tensorrt() -> Any:
    """Import and return ``torch_tensorrt``.

    Raises:
        DeviceError: no CUDA GPU, or torch-tensorrt is not installed.
    """
    if not torch.cuda.is_available():
        raise DeviceError(f"{INSTALL_HINT}; no CUDA GPU is visible on this machine")
    try:
        return importlib.import_module("torch_tensorrt")
    except ImportError as exc:
        raise DeviceError(f"{INSTALL_HINT}; import failed ({exc})") from None


def compile_torchscript(
    module: torch.jit.ScriptModule,
    in_channels: int,
    tile_size: int,
    batch_size: int,
    precision: str = "fp16",
) -> torch.jit.ScriptModule:
    """Compile a traced TorchScript network into a TorchScript module with embedded TensorRT
    engines (``torch_tensorrt.compile(ir="ts")``), for a static input
    ``(batch_size, in_channels, tile_size, tile_size)`` float32 on ``cuda``.

    Args:
        module: traced network on CUDA mapping float32 (B, C, H, W) -> logits (B, K, H, W).
        precision: ``fp32`` or ``fp16`` (TensorRT may then run layers in half precision; the
            input and output stay float32).

    Returns:
        A ``torch.jit.ScriptModule`` that can be saved with ``torch.jit.save``.

    Raises:
        DeviceError: TensorRT unavailable (see :func:`require_tensorrt`).
    """
    trt = require_tensorrt()
    enabled = {torch.float32} if precision == "fp32" else {torch.float16, torch.float32}
    inp = trt.Input(shape=(batch_size, in_channels, tile_size, tile_size), dtype=torch.float32)
    return trt.compile(module, ir="ts", inputs=[inp], enabled_precisions=enabled)

"""Accelerated runtimes for the engine on CUDA: TensorRT, CUDA graphs, ``torch.compile``.

* ``tensorrt``: ``torch_tensorrt.compile`` (TorchScript modules through ``ir="ts"``, other
  modules through ``ir="dynamo"``) with a dynamic batch dimension ``1..batch_size`` and fp16 /
  bf16 kernels enabled (NVIDIA Torch-TensorRT, https://pytorch.org/TensorRT/).
* ``cudagraph``: the whole step (normalisation, network, crop, argmax) is captured once per
  input shape into a ``torch.cuda.CUDAGraph`` and replayed (removes the per-kernel launch cost;
  PyTorch "CUDA Graphs" docs, whole-network capture). Works for TorchScript modules too.
* ``compile``: ``torch.compile`` (Inductor) of the network.

``resolve_runtime("auto", device)`` picks ``tensorrt`` when torch-tensorrt is importable and
the device is CUDA, else ``cudagraph`` on CUDA, else ``eager`` for a torch module (a model
*file* on the CPU is run by onnxruntime instead when it is installed: :func:`tilesegd.inference.build.load_network`,
:mod:`tilesegd.model.convert`). Every accelerated runtime falls
back to eager with a warning if it cannot be built, so a run never fails for want of one.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Callable

import torch

from tilesegd.errors import ConfigError, DeviceError
from tilesegd.inference.runtimes import RUNTIMES

log = logging.getLogger(__name__)
MAX_GRAPHS = 4  # captured shapes kept (full batch, a few tail batches)


def resolve_runtime(runtime: str, device: torch.device) -> str:
    """Map ``auto`` to a concrete runtime for ``device`` and check the request.

    Raises:
        ConfigError: unknown runtime name.
        DeviceError: ``cudagraph`` / ``tensorrt`` asked for without CUDA, or ``tensorrt``
            without the ``torch-tensorrt`` package (install the ``tensorrt`` extra).
    """
    if runtime not in RUNTIMES:
        raise ConfigError(f"runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
    cuda = device.type == "cuda"
    has_trt = importlib.util.find_spec("torch_tensorrt") is not None
    if runtime == "auto":
        return ("tensorrt" if has_trt else "cudagraph") if cuda else "eager"
    if runtime == "onnxruntime" and importlib.util.find_spec("onnxruntime") is None:
        raise DeviceError(
            "runtime onnxruntime needs onnxruntime: pip install 'tilesegd[onnx]' (or "
            "'tilesegd[onnx-gpu]' on CUDA), or use runtime auto"
        )
    if runtime in ("cudagraph", "tensorrt") and not cuda:
        raise DeviceError(f"runtime {runtime} needs a CUDA device; use eager or auto on the CPU")
    if runtime == "tensorrt" and not has_trt:
        raise DeviceError(
            "runtime tensorrt needs torch-tensorrt: pip install 'tilesegd[tensorrt]' "
            "(matching your torch), or use runtime cudagraph"
        )
    return runtime


def runtime_of(module: object, runtime: str, device: torch.device) -> str:
    """The runtime that runs ``module`` for a ``--runtime`` request: a module that is not a torch
    module runs as it is (its own ``runtime`` attribute, e.g. ``onnxruntime`` for an
    :class:`~tilesegd.model.onnx_model.OnnxModel`, else ``eager``); a torch module gets
    :func:`resolve_runtime` of the request, with ``onnxruntime`` meaning ``eager`` (a network in
    memory has no file to convert).

    Raises:
        ConfigError, DeviceError: as :func:`resolve_runtime` (checked for any module).
    """
    resolved = resolve_runtime(runtime, device)
    if not isinstance(module, torch.nn.Module):
        own = getattr(module, "runtime", None)
        return own if isinstance(own, str) else "eager"
    return "eager" if resolved == "onnxruntime" else resolved


class GraphRunner:
    """Replay a captured CUDA graph of ``step(x, valid)`` per input shape.

    Args:
        step: ``(x (B, C, H, W), valid (B, H, W)) -> tuple of tensors or None`` on the device
            (ids, probs, confidence); it must be capturable (no host synchronisation, static
            shapes).

    The first call for a shape warms up on a side stream and captures; later calls copy the
    inputs into the static buffers, replay, and clone the outputs (the next replay overwrites
    them). More than :data:`MAX_GRAPHS` shapes run eagerly.
    """

    def __init__(self, step: Callable[..., tuple[torch.Tensor | None, ...]]) -> None:
        self.step = step
        self.graphs: dict[tuple, tuple] = {}
        self.failed = False

    def __call__(self, x: torch.Tensor, valid: torch.Tensor):
        """Run ``step`` through a graph; returns fresh copies of its output tensors."""
        key = (tuple(x.shape), x.dtype)
        entry = self.graphs.get(key)
        if entry is None:
            if self.failed or len(self.graphs) >= MAX_GRAPHS:
                return self.step(x, valid)
            try:
                entry = self._capture(x, valid)
            except torch.cuda.OutOfMemoryError:
                raise
            except Exception as exc:  # capture unsupported by this network: stay eager
                log.warning("CUDA graph capture failed (%s); running eagerly", exc)
                self.failed = True
                return self.step(x, valid)
            self.graphs[key] = entry
        graph, sx, sv, outputs = entry
        sx.copy_(x, non_blocking=True)
        sv.copy_(valid, non_blocking=True)
        graph.replay()
        return tuple(None if t is None else t.clone() for t in outputs)

    def _capture(self, x: torch.Tensor, valid: torch.Tensor) -> tuple:
        sx, sv = x.clone(), valid.clone()
        side = torch.cuda.Stream(device=x.device)
        side.wait_stream(torch.cuda.current_stream(x.device))
        with torch.cuda.stream(side):
            for _ in range(2):  # warm-up: cuDNN autotuning and lazy init outside the capture
                self.step(sx, sv)
        torch.cuda.current_stream(x.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = self.step(sx, sv)
        return graph, sx, sv, out


def check_cuda_oom_message(exc: BaseException) -> bool:
    """True when ``exc`` is a CUDA (or TensorRT) out-of-memory error."""
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and "out of memory" in text and "cuda" in text


def oom_error(tile_shape: tuple[int, ...]) -> DeviceError:
    """The error raised when even one tile does not fit on the device."""
    return DeviceError(
        f"CUDA out of memory even for one {tile_shape[-2]}x{tile_shape[-1]} tile; "
        "use a smaller --tile-size or free the GPU"
    )

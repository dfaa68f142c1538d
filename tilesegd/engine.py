"""The engine: batches of raw tiles in, uint8 class ids (and optional float16 probabilities) out.

Raw tiles (uint8 stays uint8 until the device) are moved to the device, normalised there
(``x / input_scale``, then ``(x - mean) / std``; invalid pixels set to 0, i.e. the mean),
run through the network, cropped to the core and reduced by argmax on the device. On CUDA the
host buffers are pinned, copies are asynchronous and two batches are kept in flight, so the
host prepares batch *n+1* while the GPU computes batch *n*. On CUDA out-of-memory the batch is
split in halves and retried (outputs are identical: each tile is computed independently).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tilesegd.errors import ConfigError, DeviceError, ModelFileError
from tilesegd.model_file import ModelSpec, load_model

log = logging.getLogger(__name__)

_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` -> ``cuda`` when available else ``cpu``.

    Raises:
        DeviceError: CUDA was asked for but is not available.
    """
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(
            f"--device {device}: CUDA is not available on this machine; use --device cpu or auto"
        )
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise DeviceError(
            f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) present"
        )
    return dev


def resolve_precision(precision: str, device: torch.device) -> torch.dtype:
    """``auto`` -> fp16 on CUDA, fp32 on CPU.

    Raises:
        DeviceError: fp16 asked for on the CPU (not supported well by torch's CPU kernels).
    """
    if precision == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    if precision not in _DTYPES:
        raise ConfigError(f"precision must be auto, fp32, fp16 or bf16, got {precision!r}")
    if precision == "fp16" and device.type == "cpu":
        raise DeviceError("--precision fp16 needs CUDA; on the CPU use fp32 or bf16")
    return _DTYPES[precision]


@dataclass
class Pending:
    """A batch in flight; :meth:`result` waits for it.

    ``ids`` is (B, h, w) uint8 and ``probs`` (B, K, h, w) float16 or ``None``.
    """

    _ids: torch.Tensor
    _probs: torch.Tensor | None
    _event: Any = None

    def result(self) -> tuple[np.ndarray, np.ndarray | None]:
        """Block until the batch is done; return ``(ids, probs)`` as NumPy arrays."""
        if self._event is not None:
            self._event.synchronize()
        probs = None if self._probs is None else self._probs.numpy()
        return self._ids.numpy(), probs


class Engine:
    """Run a segmentation network on batches of raw tiles.

    Args:
        module: callable mapping float32 (B, C, H, W) to logits (B, K, H, W) (an ``nn.Module``,
            TorchScript module or ``torch.export`` module).
        spec: the model's :class:`~tilesegd.model_file.ModelSpec` (normalisation, classes).
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        precision: ``auto``, ``fp32``, ``fp16`` or ``bf16`` (autocast on the device).
        batch_size: the most tiles per network call.
        save_probs: also return softmax probabilities (float16).
        compile: wrap the network in ``torch.compile`` (useful on CUDA without TensorRT).

    Raises:
        DeviceError: device or precision not available.
    """

    def __init__(
        self,
        module: Callable[[torch.Tensor], torch.Tensor],
        spec: ModelSpec,
        device: str = "auto",
        precision: str = "auto",
        batch_size: int = 8,
        save_probs: bool = False,
        compile: bool = False,
        source: str = "<model>",
    ) -> None:
        self.device = resolve_device(device)
        self.dtype = resolve_precision(precision, self.device)
        self.spec = spec
        self.batch_size = max(1, int(batch_size))
        self.save_probs = save_probs
        self.source = source
        if isinstance(module, torch.nn.Module):
            try:
                module = module.eval()
            except NotImplementedError:  # torch.export modules are always in eval mode
                pass
            module = module.to(self.device)
        if compile:
            module = torch.compile(module)
        self.module = module
        scale = np.asarray(spec.std, np.float32) * np.float32(spec.input_scale)
        self._a = torch.from_numpy(1.0 / scale).view(1, -1, 1, 1).to(self.device)
        mean = np.asarray(spec.mean, np.float32) / np.asarray(spec.std, np.float32)
        self._b = torch.from_numpy(-mean).view(1, -1, 1, 1).to(self.device)
        self._cuda = self.device.type == "cuda"
        self._checked: set[tuple[int, int]] = set()
        self.calls = 0  # network calls made (for tests and statistics)
        self.tiles = 0  # tiles run through the network

    @classmethod
    def from_file(
        cls, path: str | Path, device: str = "auto", sha256: str | None = None, **kwargs: Any
    ) -> Engine:
        """Load a model file (see :func:`tilesegd.model_file.load_model`) into an engine."""
        dev = resolve_device(device)
        loaded = load_model(path, dev, sha256=sha256)
        return cls(loaded.module, loaded.spec, device=str(dev), source=str(path), **kwargs)

    def check(self, tile_shape: tuple[int, int]) -> None:
        """Run one all-zero tile and check the output shape against the spec.

        Raises:
            ModelFileError: the network's class count or output size disagrees with its
                ``tilesegd.json``, or the network fails on this input size.
        """
        if tile_shape in self._checked:
            return
        x = torch.zeros(1, self.spec.in_channels, *tile_shape, device=self.device)
        try:
            with torch.inference_mode(), self._autocast():
                out = self.module(x)
        except Exception as exc:
            raise ModelFileError(
                f"{self.source}: the network fails on a (1, {self.spec.in_channels}, "
                f"{tile_shape[0]}, {tile_shape[1]}) input ({type(exc).__name__}: "
                f"{str(exc)[:200]}); check in_channels, multiple and the tile size"
            ) from None
        if isinstance(out, (tuple, list)):
            out = out[0]
        if out.ndim != 4 or out.shape[1] != self.spec.num_classes:
            raise ModelFileError(
                f"{self.source}: the network outputs {tuple(out.shape[1:2])} channels, but "
                f"tilesegd.json lists {self.spec.num_classes} classes; fix the metadata or "
                "re-export the model"
            )
        if tuple(out.shape[2:]) != tuple(tile_shape):
            raise ModelFileError(
                f"{self.source}: output size {tuple(out.shape[2:])} differs from the input size "
                f"{tuple(tile_shape)}; tilesegd needs logits at full input resolution"
            )
        self._checked.add(tile_shape)

    def _autocast(self):
        if self.dtype == torch.float32:
            return torch.autocast(self.device.type, enabled=False)
        return torch.autocast(self.device.type, dtype=self.dtype)

    def _forward(self, x: torch.Tensor, valid: torch.Tensor, core: tuple[int, int, int, int]):
        r0, c0, h, w = core
        x = x.to(torch.float32) * self._a + self._b
        x = x * valid.unsqueeze(1)
        with torch.inference_mode(), self._autocast():
            logits = self.module(x)
        if isinstance(logits, (tuple, list)):
            logits = logits[0]
        logits = logits[:, :, r0 : r0 + h, c0 : c0 + w]
        ids = logits.argmax(1).to(torch.uint8)
        probs = torch.softmax(logits.float(), 1).to(torch.float16) if self.save_probs else None
        return ids, probs

    def submit(self, x: np.ndarray, valid: np.ndarray, core: tuple[int, int, int, int]) -> Pending:
        """Start one batch.

        Args:
            x: (B, C, H, W) raw tiles, any numeric dtype (uint8 is shipped as uint8).
            valid: (B, H, W) bool, False where the pixel is nodata or padding.
            core: ``(row, col, height, width)`` of the core to return, in tile pixels.

        Returns:
            A :class:`Pending` whose result is ``(ids (B, h, w) uint8, probs (B, K, h, w)
            float16 or None)``.
        """
        self.check(tuple(x.shape[2:]))
        if x.dtype not in (np.uint8, np.float32):
            x = x.astype(np.float32)
        self.calls += 1
        self.tiles += len(x)
        if not self._cuda:
            with torch.inference_mode():
                ids, probs = self._forward(torch.from_numpy(x), torch.from_numpy(valid), core)
            return Pending(ids, probs)
        return self._submit_cuda(x, valid, core)

    def _submit_cuda(self, x: np.ndarray, valid: np.ndarray, core) -> Pending:
        xt = torch.from_numpy(x).pin_memory().to(self.device, non_blocking=True)
        vt = torch.from_numpy(valid).pin_memory().to(self.device, non_blocking=True)
        parts, n = [], len(x)
        step = min(self.batch_size, n)
        i = 0
        while i < n:
            try:
                with torch.inference_mode():
                    parts.append(self._forward(xt[i : i + step], vt[i : i + step], core))
                i += step
            except torch.cuda.OutOfMemoryError:
                if step == 1:
                    raise DeviceError(
                        "CUDA out of memory even for one tile; use a smaller --tile-size"
                    ) from None
                step = max(1, step // 2)
                torch.cuda.empty_cache()
                log.warning("CUDA out of memory: retrying with %d tiles per call", step)
                self.batch_size = step
        ids = torch.cat([p[0] for p in parts])
        ids_host = torch.empty(ids.shape, dtype=ids.dtype, pin_memory=True)
        ids_host.copy_(ids, non_blocking=True)
        probs_host = None
        if self.save_probs:
            probs = torch.cat([p[1] for p in parts])
            probs_host = torch.empty(probs.shape, dtype=probs.dtype, pin_memory=True)
            probs_host.copy_(probs, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        return Pending(ids_host, probs_host, event)

    def predict(
        self, x: np.ndarray, valid: np.ndarray, core: tuple[int, int, int, int] | None = None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Synchronous :meth:`submit` (core defaults to the whole tile)."""
        core = core or (0, 0, x.shape[2], x.shape[3])
        return self.submit(x, valid, core).result()

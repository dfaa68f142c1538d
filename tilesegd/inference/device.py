"""Devices and batches in flight: device and precision resolution, the :class:`Pending`
result of a submitted batch, per-stage timing, and the CUDA submission path (pinned host
memory, three streams ordered by events: copy-in, compute, copy-out)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from tilesegd.errors import ConfigError, DeviceError

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


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
    if precision not in DTYPES:
        raise ConfigError(f"precision must be auto, fp32, fp16 or bf16, got {precision!r}")
    if precision == "fp16" and device.type == "cpu":
        raise DeviceError("--precision fp16 needs CUDA; on the CPU use fp32 or bf16")
    return DTYPES[precision]


@dataclass
class Pending:
    """A batch in flight; :meth:`result` waits for it.

    ``outputs`` are ``(ids, probs, confidence)``: ids (B, h, w) uint8; probs (B, K, h, w)
    float16 or ``None``; confidence (B, h, w) uint8 or ``None`` (see :class:`Engine`).
    """

    _outputs: tuple[torch.Tensor | None, ...]
    _event: Any = None
    _on_done: Callable[[], None] | None = None

    def outputs(self) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """Block until the batch is done; ``(ids, probs, confidence)`` as NumPy arrays."""
        if self._event is not None:
            self._event.synchronize()
        if self._on_done is not None:
            self._on_done()
            self._on_done = None
        ids, probs, conf = (None if t is None else t.numpy() for t in self._outputs)
        return ids, probs, conf

    def result(self) -> tuple[np.ndarray, np.ndarray | None]:
        """Block until the batch is done; return ``(ids, probs)`` as NumPy arrays."""
        ids, probs, _ = self.outputs()
        return ids, probs


@dataclass
class EngineTimes:
    """Seconds spent per stage (CPU: wall clock; CUDA: device time from CUDA events).

    Attributes:
        h2d: host-to-device copy (CPU: batch conversion and normalisation).
        infer: network, crop, argmax (and softmax) on the device.
        d2h: device-to-host copy of ids / probabilities (CPU: 0).
        wait: host time blocked in :meth:`Pending.result`.
    """

    h2d: float = 0.0
    infer: float = 0.0
    d2h: float = 0.0
    wait: float = 0.0
    extra: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, float]:
        """``{"h2d": s, "infer": s, "d2h": s, "wait": s}`` rounded to ms."""
        return {k: round(getattr(self, k), 3) for k in ("h2d", "infer", "d2h", "wait")}


def submit_cuda(
    streams: tuple[Any, Any, Any],
    x: np.ndarray,
    valid: np.ndarray,
    run: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor | None, ...]],
    device: torch.device,
    times: EngineTimes,
) -> Pending:
    """Stage a batch in pinned host memory and run it on three CUDA streams: copy-in, ``run``
    (x (B, C, H, W), valid (B, H, W) on the device -> output tensors or ``None``), copy-out,
    ordered by events, so the next batch is copied in and the previous one copied out while
    this one computes. Returns at once; :meth:`Pending.outputs` waits."""
    s_in, s_run, s_out = streams
    ev = [torch.cuda.Event(enable_timing=True) for _ in range(5)]
    hx = torch.from_numpy(x).pin_memory()  # torch's caching host allocator: reused buffers
    hv = torch.from_numpy(valid).pin_memory()
    with torch.cuda.stream(s_in):
        ev[0].record(s_in)
        xt = hx.to(device, non_blocking=True)
        vt = hv.to(device, non_blocking=True)
        ev[1].record(s_in)
    s_run.wait_event(ev[1])
    with torch.cuda.stream(s_run):
        xt.record_stream(s_run)
        vt.record_stream(s_run)
        ev[2].record(s_run)
        outputs = run(xt, vt)
        ev[3].record(s_run)
    s_out.wait_event(ev[3])
    host: list[torch.Tensor | None] = []
    with torch.cuda.stream(s_out):
        for t in outputs:
            if t is None:
                host.append(None)
                continue
            t.record_stream(s_out)
            host.append(torch.empty(t.shape, dtype=t.dtype, pin_memory=True))
            host[-1].copy_(t, non_blocking=True)
        ev[4].record(s_out)

    def done() -> None:
        times.h2d += ev[0].elapsed_time(ev[1]) / 1e3
        times.infer += ev[2].elapsed_time(ev[3]) / 1e3
        times.d2h += ev[3].elapsed_time(ev[4]) / 1e3

    return Pending(tuple(host), ev[4], done)

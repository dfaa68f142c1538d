"""What one network call may use: the memory budget behind the default tile.

The budget is bytes per network call (:func:`memory_budget`: a share of the machine's memory on
the CPU, of the device's on CUDA, or ``--memory-budget``), and a call costs
:func:`call_bytes_per_pixel` bytes per input pixel, so the largest tile a run may use is
``sqrt(budget / call_bytes_per_pixel)`` (:func:`tilesegd.inference.geometry.budget_tile`).
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass

from tilesegd.errors import ConfigError
from tilesegd.model.spec import ModelSpec

CPU_BUDGET = 5 << 28
"""1.25 GiB: the least one call may use on the CPU by default (``benchmarks/budget.py``)."""
CPU_MEMORY_SHARE = 0.125  # of the machine's (or container's) memory, for one call on the CPU
CUDA_BUDGET_SHARE = 0.25  # of a CUDA device's total memory, for one call
DEFAULT_ACTIVATION_BYTES = 380.0
"""float32 bytes per input pixel one call of the network adds to memory, when the model file
does not say. Calibrated on the process's peak resident memory on the CPU
(``benchmarks/budget.py``, 2 threads, 3 calls per size): an engine call of the TorchScript
LoveDA demo U-Net (Unet-mobilenet_v2, slim decoder) adds 448 / 1089 / 1417 MiB at 1024 / 1568 /
1888-px tiles, ~311 B/px at the margin plus 150-220 MiB (glibc arenas, oneDNN, the TorchScript
profiling run): 380 plus the engine's own buffers covers it for 1400-1900-px tiles. Torch's
profiler sees only 112 B/px of tensors there (:func:`tilesegd.model.halo.measure_activation_bytes`);
smp Unet-mobilenet_v2 with the default decoder holds 318.5 B/px of tensors in eager mode."""


def memory_budget(device_type: str = "cpu", total_memory: int | None = None) -> int:
    """Bytes one network call may use by default (``--memory-budget`` overrides it).

    CPU: :data:`CPU_MEMORY_SHARE` (an eighth) of ``total_memory`` (default
    :func:`machine_memory`), at least :data:`CPU_BUDGET` (1.25 GiB). CUDA:
    :data:`CUDA_BUDGET_SHARE` (a quarter) of ``total_memory``, the device's memory in bytes
    (the rest is left for the runtime's workspaces, a second batch in flight, CUDA graphs or
    TensorRT engines). Either way a constant of the machine: never a function of the scene."""
    if device_type == "cuda" and total_memory:
        return int(total_memory * CUDA_BUDGET_SHARE)
    if device_type == "cuda":
        return CPU_BUDGET
    total = total_memory or machine_memory()
    return max(CPU_BUDGET, int(total * CPU_MEMORY_SHARE) >> 20 << 20)


def device_budget(device: object) -> tuple[int, int]:
    """``(budget bytes, bytes per activation value)`` for a ``torch.device`` and the precision
    the engine runs it at (2 for fp16 / bf16 autocast on CUDA, else 4); see
    :func:`memory_budget`."""
    import torch

    dev = torch.device(device)
    if dev.type != "cuda":
        return memory_budget("cpu"), 4
    total = torch.cuda.get_device_properties(dev).total_memory
    return memory_budget("cuda", total), 2


@dataclass(frozen=True)
class DeviceBudget:
    """What one network call may use on a device (the budget half of :func:`geometry_for`).

    Attributes:
        bytes: bytes one network call may use (:func:`memory_budget`).
        dtype_bytes: bytes per activation value at the engine's precision (4 fp32, 2 fp16 /
            bf16).
    """

    bytes: int = CPU_BUDGET
    dtype_bytes: int = 4

    @classmethod
    def of(cls, device: object, dtype: object) -> DeviceBudget:
        """The budget of a ``torch.device`` (:func:`device_budget`) at a ``torch.dtype``'s
        precision (``dtype.itemsize`` bytes per value)."""
        budget, _ = device_budget(device)
        return cls(budget, int(dtype.itemsize))  # type: ignore[attr-defined]


def call_bytes_per_pixel(
    spec: ModelSpec,
    *,
    activation_bytes: float | None = None,
    dtype_bytes: int = 4,
    save_probs: bool = False,
) -> float:
    """Bytes one input pixel costs during a network call.

    The network's activations (``activation_bytes``, else the model file's
    ``activation_bytes_per_pixel``, else :data:`DEFAULT_ACTIVATION_BYTES`; all float32,
    scaled by ``dtype_bytes / 4`` for fp16 / bf16) plus the engine's buffers per pixel: the raw
    tile (up to float32), the normalised float32 copy and its NHWC reorder (``3 x 4 x C``),
    validity, the argmax values and int64 indices and the uint8 ids (14), and with
    ``save_probs`` the float32 softmax and its float16 copy (``6 x K``).
    """
    act = activation_bytes or spec.activation_bytes or DEFAULT_ACTIVATION_BYTES
    engine = 12 * spec.in_channels + 14 + (6 * spec.num_classes if save_probs else 0)
    return float(act) * dtype_bytes / 4 + engine


_CGROUP_LIMITS = ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes")
_UNITS = {"": 1, "b": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}


def machine_memory() -> int:
    """Bytes of memory this process may use: the machine's physical memory (psutil), or the
    container's cgroup limit (v2 ``memory.max``, v1 ``limit_in_bytes``) when that is lower."""
    import psutil

    total = int(psutil.virtual_memory().total)
    for path in _CGROUP_LIMITS:
        with contextlib.suppress(OSError, ValueError):
            with open(path) as fh:
                total = min(total, int(fh.read().strip()))  # "max" (no limit): ValueError
    return total


def parse_memory_size(text: str | int) -> int:
    """Bytes from ``"3GiB"``, ``"1500MB"``, ``"2g"``, ``"800M"`` or a plain number of bytes
    (``KiB``/``MiB``/``GiB``/``TiB`` are powers of 1024; ``K``/``M``/``G``/``T`` with or without
    ``B`` are powers of 1000, as ``ls -h --si``; case-insensitive).

    Raises:
        ConfigError: not a positive size.
    """
    if isinstance(text, int) and not isinstance(text, bool):
        value = text
    else:
        found = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kmgt]?)(i?)b?\s*", str(text).lower())
        if not found:
            raise ConfigError(
                f"--memory-budget {text!r} is not a size; give bytes or a number with a unit, "
                "e.g. 3GiB, 1500MB"
            )
        number, unit, binary = found.groups()
        scale = 1024 ** "bkmgt".index(unit or "b") if binary else _UNITS[unit]
        value = int(float(number) * scale)
    if value <= 0:
        raise ConfigError(f"--memory-budget must be positive, got {text!r}")
    return value

"""The measured cost model behind the default tile: the network's throughput per tile size.

Exact stitching runs ``pixels_run(scene, tile)`` network pixels (about ``(tile / core)^2`` times
the scene's pixels), and the network's throughput (network pixels per second) itself depends on
the tile: small tiles pay per-call overheads, large ones fall out of the CPU's caches (the
project's U-Net on 2 CPU threads under onnxruntime: 2.4 / 3.6 / 3.3 megapixels per second at
512 / 1024 / 1408 px). So each scene runs the tile that minimises
``pixels_run(scene, tile) / throughput(tile)``, its predicted seconds
(:func:`tilesegd.inference.geometry.fit_tile`), within the memory budget.

:func:`measure_throughput` times the network (its runtime, device and thread count as the run
will use them) on one random tile at each of a few sizes between the smallest seamless tile and
the budget tile, once per model file and machine: the curve is cached in the model cache
(``<cache>/<sha256>/throughput.json``, :func:`tilesegd.storage.fetch.cache_dir`), so every
later run on the machine, and a resumed run, chooses the same tiles. A measurement takes a few
seconds on the CPU.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import platform
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tilesegd import atomic

log = logging.getLogger(__name__)

POINTS = 5  # tile sizes measured between the smallest seamless tile and the budget tile
CURVE_JSON = "throughput.json"
MEASURED_JSON = "measured.json"  # other measurements (the --seam-tolerance halo)
Curve = tuple[tuple[int, float], ...]
"""``((tile px, network megapixels per second), ...)``, ascending in tile size."""


def curve_sizes(lo: int, hi: int, multiple: int, points: int = POINTS) -> list[int]:
    """Up to ``points`` tile sides (pixels, multiples of ``multiple``) spread evenly from
    ``lo`` to ``hi`` inclusive (fewer when the range holds fewer multiples)."""
    m = max(1, multiple)
    lo, hi = -(-lo // m) * m, max(m, hi // m * m)
    if hi <= lo:
        return [hi]
    steps = (hi - lo) // m
    n = min(points, steps + 1)
    return sorted({lo + round(i * steps / (n - 1)) * m for i in range(n)})


def throughput_at(curve: Curve, tile: int) -> float:
    """The curve's throughput (megapixels per second) at ``tile`` px: linear between measured
    sizes, the nearest measured value beyond them. ``curve`` must not be empty."""
    if tile <= curve[0][0]:
        return curve[0][1]
    for (t0, v0), (t1, v1) in zip(curve, curve[1:], strict=False):
        if tile <= t1:
            return v0 + (v1 - v0) * (tile - t0) / (t1 - t0)
    return curve[-1][1]


QUICK_CALL = 0.5  # seconds: calls faster than this are timed twice more (the fastest counts)


def time_call(call: Callable[[Any], Any], x: Any) -> float:
    """Seconds of one call ``call(x)`` after a warm-up call (the runtime's first call at a
    shape allocates and plans); the fastest of three when a call takes under
    :data:`QUICK_CALL` (noise matters most there)."""
    call(x)
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        call(x)
        best = min(best, time.perf_counter() - t0)
        if best >= QUICK_CALL:
            break
    return best


def measure_curve(network: Any, channels: int, sizes: Sequence[int]) -> Curve:
    """Time ``network`` (float32 (1, channels, s, s) -> anything) on one seeded random tile per
    size in ``sizes`` (pixels) under ``torch.inference_mode``.

    Returns:
        ``((size, megapixels per second), ...)`` ascending.
    """
    import torch

    gen = torch.Generator().manual_seed(0)
    out = []
    for s in sorted(sizes):
        x = torch.rand(1, channels, s, s, generator=gen)
        with torch.inference_mode():
            seconds = time_call(network, x)
        out.append((int(s), round(s * s / max(seconds, 1e-9) / 1e6, 4)))
    return tuple(out)


def curve_key(sha256: str, runtime: str, device: str, sizes: Sequence[int]) -> str:
    """The cache key of a measurement: the model file, runtime, device (with the CPU model and
    torch's thread count), tile sizes and torch version."""
    import torch

    parts = [sha256, runtime, device, platform.processor() or platform.machine()]
    parts += [str(torch.get_num_threads()), torch.__version__, ",".join(map(str, sizes))]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:24]


def measure_throughput(
    network: Any,
    channels: int,
    sizes: Sequence[int],
    *,
    sha256: str,
    runtime: str,
    device: str,
    cache: Path | None = None,
) -> Curve:
    """The cached :func:`measure_curve` of a model file's network (module docstring); measured
    and stored the first time for this key (:func:`curve_key`).

    Args:
        network: the runtime the engine calls (a torch module or an ONNX runtime model).
        channels: its input channels.
        sizes: tile sides to measure, pixels (:func:`curve_sizes`).
        sha256: the model file's SHA-256 (hex); ``""`` measures without caching.
        runtime, device: what the engine runs it with (part of the cache key).
        cache: the model cache folder (default :func:`tilesegd.storage.fetch.cache_dir`).

    Returns:
        The curve; an unwritable cache only costs a warning (measured again next time).
    """

    def measure() -> dict[str, Any]:
        log.info("measuring the network's throughput at %s px tiles (once per model file)", sizes)
        curve = measure_curve(network, channels, sizes)
        return {"curve": [list(p) for p in curve], "runtime": runtime, "device": device}

    key = curve_key(sha256, runtime, device, sizes) if sha256 else ""
    found = cached_value(sha256, key, measure, cache, CURVE_JSON)
    return tuple((int(t), float(v)) for t, v in found["curve"])


def read_json_dict(path: Path) -> dict[str, Any]:
    """The JSON object at ``path`` (the cached measurements: ``throughput.json`` holds
    ``{key: {"curve": [[tile, mpx_s], ...], ...}}``), or an empty dict when absent or
    unreadable."""
    with contextlib.suppress(OSError, ValueError):
        doc = json.loads(path.read_text())
        if isinstance(doc, dict):
            return doc
    return {}


def cached_value(
    sha256: str,
    key: str,
    compute: Callable[[], Any],
    cache: Path | None = None,
    name: str = MEASURED_JSON,
) -> Any:
    """A JSON value measured once per model file (SHA-256 ``sha256``) and ``key``, kept in
    ``<cache>/<sha256>/<name>`` (:func:`tilesegd.storage.fetch.cache_dir`): ``compute()`` the
    first time, and every time when ``sha256`` is empty. An unwritable cache only costs a
    warning (measured again next time)."""
    from tilesegd.storage.fetch import cache_dir

    if not sha256:
        return compute()
    path = (cache or cache_dir()) / sha256.lower() / name
    known = read_json_dict(path)
    if key not in known:
        known[key] = compute()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic.write_text(path, json.dumps(known, indent=1))
        except OSError as exc:
            log.warning("%s: cannot cache a measurement (%s)", path, exc)
    return known[key]

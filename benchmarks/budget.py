"""The memory budget on the CPU: what one network call of the default tile really costs.

    .venv/bin/python benchmarks/budget.py [--model benchmarks/out/loveda_model/model.pt2]

For the model file, prints the tile the default rule picks for the CPU budget, and for each
tile the peak resident memory of a fresh process that runs three engine calls of it (as a run
does), above the memory it held before (model loaded): the budget's CPU peak, against the rule's
prediction (``tile^2 x call_bytes_per_pixel``, with the file's own figure or the calibrated
default) and against the bytes of tensors torch's profiler sees
(:func:`tilesegd.model.halo.measure_activation_bytes`).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def one_call(model: str, tile: int) -> dict[str, float]:
    """In this (fresh) process: one engine call of a ``tile`` x ``tile`` tile on 2 threads."""
    import numpy as np
    import torch

    from tilesegd.inference.build import open_engine
    from tilesegd.inference.geometry import TilingOptions
    from tilesegd.inference.options import EngineOptions

    torch.set_num_threads(2)
    engine = open_engine(model, EngineOptions(device="cpu"), TilingOptions(batch_size=1))
    before = _rss_mb()
    x = np.full((1, engine.spec.in_channels, tile, tile), 128, np.uint8)
    for _ in range(3):  # the first call of a shape (TorchScript profiling run) differs
        engine.predict(x, np.ones((1, tile, tile), bool))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"tile": tile, "before_mb": round(before, 1), "peak_mb": round(peak, 1)}


def main() -> None:
    """Command line: see the module docstring."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(HERE / "out" / "loveda_model" / "model.pt2"))
    ap.add_argument("--tiles", type=int, nargs="*", default=None, help="default: the rule's")
    ap.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one:
        print(json.dumps(one_call(a.model, a.one)))
        return
    from tilesegd.inference.budget import CPU_BUDGET, call_bytes_per_pixel
    from tilesegd.inference.geometry import resolve_geometry
    from tilesegd.model.halo import measure_activation_bytes
    from tilesegd.model.model_file import load_model

    m = load_model(a.model)
    act = measure_activation_bytes(m.module, m.spec.in_channels, m.spec.multiple)
    plain = resolve_geometry(m.spec)
    measured = resolve_geometry(m.spec, activation_bytes=act)
    print(f"{a.model}: CPU budget {CPU_BUDGET >> 20} MiB; torch's profiler sees {act:.1f} B/px")
    print(
        f"default rule: max tile {plain.tile_size}; with the profiler's figure it would be "
        f"{measured.tile_size}; halo {plain.halo}"
    )
    tiles = a.tiles or sorted({plain.tile_size, measured.tile_size, 1024})
    print("tile   predicted MiB (rule, profiler)   process: before, peak, peak-before MiB")
    for t in tiles:
        p = subprocess.run(
            [sys.executable, __file__, "--model", a.model, "--one", str(t)],
            capture_output=True,
            text=True,
            check=True,
        )
        r = json.loads([ln for ln in p.stdout.splitlines() if ln.startswith("{")][-1])
        pred = [
            t * t * call_bytes_per_pixel(m.spec, activation_bytes=b) / 2**20 for b in (None, act)
        ]
        print(
            f"{t:5d}   {pred[0]:8.0f} {pred[1]:8.0f}   {r['before_mb']:8.0f} {r['peak_mb']:8.0f} "
            f"{r['peak_mb'] - r['before_mb']:8.0f}",
            flush=True,
        )


if __name__ == "__main__":
    main()

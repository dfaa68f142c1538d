"""Issue 11's reproduction, and what the block checks cost.

The scene: 5000 x 5000 RGB uint8, nodata 0, EPSG:32633, every row from 4900 down nodata (before
the fix, rows 3584-4899 x cols 1792-3583 came out as nodata although valid). Each run goes
through ``tilesegd.api.run`` with default settings and the trivial 1x1 model (the cheapest
network, so the checks' share of the time is the largest it can be), then:

* verifies that every valid pixel has a class id and every nodata pixel is 255 (mask.tif), and
  that run.json's ``valid_pixels`` equals the areas' pixels and the input's valid pixels;
* times the checks themselves (the per-block nodata counts, the block check and the finish
  step's done-log check), summed over the run, against the run's wall clock;
* A/B: the same run with the checks replaced by no-ops, alternated ``--repeat`` times
  (medians; a noisy machine blurs differences under a few per cent).

    .venv/bin/python benchmarks/bench_integrity.py [--repeat 3] [--size 5000]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def make_scene(path: Path, size: int, strip_from: int) -> int:
    """Write the scene block by block; return its valid pixel count."""
    import rasterio
    from rasterio.transform import from_origin

    prof = dict(driver="GTiff", width=size, height=size, count=3, dtype="uint8", nodata=0)
    prof.update(crs="EPSG:32633", transform=from_origin(500000, 4650000, 0.5, 0.5))
    prof.update(tiled=True, blockxsize=512, blockysize=512)
    rng = np.random.default_rng(0)
    with rasterio.open(path, "w", **prof) as dst:
        for r0 in range(0, size, 512):
            h = min(512, size - r0)
            rows = np.arange(r0, r0 + h)[:, None]
            cols = np.arange(size)[None, :]
            base = (np.sin(rows / 97.0) * np.cos(cols / 61.0) * 100 + 128).astype(np.int16)
            img = np.stack([base, base[::-1], (base + 40) % 250]) + rng.integers(
                0, 20, (3, h, size)
            )
            img = np.clip(img, 1, 255).astype(np.uint8)
            img[:, rows[:, 0] >= strip_from] = 0
            dst.write(img, window=rasterio.windows.Window(0, r0, size, h))
    return size * min(size, strip_from)


class CheckTimer:
    """Wraps the three checks with timers (or no-ops) by monkeypatching their modules."""

    def __init__(self, disabled: bool) -> None:
        import tilesegd.batch.finish as runner
        import tilesegd.inference.stitch as stitch

        self.seconds = 0.0
        self.saved = [
            (stitch, "check_block", stitch.check_block),
            (stitch, "nodata_count", stitch.nodata_count),
            (runner, "check_blocks_done", runner.check_blocks_done),
        ]
        for mod, name, fn in self.saved:
            setattr(mod, name, self.wrap(fn, name, disabled))

    def wrap(self, fn, name: str, disabled: bool):
        def timed(*a, **k):
            t0 = time.perf_counter()
            try:
                if disabled and name == "check_block":
                    return None
                if disabled and name == "nodata_count":
                    return 0
                if disabled and name == "check_blocks_done":
                    return None
                return fn(*a, **k)
            finally:
                self.seconds += time.perf_counter() - t0

        return timed

    def restore(self) -> None:
        for mod, name, fn in self.saved:
            setattr(mod, name, fn)


def one_run(scene: Path, model: Path, out: Path, disabled: bool) -> dict:
    import rasterio

    from tilesegd.api import run

    timer = CheckTimer(disabled)
    t0 = time.perf_counter()
    try:
        doc = run(input=[str(scene)], model=str(model), output=str(out), progress=False)
    except Exception as exc:  # with the checks off, the expected-nodata count is wrong: fine
        raise SystemExit(f"run failed: {exc}") from None
    finally:
        timer.restore()
    seconds = time.perf_counter() - t0
    entry = doc["scenes"][scene.stem]
    with rasterio.open(out / scene.stem / "mask.tif") as ds, rasterio.open(scene) as src:
        lost = 0
        wrong_nodata = 0
        for _, win in ds.block_windows(1):
            ids, valid = ds.read(1, window=win), src.dataset_mask(window=win) > 0
            lost += int(((ids == 255) & valid).sum())
            wrong_nodata += int(((ids != 255) & ~valid).sum())
    return {
        "checks": "off" if disabled else "on",
        "seconds": round(seconds, 3),
        "check_seconds": round(timer.seconds, 4),
        "valid_pixels": entry["valid_pixels"],
        "lost_valid_pixels": lost,
        "wrong_nodata_pixels": wrong_nodata,
        "tiles_run": entry["tiles_run"],
        "tiles_skipped": entry["tiles_skipped"],
    }


def main() -> None:
    import torch
    from models import build

    import tilesegd

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=5000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", default=str(HERE / "results" / "results_integrity_cpu.json"))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        strip = args.size * 49 // 50  # 4900 of 5000
        expected_valid = make_scene(d / "scene.tif", args.size, strip)
        model = build("trivial", 4, d)
        runs = []
        for i in range(args.repeat):
            for disabled in (False, True):
                r = one_run(d / "scene.tif", model, d / f"out{i}{int(disabled)}", disabled)
                r["expected_valid_pixels"] = expected_valid
                runs.append(r)
                print(json.dumps(r))
    on = [r for r in runs if r["checks"] == "on"]
    off = [r for r in runs if r["checks"] == "off"]
    summary = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "load_average": os.getloadavg(),
        "versions": {"tilesegd": tilesegd.__version__, "torch": torch.__version__},
        "command": "python benchmarks/bench_integrity.py " + " ".join(sys.argv[1:]),
        "median_seconds_checks_on": statistics.median(r["seconds"] for r in on),
        "median_seconds_checks_off": statistics.median(r["seconds"] for r in off),
        "median_check_share": statistics.median(r["check_seconds"] / r["seconds"] for r in on),
        "every_run_exact": all(
            r["lost_valid_pixels"] == 0
            and r["wrong_nodata_pixels"] == 0
            and r["valid_pixels"] == r["expected_valid_pixels"]
            for r in on
        ),
        "runs": runs,
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(summary, indent=1))
    print(json.dumps({k: v for k, v in summary.items() if k != "runs"}, indent=1))


if __name__ == "__main__":
    main()

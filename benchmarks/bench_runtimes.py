"""tilesegd's defaults against GeoDeep, MONAI and a rasterio loop on the CPU (issue 25).

    .venv/bin/pip install geodeep monai        # the peers (tilesegd[bench] names them)
    .venv/bin/python benchmarks/bench_runtimes.py [--model M.pt2] [--sizes 3072 8192]

* The model is the LoveDA demo U-Net that ``tilesegd train`` writes with
  ``configs/loveda_unet.yaml`` (trained once into ``benchmarks/out/loveda_model/``, as
  ``trained.py``); GeoDeep runs the ONNX file ``tilesegd export --format onnx`` writes from its
  ``best.ckpt``.
* Scenes: ``benchmarks/data/scene_<size>_deflate.tif`` (``make_scenes.py``: the real samples,
  mosaicked and mirrored).
* Every setting runs in a fresh process (2 threads): wall seconds of the whole command (model
  load included) and the process's peak RSS. tilesegd's conversion to ONNX and its throughput
  curve are made once per model file and machine, by a first run that is timed apart
  (``first_run_s``).
* Agreement: whole-image inference (one torch call, ``trained_workers.run_reference``) on the
  central ``min(size, 3072)`` square is the reference; each tool's mask on that square, a
  64-px border excluded, is compared with it.

Writes ``benchmarks/results/results_runtimes_cpu.json`` and prints a table for ``RESULTS.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(HERE), str(ROOT)]
OUT = HERE / "out" / "runtimes"
RESULTS = HERE / "results" / "results_runtimes_cpu.json"
BORDER = 64
THREADS = 2


def child_env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS=str(THREADS), MKL_NUM_THREADS=str(THREADS))
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), str(ROOT), env.get("PYTHONPATH", "")])
    return env


def timed(cmd: list[str]) -> dict[str, Any]:
    """Run ``cmd``; its wall seconds and peak RSS (MiB, the largest child so far)."""
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, env=child_env(), cwd=ROOT)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])}...: exit {p.returncode}: {p.stderr[-800:]}")
    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {"seconds": round(wall, 2), "peak_rss_mb_max_so_far": round(rss), "stdout": p.stdout}


def py(code: str, *args: str) -> list[str]:
    return [sys.executable, "-c", code, *args]


TILESEGD_RUN = """
import sys, torch
torch.set_num_threads(2)
from tilesegd.cli.main import cli
cli(["-q", "run", *sys.argv[1:]])
"""

PEER = """
import json, sys, torch
torch.set_num_threads(2)
import peers, trained_workers as tw
kind, scene, model, out = sys.argv[1:5]
if kind == "geodeep":
    import geodeep, rasterio, numpy as np
    from common import write_mask
    with rasterio.open(scene) as ds:
        res = abs(ds.transform.a) * 100
    mask = geodeep.run(scene, model, output_type="raw", resolution=res, max_threads=2)
    write_mask(out, np.asarray(mask, dtype=np.uint8), scene)
    print(json.dumps({}))
elif kind == "reference":
    print(json.dumps(tw.run_reference(scene, model, out, json.loads(sys.argv[5]))))
else:
    fn = {"monai": peers.run_monai, "loop": peers.run_loop}[kind]
    kw = json.loads(sys.argv[5]) if len(sys.argv) > 5 else {}
    print(json.dumps(fn(scene, model, out, norm=tw.model_norm(model), **kw), default=str))
"""


def agreement(mask: str, reference: str, crop: list[int]) -> float:
    """Percent of the reference square's interior pixels on which ``mask`` agrees."""
    import numpy as np
    import rasterio
    from rasterio.windows import Window

    r0, c0, side = crop
    with rasterio.open(reference) as ref, rasterio.open(mask) as m:
        want = ref.read(1)
        got = m.read(1, window=Window(c0, r0, side, side))
    inner = (slice(BORDER, side - BORDER), slice(BORDER, side - BORDER))
    return round(100 * float(np.mean(got[inner] == want[inner])), 4)


def onnx_for_geodeep(model: Path) -> dict[str, Path]:
    """``export --format onnx`` files of the model's checkpoint (fixed size, as GeoDeep needs):
    the default (the tile the default rule gives a large scene) and one at the training tile
    (what the export wrote before issue 25)."""
    from tilesegd.model.model_file import read_spec

    ckpt = model.parent / "best.ckpt"
    train = read_spec(model).tile_size
    files = {"default": OUT / "model_geodeep.onnx", "train": OUT / f"model_geodeep_{train}.onnx"}
    for kind, dest in files.items():
        if not dest.exists():
            cmd = [sys.executable, "-m", "tilesegd", "export", str(ckpt), "--output", str(dest)]
            cmd += ["--format", "onnx"] + (["--tile-size", str(train)] if kind == "train" else [])
            subprocess.run(cmd, check=True, cwd=ROOT, env=child_env())
    return files


def tile_of(onnx_file: Path) -> int:
    """The fixed input side of an exported ONNX graph."""
    from tilesegd.model.model_file import read_spec

    return read_spec(onnx_file).tile_size


def tilesegd_rows(folder: Path, model: Path, d: Path, ref: Path, crop: list[int]) -> list[dict]:
    """tilesegd's defaults and ``--runtime eager``: a first run (it converts the model and
    times its throughput, once per machine) and the timed run."""
    rows = []
    base = ["-i", str(folder), "-m", str(model), "--device", "cpu", "--overwrite"]
    for name, extra in [
        ("tilesegd defaults", []),
        ("tilesegd --runtime eager", ["--runtime", "eager"]),
    ]:
        out = d / name.replace(" ", "_").replace("-", "")
        first = timed(py(TILESEGD_RUN, *base, "-o", f"{out}_first", *extra))
        r = timed(py(TILESEGD_RUN, *base, "-o", str(out), *extra))
        doc = json.loads((out / "run.json").read_text())
        scene = next(iter(doc["scenes"]))
        rows.append({
            "setting": name, "seconds": r["seconds"], "first_run_s": first["seconds"],
            "scene_s": doc["scenes"][scene].get("seconds"), "runtime": doc.get("runtime"),
            "geometry": doc["geometry"],
            "agreement_pct": agreement(str(out / scene / "mask.tif"), str(ref), crop),
        })  # fmt: skip
    return rows


def run_scene(size: int, model: Path, onnx: dict[str, Path], scene: Path) -> list[dict[str, Any]]:
    """Every setting on one scene, then the agreement of each with the reference."""
    side = min(size, 3072)
    crop = [(size - side) // 2, (size - side) // 2, side]
    d = OUT / str(size)
    d.mkdir(parents=True, exist_ok=True)
    ref = d / "reference.tif"
    timed(py(PEER, "reference", str(scene), str(model), str(ref), json.dumps(crop)))
    folder = d / "in"
    folder.mkdir(exist_ok=True)
    link = folder / scene.name
    if not link.exists():
        link.symlink_to(scene)
    rows = tilesegd_rows(folder, model, d, ref, crop)
    peers = [
        (f"GeoDeep 0.9.13, export default ({tile_of(onnx['default'])} px)", "geodeep", onnx["default"]),
        (f"GeoDeep 0.9.13, export at the training tile ({tile_of(onnx['train'])} px)", "geodeep", onnx["train"]),
        ("MONAI sliding window, gaussian, overlap 0.25, roi 512", "monai", model),
        ("rasterio loop, 512-px windows, no overlap", "loop", model),
    ]  # fmt: skip
    for i, (name, kind, m) in enumerate(peers):
        mask = d / f"{kind}_{i}.tif"
        r = timed(py(PEER, kind, str(scene), str(m), str(mask)))
        rows.append({"setting": name, "seconds": r["seconds"],
                     "agreement_pct": agreement(str(mask), str(ref), crop)})  # fmt: skip
    for row in rows:
        row["size"] = size
    return rows


def main(argv: list[str] | None = None) -> None:
    """Command line: see the module docstring."""
    import trained
    from make_scenes import make_scenes, scene_path

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--sizes", type=int, nargs="+", default=[3072, 8192])
    a = ap.parse_args(argv)
    model = trained.ensure_model(a.model)
    OUT.mkdir(parents=True, exist_ok=True)
    onnx = onnx_for_geodeep(model)
    make_scenes(a.sizes, ["deflate"])
    rows = []
    for size in a.sizes:
        rows += run_scene(size, model, onnx, scene_path(size, "deflate"))
        print(json.dumps(rows[-5:], indent=1), flush=True)
    import onnxruntime
    import torch

    doc = {
        "command": "benchmarks/bench_runtimes.py " + " ".join(argv or sys.argv[1:]),
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "threads": THREADS,
        },  # fmt: skip
        "versions": {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__},
        "date": time.strftime("%Y-%m-%d"),
        "rows": rows,
    }
    RESULTS.write_text(json.dumps(doc, indent=1) + "\n")
    for r in rows:
        print(f"| {r['size']} | {r['setting']} | {r['seconds']:.1f} | {r['agreement_pct']:.3f} % |")


if __name__ == "__main__":
    main()

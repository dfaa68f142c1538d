"""Evidence for issue 16 with a trained model: GSD resampling, and ONNX against TorchScript.

**Resampling.** A real sample scene (default: the 0.5 m SWISSIMAGE orthophoto) is copied at
0.5x and 2x its resolution with GDAL (``rasterio.warp.reproject``, average / bilinear). A
trained model is run with ``--gsd`` set to the original scene's pixel size on the original and
on each copy, three ways:

* ``tilesegd``: the copy as it is (tilesegd resamples it to the model's GSD);
* ``gdal``: the copy first resampled to the model's GSD by GDAL, then run;
* ``off``: the copy with ``--resample off`` (the model sees the wrong pixel size).

Each copy's mask is brought back to the original grid (nearest) and compared with the
original scene's mask (agreement over pixels valid in both).

**ONNX.** The model's checkpoint is exported with ``tilesegd export --format onnx`` and the sample
scenes run with the TorchScript file and the ONNX file: class-id agreement and seconds.

    .venv/bin/python benchmarks/bench_model_files.py --model RUNDIR/model.ts [--ckpt RUNDIR/best.ckpt]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SCENES = ROOT.parent / "shared" / "data" / "scenes"


def tilesegd(*args: str) -> float:
    """Run the CLI; return its wall-clock seconds."""
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "tilesegd", "-q", *args], cwd=ROOT,
                       capture_output=True, text=True)  # fmt: skip
    if r.returncode not in (0, 4):
        raise SystemExit(f"tilesegd {' '.join(args)} failed: {r.stderr[-1500:]}")
    return time.perf_counter() - t0


def resampled_copy(src: Path, dst: Path, factor: float) -> None:
    """``src`` at ``factor`` x its resolution (GDAL: average shrinking, bilinear enlarging)."""
    import rasterio
    from rasterio.enums import Resampling
    from rasterio.warp import reproject

    with rasterio.open(src) as ds:
        h, w = round(ds.height * factor), round(ds.width * factor)
        t = ds.transform * ds.transform.scale(ds.width / w, ds.height / h)
        prof = {**ds.profile, "height": h, "width": w, "transform": t, "tiled": False}
        prof.pop("blockxsize", None), prof.pop("blockysize", None)
        how = Resampling.average if factor < 1 else Resampling.bilinear
        with rasterio.open(dst, "w", **prof) as out:
            for b in range(1, ds.count + 1):
                arr = np.zeros((h, w), ds.dtypes[0])
                reproject(rasterio.band(ds, b), arr, dst_transform=t, dst_crs=ds.crs,
                          resampling=how)  # fmt: skip
                out.write(arr, b)


def on_grid(mask: Path, like: Path) -> np.ndarray:
    """``mask`` brought onto ``like``'s grid, nearest neighbour (255 outside)."""
    import rasterio
    from rasterio.enums import Resampling
    from rasterio.warp import reproject

    with rasterio.open(mask) as m, rasterio.open(like) as g:
        out = np.full((g.height, g.width), 255, np.uint8)
        reproject(rasterio.band(m, 1), out, dst_transform=g.transform, dst_crs=g.crs,
                  resampling=Resampling.nearest, src_nodata=255, dst_nodata=255)  # fmt: skip
    return out


def agreement(a: np.ndarray, b: np.ndarray) -> float:
    ok = (a != 255) & (b != 255)
    return float((a[ok] == b[ok]).mean()) if ok.any() else float("nan")


def resampling_evidence(model: Path, scene: Path, d: Path) -> dict:
    import rasterio

    with rasterio.open(scene) as ds:
        gsd = abs(ds.transform.a)
    tilesegd("run", "-i", str(scene), "-m", str(model), "-o", str(d / "orig"), "--gsd", str(gsd),
             "--preview-size", "0")  # fmt: skip
    ref = on_grid(d / "orig" / scene.stem / "mask.tif", scene)
    out: dict = {"scene": scene.name, "gsd_m": gsd}
    for factor in (0.5, 2.0):
        copy = d / f"copy_{factor}" / f"{scene.stem}_x{factor}.tif"
        copy.parent.mkdir()
        resampled_copy(scene, copy, factor)
        back = d / f"back_{factor}" / copy.name
        back.parent.mkdir()
        resampled_copy(copy, back, 1 / factor)  # the copy at the model's GSD, by GDAL
        row = {}
        for how, path, extra in (("tilesegd", copy, []), ("gdal", back, []),
                                 ("off", copy, ["--resample", "off"])):  # fmt: skip
            o = d / f"{how}_{factor}"
            secs = tilesegd("run", "-i", str(path), "-m", str(model), "-o", str(o), "--gsd",
                            str(gsd), "--preview-size", "0", *extra)  # fmt: skip
            mask = on_grid(o / path.stem / "mask.tif", scene)
            row[how] = {"agreement": round(agreement(mask, ref), 4), "seconds": round(secs, 1)}
        out[f"x{factor}"] = row
        print(json.dumps({f"x{factor}": row}), flush=True)
    return out


def onnx_evidence(model: Path, ckpt: Path, d: Path) -> dict:
    import rasterio

    onnx = d / "model.onnx"
    r = subprocess.run([sys.executable, "-m", "tilesegd", "export", str(ckpt), "-o", str(onnx),
                        "--format", "onnx"], cwd=ROOT, capture_output=True, text=True)  # fmt: skip
    if r.returncode:
        raise SystemExit(f"export failed: {r.stderr[-1500:]}")
    secs = {}
    for name, m in (("torchscript", model), ("onnx", onnx)):
        secs[name] = tilesegd("run", "-i", str(SCENES), "-m", str(m), "-o", str(d / name),
                              "--preview-size", "0")  # fmt: skip
    same = total = 0
    for f in sorted((d / "torchscript").glob("*/mask.tif")):
        with rasterio.open(f) as a, rasterio.open(d / "onnx" / f.parent.name / "mask.tif") as b:
            x, y = a.read(1), b.read(1)
        ok = (x != 255) | (y != 255)
        same, total = same + int((x[ok] == y[ok]).sum()), total + int(ok.sum())
    return {
        "export": r.stdout.strip().splitlines()[-1] if r.stdout.strip() else "",
        "pixels": total,
        "agreement": same / total if total else None,
        "seconds": {k: round(v, 1) for k, v in secs.items()},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="a trained model file (.ts)")
    ap.add_argument("--ckpt", help="its checkpoint, for the ONNX export (default: beside it)")
    ap.add_argument("--scene", default=str(SCENES / "swissimage_1091-322_875x600.tif"))
    ap.add_argument("--json", default=str(HERE / "results" / "results_model_files_cpu.json"))
    args = ap.parse_args()
    model = Path(args.model).resolve()
    ckpt = Path(args.ckpt or model.with_name("best.ckpt")).resolve()
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        (d / "r").mkdir()
        (d / "o").mkdir()
        doc = {
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
            "command": "python benchmarks/bench_model_files.py " + " ".join(sys.argv[1:]),
            "resampling": resampling_evidence(model, Path(args.scene), d / "r"),
            "onnx": onnx_evidence(model, ckpt, d / "o"),
            "load_average": os.getloadavg(),
            "when": time.strftime("%Y-%m-%d %H:%M"),
        }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(doc, indent=1))
    print(json.dumps(doc, indent=1))


if __name__ == "__main__":
    main()

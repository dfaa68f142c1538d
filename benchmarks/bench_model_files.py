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

    .venv/bin/python benchmarks/bench_model_files.py --model RUNDIR/model.pt2 [--ckpt RUNDIR/best.ckpt]
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
DEFAULT_SCENES = [
    SCENES / "swissimage_1091-322_875x600.tif",
    SCENES / "swissimage_lakeshore_875x400.tif",
]


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
    """Share of the pixels valid in both masks with the same class id."""
    ok = (a != 255) & (b != 255)
    return float((a[ok] == b[ok]).mean()) if ok.any() else float("nan")


def mean_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over the classes present in either mask of their IoU between the masks (a mask
    that is mostly one class cannot score well by agreeing on that class alone)."""
    ok = (a != 255) & (b != 255)
    a, b = a[ok], b[ok]
    ious = [((a == k) & (b == k)).sum() / ((a == k) | (b == k)).sum() for k in np.union1d(a, b)]
    return float(np.mean(ious)) if ious else float("nan")


def resampling_evidence(model: Path, scene: Path, d: Path) -> dict:
    import rasterio

    d.mkdir(parents=True)
    with rasterio.open(scene) as ds:
        gsd = abs(ds.transform.a)
    tilesegd("run", "-i", str(scene), "-m", str(model), "-o", str(d / "orig"), "--gsd", str(gsd),
             "--preview-size", "0")  # fmt: skip
    ref = on_grid(d / "orig" / scene.stem / "mask.tif", scene)
    shares = np.bincount(ref[ref != 255], minlength=256)
    out: dict = {"scene": scene.name, "gsd_m": gsd,
                 "class_shares": {int(k): round(float(v / shares.sum()), 4)
                                  for k, v in enumerate(shares) if v}}  # fmt: skip
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
            row[how] = {
                "agreement": round(agreement(mask, ref), 4),
                "mean_iou": round(mean_iou(mask, ref), 4),
                "seconds": round(secs, 1),
            }
        out[f"x{factor}"] = row
        print(json.dumps({f"x{factor}": row}), flush=True)
    return out


def onnx_evidence(model: Path, ckpt: Path, d: Path) -> dict:
    """Export the checkpoint twice (fixed tile size, as Deepness / GeoDeep need; dynamic size)
    and compare each file's masks on the sample scenes with the TorchScript file's."""
    import rasterio

    out: dict = {"seconds": {}}
    out["seconds"]["torchscript"] = round(tilesegd("run", "-i", str(SCENES), "-m", str(model),
                                                   "-o", str(d / "ts"), "--preview-size", "0"), 1)  # fmt: skip
    for kind, extra in (("onnx_fixed", []), ("onnx_dynamic", ["--dynamic-size"])):
        onnx = d / f"{kind}.onnx"
        r = subprocess.run([sys.executable, "-m", "tilesegd", "export", str(ckpt), "-o",
                            str(onnx), "--format", "onnx", *extra], cwd=ROOT,
                           capture_output=True, text=True)  # fmt: skip
        if r.returncode:
            raise SystemExit(f"export failed: {r.stderr[-1500:]}")
        out["seconds"][kind] = round(tilesegd("run", "-i", str(SCENES), "-m", str(onnx), "-o",
                                              str(d / kind), "--preview-size", "0"), 1)  # fmt: skip
        same = total = 0
        worst = (1.0, "")
        for f in sorted((d / "ts").glob("*/mask.tif")):
            with rasterio.open(f) as a, rasterio.open(d / kind / f.parent.name / "mask.tif") as b:
                x, y = a.read(1), b.read(1)
            ok = (x != 255) | (y != 255)
            n_same = int((x[ok] == y[ok]).sum())
            same, total = same + n_same, total + int(ok.sum())
            worst = min(worst, (n_same / max(1, int(ok.sum())), f.parent.name))
        out[kind] = {
            "export": r.stdout.strip().splitlines()[-1] if r.stdout.strip() else "",
            "pixels": total,
            "agreement": same / total if total else None,
            "worst_scene": {"name": worst[1], "agreement": worst[0]},
        }
        print(json.dumps({kind: out[kind]}), flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="a trained model file (.pt2 / .ts)")
    ap.add_argument("--ckpt", help="its checkpoint, for the ONNX export (default: beside it)")
    ap.add_argument(
        "--scene",
        action="append",
        help="scenes for the resampling evidence (default: the two SWISSIMAGE samples)",
    )
    ap.add_argument("--json", default=str(HERE / "results" / "results_model_files_cpu.json"))
    ap.add_argument("--skip-resampling", action="store_true", help="only the ONNX part")
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
            "resampling": None
            if args.skip_resampling
            else [
                resampling_evidence(model, Path(sc), d / "r" / Path(sc).stem)
                for sc in args.scene or DEFAULT_SCENES
            ],
            "onnx": onnx_evidence(model, ckpt, d / "o"),
            "load_average": os.getloadavg(),
            "when": time.strftime("%Y-%m-%d %H:%M"),
        }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(doc, indent=1))
    print(json.dumps(doc, indent=1))


if __name__ == "__main__":
    main()

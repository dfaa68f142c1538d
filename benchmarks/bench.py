"""tilesegd against its peers: one command, every configuration in a fresh process.

    .venv/bin/python benchmarks/bench.py                 # full CPU suite (about 40 min on 2 cores)
    .venv/bin/python benchmarks/bench.py --suite gpu     # on a CUDA machine (H100 figures)
    .venv/bin/python benchmarks/bench.py --suite smoke --out /tmp/b   # seconds; used by CI

Suites (scenes from ``make_scenes.py``; the smoke suite generates a tiny one):

* ``unet``: smp Unet-mobilenet_v2 (random weights, 23 classes) on a 2048^2 real-sample mosaic:
  whole-image reference, model only, tilesegd, MONAI, pytorch-toolbelt, rasterio loop; pipeline
  efficiency, throughput and memory ratios, and seamlessness (agreement with the reference).
* ``scale``: the trivial 1x1-conv model (23 classes) on 8192^2, 16384^2, 32768^2 in DEFLATE and
  ZSTD: codec limit, model only, tilesegd; peers where they fit in memory (else the memory they
  would need).
* ``full`` = ``unet`` + ``scale``; ``gpu``: the trained LoveDA demo model (``trained.py``
  trains it once if missing) in fp16 on the 32768^2 scene (a gigapixel) and the 8192^2 one, at
  tilesegd's default geometry rule for the device (``tilesegd.inference.geometry``): model only on the
  same tiles vs tilesegd, plus peers at 8192^2.

Results: ``<out>/results_<suite>.json`` and the tables in ``<out>/RESULTS.md`` (between the
``tables`` markers; the text around them is kept).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]  # this checkout's tilesegd, not an installed one
DATA = HERE / "data"


def _worker(spec: dict[str, Any]) -> dict[str, Any]:
    import peers
    import torch
    import workers

    kind = spec.pop("kind")
    fn = {
        "tilesegd": workers.run_tilesegd,
        "model_only": workers.run_model_only,
        "codec": workers.run_codec,
        "reference": workers.run_reference,
        "monai": peers.run_monai,
        "toolbelt": peers.run_toolbelt,
        "loop": peers.run_loop,
    }[kind]
    if kind in ("monai", "toolbelt", "loop"):  # the model file's normalisation
        from trained_workers import model_norm

        spec.setdefault("norm", model_norm(spec["model"]))
    res = fn(**spec)
    res["torch_threads"] = torch.get_num_threads()
    return res


def run_config(spec: dict[str, Any], timeout: float = 7200) -> dict[str, Any]:
    """Run one configuration in a fresh interpreter; return its result (or its failure)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)]
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=HERE.parent)
    except subprocess.TimeoutExpired:
        return {**spec, "error": f"timed out after {timeout} s"}
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    if p.returncode != 0 or not lines:
        tail = (p.stderr or p.stdout).strip().splitlines()[-3:]
        return {**spec, "error": f"exit {p.returncode}: {' | '.join(tail)[:400]}"}
    res = json.loads(lines[-1])
    res["wall_s"] = round(time.perf_counter() - t0, 1)
    res["load_avg_1min"] = round(os.getloadavg()[0], 2)  # other work on the machine
    return {**spec, **res}


def machine() -> dict[str, Any]:
    """CPU model, cores, RAM, GPU and library versions."""
    import numpy
    import psutil
    import rasterio
    import torch
    import zarr

    info: dict[str, Any] = {"platform": platform.platform(), "python": platform.python_version()}
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        info["cpu"] = next(
            (ln.split(":", 1)[1].strip() for ln in out.splitlines() if "Model name" in ln), None
        )
    except OSError:
        info["cpu"] = platform.processor()
    info["cores"] = os.cpu_count()
    info["ram_gb"] = round(psutil.virtual_memory().total / 2**30, 1)
    info["gpu"] = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    versions = {
        "torch": torch.__version__,
        "rasterio": rasterio.__version__,
        "gdal": rasterio.__gdal_version__,
        "zarr": zarr.__version__,
        "numpy": numpy.__version__,
    }
    for name in ("dask", "monai", "pytorch_toolbelt", "segmentation_models_pytorch"):
        try:
            versions[name] = __import__(name).__version__
        except ImportError:
            versions[name] = None
    try:
        import torch_tensorrt

        versions["torch_tensorrt"] = torch_tensorrt.__version__
    except ImportError:
        versions["torch_tensorrt"] = None
    info["versions"] = versions
    return info


def agreement(mask: str, reference: str, border: int = 64) -> dict[str, float]:
    """Percent of pixels equal to the reference mask: everywhere, and away from the border."""
    import numpy as np
    import rasterio

    with rasterio.open(mask) as a, rasterio.open(reference) as b:
        x, y = a.read(1), b.read(1)
    inner = (slice(border, -border), slice(border, -border))
    return {
        "agree_pct": round(100 * float(np.mean(x == y)), 4),
        "agree_interior_pct": round(100 * float(np.mean(x[inner] == y[inner])), 4),
    }


def plan(
    suite: str,
    work: Path,
    device: str,
    unet_size: int = 4096,
    sizes: tuple[int, ...] = (8192, 16384, 32768),
    codecs: tuple[str, ...] = ("deflate", "zstd"),
) -> list[dict[str, Any]]:
    """The configurations of a suite (dicts of worker kwargs plus bookkeeping keys)."""
    import models
    from make_scenes import generated_base, make_scenes, scene_path, write_scene
    from peers import memory_needed

    mdir = work / "models"
    mdir.mkdir(parents=True, exist_ok=True)
    out = work / "out"
    out.mkdir(parents=True, exist_ok=True)
    cfgs: list[dict[str, Any]] = []
    ram = __import__("psutil").virtual_memory().total
    gpu = device == "cuda"

    def peers_for(group: str, scene: str, model: str, size: int, k: int, keep: bool) -> None:
        for tool in ("monai", "toolbelt", "loop"):
            need = memory_needed(tool, size, size, k)
            base = {"group": group, "kind": tool, "scene": scene, "model": model}
            if need > 0.75 * ram:
                cfgs.append({**base, "skipped": f"does not fit: needs ~{need / 2**30:.1f} GiB"})
                continue
            mask = str(out / f"{group}_{tool}.tif")
            cfgs.append({**base, "out_mask": mask, "_mask": mask if keep else None})

    if suite == "smoke":
        scene = str(work / "smoke.tif")
        write_scene(Path(scene), 700, "deflate", generated_base(256))
        model = str(models.build("trivial", 4, mdir))
        ref = str(out / "smoke_ref.tif")
        cfgs.append(
            {"group": "smoke", "kind": "reference", "scene": scene, "model": model, "out_mask": ref}
        )
        cfgs.append(
            {"group": "smoke", "kind": "codec", "scene": scene, "out": str(out / "codec.tif")}
        )
        cfgs.append({"group": "smoke", "kind": "model_only", "scene": scene, "model": model})
        mask = str(out / "smoke_tilesegd.tif")
        cfgs.append(
            {
                "group": "smoke",
                "kind": "tilesegd",
                "scene": scene,
                "model": model,
                "out": str(out / "ts"),
                "keep_mask": mask,
                "_mask": mask,
            }
        )
        peers_for("smoke", scene, model, 700, 4, True)
        return cfgs
    if suite in ("unet", "full"):
        make_scenes([unet_size], ["deflate"], DATA)
        scene, model = (
            str(scene_path(unet_size, "deflate", DATA)),
            str(models.build("unet", 23, mdir)),
        )
        ref = str(out / "unet_ref.tif")
        cfgs.append(
            {
                "group": f"unet-{unet_size}",
                "kind": "reference",
                "scene": scene,
                "model": model,
                "out_mask": ref,
            }
        )
        cfgs.append(
            {"group": f"unet-{unet_size}", "kind": "model_only", "scene": scene, "model": model}
        )
        mask = str(out / "unet_tilesegd.tif")
        cfgs.append(
            {
                "group": f"unet-{unet_size}",
                "kind": "tilesegd",
                "scene": scene,
                "model": model,
                "out": str(out / "ts"),
                "keep_mask": mask,
                "_mask": mask,
            }
        )
        peers_for(f"unet-{unet_size}", scene, model, unet_size, 23, True)
    if suite in ("scale", "full"):
        make_scenes(list(sizes), list(codecs), DATA)
        model = str(models.build("trivial", 23, mdir))
        for size in sizes:
            for codec in codecs:
                g, scene = f"trivial-{size}-{codec}", str(scene_path(size, codec, DATA))
                cfgs.append(
                    {"group": g, "kind": "codec", "scene": scene, "out": str(out / "codec.tif")}
                )
                cfgs.append(
                    {
                        "group": g,
                        "kind": "model_only",
                        "scene": scene,
                        "model": model,
                        "max_seconds": 20,
                    }
                )
                cfgs.append(
                    {
                        "group": g,
                        "kind": "tilesegd",
                        "scene": scene,
                        "model": model,
                        "out": str(out / "ts"),
                    }
                )
                if codec == "deflate" and size == sizes[0]:
                    peers_for(g, scene, model, size, 23, False)
                elif codec == "deflate":  # whole-image peers: report the memory they need
                    for tool in ("monai", "toolbelt"):
                        need = memory_needed(tool, size, size, 23)
                        note = f"not run: needs ~{need / 2**30:.1f} GiB for whole-image buffers"
                        cfgs.append({"group": g, "kind": tool, "skipped": note})
    if suite == "gpu":
        # the trained LoveDA model and tilesegd's default geometry rule on this device (tile
        # from the halo and a quarter of the GPU's memory, fitted per scene), as a user runs it
        from trained import ensure_model

        make_scenes([8192, 32768], ["deflate"], DATA)
        model = str(ensure_model(None))
        rule = {"tile": None, "overlap": None, "batch": None}
        for size in (8192, 32768):
            g, scene = f"loveda-fp16-{size}", str(scene_path(size, "deflate", DATA))
            common = {"group": g, "scene": scene, "model": model, "precision": "fp16", **rule}
            cfgs.append({**common, "kind": "model_only"})
            cfgs.append({**common, "kind": "tilesegd", "out": str(out / "ts"), "workers": 16})
            cfgs.append(
                {
                    **common,
                    "kind": "tilesegd",
                    "out": str(out / "ts"),
                    "workers": 16,
                    "runtime": "eager",
                    "label": "tilesegd (eager)",
                }
            )
            if size == 8192:
                peers_for(g, scene, model, size, 7, False)
    if not gpu:
        for c in cfgs:
            if c.get("precision") == "fp16":
                c["skipped"] = "fp16 needs CUDA"
    return cfgs


def summarise(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Per group: pipeline efficiency, codec ratio, throughput and memory ratios vs tilesegd."""
    groups: dict[str, dict[str, Any]] = {}
    for r in results:
        if "error" in r or "skipped" in r:
            continue
        groups.setdefault(r["group"], {})[r.get("label") or r["tool"]] = r
    out = {}
    for g, by in groups.items():
        ts = by.get("tilesegd")
        if ts is None:
            continue
        s: dict[str, Any] = {
            "tilesegd_mp_per_s": ts["mp_per_s"],
            "tilesegd_peak_mb": ts["peak_rss_mb"],
        }
        if "model only" in by:
            s["pipeline_efficiency"] = round(ts["mp_per_s"] / by["model only"]["mp_per_s"], 3)
            s["compute_efficiency"] = round(
                ts["compute_mp_per_s"] / by["model only"]["mp_per_s"], 3
            )
        if "codec limit" in by:
            s["codec_ratio"] = round(by["codec limit"]["mp_per_s"] / ts["mp_per_s"], 3)
        for peer in ("monai", "toolbelt", "rasterio loop"):
            if peer in by:
                s[f"speedup_vs_{peer}"] = round(ts["mp_per_s"] / by[peer]["mp_per_s"], 2)
                s[f"memory_ratio_{peer}_over_tilesegd"] = round(
                    by[peer]["peak_rss_mb"] / ts["peak_rss_mb"], 2
                )
        out[g] = s
    trivial = {g: v for g, v in groups.items() if g.startswith("trivial-") and "tilesegd" in v}
    for codec in ("deflate", "zstd"):
        per = {int(g.split("-")[1]): v["tilesegd"] for g, v in trivial.items() if g.endswith(codec)}
        if 8192 in per and 32768 in per:
            sec_per_px = {n: r["seconds"] / r["megapixels"] for n, r in per.items()}
            out[f"linearity-{codec}"] = {
                "seconds_per_megapixel": {
                    str(k): round(v, 4) for k, v in sorted(sec_per_px.items())
                },
                "ratio_32768_over_8192": round(sec_per_px[32768] / sec_per_px[8192], 3),
            }
    return out


def main(argv: list[str] | None = None) -> None:
    """Command line: see the module docstring."""
    ap = argparse.ArgumentParser(description="tilesegd benchmarks against peers")
    ap.add_argument("--suite", default="full", choices=["full", "unet", "scale", "gpu", "smoke"])
    ap.add_argument("--out", type=Path, default=HERE, help="where results/ and RESULTS.md go")
    ap.add_argument("--work", type=Path, default=DATA, help="models and temporary outputs")
    ap.add_argument("--unet-size", type=int, default=4096, help="side of the Unet scene, px")
    ap.add_argument("--sizes", type=int, nargs="+", default=[8192, 16384, 32768])
    ap.add_argument("--codecs", nargs="+", default=["deflate", "zstd"])
    ap.add_argument("--only", default=None, help="run only groups containing this text")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(_worker(json.loads(args.worker))))
        return
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    cfgs = plan(
        args.suite, args.work, device, args.unet_size, tuple(args.sizes), tuple(args.codecs)
    )
    if args.only:
        cfgs = [c for c in cfgs if args.only in c["group"]]
    results = []
    for c in cfgs:
        spec = {k: v for k, v in c.items() if k not in ("group", "_mask", "skipped", "label")}
        label = f"{c['group']:<22} {c['kind']:<11}"
        if "skipped" in c:
            res = {**c, "tool": c["kind"]}
            print(f"{label} skipped: {c['skipped']}", flush=True)
        else:
            res = {"group": c["group"], **run_config(spec)}
            if c.get("label"):
                res["label"] = c["label"]
            if c.get("_mask") and "error" not in res:
                ref = next(
                    (
                        x.get("out_mask")
                        for x in cfgs
                        if x["group"] == c["group"] and x["kind"] == "reference"
                    ),
                    None,
                )
                if ref and Path(ref).exists():
                    res.update(agreement(c["_mask"], ref))
            msg = (
                res.get("error") or f"{res['mp_per_s']:.3f} MP/s, peak {res['peak_rss_mb']:.0f} MiB"
            )
            print(f"{label} {msg}", flush=True)
        results.append(res)
        _save(args, device, started, argv, results)
    _save(args, device, started, argv, results, final=True)


def _save(args, device, started, argv, results, final: bool = False) -> None:
    """Write the JSON (after every configuration, so a cut-short run keeps its figures)."""
    doc = {
        "suite": args.suite,
        "command": " ".join(
            [Path(sys.executable).name, "benchmarks/bench.py", *(argv or sys.argv[1:])]
        ),
        "started": started,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z") if final else None,
        "machine": machine(),
        "results": results,
        "summary": summarise(results),
    }
    (args.out / "results").mkdir(parents=True, exist_ok=True)
    path = args.out / "results" / f"results_{args.suite}_{device}.json"
    path.write_text(json.dumps(doc, indent=1, default=str))
    if final:
        from report import write_report

        write_report(args.out / "RESULTS.md", sorted((args.out / "results").glob("results_*.json")))
        print(f"wrote {path} and {args.out / 'RESULTS.md'}")


if __name__ == "__main__":
    main()

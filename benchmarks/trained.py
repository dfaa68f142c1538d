"""Trained-model suite (issue 12): seconds, network pixels, seamlessness and memory of tilesegd
and its peers with a model that really looks far (the LoveDA demo U-Net), on 2 CPU threads.

    .venv/bin/python benchmarks/trained.py              # everything (~1-2 h on 2 busy cores)
    .venv/bin/python benchmarks/trained.py --quick      # the head-to-head settings only

* The model is trained once by ``tilesegd train`` with ``configs/loveda_unet.yaml`` on
  ``../shared/data/labeled/loveda`` (6-8 CPU minutes; never downloaded) and cached in
  ``benchmarks/out/loveda_model/`` (git-ignored); ``--model`` uses another file.
* The scene is ``benchmarks/data/scene_4096_deflate.tif`` (``make_scenes.py``: the real samples,
  mosaicked and mirrored to 4096^2).
* Seamlessness: whole-image inference on the central ``--crop`` (2048^2) is the reference; each
  tool's mask over that crop, a ``--border`` (256 px) excluded, is compared with it (as
  ``seams.py``).
* Every configuration runs in a fresh process with 2 torch threads (``peak_rss_mb`` is its own);
  compared settings run interleaved (tilesegd next to each peer), the 1-minute load average is
  recorded before and after each, and ``--repeats`` runs the head-to-head settings again in
  reverse order. A setting whose geometry would run more than ``--max-ratio`` x the scene's
  pixels (tilesegd 512-px tiles with a 448-px overlap: 64x) runs on the crop only, and its
  seconds are scaled to the scene by network pixels (marked in the table).

Results: ``benchmarks/results/trained_cpu.json``, the table and targets in ``RESULTS.md`` (between
the ``trained`` markers) and the figure ``benchmarks/trained_seconds_vs_agreement.png``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(HERE), str(ROOT)]  # this checkout's tilesegd, not an installed one
OUT = HERE / "out"
LOVEDA = ROOT.parent / "shared" / "data" / "labeled" / "loveda"


def ensure_model(path: Path | None) -> Path:
    """The model file: ``path``, or the cached LoveDA demo model (trained here if missing)."""
    if path is not None:
        return path
    run_dir = OUT / "loveda_model"
    model = run_dir / "model.pt2"
    if not model.is_file():
        if not LOVEDA.is_dir():
            sys.exit(f"no model: the LoveDA sample pairs are not at {LOVEDA}; pass --model")
        cmd = [sys.executable, "-m", "tilesegd", "train", "--images", str(LOVEDA / "images")]
        cmd += ["--masks", str(LOVEDA / "masks"), "--classes", str(LOVEDA / "classes.csv")]
        cmd += ["--output", str(run_dir), "--config", str(ROOT / "configs" / "loveda_unet.yaml")]
        print("training the LoveDA demo model (6-8 CPU minutes, once):", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True, cwd=ROOT)
    return model


def worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one configuration in this process (``--worker``)."""
    import peers
    import torch
    import trained_workers as tw

    torch.set_num_threads(2)
    kind = spec.pop("kind")
    fn = {
        "tilesegd": tw.run_tilesegd,
        "model_only": tw.run_model_only,
        "reference": tw.run_reference,
        "monai": peers.run_monai,
        "toolbelt": peers.run_toolbelt,
        "loop": peers.run_loop,
    }[kind]
    if kind in ("monai", "toolbelt", "loop"):
        spec["norm"] = tw.model_norm(spec["model"])
    res = fn(**spec)
    res["torch_threads"] = torch.get_num_threads()
    return res


def run_config(spec: dict[str, Any], timeout: float = 7200) -> dict[str, Any]:
    """Run one configuration in a fresh interpreter; its result, with the load average."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)]
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {**spec, "error": f"timed out after {timeout} s"}
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    if p.returncode != 0 or not lines:
        tail = (p.stderr or p.stdout).strip().splitlines()[-3:]
        return {**spec, "error": f"exit {p.returncode}: {' | '.join(tail)[:400]}"}
    res = json.loads(lines[-1])
    res["wall_s"] = round(time.perf_counter() - t0, 1)
    res["load_avg"] = [round(load0, 2), round(os.getloadavg()[0], 2)]
    return {**spec, **res}


def agreement(mask: str, reference: str, crop: list[int], border: int, whole: bool) -> float:
    """Percent of the crop's interior pixels (``border`` excluded) equal to the reference; the
    crop is read from ``mask`` at its place in the scene, or all of ``mask`` when ``whole``."""
    import numpy as np
    import rasterio
    from rasterio.windows import Window

    r0, c0, side = crop
    with rasterio.open(reference) as ref, rasterio.open(mask) as m:
        want = ref.read(1)
        got = m.read(1) if whole else m.read(1, window=Window(c0, r0, side, side))
    inner = (slice(border, side - border), slice(border, side - border))
    return round(100 * float(np.mean(got[inner] == want[inner])), 4)


def settings(halo: int, quick: bool) -> list[dict[str, Any]]:
    """The compared settings, interleaved (tilesegd next to each peer)."""
    o = 2 * halo
    head = [
        {"label": "tilesegd default", "kind": "tilesegd"},
        {"label": "MONAI gaussian 0.25", "kind": "monai", "overlap": 0.25},
        {"label": "pytorch-toolbelt 512/448", "kind": "toolbelt"},
        {"label": "rasterio loop 512", "kind": "loop"},
    ]
    if quick:
        return head
    rest = [
        {"label": "tilesegd 2048", "kind": "tilesegd", "tile": 2048, "overlap": o},
        {"label": "MONAI gaussian 0.5", "kind": "monai", "overlap": 0.5},
        {"label": "tilesegd 1536", "kind": "tilesegd", "tile": 1536, "overlap": o},
        {"label": f"tilesegd default, overlap {o // 2}", "kind": "tilesegd", "overlap": o // 2},
        {"label": "tilesegd 1024", "kind": "tilesegd", "tile": 1024, "overlap": o},
        {"label": "MONAI gaussian 0.75", "kind": "monai", "overlap": 0.75},
        {"label": "tilesegd 768", "kind": "tilesegd", "tile": 768, "overlap": o},
        {"label": "tilesegd 512", "kind": "tilesegd", "tile": 512, "overlap": o},
    ]
    return head + rest


def predicted_ratio(s: dict[str, Any], size: int, multiple: int) -> float:
    """Network pixels / scene pixels a fixed-tile tilesegd or MONAI setting will run."""
    from tilesegd.inference.geometry import pixels_run

    if s["kind"] == "tilesegd" and s.get("tile"):
        return pixels_run(size, size, s["tile"], s["overlap"], multiple) / size**2
    if s["kind"] == "monai":
        step = max(1, int(512 * (1 - s["overlap"])))
        return ((math.ceil((size - 512) / step) + 1) * 512 / size) ** 2
    return 1.0


def crop_scene(scene: str, crop: list[int], path: Path) -> str:
    """Write the crop window of ``scene`` as its own GeoTIFF (for the settings run on it)."""
    import rasterio
    from rasterio.windows import Window

    r0, c0, side = crop
    with rasterio.open(scene) as src:
        win = Window(c0, r0, side, side)
        prof = dict(src.profile, width=side, height=side, transform=src.window_transform(win))
        with rasterio.open(path, "w", **prof) as dst:
            dst.write(src.read(window=win))
    return str(path)


def plan_one(s: dict[str, Any], ctx: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """Worker kwargs for setting ``s``; and whether it runs on the crop only."""
    slug = "".join(c if c.isalnum() else "_" for c in s["label"]).strip("_")
    on_crop = predicted_ratio(s, ctx["size"], ctx["multiple"]) > ctx["max_ratio"]
    scene = ctx["crop_scene"] if on_crop else ctx["scene"]
    spec = {"kind": s["kind"], "scene": scene, "model": ctx["model"]}
    mask = str(ctx["work"] / f"{slug}.tif")
    if s["kind"] == "tilesegd":
        spec.update(out=str(ctx["work"] / "ts"), keep_mask=mask)
        spec.update(tile=s.get("tile"), overlap=s.get("overlap"))
    else:
        spec["out_mask"] = mask
        if s["kind"] == "monai":
            spec["overlap"] = s["overlap"]
    return spec, on_crop


def run_setting(s: dict[str, Any], ctx: dict[str, Any], rnd: int) -> dict[str, Any]:
    """Run one setting; add its agreement, pixel ratio and (crop runs) scaled seconds."""
    from tilesegd.inference.geometry import pixels_run

    spec, on_crop = plan_one(s, ctx)
    res = {"label": s["label"], "round": rnd, "on_crop": on_crop, **run_config(spec)}
    if "error" not in res:
        ran = ctx["crop"][2] ** 2 if on_crop else ctx["size"] ** 2
        res["pixel_ratio"] = round(res["network_pixels"] / ran, 3)
        res["agree_interior_pct"] = agreement(
            spec.get("keep_mask") or spec["out_mask"],
            ctx["ref"],
            ctx["crop"],
            ctx["border"],
            on_crop,
        )
        if on_crop:  # seconds for the whole scene, scaled by the network pixels it would run
            n = ctx["size"]
            full = (
                pixels_run(n, n, s["tile"], s["overlap"], ctx["multiple"])
                if s["kind"] == "tilesegd"
                else predicted_ratio(s, n, ctx["multiple"]) * n * n
            )
            res["crop_seconds"] = res["seconds"]
            res["seconds"] = round(res["seconds"] * full / res["network_pixels"], 1)
            res["pixel_ratio"] = round(full / n**2, 3)
    msg = res.get("error") or (
        f"{res['seconds']:.1f} s, {res['pixel_ratio']:.2f}x px, "
        f"{res['agree_interior_pct']:.3f} %, {res['peak_rss_mb']:.0f} MiB, load {res['load_avg']}"
    )
    print(f"[{rnd}] {s['label']:<40} {msg}", flush=True)
    return res


def main(argv: list[str] | None = None) -> None:
    """Command line: see the module docstring."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=None, help="model file (default: LoveDA demo)")
    ap.add_argument("--size", type=int, default=4096, help="scene side, px (make_scenes.py)")
    ap.add_argument("--crop", type=int, default=2048, help="reference crop side, px (>= 1536)")
    ap.add_argument("--border", type=int, default=256, help="crop edge left out of agreement")
    ap.add_argument("--quick", action="store_true", help="only the head-to-head settings")
    ap.add_argument("--repeats", type=int, default=1, help="extra reversed head-to-head rounds")
    ap.add_argument("--max-ratio", type=float, default=8.0, help="above: run on the crop only")
    ap.add_argument("--results", type=Path, default=HERE / "results" / "trained_cpu.json")
    ap.add_argument("--report", type=Path, default=HERE, help="where RESULTS.md and the figure go")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    import trained_report
    from make_scenes import make_scenes, scene_path

    from tilesegd.model.halo import measure_activation_bytes
    from tilesegd.model.model_file import load_model

    model = ensure_model(args.model)
    loaded = load_model(model)
    work = OUT / "trained"
    work.mkdir(parents=True, exist_ok=True)
    make_scenes([args.size], ["deflate"], HERE / "data")
    scene = str(scene_path(args.size, "deflate", HERE / "data"))
    r0 = (args.size - args.crop) // 2
    crop = [r0, r0, args.crop]
    ctx: dict[str, Any] = {
        "model": str(model),
        "scene": scene,
        "crop_scene": crop_scene(scene, crop, work / "crop.tif"),
        "size": args.size,
        "crop": crop,
        "border": args.border,
        "work": work,
        "multiple": loaded.spec.multiple,
        "max_ratio": args.max_ratio,
        "activation_bytes": measure_activation_bytes(
            loaded.module, loaded.spec.in_channels, loaded.spec.multiple
        ),
    }
    halo = (loaded.spec.overlap or 64) // 2
    print(f"{model}: halo {halo} px, {ctx['activation_bytes']:.1f} activation bytes/px", flush=True)
    ref = run_config(
        {
            "kind": "reference",
            "scene": scene,
            "model": str(model),
            "crop": crop,
            "out_mask": str(work / "reference.tif"),
        }
    )
    ctx["ref"] = ref["out_mask"]
    results: list[dict[str, Any]] = []
    plan = settings(halo, args.quick)
    for s in plan:
        results.append(run_setting(s, ctx, 0))
        if s["label"].startswith("tilesegd default") and "error" not in results[-1]:
            r = results[-1]
            only = run_config(
                {
                    "kind": "model_only",
                    "model": str(model),
                    "tile_shape": r["tile_shape"],
                    "slots": r["slots"],
                    "batch": r["batch"],
                }
            )
            results.append({**only, "label": f"model only ({s['label']})", "round": 0})
        trained_report.save(args, ctx, halo, ref, results)
    for rnd in range(1, args.repeats + 1):
        for s in reversed(settings(halo, True)):
            results.append(run_setting(s, ctx, rnd))
            trained_report.save(args, ctx, halo, ref, results)
    trained_report.save(args, ctx, halo, ref, results, final=True)


if __name__ == "__main__":
    main()

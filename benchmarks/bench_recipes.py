"""Training recipes: class weighting at equal training pixels (issue 27).

    nice -n 19 .venv/bin/python benchmarks/bench_recipes.py            # 48 runs, ~40 min
    .venv/bin/python benchmarks/bench_recipes.py --quick                 # smoke run, ~2 min
    .venv/bin/python benchmarks/bench_recipes.py --sets synthetic loveda --recipes none balanced \\
        --seeds 0 1 2 3

Every recipe trains ``tilesegd train`` (smp Unet-mobilenet_v2, full decoder, random init,
ce+dice, or bce+dice on the two-class sets as ``configs/binary_buildings.yaml``) through
:func:`recipes.train_tilesegd` (4 epochs, validation on a 20 % row strip, the best epoch's
``model.pt2``) for the same number of network-input training pixels per set, and is scored on
held-out test frames through the deployed tiled path at the masks' native resolution
(:func:`recipes.score_model`: one confusion matrix over the test frames; mIoU over the classes
present or predicted, pixel accuracy). Recipes differ only in ``class_weights`` /
``class_weight_cap`` (:data:`RECIPES`); with the same seed they share the split, the
initialisation and the training tiles, so per-seed differences are paired.

Sets (:data:`SETS`): the labelled samples in ``../shared/data/labeled`` (LoveDA, detectree,
SpaceNet buildings; read in place and cut into frames under ``--work`` by
:func:`recipes.make_frames`; a set whose folder is absent is skipped with a message), and
``synthetic``: 16 classes whose pixel shares fall geometrically over 3 orders of magnitude
(:func:`make_synthetic`: class-coloured ellipses, the rarer the smaller, painted on a
background class, with colour noise so that similar colours are confusable), generated with a
fixed seed under ``--work``.

Runs go to worker processes (``--jobs``, each with ``--threads`` torch threads, so a run's
figures do not depend on the others). Results: ``benchmarks/results/results_recipes_cpu.json``
(machine, versions, command, settings, per-run figures, summary), rewritten after every run;
finished runs with the same settings are reused on a rerun (``--fresh``: start over). A
Markdown table goes to stdout.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import recipes  # noqa: E402

# what differs between recipes: the class weighting only
RECIPES: dict[str, dict[str, Any]] = {
    "none": dict(class_weights=None),
    "balanced": dict(class_weights="balanced"),
    "inverse_sqrt": dict(class_weights="inverse_sqrt"),
    "balanced_cap10": dict(class_weights="balanced", class_weight_cap=10.0),
    "inverse_sqrt_cap10": dict(class_weights="inverse_sqrt", class_weight_cap=10.0),
}
DEFAULT_RECIPES = ["none", "balanced", "inverse_sqrt", "balanced_cap10"]
# per set: training settings shared by its recipes, training megapixels per run
# (sized so that 4 recipes x 3 seeds of all four take ~45 min in 2 one-thread workers on a
# 2-core CPU; 128-px tiles give 4 x the optimiser steps of 256-px ones at these budgets)
SETS: dict[str, dict[str, Any]] = {
    "synthetic": dict(opts=dict(tile_size=128, loss="ce+dice"), budget=12.0),
    "loveda": dict(opts=dict(tile_size=128, loss="ce+dice"), budget=16.0),
    "detectree": dict(opts=dict(tile_size=128, loss="bce+dice"), budget=4.0),
    "spacenet": dict(opts=dict(tile_size=128, loss="bce+dice"), budget=8.0),
}
SYNTH = dict(classes=16, ratio=1000.0, size=256, train=8, test=6, noise=28.0, seed=2027)


def longtail_shares(k: int, ratio: float) -> np.ndarray:
    """(k,) shares falling geometrically from class 0 to class k-1 by ``ratio`` in all."""
    p = ratio ** (-np.arange(k) / (k - 1))
    return p / p.sum()


def synthetic_frame(
    rng: np.random.Generator, shares: np.ndarray, colours: np.ndarray, size: int, noise: float
) -> tuple[np.ndarray, np.ndarray]:
    """``(image (3, size, size) uint8, ids (size, size) uint8)``: class 0 everywhere, then each
    class c >= 1 as ellipses of radius ~22 sqrt(share_c / share_1) px (at least 2.5) painted
    frequent first, so that it covers ~share_c of the frame; colour = the class colour +
    a per-ellipse offset (sd 12) + per-pixel noise (sd ``noise``)."""
    ids = np.zeros((size, size), np.uint8)
    offset = np.zeros((3, size, size), np.float32)
    for c in range(1, len(shares)):
        r = max(2.5, 22.0 * math.sqrt(shares[c] / shares[1]))
        n_mean = shares[c] * size * size / (math.pi * r * r)
        for _ in range(int(n_mean) + int(rng.random() < n_mean - int(n_mean))):
            cy, cx = rng.uniform(0, size, 2)
            a, b = r * rng.uniform(0.6, 1.4, 2)
            t = rng.uniform(0, math.pi)
            y0, y1 = int(max(0, cy - 1.5 * r)), int(min(size, cy + 1.5 * r + 1))
            x0, x1 = int(max(0, cx - 1.5 * r)), int(min(size, cx + 1.5 * r + 1))
            yy, xx = np.mgrid[y0:y1, x0:x1]
            u = (xx - cx) * math.cos(t) + (yy - cy) * math.sin(t)
            v = -(xx - cx) * math.sin(t) + (yy - cy) * math.cos(t)
            inside = (u / a) ** 2 + (v / b) ** 2 <= 1
            ids[y0:y1, x0:x1][inside] = c
            offset[:, y0:y1, x0:x1][:, inside] = rng.normal(0, 12, (3, 1))
    image = colours[ids].transpose(2, 0, 1) + offset + rng.normal(0, noise, (3, size, size))
    return np.clip(image, 0, 255).astype(np.uint8), ids


def make_synthetic(work: Path) -> tuple[Path, Path, dict[str, Any]]:
    """Write the synthetic set (:data:`SYNTH`) under ``work/synthetic`` once; returns
    ``(train_dir, test_dir, info)``, each folder with images/, masks/ (PNG), classes.csv."""
    root = work / "synthetic"
    k = SYNTH["classes"]
    info = {
        **SYNTH,
        "target_shares": [round(float(s), 6) for s in longtail_shares(k, SYNTH["ratio"])],
    }
    if not (root / "done").exists():
        rng = np.random.default_rng(SYNTH["seed"])
        colours = rng.uniform(30, 225, (k, 3)).astype(np.float32)
        rows = [f"{c},c{c:02d},{','.join(str(int(v)) for v in colours[c])}" for c in range(k)]
        for part in ("train", "test"):
            for sub in ("images", "masks"):
                (root / part / sub).mkdir(parents=True, exist_ok=True)
            (root / part / "classes.csv").write_text("value,name,r,g,b\n" + "\n".join(rows) + "\n")
            for i in range(SYNTH[part]):
                image, ids = synthetic_frame(
                    rng, longtail_shares(k, SYNTH["ratio"]), colours, SYNTH["size"], SYNTH["noise"]
                )
                recipes.write(root / part / "images" / f"f{i}.png", image, {})
                recipes.write(root / part / "masks" / f"f{i}.png", ids[None], {})
        (root / "done").touch()
    return root / "train", root / "test", info


def prepare_set(name: str, work: Path) -> tuple[Path, Path, dict[str, Any]] | str:
    """``(train_dir, test_dir, info)`` of set ``name`` (frames made once under ``work``), or
    the reason it is skipped. ``info`` holds the class names and training pixel shares."""
    if name == "synthetic":
        train_dir, test_dir, info = make_synthetic(work)
    else:
        src = recipes.SHARED / recipes.SETS[name]["src"]
        if not (src / "images").is_dir():
            return f"{src} not found (../shared/data/labeled/{recipes.SETS[name]['src']})"
        train_dir, test_dir = recipes.make_frames(name, work)
        info = {"source": str(src)}
    for part, folder in (("train", train_dir), ("test", test_dir)):
        store, st = recipes.frames(folder)
        counts = st.class_pixels.astype(np.float64)
        info[f"{part}_frames"] = len(store)
        info[f"{part}_shares"] = [round(float(v), 6) for v in counts / counts.sum()]
    info["classes"] = store.classmap.names
    return train_dir, test_dir, info


def run_one(job: dict[str, Any]) -> dict[str, Any]:
    """Train and score one (set, recipe, seed) in this (worker) process."""
    import torch

    torch.set_num_threads(job["threads"])
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    warned: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda rec: warned.append(rec.getMessage())  # type: ignore[method-assign]
    logging.getLogger("tilesegd").addHandler(handler)
    out = Path(job["work"]) / "runs" / job["set"] / f"{job['recipe']}_s{job['seed']}"
    shutil.rmtree(out, ignore_errors=True)
    opts = {**SETS[job["set"]]["opts"], **RECIPES[job["recipe"]]}
    w0, c0 = time.perf_counter(), time.process_time()
    info = recipes.train_tilesegd(
        Path(job["train"]), out, opts, job["budget"], job["seed"], job["epochs"]
    )
    w1, c1 = time.perf_counter(), time.process_time()
    sc = recipes.score_model(out / "model.pt2", Path(job["test"]))
    if not job["keep"]:
        shutil.rmtree(out, ignore_errors=True)
    return {
        **{k: job[k] for k in ("set", "recipe", "seed", "budget", "epochs")},
        **info,
        "settings": opts,
        "miou": sc["miou"],
        "pixel_accuracy": sc["pixel_accuracy"],
        "test_pixels": sc["pixels"],
        "iou": {c["name"]: c["iou"] for c in sc["per_class"]},
        "train_seconds": round(w1 - w0, 1),
        "train_cpu_seconds": round(c1 - c0, 1),
        "test_seconds": round(time.perf_counter() - w1, 1),
        "warnings": [w for w in warned if "never predicted" in w],
    }


def split_iou(run: dict[str, Any], shares: list[float], names: list[str]) -> tuple[float, float]:
    """Mean test IoU of the more frequent half of the classes (by training pixels; the larger
    half when K is odd) and of the rarer half (IoU undefined: left out)."""
    order = [names[i] for i in np.argsort(shares, kind="stable")[::-1]]
    half = math.ceil(len(order) / 2)

    def mean(group: list[str]) -> float:
        vals = [run["iou"][n] for n in group if run["iou"].get(n) is not None]
        return float(np.mean(vals)) if vals else float("nan")

    return mean(order[:half]), mean(order[half:])


def spread(values: list[float]) -> dict[str, float]:
    """Mean, sample standard deviation (0 for one value), min and max."""
    a = np.asarray(values, np.float64)
    sd = float(a.std(ddof=1)) if len(a) > 1 else 0.0
    return {"mean": float(a.mean()), "sd": sd, "min": float(a.min()), "max": float(a.max())}


def summarise(runs: list[dict[str, Any]], sets: dict[str, dict[str, Any]]) -> list[dict]:
    """Per set and recipe: test mIoU, pixel accuracy, frequent / rare half IoU (mean, sd,
    range over seeds) and the paired difference in mIoU to ``none`` (same seeds)."""
    groups: dict[tuple[str, str], dict[int, dict[str, Any]]] = {}
    for r in runs:
        groups.setdefault((r["set"], r["recipe"]), {})[r["seed"]] = r
    out = []
    for (s, rec), by_seed in groups.items():
        rs = [by_seed[k] for k in sorted(by_seed)]
        info = sets[s]
        halves = [split_iou(r, info["train_shares"], info["classes"]) for r in rs]
        row = {
            "set": s,
            "recipe": rec,
            "seeds": sorted(by_seed),
            "miou": spread([r["miou"] for r in rs]),
            "pixel_accuracy": spread([r["pixel_accuracy"] for r in rs]),
            "frequent_half_iou": spread([h[0] for h in halves]),
            "rare_half_iou": spread([h[1] for h in halves]),
        }
        base = groups.get((s, "none"), {})
        paired = [by_seed[k]["miou"] - base[k]["miou"] for k in sorted(by_seed) if k in base]
        if rec != "none" and paired:
            row["miou_minus_none"] = spread(paired)
            row["seeds_better_than_none"] = int(sum(d > 0 for d in paired))
        out.append(row)
    return out


def table(summary: list[dict[str, Any]]) -> str:
    """Markdown table of :func:`summarise` (mean ± sd over seeds)."""

    def ms(d: dict[str, float] | None) -> str:
        return "" if d is None else f"{d['mean']:.3f} ± {d['sd']:.3f}"

    lines = [
        "| set | recipe | seeds | test mIoU | pixel acc. | IoU frequent half | IoU rare half "
        "| mIoU - none (paired) | seeds > none |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in summary:
        better = r.get("seeds_better_than_none")
        wins = "" if better is None else f"{better}/{len(r['seeds'])}"
        lines.append(
            f"| {r['set']} | {r['recipe']} | {len(r['seeds'])} | {ms(r['miou'])} "
            f"| {ms(r['pixel_accuracy'])} | {ms(r['frequent_half_iou'])} "
            f"| {ms(r['rare_half_iou'])} | {ms(r.get('miou_minus_none'))} "
            f"| {wins} |"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (``--quick``: one seed, a 25th of the pixels, 2 epochs)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sets", nargs="+", default=list(SETS), choices=list(SETS))
    ap.add_argument("--recipes", nargs="+", default=DEFAULT_RECIPES, choices=list(RECIPES))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--quick", action="store_true", help="smoke run: seed 0, 1/25 budget")
    ap.add_argument("--budget-scale", type=float, default=1.0, help="x every set's budget")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--jobs", type=int, default=2, help="worker processes")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    ap.add_argument("--work", type=Path, default=Path("/tmp/tilesegd_bench_recipes"))
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--fresh", action="store_true", help="ignore finished runs in --out")
    ap.add_argument("--keep-runs", action="store_true", help="keep each run's RUNDIR")
    a = ap.parse_args(argv)
    if a.quick:
        a.seeds, a.budget_scale, a.epochs = [0], a.budget_scale / 25, 2
    name = "results_recipes_cpu_quick.json" if a.quick else "results_recipes_cpu.json"
    a.out = a.out or HERE / "results" / name
    a.command = "python benchmarks/bench_recipes.py " + " ".join(argv or sys.argv[1:])
    return a


def jobs_for(a: argparse.Namespace, sets: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Every (seed, set, recipe) run to do, seed-major so a partial benchmark has whole
    seeds."""
    return [
        dict(
            set=s,
            recipe=rec,
            seed=seed,
            budget=round(SETS[s]["budget"] * a.budget_scale, 4),
            epochs=a.epochs,
            threads=a.threads,
            work=str(a.work),
            train=sets[s]["train_dir"],
            test=sets[s]["test_dir"],
            keep=a.keep_runs,
        )
        for seed in a.seeds
        for s in sets
        for rec in a.recipes
    ]


def main(argv: list[str] | None = None) -> None:
    """Prepare the sets, run every job in ``--jobs`` workers, write the JSON and the table."""
    import platform

    import bench

    a = parse_args(argv)
    t0 = time.perf_counter()
    sets, skipped = {}, {}
    for s in a.sets:
        got = prepare_set(s, a.work)
        if isinstance(got, str):
            print(f"skipping {s}: {got}", flush=True)
            skipped[s] = got
            continue
        sets[s] = {**got[2], "train_dir": str(got[0]), "test_dir": str(got[1])}
        sets[s].update(opts=SETS[s]["opts"], budget_mpx=SETS[s]["budget"] * a.budget_scale)
    old = [] if a.fresh or not a.out.exists() else json.loads(a.out.read_text())["runs"]
    key = ("set", "recipe", "seed", "budget", "epochs")
    todo = jobs_for(a, sets)
    wanted = {tuple(j[k] for k in key) for j in todo}
    runs = [r for r in old if tuple(r[k] for k in key) in wanted]
    done = {tuple(r[k] for k in key) for r in runs}
    todo = [j for j in todo if tuple(j[k] for k in key) not in done]
    print(f"{len(runs)} runs reused, {len(todo)} to do in {a.jobs} workers", flush=True)
    doc = {
        "benchmark": "bench_recipes (issue 27)",
        "command": a.command,
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": bench.machine(),
        "settings": {
            "base": recipes.BASE,
            "recipes": {r: RECIPES[r] for r in a.recipes},
            "epochs": a.epochs,
            "seeds": a.seeds,
            "jobs": a.jobs,
            "torch_threads": a.threads,
            "python": platform.python_version(),
        },
        "sets": sets,
        "skipped": skipped,
    }
    with ProcessPoolExecutor(max_workers=a.jobs) as pool:
        futures = [pool.submit(run_one, j) for j in todo]
        for f in as_completed(futures):
            r = f.result()
            runs.append(r)
            print(json.dumps({k: r[k] for k in (*key, "miou", "pixel_accuracy", "train_seconds")}),
                  flush=True)  # fmt: skip
            write_doc(a.out, doc, runs, sets, time.perf_counter() - t0)
    write_doc(a.out, doc, runs, sets, time.perf_counter() - t0)
    print("\n" + table(summarise(runs, sets)))


def write_doc(path: Path, doc: dict, runs: list, sets: dict, seconds: float) -> None:
    """The result file with the runs so far and their summary."""
    order = {s: i for i, s in enumerate(SETS)}
    runs.sort(key=lambda r: (order[r["set"]], list(RECIPES).index(r["recipe"]), r["seed"]))
    summary = summarise(runs, sets)
    path.parent.mkdir(parents=True, exist_ok=True)
    full = {**doc, "wall_seconds": round(seconds, 1), "runs": runs, "summary": summary}
    path.write_text(json.dumps(full, indent=1))


if __name__ == "__main__":
    main()

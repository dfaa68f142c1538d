"""Training recipes at equal training pixels: tilesegd against the resize-and-train tutorial.

    .venv/bin/python benchmarks/recipes.py                       # every set, ~1-2 h on 2 cores
    .venv/bin/python benchmarks/recipes.py --sets loveda --seeds 0 1

One command, one process. The labelled samples in ``../shared/data/labeled`` are cut into frames
(LoveDA: each 1024^2 image into 4 frames of 512^2, PNG without georeferencing; SpaceNet: the
900^2 uint16 scene into 4 georeferenced frames; detectree: its 4 georeferenced 175 x 120 tiles
as they are) under ``--work`` (scratch, not the repository). One frame of every source image
(seeded) is the test set; the rest are training frames.

Every recipe trains smp Unet-mobilenet_v2 (full decoder, random init) on the training frames for
the same number of training pixels (network input pixels: ``--budget`` megapixels per set, x the
set's factor) and is scored on the test frames at the masks' NATIVE resolution (a confusion
matrix summed over the test frames: mIoU over classes present, pixel accuracy):

* ``baseline``: the tutorial recipe (the Semantic Drone Dataset notebook the issue quotes):
  whole frames resized (nearest, as the notebook) to a network size of short side 352 px (never
  enlarged beyond the next multiple of 32), flips, grid distortion, brightness/contrast, Gaussian
  noise, batch 3, cross-entropy, AdamW (lr 1e-3, weight decay 1e-4) + OneCycle, NCHW float32.
  It predicts a test frame resized the same way and brings the ids back to the frame by nearest.
  Inputs are normalised with the training frames' mean / std, as tilesegd does.
* ``tilesegd ...``: :func:`tilesegd.training.loop.train` with the recipe's settings (4 epochs,
  validation on a 20 % row strip of the training frames, the best epoch's ``model.pt2``),
  scored through the deployed tiled path at the model's resolution
  (:func:`tilesegd.training.validate.score_store`).

Results: ``benchmarks/results/recipes.json`` (appended run by run; finished runs are skipped on
a rerun) and a Markdown table on stdout.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
SHARED = HERE.parents[1] / "shared" / "data" / "labeled"
BASE = dict(batch_size=8, tile_size=128, loss="ce+dice", class_weights="balanced")
SETS: dict[str, dict[str, Any]] = {
    "loveda": dict(  # resolution and tile size, then one factor at a time around the winner
        src="loveda",
        cut=2,
        factor=1.0,
        recipes={
            "tilesegd native tile 256": dict(tile_size=256),  # the recipe, smaller tiles
            "tilesegd native": {},
            "tilesegd native tile 512": dict(tile_size=512),  # a whole 512^2 frame per tile
            "tilesegd x0.5": dict(scale=0.5),
            "tilesegd x0.25": dict(scale=0.25),
            "tilesegd native tile 256 ce": dict(tile_size=256, loss="ce"),
            "tilesegd native tile 256 unweighted": dict(tile_size=256, class_weights=None),
            "tilesegd native tile 256 batch 4": dict(tile_size=256, batch_size=4),
            "tilesegd native tile 256 lr 3e-3": dict(tile_size=256, lr=0.003),
            "tilesegd native tile 256 fp32": dict(tile_size=256, amp=False),
        },
    ),
    "spacenet": dict(
        src="spacenet_buildings",
        cut=2,
        factor=0.5,
        recipes={"tilesegd native": {}, "tilesegd 1 m": dict(gsd=1.0)},
    ),
    "detectree": dict(
        src="detectree",
        cut=1,
        factor=0.25,
        recipes={"tilesegd native": {}, "tilesegd 1 m": dict(gsd=1.0, tile_size=64)},
    ),
}


def write(path: Path, data: np.ndarray, profile: dict[str, Any]) -> None:
    """Write (C, H, W) ``data`` with a rasterio profile (driver from the suffix)."""
    import rasterio
    import rasterio.errors

    prof = dict(profile, count=data.shape[0], height=data.shape[1], width=data.shape[2])
    prof["dtype"] = data.dtype.name
    prof["driver"] = "PNG" if path.suffix == ".png" else "GTiff"
    with warnings.catch_warnings():  # masks and PNG frames carry no georeferencing
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        with rasterio.open(path, "w", **prof) as dst:
            dst.write(data)


def make_frames(name: str, work: Path, seed: int = 0) -> tuple[Path, Path]:
    """Cut set ``name`` into frames; returns ``(train_dir, test_dir)`` (each with images/,
    masks/, classes.csv)."""
    import shutil

    from rasterio.windows import Window

    from tilesegd.raster.labels import find_pairs, open_raster

    spec = SETS[name]
    src = SHARED / spec["src"]
    root = work / name
    if (root / "done").exists():
        return root / "train", root / "test"
    rng = np.random.default_rng(seed)
    for part in ("train", "test"):
        for sub in ("images", "masks"):
            (root / part / sub).mkdir(parents=True, exist_ok=True)
        shutil.copy(src / "classes.csv", root / part / "classes.csv")
    pairs = find_pairs(src / "images", src / "masks")
    k = spec["cut"]
    lone = int(rng.integers(len(pairs)))  # k == 1: one whole pair is the test set
    for n, pair in enumerate(pairs):
        test = int(rng.integers(k * k)) if k > 1 else (0 if n == lone else -1)
        for f in range(k * k):
            part = "test" if test == f else "train"
            for path, sub in ((pair.image, "images"), (pair.mask, "masks")):
                with open_raster(path) as ds:
                    h, w = ds.height // k, ds.width // k
                    win = Window((f % k) * w, (f // k) * h, w, h)
                    data = ds.read(window=win)
                    prof = {"crs": ds.crs, "transform": ds.window_transform(win)} if ds.crs else {}
                    if ds.nodata is not None:
                        prof["nodata"] = ds.nodata
                suffix = path.suffix if path.suffix == ".png" else ".tif"
                write(root / part / sub / f"{pair.name}_{f}{suffix}", data, prof)
    (root / "done").touch()
    return root / "train", root / "test"


def baseline_size(h: int, w: int, short: int = 352, m: int = 32) -> tuple[int, int]:
    """The tutorial's network size: short side ``short`` (not enlarged past the next multiple
    of ``m``), aspect kept, multiples of ``m``."""
    s = min(1.0, short / min(h, w))
    return max(m, round(h * s / m) * m), max(m, round(w * s / m) * m)


def tutorial_augment(size: tuple[int, int]):
    """The notebook's albumentations pipeline (its GaussNoise var_limit (10, 50) on uint8 is a
    standard deviation of ~1.2-2.8 % of the range)."""
    import albumentations as A
    import cv2

    return A.Compose(
        [
            A.Resize(*size, interpolation=cv2.INTER_NEAREST),
            A.HorizontalFlip(),
            A.VerticalFlip(),
            A.GridDistortion(p=0.2),
            A.RandomBrightnessContrast((0, 0.5), (0, 0.5)),
            A.GaussNoise(std_range=(0.012, 0.028)),
        ]
    )


def frames(folder: Path):
    """``(store, stats)`` of a frame folder at native resolution (tilesegd's reader and scan)."""
    from tilesegd.raster.labels import find_pairs, read_classes
    from tilesegd.training.data import PairStore, scan

    store = PairStore(
        find_pairs(folder / "images", folder / "masks"), read_classes(folder / "classes.csv")
    )
    return store, scan(store, list(range(len(store))), list(range(len(store))))


def train_baseline(folder: Path, budget: float, seed: int) -> tuple[Any, dict[str, Any]]:
    """The tutorial loop; returns ``(predict(image) -> ids, info)``."""
    import segmentation_models_pytorch as smp

    store, st = frames(folder)
    k = store.classmap.num_classes
    h, w = store.get(0)[1].shape
    size = baseline_size(h, w)
    epochs = max(1, round(budget * 1e6 / (len(store) * size[0] * size[1])))
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    net = smp.Unet("mobilenet_v2", encoder_weights=None, classes=k, in_channels=st.bands)
    aug, mean, std = tutorial_augment(size), np.float32(st.mean), np.float32(st.std)
    steps = math.ceil(len(store) / 3)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 1e-3, epochs=epochs, steps_per_epoch=steps)
    ce = torch.nn.CrossEntropyLoss(ignore_index=255)
    net.train()
    for _ in range(epochs):
        order = rng.permutation(len(store))
        for b in range(steps):
            xs, ys = [], []
            for i in order[b * 3 : b * 3 + 3]:
                image, ids = store.get(int(i))
                aug.set_random_seed(int(rng.integers(2**31 - 1)))
                out = aug(
                    image=image.transpose(1, 2, 0).astype(np.float32) / st.input_scale, mask=ids
                )
                xs.append(((out["image"] - mean) / std).transpose(2, 0, 1))
                ys.append(out["mask"].astype(np.int64))
            loss = ce(net(torch.from_numpy(np.stack(xs))), torch.from_numpy(np.stack(ys)))
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            sched.step()
    net.eval()

    def predict(image: np.ndarray) -> np.ndarray:
        import cv2

        from tilesegd.raster.regrid import to_native

        x = cv2.resize(
            image.transpose(1, 2, 0).astype(np.float32) / st.input_scale,
            size[::-1],
            interpolation=cv2.INTER_NEAREST,
        )
        x = ((x.reshape(*size, -1) - mean) / std).transpose(2, 0, 1)[None]
        with torch.inference_mode():
            ids = (
                net(torch.from_numpy(np.ascontiguousarray(x))).argmax(1)[0].numpy().astype(np.uint8)
            )
        return to_native(ids, image.shape[1:])

    pixels = epochs * len(store) * size[0] * size[1]
    return predict, {
        "train_mpx": pixels / 1e6,
        "size": list(size),
        "epochs": epochs,
    }


def score_baseline(predict, folder: Path) -> dict[str, Any]:
    """Confusion of the baseline's predictions on the test frames at native resolution."""
    from tilesegd.evaluation.metrics import confusion_matrix, scores

    store, _ = frames(folder)
    k = store.classmap.num_classes
    cm = np.zeros((k, k), np.int64)
    for i in range(len(store)):
        image, ids = store.get(i)
        cm += confusion_matrix(ids, predict(image), k)
    return scores(cm, store.classmap.names)


def train_tilesegd(
    folder: Path, out: Path, recipe: dict[str, Any], budget: float, seed: int, epochs: int = 4
) -> dict[str, Any]:
    """``tilesegd train`` at ``budget`` megapixels in ``epochs`` epochs (settings: ``BASE``
    updated by ``recipe``); returns timing and validation info."""
    from tilesegd.training.config import TrainConfig
    from tilesegd.training.loop import train

    opts = {**BASE, **recipe}
    steps = max(1, round(budget * 1e6 / (epochs * opts["batch_size"] * opts["tile_size"] ** 2)))
    cfg = TrainConfig(
        images=str(folder / "images"),
        masks=str(folder / "masks"),
        classes=str(folder / "classes.csv"),
        output=str(out),
        epochs=epochs,
        steps_per_epoch=steps,
        val_split="regions",
        val_fraction=0.2,
        val_loss_tiles=2,
        seed=seed,
        device="cpu",
        **opts,
    ).validate()
    train(cfg, progress=False)
    from tilesegd.training.checkpoint import load_checkpoint

    _, st = load_checkpoint(out / "best.ckpt")
    pixels = epochs * steps * opts["batch_size"] * opts["tile_size"] ** 2
    return {
        "train_mpx": pixels / 1e6,
        "val_miou": st["best_miou"],
        "best_epoch": st["epoch"],
    }


def score_model(model: Path, folder: Path) -> dict[str, Any]:
    """Score a model file on the test frames: predicted at its resolution (``gsd`` / ``scale``),
    scored at the masks' native resolution."""
    from tilesegd.evaluation.scoring import Scorer
    from tilesegd.inference.build import open_engine
    from tilesegd.inference.options import EngineOptions
    from tilesegd.raster.labels import find_pairs, read_classes
    from tilesegd.training.data import PairStore
    from tilesegd.training.resample import plan_grids
    from tilesegd.training.validate import score_store

    engine = open_engine(model, EngineOptions(device="cpu", runtime="eager"))
    pairs = find_pairs(folder / "images", folder / "masks")
    grids = plan_grids(
        [p.image for p in pairs], engine.spec.extra.get("gsd"), engine.spec.extra.get("scale")
    )
    store = PairStore(pairs, read_classes(folder / "classes.csv"), grids=grids)
    return score_store(Scorer(engine), store, list(range(len(pairs))))


def run_one(set_name: str, recipe: str, seed: int, a: argparse.Namespace) -> dict[str, Any]:
    """Train and score one recipe on one set (seconds: wall clock and this process's CPU)."""
    train_dir, test_dir = make_frames(set_name, a.work)
    budget = a.budget * SETS[set_name]["factor"]
    load0 = os.getloadavg()[0]
    w0, c0 = time.perf_counter(), time.process_time()
    if recipe == "baseline":
        predict, info = train_baseline(train_dir, budget, seed)
        w1, c1 = time.perf_counter(), time.process_time()
        sc = score_baseline(predict, test_dir)
    else:
        out = a.work / "runs" / set_name / f"{recipe.replace(' ', '_')}_s{seed}"
        info = train_tilesegd(train_dir, out, SETS[set_name]["recipes"][recipe], budget, seed)
        w1, c1 = time.perf_counter(), time.process_time()
        sc = score_model(out / "model.pt2", test_dir)
    w2, c2 = time.perf_counter(), time.process_time()
    info.update(
        set=set_name,
        recipe=recipe,
        seed=seed,
        train_seconds=w1 - w0,
        train_cpu_seconds=c1 - c0,
        test_seconds=w2 - w1,
        test_cpu_seconds=c2 - c1,
        miou=sc["miou"],
        pixel_accuracy=sc["pixel_accuracy"],
        test_pixels=sc["pixels"],
        iou={c["name"]: c["iou"] for c in sc["per_class"]},
        load1=[load0, os.getloadavg()[0]],
    )
    return info


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sets", nargs="*", default=list(SETS))
    ap.add_argument("--seeds", nargs="*", type=int, default=[0])
    ap.add_argument("--budget", type=float, default=48.0, help="training megapixels (LoveDA)")
    ap.add_argument("--only", nargs="*", help="recipes to run (default: all)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/tilesegd_recipes"))
    ap.add_argument(
        "--threads", type=int, default=1, help="torch threads (1: CPU seconds immune to load)"
    )
    ap.add_argument("--out", type=Path, default=HERE / "results" / "recipes.json")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    done = json.loads(a.out.read_text())["runs"] if a.out.exists() else []
    key = {(r["set"], r["recipe"], r["seed"]) for r in done}
    for seed in a.seeds:
        for set_name in a.sets:
            for recipe in ["baseline", *SETS[set_name]["recipes"]]:
                if (set_name, recipe, seed) in key or (a.only and recipe not in a.only):
                    continue
                info = run_one(set_name, recipe, seed, a)
                done.append(info)
                print(json.dumps({k: v for k, v in info.items() if k != "iou"}), flush=True)
                a.out.parent.mkdir(parents=True, exist_ok=True)
                doc = {
                    "command": "python benchmarks/recipes.py "
                    + " ".join(
                        f"--{k} {' '.join(map(str, v)) if isinstance(v, list) else v}"
                        for k, v in vars(a).items()
                        if k not in ("out", "work") and v
                    ),
                    "torch_threads": a.threads,
                    "runs": done,
                }
                a.out.write_text(json.dumps(doc, indent=1))
    table(done)


def table(runs: list[dict[str, Any]]) -> None:
    """Markdown: one row per set and recipe (mean over seeds)."""
    keys = ("train_mpx", "miou", "pixel_accuracy", "train_cpu_seconds", "train_seconds")
    print("\n| set | recipe | train Mpx | mIoU | pixel acc. | train CPU s | train wall s | seeds |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in runs:
        groups.setdefault((r["set"], r["recipe"]), []).append(r)
    for (s, rec), rs in groups.items():
        m = [float(np.mean([r.get(k) or 0.0 for r in rs])) for k in keys]
        print(
            f"| {s} | {rec} | {m[0]:.1f} | {m[1]:.3f} | {m[2]:.3f} | {m[3]:.0f} | {m[4]:.0f} "
            f"| {len(rs)} |"
        )


if __name__ == "__main__":
    main()

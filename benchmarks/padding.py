"""Padding waste: tiles the network computes beyond the real ones, over a folder of scenes.

    .venv/bin/python benchmarks/padding.py [--model M] [--scenes ../shared/data/scenes]

Runs every RGB uint8 scene of the folder through one engine (as one ``tilesegd run`` does),
with the same geometry, twice: short batches padded to the batch size (the old engine) and
trimmed where verified (:meth:`tilesegd.inference.engine.Engine._call_padded`), and prints the real tiles,
the tiles computed (``Engine.slots``: padding and verification calls included), the seconds,
and whether the masks are identical. Geometries: ``--tile-size`` / ``--overlap`` / ``--batch``
(a user's small tiles, where batches hold several tiles) and the default rule.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]


def scenes(folder: Path) -> list:
    """(3, H, W) uint8 arrays of every RGB uint8 GeoTIFF under ``folder`` (sorted)."""
    import rasterio

    out = []
    for p in sorted(folder.rglob("*.tif")):
        with rasterio.open(p) as ds:
            if ds.count >= 3 and ds.dtypes[0] == "uint8":
                out.append(ds.read([1, 2, 3]))
    return out


def run(
    model: str, images: list, tile: int | None, overlap: int | None, batch: int | None, trim: bool
) -> dict:
    """One pass over ``images`` with a fresh engine; counts, seconds and the masks."""
    import torch

    from tilesegd.inference.build import load_network
    from tilesegd.inference.geometry import TilingOptions
    from tilesegd.inference.options import EngineOptions
    from tilesegd.inference.pipeline import predict_array

    torch.set_num_threads(2)
    net = load_network(model, EngineOptions(device="cpu", trim_batches=trim))
    g = net.geometry(TilingOptions(tile_size=tile, overlap=overlap, batch_size=batch))
    engine = net.engine(g)
    t0 = time.perf_counter()
    masks = [
        predict_array(engine, img, tile_size=g.tile_for(*img.shape[1:]), overlap=g.overlap)
        for img in images
    ]
    return {
        "seconds": time.perf_counter() - t0,
        "tiles": engine.tiles,
        "slots": engine.slots,
        "batch": g.batch_size,
        "masks": masks,
    }


def main() -> None:
    """Command line: see the module docstring."""
    import numpy as np

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(HERE / "out" / "loveda_model" / "model.pt2"))
    ap.add_argument("--scenes", type=Path, default=HERE.parents[1] / "shared" / "data" / "scenes")
    ap.add_argument("--tile-size", type=int, default=512)
    ap.add_argument("--overlap", type=int, default=None)
    ap.add_argument("--batch", type=int, default=8)
    a = ap.parse_args()
    images = scenes(a.scenes)
    px = sum(i.shape[1] * i.shape[2] for i in images)
    print(f"{len(images)} scenes, {px / 1e6:.1f} MP, model {a.model}")
    for name, geo in (
        (f"tile {a.tile_size}, batch {a.batch}", (a.tile_size, a.overlap, a.batch)),
        ("default rule", (None, None, None)),
    ):
        padded = run(a.model, images, *geo, trim=False)
        trimmed = run(a.model, images, *geo, trim=True)
        same = all(
            np.array_equal(x, y) for x, y in zip(padded["masks"], trimmed["masks"], strict=True)
        )
        for label, r in (("padded", padded), ("trimmed", trimmed)):
            print(
                f"{name:<22} {label:<8} batch {r['batch']}: {r['tiles']} tiles, {r['slots']} "
                f"computed ({r['slots'] / r['tiles']:.3f}x), {r['seconds']:.1f} s"
            )
        print(f"{name:<22} masks identical: {same}")


if __name__ == "__main__":
    main()

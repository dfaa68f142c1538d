"""Seams: agreement of tiled inference with whole-image inference for a real model file.

    .venv/bin/python benchmarks/seams.py demo/model/model.pt2 benchmarks/data/scene_4096_deflate.tif \
        --crop 1536 --geometry 256/64 512/128 896/448

Runs the network once on the whole crop (the reference), then
:func:`tilesegd.inference.pipeline.predict_array` with each ``tile/overlap`` (and with the model file's
own default geometry), and prints the share of pixels whose class id matches the reference,
over the whole crop and outside a ``--border`` (the scene edge, where tiles see padding that
whole-image inference does not).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from rasterio.windows import Window


def main() -> None:
    import rasterio

    from tilesegd.inference.build import build_engine
    from tilesegd.inference.geometry import TilingOptions
    from tilesegd.inference.options import EngineOptions
    from tilesegd.inference.pipeline import predict_array
    from tilesegd.model.model_file import load_model

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("scene")
    ap.add_argument("--crop", type=int, default=1536, help="side of the top-left crop, px")
    ap.add_argument("--border", type=int, default=256, help="edge excluded from 'interior', px")
    ap.add_argument("--geometry", nargs="*", default=["256/64", "512/128"], help="TILE/OVERLAP")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    m = load_model(a.model)
    sp = m.spec
    with rasterio.open(a.scene) as ds:
        side = min(a.crop, ds.height, ds.width) // sp.multiple * sp.multiple
        img = ds.read(list(sp.bands), window=Window(0, 0, side, side))
    mean = np.asarray(sp.mean, np.float32)[:, None, None]
    std = np.asarray(sp.std, np.float32)[:, None, None]
    x = (img.astype(np.float32) / sp.input_scale - mean) / std
    with torch.inference_mode():
        whole = m.module(torch.from_numpy(x)[None]).argmax(1)[0].numpy().astype(np.uint8)
    b = a.border
    inner = (slice(b, side - b), slice(b, side - b))
    engine = build_engine(m.module, sp, EngineOptions(device="cpu"), TilingOptions(batch_size=4))
    print(
        f"{a.model} on {side}^2 of {a.scene}; model default tile {sp.tile_size}, overlap {sp.overlap}"
    )
    print("tile/overlap   agreement   interior   seconds")
    runs = [(None, None)] + [tuple(int(v) for v in g.split("/")) for g in a.geometry]
    for tile, overlap in runs:
        t0 = time.perf_counter()
        ids = predict_array(engine, img, tile_size=tile, overlap=overlap)
        dt = time.perf_counter() - t0
        name = "default" if tile is None else f"{tile}/{overlap}"
        print(
            f"{name:>12}   {(ids == whole).mean():9.5f}   {(ids[inner] == whole[inner]).mean():8.5f}"
            f"   {dt:7.1f}"
        )


if __name__ == "__main__":
    main()

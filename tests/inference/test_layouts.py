"""Deterministic across layouts (issue 25): a real U-Net gives byte-identical masks whatever
the number of threads the network runs on, the batch size (which tiles share a call) and the
block size (which tiles share a block), on every runtime of the CPU. (Worker processes: the
2-worker Dask cluster against one process is tests/batch/test_distributed.py.)"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from conftest import make_raster, smooth_image, spec_for

from tilesegd.api import run
from tilesegd.model.model_file import save_model

SAMPLE = Path(__file__).resolve().parents[2].parent / "shared/data/scenes/naip_m_4709963_se_14_1_20200831.tif"  # fmt: skip


@pytest.fixture(scope="module")
def unet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import segmentation_models_pytorch as smp

    torch.manual_seed(5)
    net = smp.Unet(
        "mobilenet_v2", encoder_weights=None, classes=6, decoder_channels=(64, 32, 16, 8, 8)
    )
    spec = spec_for(6, multiple=32, tile_size=256, overlap=64)
    return save_model(net, tmp_path_factory.mktemp("model") / "unet.ts", spec)


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("scenes")
    if SAMPLE.is_file():  # the NAIP sample (4 bands: the model reads 1-3)
        with rasterio.open(SAMPLE) as src:
            img = src.read([1, 2, 3])[:, :520, :700]
    else:
        img = smooth_image(520, 700, seed=9)
    return make_raster(folder / "s.tif", img)


def mask(scene: Path, model: Path, out: Path, threads: int, **settings) -> np.ndarray:
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        run(input=[str(scene)], model=str(model), output=str(out), device="cpu", progress=False,
            tile_size=256, **settings)  # fmt: skip
    finally:
        torch.set_num_threads(before)
    with rasterio.open(out / scene.stem / "mask.tif") as ds:
        return ds.read(1)


@pytest.mark.parametrize("runtime", ["auto", "eager"])
def test_masks_do_not_depend_on_threads_batch_or_blocks(unet, scene, tmp_path, runtime) -> None:
    layouts = {
        "2 threads, batch 8": dict(threads=2, batch_size=8),
        "1 thread, batch 8": dict(threads=1, batch_size=8),
        "2 threads, batch 3": dict(threads=2, batch_size=3),
        "1 thread, batch 1, 96-px blocks": dict(threads=1, batch_size=1, block_size=96),
    }
    masks = {
        name: mask(scene, unet, tmp_path / str(i), runtime=runtime, **kw)
        for i, (name, kw) in enumerate(layouts.items())
    }
    assert len(np.unique(masks["2 threads, batch 8"])) > 2  # a real segmentation
    for a, b in itertools.combinations(masks, 2):
        diff = int((masks[a] != masks[b]).sum())
        assert diff == 0, f"{runtime}: {a} vs {b}: {diff} pixels differ"

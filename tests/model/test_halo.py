"""The measured halo: networks of known reach, the tile geometry it implies, and its use."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from conftest import engine_for, smooth_image, spec_for

from tilesegd.inference.geometry import default_batch, resolve_geometry, warn_capped
from tilesegd.inference.pipeline import predict_array
from tilesegd.model.halo import measure_halo, seamless_geometry


class ConvStack(torch.nn.Module):
    """``depth`` 3x3 convolutions with zero padding: the reach is exactly ``depth`` pixels."""

    def __init__(self, depth: int, classes: int = 4, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        chans = [3] + [8] * (depth - 1) + [classes]
        self.convs = torch.nn.ModuleList(
            torch.nn.Conv2d(a, b, 3, padding=1) for a, b in zip(chans, chans[1:], strict=False)
        )
        for p in self.parameters():
            with torch.no_grad():
                p.copy_(torch.randn(p.shape, generator=g) * 0.6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, c in enumerate(self.convs):
            x = c(x) if i == len(self.convs) - 1 else torch.tanh(c(x))
        return x


class GlobalMean(torch.nn.Module):
    """Every pixel's logits depend on the whole input (a global average): no halo suffices."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = x.mean((2, 3), keepdim=True)
        return torch.cat([x[:, :1] - 4 * m[:, :1], x[:, 1:2] + 4 * m[:, 1:2]], 1)


@pytest.mark.parametrize("depth", [1, 5, 12])
def test_halo_of_a_conv_stack_is_within_its_reach(depth: int) -> None:
    halo = measure_halo(ConvStack(depth), 3, 2, max_halo=64)
    assert 2 <= halo <= depth + depth % 2  # a multiple of 2 no wider than the reach
    if depth >= 5:
        assert halo >= 2 * (depth // 4)  # a deep stack needs more than the minimum


def test_a_network_of_global_reach_gets_the_maximum_and_a_warning(caplog) -> None:
    with caplog.at_level(logging.WARNING):
        assert measure_halo(GlobalMean(), 3, 8, max_halo=40) == 40
    assert "larger --overlap" in caplog.text


def test_measurement_is_deterministic_and_restores_the_mode() -> None:
    net = ConvStack(7).train()
    assert measure_halo(net, 3, 2) == measure_halo(net, 3, 2)
    assert net.training


def test_seamless_geometry() -> None:
    assert seamless_geometry(96, 256, 32) == (384, 192)
    assert seamless_geometry(16, 256, 32) == (256, 32)
    assert seamless_geometry(100, 64, 32) == (416, 200)


def geometry(model_overlap: int | None, **options) -> tuple[int, int]:
    spec = spec_for(3, multiple=32, tile_size=512, overlap=model_overlap)
    g = resolve_geometry(spec, **options)
    return g.tile_size, g.overlap


def test_run_geometry_uses_the_model_overlap(caplog) -> None:
    tile, overlap = geometry(
        192
    )  # the tile comes from the budget: tests/inference/test_geometry.py
    assert overlap == 192 and tile >= 4 * 96 and tile % 32 == 0
    assert geometry(None) == (512, 64)  # no measured overlap: the model's tile, 64 px
    assert geometry(192, overlap=32)[1] == 32  # the flag wins
    assert geometry(192, tile_size=1024, overlap=32) == (1024, 32)
    warn_capped.cache_clear()
    with caplog.at_level(logging.WARNING):
        assert geometry(192, tile_size=128) == (128, 96)
        geometry(192, tile_size=128)  # per scene: warned once only
    assert caplog.text.count("less than the 192 px the model needs") == 1


def test_measured_halo_makes_tiles_agree_with_whole_image_inference() -> None:
    net = ConvStack(14, classes=3)
    halo = measure_halo(net, 3, 2)
    tile, overlap = seamless_geometry(halo, 32, 2)
    image = smooth_image(150, 170, 3, seed=3)
    mean = image.reshape(3, -1).mean(1) / 255
    std = image.reshape(3, -1).std(1) / 255
    x = (image / 255 - mean[:, None, None]) / std[:, None, None]
    with torch.inference_mode():
        whole = net(torch.from_numpy(x.astype(np.float32))[None]).argmax(1)[0].numpy()
    spec = spec_for(
        3, multiple=2, tile_size=tile, overlap=overlap, mean=mean.tolist(), std=std.tolist()
    )
    eng = engine_for(net, spec, batch_size=4)
    seamless = predict_array(eng, image)  # the model file's geometry, as tilesegd run
    narrow = predict_array(eng, image, tile_size=tile, overlap=2)
    inner = (slice(16, -16), slice(16, -16))
    agree = (seamless[inner] == whole[inner]).mean()
    assert agree >= 0.999, agree
    assert (narrow[inner] == whole[inner]).mean() < agree  # a thin halo does leave seams


def test_default_batch_keeps_pixels_per_call_bounded() -> None:
    assert [default_batch(t) for t in (256, 512, 896, 2048)] == [8, 8, 2, 1]
    spec = spec_for(3, multiple=32, tile_size=2048)
    assert resolve_geometry(spec).batch_size == 1
    assert resolve_geometry(spec, batch_size=5).batch_size == 5

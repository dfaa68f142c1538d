"""The default tile geometry (issue 12): tile from the measured halo and a memory budget, fitted
per scene; and short batches that skip padding only where that was verified bit for bit."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import TinyConvNet, engine_for, examples, smooth_image, spec_for
from hypothesis import given, settings
from hypothesis import strategies as st

from tilesegd.errors import ConfigError
from tilesegd.inference.budget import (
    CPU_BUDGET,
    DEFAULT_ACTIVATION_BYTES,
    call_bytes_per_pixel,
    machine_memory,
    memory_budget,
)
from tilesegd.inference.geometry import (
    MAX_TILE,
    budget_tile,
    fit_tile,
    min_seamless_tile,
    pixels_run,
    resolve_geometry,
    warn_capped,
)
from tilesegd.inference.pipeline import predict_array
from tilesegd.model.halo import measure_activation_bytes
from tilesegd.raster.tiling import TileGrid

MULTIPLES = st.sampled_from([1, 2, 8, 16, 32, 64])


def ref_min_tile(halo: int, m: int) -> int:
    """Plain search: the smallest multiple of m that is >= 4 x halo and leaves a core >= m."""
    t = m
    while t < 4 * halo or t - 2 * halo < m:
        t += m
    return t


def ref_pixels(n: int, tile: int, halo: int, m: int) -> int:
    """Network pixels along one axis of n pixels (README: one small tile when n <= tile)."""
    if n <= tile:
        return math.ceil(n / m) * m
    return math.ceil(n / (tile - 2 * halo)) * tile


@settings(max_examples=examples(60), deadline=None)
@given(
    halo=st.integers(0, 300),
    m=MULTIPLES,
    call_pixels=st.integers(0, 40_000_000),
    max_tile=st.integers(64, 6000),
)
def test_budget_tile_is_the_largest_fitting_multiple_never_below_4_halo(
    halo, m, call_pixels, max_tile
) -> None:
    got = budget_tile(halo, m, call_pixels, max_tile)
    fitting = [t for t in range(m, max_tile + 1, m) if t * t <= call_pixels]
    assert got == max(ref_min_tile(halo, m), max(fitting, default=0))
    assert got % m == 0 and got >= 4 * halo and got - 2 * halo >= m
    assert min_seamless_tile(halo, m) == ref_min_tile(halo, m)


@settings(max_examples=examples(60), deadline=None)
@given(
    h=st.integers(1, 12_000),
    w=st.integers(1, 12_000),
    halo_units=st.integers(0, 8),
    m=st.sampled_from([8, 16, 32]),
    span=st.integers(0, 40),
)
def test_fit_tile_runs_the_fewest_pixels(h, w, halo_units, m, span) -> None:
    halo = halo_units * m
    lo = ref_min_tile(halo, m)
    hi = lo + span * m
    got = fit_tile(h, w, 2 * halo, m, lo, hi)
    cost = {t: ref_pixels(h, t, halo, m) * ref_pixels(w, t, halo, m) for t in range(lo, hi + 1, m)}
    best = min(cost.values())
    assert lo <= got <= hi and got % m == 0
    assert cost[got] == best and got == min(t for t, c in cost.items() if c == best)
    assert pixels_run(h, w, got, 2 * halo, m) == best


@settings(max_examples=examples(30), deadline=None)
@given(
    h=st.integers(1, 700),
    w=st.integers(1, 700),
    tile_units=st.integers(2, 12),
    halo_units=st.integers(0, 4),
    m=st.sampled_from([1, 8, 16]),
)
def test_pixels_run_counts_every_tile_of_the_grid(h, w, tile_units, halo_units, m) -> None:
    tile, halo = max(tile_units, 2 * halo_units + 1) * 16, halo_units * 8
    grid = TileGrid(h, w, tile, 2 * halo, m, 256)
    th, tw = grid.tile_shape
    assert pixels_run(h, w, tile, 2 * halo, m) == sum(th * tw for _ in grid.iter_tiles())


@settings(max_examples=examples(40), deadline=None)
@given(
    halo_units=st.integers(1, 10),
    m=st.sampled_from([8, 16, 32]),
    budget_mb=st.integers(16, 40_000),
    act=st.floats(20, 600),
    dtype_bytes=st.sampled_from([2, 4]),
)
def test_default_tile_from_halo_and_budget(halo_units, m, budget_mb, act, dtype_bytes) -> None:
    halo = halo_units * m
    spec = spec_for(7, multiple=m, tile_size=4 * m, overlap=2 * halo)
    budget = budget_mb << 20
    g = resolve_geometry(spec, budget=budget, activation_bytes=act, dtype_bytes=dtype_bytes)
    per_px = call_bytes_per_pixel(spec, activation_bytes=act, dtype_bytes=dtype_bytes)
    assert g.overlap == 2 * halo and g.halo == halo
    assert g.tile_size == budget_tile(halo, m, budget / per_px)  # not the model's tile_size
    assert (
        g.tile_size % m == 0 and g.tile_size >= 4 * halo and g.tile_size <= max(MAX_TILE, 4 * halo)
    )
    assert g.min_tile == min_seamless_tile(halo, m)
    if g.tile_size > g.min_tile:  # from the budget: the whole batch fits it
        assert g.batch_size * g.tile_size**2 * per_px <= budget
        assert g.tile_size == MAX_TILE or (g.tile_size + m) ** 2 * per_px > budget
    bigger = resolve_geometry(
        spec, budget=2 * budget, activation_bytes=act, dtype_bytes=dtype_bytes
    )
    assert bigger.tile_size >= g.tile_size
    for side in (1, 3 * halo + 5, 4096, 10_001):  # every scene: a tile in range, a valid grid
        t = g.tile_for(side, side + 37)
        assert g.min_tile <= t <= g.tile_size and t % m == 0
        assert g.grid(side, side + 37).overlap == 2 * halo


@pytest.mark.parametrize("halo", [96, 160, 192])
def test_a_4096_scene_with_the_demo_models_halo_runs_at_most_1_8x_its_pixels(halo) -> None:
    """The issue's case: the LoveDA demo model (halo 96-224 px, depending on the training
    run; no activation figure in its file), the CPU budget (at 224 px: 2.07x, see RESULTS.md)."""
    spec = spec_for(7, multiple=32, tile_size=4 * halo, overlap=2 * halo)
    g = resolve_geometry(spec)
    tile = g.tile_for(4096, 4096)
    ratio = pixels_run(4096, 4096, tile, 2 * halo, 32) / 4096**2
    assert ratio <= 1.8, (g, tile, ratio)
    assert pixels_run(4096, 4096, 4 * halo, 2 * halo, 32) / 4096**2 >= 4  # the training tile
    assert pixels_run(4096, 4096, g.tile_size, 2 * halo, 32) >= ratio * 4096**2  # never worse
    assert g.tile_for(1024, 1024) == 1024  # a small scene runs whole: exact, 1.0x
    assert pixels_run(1000, 1000, g.tile_for(1000, 1000), 448, 32) == 1024**2


def test_user_options_win_and_unmeasured_models_keep_their_tile() -> None:
    spec = spec_for(3, multiple=32, tile_size=512, overlap=384)
    g = resolve_geometry(spec, tile_size=1024)
    assert (g.tile_size, g.overlap, g.min_tile) == (1024, 384, 0)
    assert g.tile_for(4096, 4096) == 1024 and g.tile_for(100, 100) == 1024
    g = resolve_geometry(spec, overlap=64)
    assert g.overlap == 64 and g.min_tile == min_seamless_tile(32, 32)
    assert resolve_geometry(spec, batch_size=3).batch_size == 3
    plain = resolve_geometry(spec_for(3, multiple=32, tile_size=512))  # no measured overlap
    assert (plain.tile_size, plain.overlap, plain.min_tile) == (512, 64, 0)
    with pytest.raises(ConfigError, match="multiple"):
        resolve_geometry(spec, tile_size=500)


@given(
    cap_units=st.integers(1, 12), halo_units=st.integers(0, 8), m=MULTIPLES,
    user_tile=st.booleans(),
)  # fmt: skip
@settings(max_examples=examples(60), deadline=None)
def test_a_fixed_input_caps_the_tile_and_the_overlap_fits_inside(
    cap_units, halo_units, m, user_tile
) -> None:
    """A model with a fixed input (``max_tile_size``, e.g. a fixed-size ONNX graph) never gets a
    larger tile; the measured overlap is kept when it fits (``tile - multiple``), else cut to
    the largest even overlap that does, with a warning: the same rule as a user's --tile-size."""
    import logging

    overlap = 2 * halo_units * m // 2 * 2
    cap = cap_units * m
    spec = spec_for(3, multiple=m, tile_size=cap, overlap=overlap, max_tile_size=cap)
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    log = logging.getLogger("tilesegd.inference.geometry")
    log.addHandler(handler)
    warn_capped.cache_clear()  # it warns once per geometry and process
    try:
        g = resolve_geometry(spec, tile_size=cap if user_tile else None)
    finally:
        log.removeHandler(handler)
    assert g.tile_size <= cap and g.tile_size % m == 0
    expected = max(0, min(overlap, g.tile_size - m)) // 2 * 2
    assert g.overlap == expected
    warned = any("less than the" in r.getMessage() for r in records)
    assert warned == (expected < overlap)


def test_the_model_files_activation_bytes_and_the_device_budget() -> None:
    base = spec_for(7, multiple=32, overlap=64)
    measured = spec_for(7, multiple=32, overlap=64, activation_bytes_per_pixel=100)
    assert call_bytes_per_pixel(base) > call_bytes_per_pixel(measured)
    assert call_bytes_per_pixel(base) - call_bytes_per_pixel(measured) == pytest.approx(
        DEFAULT_ACTIVATION_BYTES - 100
    )
    assert call_bytes_per_pixel(measured, save_probs=True) > call_bytes_per_pixel(measured)
    assert resolve_geometry(measured).tile_size > resolve_geometry(base).tile_size
    # the CPU's budget is an eighth of its memory, never under 1.25 GiB
    assert memory_budget("cpu", 8 << 30) == CPU_BUDGET
    assert memory_budget("cpu", 80 << 30) == 10 << 30
    assert memory_budget("cpu") == max(CPU_BUDGET, machine_memory() // 8 >> 20 << 20)
    assert memory_budget("cuda", 80 << 30) == 20 << 30
    gpu = resolve_geometry(base, budget=memory_budget("cuda", 80 << 30), dtype_bytes=2)
    assert gpu.tile_size == MAX_TILE and gpu.batch_size == 1


def test_measured_activation_bytes_are_linear_in_pixels() -> None:
    net = TinyConvNet(3, 5)
    small = measure_activation_bytes(net, 3, 2, side=32)
    large = measure_activation_bytes(net, 3, 2, side=96)
    assert small == pytest.approx(large, rel=0.02)
    assert large >= 5 * 4  # at least the float32 logits
    assert net.training  # the module's mode is restored


class BatchSensitive(torch.nn.Module):
    """TinyConvNet whose logits move by 1e-3 when it runs a single tile (as kernels that pick
    another algorithm for another batch size do), and that records its batch sizes."""

    def __init__(self) -> None:
        super().__init__()
        self.net = TinyConvNet(3, 5)
        self.sizes: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.sizes.append(x.shape[0])
        out = self.net(x)
        return out + 1e-3 if x.shape[0] == 1 else out


def _tiles(n: int, side: int = 32) -> tuple[np.ndarray, np.ndarray]:
    x = np.stack([smooth_image(side, side, 3, seed=i) for i in range(n)])
    return x, np.ones((n, side, side), bool)


def test_short_batches_skip_padding_only_once_verified_bit_for_bit() -> None:
    net = BatchSensitive()
    eng = engine_for(net, spec_for(5, multiple=2), batch_size=4)
    x, valid = _tiles(7)
    padded = engine_for(net, spec_for(5, multiple=2), batch_size=4, trim_batches=False)
    want, _ = padded.predict(x, valid)  # 4 + 3 padded to 4
    for _ in range(2):
        got, _ = eng.predict(x, valid)
        np.testing.assert_array_equal(got, want)
    # first pass: 4, then 3 verified (padded 4 + alone 3); second pass: 4, then 3 alone
    assert eng.slots == (4 + 4 + 3) + (4 + 3)
    net.sizes.clear()
    for _ in range(3):  # one tile: not the same bits alone, so padded to 2 once 2 is verified
        got, _ = eng.predict(x[:1], valid[:1])
        np.testing.assert_array_equal(got, want[:1])
    assert net.sizes == [4, 1, 4, 2, 2]
    assert eng._exact[((32, 32), 4)] == {3: True, 1: False, 2: True}


def test_trimmed_batches_give_the_same_masks_scene_after_scene() -> None:
    spec = spec_for(5, multiple=2)
    padded = engine_for(TinyConvNet(3, 5), spec, batch_size=4, trim_batches=False)
    trimmed = engine_for(TinyConvNet(3, 5), spec, batch_size=4)
    for seed in range(3):  # 5 x 2 tiles: 2 batches of 4 and a short one of 2
        img = smooth_image(100, 48, 3, seed=seed)
        want = predict_array(padded, img, tile_size=32, overlap=8, block_size=64)
        got = predict_array(trimmed, img, tile_size=32, overlap=8, block_size=64)
        np.testing.assert_array_equal(got, want)
    assert trimmed.tiles == padded.tiles and trimmed.slots < padded.slots

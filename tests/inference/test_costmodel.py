"""The measured cost model: throughput curves, the tile each scene gets from them (against a
plain brute-force reference over random scenes and curves), the cache that makes the choice
stable, and a resumed run that reuses the curve its run.json recorded."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import examples, make_raster, smooth_image
from hypothesis import given, settings
from hypothesis import strategies as st

import tilesegd.inference.costmodel as costmodel
from tilesegd.cli.main import cli
from tilesegd.config import RunConfig
from tilesegd.errors import ConfigError
from tilesegd.inference.budget import parse_memory_size
from tilesegd.inference.costmodel import (
    curve_sizes,
    measure_throughput,
    read_json_dict,
    throughput_at,
)
from tilesegd.inference.geometry import Geometry, fit_tile, pixels_run

CURVES = st.lists(
    st.tuples(st.integers(1, 128).map(lambda t: t * 32), st.floats(0.1, 50.0)),
    min_size=1,
    max_size=6,
    unique_by=lambda p: p[0],
).map(lambda pts: tuple(sorted(pts)))


@settings(max_examples=examples(200), deadline=None)
@given(lo=st.integers(1, 3000), span=st.integers(0, 3000), m=st.sampled_from([1, 2, 8, 32]))
def test_curve_sizes_span_the_range_in_multiples(lo: int, span: int, m: int) -> None:
    hi = lo + span
    sizes = curve_sizes(lo, hi, m)
    assert sizes == sorted(set(sizes)) and 1 <= len(sizes) <= costmodel.POINTS
    assert all(s % m == 0 for s in sizes)
    if hi // m * m > math.ceil(lo / m) * m:  # a range holding two multiples or more
        assert sizes[0] == math.ceil(lo / m) * m and sizes[-1] == hi // m * m


@settings(max_examples=examples(200), deadline=None)
@given(curve=CURVES, tile=st.integers(1, 5000))
def test_throughput_is_linear_between_points_and_flat_beyond(curve, tile: int) -> None:
    got = throughput_at(curve, tile)
    values = [v for _, v in curve]
    assert min(values) - 1e-9 <= got <= max(values) + 1e-9
    for t, v in curve:
        assert throughput_at(curve, t) == pytest.approx(v)
    if tile <= curve[0][0]:
        assert got == curve[0][1]
    if tile >= curve[-1][0]:
        assert got == curve[-1][1]


@settings(max_examples=examples(150), deadline=None)
@given(
    h=st.integers(1, 9000),
    w=st.integers(1, 9000),
    halo=st.integers(0, 200),
    m=st.sampled_from([1, 16, 32]),
    curve=CURVES,
    data=st.data(),
)
def test_each_scene_gets_the_tile_with_the_fewest_predicted_seconds(h, w, halo, m, curve, data):
    """fit_tile against a plain reference: every tile of the range, seconds =
    network pixels / throughput, ties to the smaller tile."""
    overlap = 2 * halo
    lo = data.draw(st.integers(overlap + m, overlap + 2000))
    hi = data.draw(st.integers(lo, lo + 2500))
    got = fit_tile(h, w, overlap, m, lo, hi, curve)
    start = max(math.ceil(lo / m) * m, math.ceil((overlap + m) / m) * m)
    tiles = list(range(start, hi // m * m + 1, m))
    if not tiles or start >= hi // m * m:
        assert got == hi
        return
    best = min(tiles, key=lambda t: (pixels_run(h, w, t, overlap, m) / throughput_at(curve, t), t))
    assert got == best


def test_a_faster_mid_size_wins_where_pixels_alone_would_not() -> None:
    """A 6000-px scene, 96-px halo: counting pixels picks the largest tile; a curve on which
    large tiles run at a third of the speed picks a smaller one, and the geometry uses it."""
    h = w = 6000
    plain = fit_tile(h, w, 192, 32, 384, 2720)
    curve = ((384, 3.0), (1024, 3.6), (1600, 3.4), (2720, 1.2))
    chosen = fit_tile(h, w, 192, 32, 384, 2720, curve)
    assert chosen < plain
    seconds = [pixels_run(h, w, t, 192, 32) / throughput_at(curve, t) for t in (chosen, plain)]
    assert seconds[0] < seconds[1]
    g = Geometry(2720, 192, 32, 2048, 1, min_tile=384, cost=curve)
    assert g.tile_for(h, w) == chosen and g.grid(h, w).tile_shape == (chosen, chosen)
    assert Geometry(2720, 192, 32, 2048, 1, min_tile=384).tile_for(h, w) == plain
    # blocks are whole cores of the chosen tile: no tile straddles a block edge
    grid = g.grid(h, w)
    assert grid.block_shape[0] % grid.core_shape[0] == 0


def test_a_flat_curve_chooses_as_pixels_do() -> None:
    for size in (900, 3072, 4096, 7000):
        flat = ((384, 2.0), (2720, 2.0))
        assert fit_tile(size, size, 192, 32, 384, 2720, flat) == fit_tile(
            size, size, 192, 32, 384, 2720
        )


@pytest.mark.timed_cost_model
def test_the_curve_is_measured_once_per_key_and_cached(tmp_path: Path) -> None:
    calls = []

    def network(x):  # noqa: ANN001, ANN202
        calls.append(tuple(x.shape))
        return x

    args = dict(sha256="ab" * 32, runtime="eager", device="cpu", cache=tmp_path)
    first = measure_throughput(network, 3, [64, 96], **args)
    assert [t for t, _ in first] == [64, 96] and all(v > 0 for _, v in first)
    n = len(calls)
    assert n >= 4  # a warm-up and at least one timed call per size
    assert measure_throughput(network, 3, [64, 96], **args) == first  # from the cache
    assert len(calls) == n
    stored = read_json_dict(tmp_path / ("ab" * 32) / costmodel.CURVE_JSON)
    assert [v["curve"] for v in stored.values()] == [[list(p) for p in first]]
    measure_throughput(network, 3, [64, 128], **args)  # other sizes: another key
    assert len(calls) > n and len(read_json_dict(tmp_path / ("ab" * 32) / "throughput.json")) == 2


@pytest.mark.parametrize(
    ("text", "want"),
    [("3GiB", 3 << 30), ("1500MB", 1_500_000_000), ("2g", 2_000_000_000), ("800 MiB", 800 << 20),
     ("12345", 12345), ("0.5GiB", 1 << 29)],
)  # fmt: skip
def test_memory_sizes(text: str, want: int) -> None:
    assert parse_memory_size(text) == want
    assert RunConfig(memory_budget=text).tiling().memory_budget == want


@pytest.mark.parametrize("text", ["lots", "-1GB", "0", "3 GiBs", ""])
def test_bad_memory_sizes_are_config_errors(text: str) -> None:
    with pytest.raises(ConfigError, match="memory-budget"):
        RunConfig(memory_budget=text).validate()


@pytest.mark.timed_cost_model
def test_the_budget_bounds_the_tile_and_a_resumed_run_reuses_the_recorded_curve(
    tmp_path: Path, tiny_model, monkeypatch
) -> None:
    model = tiny_model(overlap=12)
    scenes = tmp_path / "in"
    scenes.mkdir()
    make_raster(scenes / "a.tif", smooth_image(700, 900))
    out = tmp_path / "out"
    args = ["-q", "run", "-i", str(scenes), "-m", str(model), "-o", str(out), "--device", "cpu"]
    r = CliRunner().invoke(cli, [*args, "--memory-budget", "8MiB"])
    assert r.exit_code == 0, r.output
    doc = json.loads((out / "run.json").read_text())
    curve = doc["geometry"]["throughput_mpx_s"]
    assert len(curve) >= 2 and doc["geometry"]["tile_size"] <= math.isqrt(8 << 20) // 10
    assert [t for t, _ in curve] == sorted(t for t, _ in curve)
    (out / "run.json").write_text(json.dumps({**doc, "scenes": {}}))  # as if killed early

    def no_timing(*a, **k):  # noqa: ANN002, ANN003
        raise AssertionError("measured again")

    monkeypatch.setattr(costmodel, "measure_curve", no_timing)
    monkeypatch.setenv("TILESEGD_MODEL_CACHE", str(tmp_path / "empty-cache"))  # no cached curve
    r = CliRunner().invoke(cli, [*args, "--memory-budget", "8MiB"])
    assert r.exit_code == 0, r.output
    again = json.loads((out / "run.json").read_text())
    assert again["geometry"] == doc["geometry"]


def test_seam_tolerance_trades_overlap_for_speed(tmp_path: Path, tiny_model) -> None:
    """``--seam-tolerance`` measures the halo for that agreement (never more than the file's
    measured one), records the overlap in run.json, and refuses a model without one."""
    from tilesegd.errors import EXIT_USAGE

    scenes = tmp_path / "in"
    scenes.mkdir()
    make_raster(scenes / "a.tif", smooth_image(200, 240))
    overlaps = {}
    for tol in ("0", "0.3"):
        model = tiny_model(overlap=40)
        out = tmp_path / f"out{tol}"
        args = ["-q", "run", "-i", str(scenes), "-m", str(model), "-o", str(out), "--device", "cpu"]
        r = CliRunner().invoke(cli, [*args, "--seam-tolerance", tol])
        assert r.exit_code == 0, r.output
        doc = json.loads((out / "run.json").read_text())
        overlaps[tol] = doc["config"]["overlap"]
        assert doc["geometry"]["overlap"] == overlaps[tol]
    assert 0 < overlaps["0.3"] <= overlaps["0"] <= 40 and overlaps["0.3"] % 2 == 0
    assert overlaps["0.3"] < 40  # the tiny network needs little context
    plain = tiny_model(suffix=".pt2")  # no measured overlap
    args = ["-q", "run", "-i", str(scenes), "-m", str(plain), "-o", str(tmp_path / "x")]
    r = CliRunner().invoke(cli, [*args, "--device", "cpu", "--seam-tolerance", "0.01"])
    assert r.exit_code == EXIT_USAGE and "measured overlap" in r.output

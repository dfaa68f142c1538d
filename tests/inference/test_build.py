"""Engines built once (issue 21.2) and one geometry for run, eval and validation (issue 21.5).

An engine is built from its model, settings and geometry and never changed afterwards; its
``check`` only validates, and the TensorRT build is its own call, made by a run before the
first scene. ``tilesegd run``, ``tilesegd eval`` and training's validation resolve their tile
geometry through the same function, on the device's memory budget, so they tile alike.
"""

from __future__ import annotations

import logging
from dataclasses import FrozenInstanceError, replace
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TinyConvNet, engine_for, examples, smooth_image, spec_for
from hypothesis import event, example, given, settings
from hypothesis import strategies as st

import tilesegd.inference.budget as budget_module
import tilesegd.inference.costmodel as costmodel
import tilesegd.inference.tensorrt as tensorrt_module
from tilesegd.batch.local import load_engine
from tilesegd.config import RunConfig
from tilesegd.errors import ConfigError
from tilesegd.evaluation.evaluate import EvalConfig
from tilesegd.evaluation.scoring import Scorer
from tilesegd.inference.budget import CPU_BUDGET, DeviceBudget, memory_budget
from tilesegd.inference.engine import Engine
from tilesegd.inference.geometry import (
    Geometry,
    TilingOptions,
    geometry_for,
    resolve_geometry,
)
from tilesegd.inference.options import EngineOptions
from tilesegd.model.model_file import read_spec, save_model
from tilesegd.training.validate import validation_engine


def _engine(batch: int = 4, **options) -> Engine:
    return engine_for(TinyConvNet(3, 5), spec_for(5, multiple=2), batch_size=batch, **options)


def _tiles(n: int, side: int = 32) -> tuple[np.ndarray, np.ndarray]:
    x = np.stack([smooth_image(side, side, 3, seed=i) for i in range(n)])
    return x, np.ones((n, side, side), bool)


FIXED = {
    "batch_size": 2,
    "geometry": Geometry(64, 16, 2, 2048, 2),
    "options": EngineOptions(save_probs=True),
    "spec": spec_for(3),
    "device": torch.device("cpu"),
    "dtype": torch.bfloat16,
    "runtime": "compile",
    "save_probs": True,
    "confidence": True,
    "min_confidence": 0.5,
    "module": None,
    "source": "other.ts",
    "trim_batches": False,  # not an attribute: new public attributes are refused too
}


@pytest.mark.parametrize("name", sorted(FIXED))
def test_an_engine_is_never_changed_after_it_is_built(name: str) -> None:
    eng = _engine(4)
    before = getattr(eng, name, None)
    with pytest.raises(FrozenInstanceError, match=f"Engine.{name} is fixed when the engine"):
        setattr(eng, name, FIXED[name])
    assert getattr(eng, name, None) == before


def test_its_settings_and_geometry_are_frozen_and_its_statistics_count() -> None:
    eng = _engine(4, save_probs=True)
    assert eng.batch_size == eng.geometry.batch_size == 4
    assert eng.options == EngineOptions(device="cpu", save_probs=True) and eng.save_probs
    with pytest.raises(FrozenInstanceError):
        eng.options.device = "cuda"  # type: ignore[misc]
    with pytest.raises(FrozenInstanceError):
        eng.geometry.batch_size = 8  # type: ignore[misc]
    x, valid = _tiles(5)
    ids, probs = eng.predict(x, valid)
    assert ids.shape == (5, 32, 32) and probs.shape == (5, 5, 32, 32)
    assert (eng.calls, eng.tiles) == (1, 5) and eng.slots >= 8  # 4 + 1 padded or verified
    assert eng.times.infer > 0


def test_the_scorer_tiles_with_the_engines_geometry() -> None:
    eng = _engine(3)
    scorer = Scorer(eng)
    assert scorer.geometry is eng.geometry and eng.batch_size == 3


class FakeTensorRT:
    """Stands in for :func:`tilesegd.inference.tensorrt.compile_tensorrt` (no GPU here): records
    its arguments and returns a wrapper of the module (or raises ``error``)."""

    def __init__(self, error: Exception | None = None) -> None:
        self.calls: list[tuple] = []
        self.error = error

    def __call__(self, module, in_channels, tile_shape, batch_size, dtype, device):  # noqa: ANN001, ANN204
        self.calls.append((in_channels, tuple(tile_shape), batch_size, dtype, str(device)))
        if self.error is not None:
            raise self.error
        return lambda x: module(x)


def _tensorrt_engine(monkeypatch: pytest.MonkeyPatch, fake: FakeTensorRT) -> Engine:
    """A CPU engine whose runtime is ``tensorrt`` (what resolve_runtime gives on a GPU with
    torch-tensorrt), compiling through ``fake``."""
    monkeypatch.setattr(tensorrt_module, "compile_tensorrt", fake)
    eng = _engine(4)
    monkeypatch.setattr(eng, "_runtime", "tensorrt")
    return eng


def test_check_only_validates_and_tensorrt_is_built_by_its_own_call(monkeypatch) -> None:
    fake = FakeTensorRT()
    eng = _tensorrt_engine(monkeypatch, fake)
    eng.check((32, 32))
    assert fake.calls == [] and eng._net is eng.module  # no compilation behind a check
    eng.build_tensorrt((32, 32))
    assert fake.calls == [(3, (32, 32), 4, torch.float32, "cpu")]
    assert eng._net is not eng.module and eng.runtime == "tensorrt"
    eng.build_tensorrt((32, 32))
    x, valid = _tiles(3)
    ids, _ = eng.predict(x, valid)
    assert len(fake.calls) == 1  # built once
    want, _ = _engine(4).predict(x, valid)
    np.testing.assert_array_equal(ids, want)


def test_without_an_early_build_tensorrt_is_built_at_the_first_batch(monkeypatch) -> None:
    fake = FakeTensorRT()
    eng = _tensorrt_engine(monkeypatch, fake)
    x, valid = _tiles(2, side=48)
    eng.predict(x, valid)
    assert fake.calls == [(3, (48, 48), 4, torch.float32, "cpu")]


def test_a_failed_tensorrt_build_warns_and_runs_eagerly(monkeypatch, caplog) -> None:
    eng = _tensorrt_engine(monkeypatch, FakeTensorRT(RuntimeError("unsupported op")))
    with caplog.at_level(logging.WARNING):
        eng.build_tensorrt((32, 32))
    assert eng.runtime == "eager" and eng._net is eng.module
    assert "TensorRT build failed (unsupported op); running eagerly" in caplog.text


def test_a_run_checks_then_builds_tensorrt_before_the_first_scene(
    tiny_model, tmp_path, monkeypatch
):
    order: list[tuple] = []
    monkeypatch.setattr(Engine, "check", lambda self, tile: order.append(("check", tile)))
    monkeypatch.setattr(Engine, "build_tensorrt", lambda self, tile: order.append(("trt", tile)))
    model = tiny_model(overlap=12)
    cfg = RunConfig(input=[str(tmp_path)], model=str(model), output=str(tmp_path), device="cpu")
    engine, run, _ = load_engine(cfg, tmp_path)
    tile = run.geometry.min_tile
    assert tile and order == [("check", (tile, tile)), ("trt", (tile, tile))]
    assert engine.geometry == run.geometry


# --- one geometry for run, eval and validation --------------------------------------------------

MB = 1 << 20


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two model files: with a measured overlap (the budget rule) and without one."""
    d = tmp_path_factory.mktemp("models")
    out = {}
    for kind, extra in (("measured", {"overlap": 12}), ("plain", {})):
        spec = spec_for(4, multiple=2, tile_size=64, **extra)
        out[kind] = save_model(TinyConvNet(3, 4), d / f"{kind}.ts", spec)
    return out


def _outcome(make) -> Geometry | str:  # noqa: ANN001
    """``make()``'s geometry, or the name of the error it raised."""
    try:
        return make()
    except ConfigError as exc:
        return f"ConfigError: {exc}"


def three_geometries(
    model: Path, tiling: TilingOptions, precision: str, out: Path
) -> dict[str, Geometry | str]:
    """The geometry each call site resolves on the CPU: ``tilesegd run`` (the engine a local run
    builds, and its setup), ``tilesegd eval`` and, without tiling options and at precision
    ``auto``, training's validation."""

    def run() -> Geometry:
        cfg = RunConfig(
            input=[str(out)],
            model=str(model),
            output=str(out),
            tile_size=tiling.tile_size,
            overlap=tiling.overlap,
            batch_size=tiling.batch_size,
            device="cpu",
            precision=precision,
        )
        engine, setup, _ = load_engine(cfg, out)
        assert engine.geometry == setup.geometry
        return engine.geometry

    def evaluate() -> Geometry:
        options = EngineOptions(device="cpu", precision=precision)
        cfg = EvalConfig(model, out, out, out, engine=options, tiling=tiling)
        return cfg.open_engine().geometry

    with pytest.MonkeyPatch.context() as mp:  # a fake throughput curve: no timing here
        mp.setattr(costmodel, "measure_curve", fake_curve)
        got = {"run": _outcome(run), "eval": _outcome(evaluate)}
    if isinstance(got["run"], Geometry):  # run and eval pick each scene's tile alike
        assert got["run"] == got["eval"]
        cost = got["run"].cost
        assert bool(cost) == (0 < got["run"].min_tile < got["run"].tile_size)
        assert cost == fake_curve(None, 3, [t for t, _ in cost])
        got = {k: replace(g, cost=()) for k, g in got.items()}
    if tiling == TilingOptions() and precision == "auto":
        spec, device = read_spec(model), torch.device("cpu")
        got["validation"] = validation_engine(TinyConvNet(3, 4), spec, False, device).geometry
    return got


def fake_curve(network, channels: int, sizes) -> tuple[tuple[int, float], ...]:  # noqa: ANN001
    """A made-up throughput curve over ``sizes`` (faster towards 1 kpx)."""
    return tuple((int(s), 1.0 + min(s, 1024) / 1024) for s in sorted(sizes))


TILINGS = st.builds(
    TilingOptions,
    tile_size=st.none() | st.integers(16, 160).map(lambda t: t * 2),
    overlap=st.none() | st.integers(0, 40).map(lambda o: o * 2),
    batch_size=st.none() | st.integers(1, 12),
)


@settings(max_examples=examples(40), deadline=None)
@given(
    kind=st.sampled_from(["measured", "plain"]),
    tiling=st.just(TilingOptions()) | TILINGS,  # none given: validation's case too
    budget=st.integers(16 * MB, 40 << 30),
    precision=st.sampled_from(["auto", "auto", "fp32", "bf16"]),
)
@example(kind="measured", tiling=TilingOptions(), budget=20 << 30, precision="auto")
@example(kind="measured", tiling=TilingOptions(), budget=64 * MB, precision="bf16")
@example(kind="plain", tiling=TilingOptions(), budget=CPU_BUDGET, precision="auto")
@example(kind="plain", tiling=TilingOptions(40, 40), budget=CPU_BUDGET, precision="auto")
def test_run_eval_and_validation_resolve_the_same_geometry(
    models, tmp_path_factory, kind, tiling, budget, precision
) -> None:
    """For the same model, device budget and options, the three call sites tile alike, and
    with the device's budget (``device_budget`` stands in for a GPU of any size)."""
    out = tmp_path_factory.mktemp("out")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(budget_module, "device_budget", lambda device: (budget, 2))
        got = three_geometries(models[kind], tiling, precision, out)
    dtype_bytes = 2 if precision == "bf16" else 4
    spec = read_spec(models[kind])
    want = _outcome(lambda: geometry_for(spec, tiling, DeviceBudget(budget, dtype_bytes)))
    event("ConfigError" if isinstance(want, str) else f"geometry, {len(got)} call sites")
    assert got == dict.fromkeys(got, want)


@settings(max_examples=examples(30), deadline=None)
@given(
    kind=st.sampled_from(["measured", "plain"]),
    tiling=st.just(TilingOptions()) | TILINGS,
    precision=st.sampled_from(["auto", "fp32"]),
)
@example(kind="measured", tiling=TilingOptions(), precision="auto")
def test_on_the_cpu_every_call_site_tiles_with_the_machines_budget(
    models, tmp_path_factory, kind, tiling, precision
) -> None:
    """On the CPU at fp32 the device budget is the machine's share
    (:func:`~tilesegd.inference.budget.memory_budget`, 4 bytes per value), for run, eval and
    validation alike: the geometry ``resolve_geometry`` gives for that budget."""
    out = tmp_path_factory.mktemp("out")
    got = three_geometries(models[kind], tiling, precision, out)
    spec = read_spec(models[kind])
    t, budget = tiling, memory_budget("cpu")
    assert budget >= CPU_BUDGET
    want = _outcome(
        lambda: resolve_geometry(
            spec, tile_size=t.tile_size, overlap=t.overlap, batch_size=t.batch_size, budget=budget
        )
    )
    assert got["eval"] == want
    if "validation" in got:
        assert got["validation"] == resolve_geometry(spec, budget=budget)


def test_bf16_on_the_cpu_now_evaluates_with_the_runs_tiles(models, tmp_path) -> None:
    """The one CPU case whose eval tiling changed: ``--precision bf16`` counts 2 bytes per
    activation value, as ``run`` always did; eval assumed 4 (larger budget tiles now)."""
    got = three_geometries(models["measured"], TilingOptions(), "bf16", tmp_path)
    spec = read_spec(models["measured"])
    before = resolve_geometry(spec, budget=memory_budget("cpu"))
    assert (
        got["eval"]
        == got["run"]
        == resolve_geometry(spec, dtype_bytes=2, budget=memory_budget("cpu"))
    )
    assert got["eval"].tile_size > before.tile_size
    assert replace(got["eval"], tile_size=before.tile_size, batch_size=before.batch_size) == before

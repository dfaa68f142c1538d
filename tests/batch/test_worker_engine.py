"""The Dask workers' engines (issue 21.2): one loaded network per worker, keyed by the model and
the engine's settings (:meth:`RunConfig.engine_options`), and an engine built from it with the
run's geometry, never patched: the engine ``prepare_worker`` checks is the one the tasks use."""

from __future__ import annotations

from dataclasses import replace

import pytest

import tilesegd.inference.build as build_module
from tilesegd.batch.cluster import network_key, prepare_worker, worker_engine
from tilesegd.config import RunConfig
from tilesegd.inference.build import Network
from tilesegd.inference.options import EngineOptions
from tilesegd.model.model_file import file_sha256, read_spec


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Counts model loads (load_network: torch, or the cached ONNX conversion) and engine
    builds."""
    counts = {"loads": 0, "engines": 0}
    load, engine = build_module.load_network, Network.engine

    def counting_load(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        counts["loads"] += 1
        return load(*args, **kwargs)

    def counting_engine(self, geometry):  # noqa: ANN001, ANN202
        counts["engines"] += 1
        return engine(self, geometry)

    monkeypatch.setattr(build_module, "load_network", counting_load)
    monkeypatch.setattr(Network, "engine", counting_engine)
    return counts


def test_the_tasks_use_the_engine_prepare_worker_checked(tiny_model, tmp_path, counted) -> None:
    model = tiny_model(overlap=12)
    sha = file_sha256(model)
    cfg = RunConfig(input=[str(tmp_path)], model=str(model), output=str(tmp_path), device="cpu")
    found = prepare_worker(cfg, sha)
    assert (found.device, found.dtype, found.dtype_bytes) == ("cpu", "torch.float32", 4)
    # as the client plans it
    geometry = cfg.geometry(read_spec(model), found.budget, found.dtype_bytes, found.cost)
    engine = worker_engine(cfg, sha, geometry)
    assert engine.geometry == geometry and engine.batch_size == geometry.batch_size
    assert counted == {"loads": 1, "engines": 1}  # the checked engine, reused
    assert worker_engine(cfg, sha, geometry) is engine


def test_another_geometry_builds_another_engine_from_the_loaded_network(
    tiny_model, tmp_path, counted
) -> None:
    model = tiny_model()
    sha = file_sha256(model)
    cfg = RunConfig(input=[str(tmp_path)], model=str(model), output=str(tmp_path), device="cpu")
    geometry = cfg.geometry(read_spec(model))
    first = worker_engine(cfg, sha, geometry)
    other = worker_engine(cfg, sha, replace(geometry, batch_size=geometry.batch_size + 3))
    assert other is not first and other.batch_size == geometry.batch_size + 3
    assert first.batch_size == geometry.batch_size  # never patched
    assert counted == {"loads": 1, "engines": 2}


def test_other_engine_settings_load_the_network_again(tiny_model, tmp_path, counted) -> None:
    model = tiny_model()
    sha = file_sha256(model)
    cfg = RunConfig(input=[str(tmp_path)], model=str(model), output=str(tmp_path), device="cpu")
    geometry = cfg.geometry(read_spec(model))
    plain = worker_engine(cfg, sha, geometry)
    probs = replace(cfg, save_probs=True, min_confidence=0.5)
    engine = worker_engine(probs, sha, geometry)
    assert engine.options == EngineOptions(device="cpu", save_probs=True, min_confidence=0.5)
    assert engine.save_probs and engine.confidence and not plain.save_probs
    assert counted["loads"] == 2
    assert network_key(cfg, sha) != network_key(probs, sha)
    assert network_key(cfg, sha) == network_key(replace(cfg, workers=7, batch_size=3), sha)


def test_engine_options_come_from_the_run_config_in_one_place() -> None:
    cfg = RunConfig(input=["x"], model="m.ts", output="o", device="cpu", precision="bf16")
    assert cfg.engine_options() == EngineOptions(device="cpu", precision="bf16")
    cfg = replace(cfg, compile=True, save_confidence=True, save_probs=True, min_confidence=0.4)
    assert cfg.engine_options() == EngineOptions(
        device="cpu",
        precision="bf16",
        runtime="compile",
        save_probs=True,
        confidence=True,
        min_confidence=0.4,
    )

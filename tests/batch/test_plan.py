"""ScenePlan is immutable plain data (issue 21 point 3): planning returns it whole, no phase
changes it, and what travels to Dask workers holds no open store."""

from __future__ import annotations

import dataclasses
import io
import pickle
from pathlib import Path

import numpy as np
import pytest
import rasterio
import shapely
from conftest import make_raster, smooth_image, to_map, write_polygons

from tilesegd.batch.local import load_engine
from tilesegd.batch.plan import RunSetup, ScenePlan
from tilesegd.batch.runner import compute_blocks, finish_scene, plan_scene, preview_sampler
from tilesegd.config import RunConfig
from tilesegd.outputs.zarr_store import ZarrMaskStore


class StoreFinder(pickle.Pickler):
    """Pickles like Dask does, noting every object of a zarr or store type on the way."""

    def __init__(self) -> None:
        super().__init__(io.BytesIO())
        self.found: list[str] = []

    def persistent_id(self, obj):
        kind = type(obj)
        if kind is ZarrMaskStore or kind.__module__.split(".")[0] == "zarr":
            self.found.append(kind.__qualname__)
        return None


@pytest.fixture
def planned(tmp_path: Path, tiny_model):
    """A 130 x 170 scene with an AOI over its top-left corner, planned (not computed)."""
    scene = make_raster(tmp_path / "s.tif", smooth_image(130, 170, 3, seed=3))
    aoi = write_polygons(tmp_path / "aoi.gpkg", [to_map(shapely.box(0, 0, 60, 50))])
    model = tiny_model(num_classes=3)
    cfg = RunConfig(input=[str(scene)], model=str(model), output=str(tmp_path / "o"),
                    tile_size=32, overlap=8, block_size=48, batch_size=4, device="cpu",
                    aoi=str(aoi)).validate()  # fmt: skip
    engine, run, _ = load_engine(cfg, tmp_path / "o")  # as a run builds them
    return run, engine, plan_scene(scene, "s", run)


def test_a_plan_is_frozen_and_made_whole_by_planning(planned) -> None:
    run, _, plan = planned
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.todo = ()  # type: ignore[misc]
    assert isinstance(plan.todo, tuple) and not hasattr(plan, "store")
    assert plan.blocks_outside > 0 and plan.aoi is not None
    assert len(plan.todo) + plan.blocks_outside == plan.grid.n_blocks
    store = ZarrMaskStore.reopen(plan.store_path)  # the outside blocks are written as nodata
    assert set(store.done_blocks()) == {b.id for b in plan.grid.blocks()} - {
        b.id for b in plan.todo
    }
    for field in dataclasses.fields(RunSetup) + dataclasses.fields(ScenePlan):
        assert field.type != "Any", field.name  # typed, not a bag of anything


def test_no_phase_changes_the_plan_and_workers_get_no_store(planned) -> None:
    run, engine, plan = planned
    before = [getattr(plan, f.name) for f in dataclasses.fields(plan)]

    def unchanged() -> bool:
        now = [getattr(plan, f.name) for f in dataclasses.fields(plan)]
        return all(a is b for a, b in zip(now, before, strict=True))

    pickler = StoreFinder()
    pickler.dump(dataclasses.replace(plan, todo=()))  # what a Dask task carries
    assert pickler.found == []
    preview = preview_sampler(plan, run)
    compute_blocks(plan, engine, run, preview=preview, progress=False)
    assert unchanged()
    entry = finish_scene(plan, run, preview)
    assert unchanged() and entry["blocks"] == plan.grid.n_blocks
    with rasterio.open(run.output / "s" / "mask.tif") as ds:
        ids = ds.read(1)
    assert (ids[60:, :] == 255).all() and (ids[:20, :25] != 255).all()  # the AOI's corner
    assert np.count_nonzero(ids != 255) < ids.size / 4

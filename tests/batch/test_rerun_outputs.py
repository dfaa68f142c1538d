"""Reruns into an output folder that already holds a run (issue 20): a run's own outputs are
never read as scenes, and no file of a run describes a mask other than the one beside it."""

from __future__ import annotations

import csv
import errno
import json
import os
from pathlib import Path

import pytest
import shapely
from click.testing import CliRunner
from conftest import make_raster, smooth_image, to_map, write_polygons

from tilesegd.api import run
from tilesegd.cli.main import cli
from tilesegd.errors import InputError, OutputError

GEOM = ["--tile-size", "32", "--overlap", "8", "--block-size", "48"]
SCENE_FILES = ("mask.tif", "mask.qml", "mask.tif.aux.xml", "pred.zarr", "areas.csv",
               "confidence.tif", "confidence.qml", "polygons.gpkg", "zones.csv", "zones.gpkg",
               "preview.png", "item.json")  # fmt: skip
PRODUCT_FILES = {"vector": {"polygons.gpkg"}, "zones": {"zones.csv", "zones.gpkg"}}


def invoke(*args: str):
    return CliRunner().invoke(cli, ["-q", *args], catch_exceptions=False)


def opts(inp: Path, model: Path, out: Path, **extra) -> dict:
    base = dict(input=[str(inp)], model=str(model), output=str(out), progress=False,
                tile_size=32, overlap=8, block_size=48, preview_size=0)  # fmt: skip
    return {**base, **extra}


def rows(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def rewrite(path: Path, seed: int) -> None:
    """A new version of an input scene (other pixels, a later mtime): it is recomputed."""
    st = path.stat()
    make_raster(path, smooth_image(60, 70, seed=seed))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**10))


def assert_run_json_lists_what_is_there(out: Path) -> None:
    """Each done scene's ``outputs`` are exactly its folder's files, its ``products`` are the
    ones whose files are there; the run's ``outputs`` are its run-level files."""
    doc = json.loads((out / "run.json").read_text())
    for name, e in doc["scenes"].items():
        if e["status"] != "done":
            continue
        present = {f for f in SCENE_FILES if (out / name / f).exists()}
        assert set(e["outputs"]) == present, name
        made = set().union(*(PRODUCT_FILES[p] for p in e.get("products") or {}))
        assert made == present & {"polygons.gpkg", "zones.csv", "zones.gpkg"}, name
    here = {f for f in ("summary.csv", "zones_summary.csv") if (out / f).exists()}
    assert set(doc["outputs"]) == here


# -- 1. input discovery never reads a run's outputs ------------------------------------------


def test_a_rerun_into_a_folder_inside_the_input_reads_only_the_scenes(tmp_path, tiny_model):
    nest = tmp_path / "nest"
    nest.mkdir()
    make_raster(nest / "scene.tif", smooth_image(60, 70, seed=1))
    model = tiny_model()
    args = ["run", "-i", str(nest), "-m", str(model), "-o", str(nest / "out"), *GEOM]
    args += ["--preview-size", "32", "--save-confidence"]  # preview.png, confidence.tif too
    assert invoke(*args).exit_code == 0
    r = invoke(*args)
    assert r.exit_code == 0, r.output
    doc = json.loads((nest / "out" / "run.json").read_text())
    assert set(doc["scenes"]) == {"scene"} and doc["scenes"]["scene"]["skipped"] is True
    assert {row["scene"] for row in rows(nest / "out" / "summary.csv")} == {"scene"}
    said = [line for line in r.output.splitlines() if str(nest / "out") in line]
    assert len(said) == 1 and "skipped" in said[0] and "--output" in said[0], r.output


def test_folders_holding_another_run_or_a_scenes_outputs_are_skipped(tmp_path, tiny_model):
    inp = tmp_path / "in"
    (inp / "sub").mkdir(parents=True)
    make_raster(inp / "a.tif", smooth_image(60, 70, seed=1))
    make_raster(inp / "sub" / "b.tif", smooth_image(60, 70, seed=2))
    model = tiny_model()
    run(**opts(inp, model, inp / "old", preview_size=32))  # a run kept beside the scenes
    run(**opts(inp / "sub", model, inp / "sub"))  # outputs written beside the scenes
    (inp / "copied").mkdir()  # a scene folder copied out of its run
    for f in ("mask.tif", "areas.csv"):
        (inp / "copied" / f).write_bytes((inp / "old" / "a" / f).read_bytes())
    (inp / "copied" / "pred.zarr").mkdir()
    (inp / "other").mkdir()  # another tool's run.json: an ordinary folder
    (inp / "other" / "run.json").write_text('{"epochs": 3}')
    make_raster(inp / "other" / "c.tif", smooth_image(60, 70, seed=3))
    doc = run(**opts(inp, model, tmp_path / "out"))
    assert set(doc["scenes"]) == {"a", "c"}  # not sub/b.tif: sub holds a run
    assert {e["status"] for e in doc["scenes"].values()} == {"done"}
    # the folder both input and output: only its scene, never its outputs
    again = run(**opts(inp / "sub", model, inp / "sub"))
    assert set(again["scenes"]) == {"b"} and again["scenes"]["b"]["skipped"] is True
    with pytest.raises(InputError, match="skipped .*old"):
        run(**opts(inp / "old", model, tmp_path / "o2"))


# -- 4. no file of a run describes another mask ----------------------------------------------


def test_a_rerun_without_zones_removes_the_stale_zones_summary(tmp_path, tiny_model) -> None:
    inp = tmp_path / "in"
    inp.mkdir()
    make_raster(inp / "a.tif", smooth_image(60, 70, seed=1))
    make_raster(inp / "b.tif", smooth_image(60, 70, seed=2))
    zones = write_polygons(tmp_path / "z.gpkg", [to_map(shapely.box(0, 0, 40, 30))])
    model, out = tiny_model(), tmp_path / "out"
    run(**opts(inp, model, out, zones=str(zones)))
    rewrite(inp / "a.tif", seed=3)  # a's mask changes; b is skipped and keeps its zones
    run(**opts(inp, model, out))
    assert not (out / "a" / "zones.csv").exists()
    summary = {
        (r["zone"], r["class_id"]): int(r["pixels"]) for r in rows(out / "zones_summary.csv")
    }
    b = {(r["zone"], r["class_id"]): int(r["pixels"]) for r in rows(out / "b" / "zones.csv")}
    assert summary == b  # only what matches the masks present
    rewrite(inp / "b.tif", seed=4)
    run(**opts(inp, model, out))
    assert not (out / "zones_summary.csv").exists()  # no scene has zones any more
    assert_run_json_lists_what_is_there(out)


def test_a_recomputed_scene_keeps_no_product_of_an_older_mask(tmp_path, tiny_model) -> None:
    inp = tmp_path / "in"
    inp.mkdir()
    make_raster(inp / "s.tif", smooth_image(60, 70, seed=1))
    zones = write_polygons(tmp_path / "z.gpkg", [to_map(shapely.box(0, 0, 40, 30))])
    model, out = tiny_model(), tmp_path / "out"
    full = dict(zones=str(zones), vector=True, save_confidence=True, save_probs=True)
    run(**opts(inp, model, out, **full))
    assert_run_json_lists_what_is_there(out)
    doc = run(**opts(inp, model, out, overwrite=True))
    assert doc["scenes"]["s"]["products"] == {}
    for f in ("polygons.gpkg", "zones.csv", "zones.gpkg", "confidence.tif", "pred.zarr/probs"):
        assert not (out / "s" / f).exists(), f
    assert_run_json_lists_what_is_there(out)


def test_a_resumed_scene_drops_products_no_longer_asked_for(
    tmp_path, tiny_model, monkeypatch
) -> None:
    import tilesegd.batch.finish

    inp = tmp_path / "in"
    inp.mkdir()
    make_raster(inp / "s.tif", smooth_image(60, 70, seed=1))
    zones = write_polygons(tmp_path / "z.gpkg", [to_map(shapely.box(0, 0, 40, 30))])
    model, out = tiny_model(), tmp_path / "out"

    def disk_full(path, *a, **k):  # the products are written; the preview fills the disk
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    with monkeypatch.context() as m:
        m.setattr(tilesegd.batch.finish, "write_preview", disk_full)
        with pytest.raises(OutputError):
            run(**opts(inp, model, out, zones=str(zones), vector=True, preview_size=32))
    doc = run(**opts(inp, model, out, preview_size=32))  # resumes the finished blocks
    e = doc["scenes"]["s"]
    assert e["status"] == "done" and e["blocks_resumed"] == e["blocks"] and e["products"] == {}
    for f in ("polygons.gpkg", "zones.csv", "zones.gpkg"):
        assert not (out / "s" / f).exists(), f
    assert_run_json_lists_what_is_there(out)


def test_run_json_lists_products_added_later_and_files_gone(tmp_path, tiny_model) -> None:
    inp = tmp_path / "in"
    inp.mkdir()
    make_raster(inp / "s.tif", smooth_image(60, 70, seed=1))
    zones = write_polygons(tmp_path / "z.gpkg", [to_map(shapely.box(0, 0, 40, 30))])
    model, out = tiny_model(), tmp_path / "out"
    run(**opts(inp, model, out))
    doc = run(**opts(inp, model, out, zones=str(zones), vector=True))
    assert doc["scenes"]["s"]["products_added"] == ["vector", "zones"]
    assert_run_json_lists_what_is_there(out)
    (out / "s" / "polygons.gpkg").unlink()  # removed by hand
    doc = run(**opts(inp, model, out))
    assert doc["scenes"]["s"]["skipped"] is True and set(doc["scenes"]["s"]["products"]) == {
        "zones"
    }
    assert_run_json_lists_what_is_there(out)

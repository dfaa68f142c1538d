"""Reruns into an output folder that already holds a run (issue 20): a run's own outputs are
never read as scenes, and no file of a run describes a mask other than the one beside it."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import make_raster, smooth_image

from tilesegd.api import run
from tilesegd.cli.main import cli
from tilesegd.errors import InputError

GEOM = ["--tile-size", "32", "--overlap", "8", "--block-size", "48"]


def invoke(*args: str):
    return CliRunner().invoke(cli, ["-q", *args], catch_exceptions=False)


def opts(inp: Path, model: Path, out: Path, **extra) -> dict:
    base = dict(input=[str(inp)], model=str(model), output=str(out), progress=False,
                tile_size=32, overlap=8, block_size=48, preview_size=0)  # fmt: skip
    return {**base, **extra}


def rows(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


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

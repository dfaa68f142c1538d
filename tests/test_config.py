"""One rule, one home (issue 21 point 4) for run options: the ``--vector-classes`` list is split
by the config whatever gave it, and ``--min-area`` / ``--simplify`` have one check and one
message wherever they are given."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

import tilesegd.api
from tilesegd.cli.main import cli
from tilesegd.config import RunConfig, resolve
from tilesegd.errors import ConfigError
from tilesegd.outputs.polygons import VectorOptions


def cli_config(monkeypatch, *args: str) -> RunConfig:
    """The RunConfig ``tilesegd run ARGS`` hands to the API (which is not run)."""
    seen: list[RunConfig] = []

    def fake_run(cfg: RunConfig, progress: bool = True) -> dict:
        seen.append(cfg)
        return {"scenes": {}}

    monkeypatch.setattr(tilesegd.api, "run", fake_run)
    r = CliRunner().invoke(cli, ["-q", "run", "-m", "m.ts", "-o", "out", *args])
    assert r.exit_code == 0, r.output
    return seen[0]


def test_vector_classes_are_split_once_whatever_gives_them(monkeypatch, tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text("run:\n  vector-classes: 'water, trees,,'\n")
    from_flag = cli_config(monkeypatch, "--vector-classes", "water, trees,,")
    from_yaml = resolve(RunConfig, tmp_path / "c.yaml", {}, section="run")
    from_python = RunConfig(vector_classes="water, trees,,").validate()
    listed = RunConfig(vector_classes=["water", " trees"]).validate()
    assert from_flag.vector_classes == from_yaml.vector_classes == ["water", " trees"]
    assert from_python.vector_classes == listed.vector_classes == ["water", " trees"]


@pytest.mark.parametrize(
    ("option", "value", "unit"),
    [("min_area", -1.0, "m2"), ("min_area", float("inf"), "m2"), ("simplify", -0.5, "px"),
     ("simplify", float("nan"), "px"), ("simplify", "1", "px")],
)  # fmt: skip
def test_min_area_and_simplify_have_one_check_and_one_message(option, value, unit) -> None:
    with pytest.raises(ConfigError) as by_config:
        RunConfig(**{option: value}).validate()
    with pytest.raises(ConfigError) as by_writer:
        VectorOptions(**{f"{option}_m2" if option == "min_area" else option: value})
    assert str(by_config.value) == str(by_writer.value)
    assert str(by_config.value).startswith(f"{option} must be a ") and f"({unit})" in str(
        by_config.value
    )

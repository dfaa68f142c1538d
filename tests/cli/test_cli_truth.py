"""What the README and ``--help`` promise, checked (issue 13's "docs that tell the truth")."""

from __future__ import annotations

import csv
import errno
import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from conftest import make_raster, smooth_image, spec_for

from tilesegd.cli.main import cli
from tilesegd.errors import EXIT_OUTPUT, EXIT_USAGE

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def scene_dir(tmp_path: Path) -> Path:
    d = tmp_path / "in"
    d.mkdir()
    make_raster(d / "a.tif", smooth_image(70, 90, seed=2))
    return d


def run_args(inp: Path, model: Path, out: Path, *extra: str) -> list[str]:
    return ["run", "-i", str(inp), "-m", str(model), "-o", str(out), "--preview-size", "0", *extra]


def test_verbosity_flags_work_after_the_command_name(scene_dir, tiny_model, tmp_path) -> None:
    model = tiny_model(num_classes=3)
    r = CliRunner().invoke(cli, run_args(scene_dir, model, tmp_path / "o", "-q"))
    assert r.exit_code == 0, r.output
    assert "scene(s) done" not in r.output  # -q: no summary line
    r = CliRunner().invoke(cli, run_args(scene_dir, model, tmp_path / "p", "-v"))
    assert r.exit_code == 0 and "1 of 1 scene(s) done" in r.output
    for cmd in ("run", "train", "eval", "export"):
        text = CliRunner().invoke(cli, [cmd, "--help"]).output
        assert "-q, --quiet" in text and "-v, --verbose" in text, cmd


def test_the_example_run_config_keeps_the_model_geometry() -> None:
    """configs/run.yaml must not pin tile_size / overlap: that would silently defeat the model
    file's measured seamless geometry."""
    run = yaml.safe_load((ROOT / "configs" / "run.yaml").read_text())["run"]
    assert "tile_size" not in run and "overlap" not in run
    from tilesegd.config import RunConfig, resolve

    cfg = resolve(RunConfig, ROOT / "configs" / "run.yaml", {}, section="run")
    from tilesegd.inference.geometry import resolve_geometry

    spec = spec_for(3, tile_size=768, overlap=384, multiple=32)
    g = cfg.geometry(spec)
    assert g == resolve_geometry(spec, block_size=cfg.block_size) and g.overlap == 384


def test_bands_of_the_wrong_count_are_a_usage_error_before_any_scene(
    scene_dir, tiny_model, tmp_path
) -> None:
    model = tiny_model(num_classes=3)
    out = tmp_path / "o"
    r = CliRunner().invoke(cli, ["-q", *run_args(scene_dir, model, out, "--bands", "1,2")])
    assert r.exit_code == EXIT_USAGE, r.output
    assert "--bands lists 2 band(s)" in r.output and "3 input channel(s)" in r.output
    assert not (out / "run.json").exists()  # no scene was attempted


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_an_unwritable_output_folder_is_exit_6(scene_dir, tiny_model, tmp_path) -> None:
    out = tmp_path / "ro"
    out.mkdir()
    out.chmod(0o500)
    try:
        r = CliRunner().invoke(cli, ["-q", *run_args(scene_dir, tiny_model(), out)])
    finally:
        out.chmod(0o700)
    assert r.exit_code == EXIT_OUTPUT, r.output
    assert "not writable" in r.output


def test_an_existing_read_only_output_folder_is_exit_6(
    scene_dir, tiny_model, tmp_path, monkeypatch
) -> None:
    """Root passes permission checks, so this simulates what a non-root user meets."""
    real = os.access

    def no_write(path, mode, *a, **k):
        if Path(path) == tmp_path / "ro" and mode & os.W_OK:
            return False
        return real(path, mode, *a, **k)

    (tmp_path / "ro").mkdir()
    monkeypatch.setattr(os, "access", no_write)
    r = CliRunner().invoke(cli, ["-q", *run_args(scene_dir, tiny_model(), tmp_path / "ro")])
    assert r.exit_code == EXIT_OUTPUT, r.output
    assert "not writable" in r.output and "Traceback" not in r.output


def test_an_os_error_writing_a_scene_output_stops_the_run_with_exit_6(
    scene_dir, tiny_model, tmp_path, monkeypatch
) -> None:
    """A permission error (not a full disk) while writing a scene's output ends the run with
    exit 6: no later scene could be written either."""
    from tilesegd.outputs.zarr_store import ZarrMaskStore

    make_raster(scene_dir / "b.tif", smooth_image(40, 50, seed=3))
    out = tmp_path / "o"

    def denied(self, block, ids):
        raise PermissionError(errno.EACCES, "Permission denied", str(self.path / "mask"))

    monkeypatch.setattr(ZarrMaskStore, "write_block", denied)
    r = CliRunner().invoke(cli, ["-q", *run_args(scene_dir, tiny_model(), out)])
    assert r.exit_code == EXIT_OUTPUT, r.output
    assert "cannot be written" in r.output
    doc = json.loads((out / "run.json").read_text())
    assert doc["status"] == "failed" and "b" not in doc["scenes"]  # the run stopped at a


def test_internal_errors_point_at_vv_for_the_traceback(
    scene_dir, tiny_model, tmp_path, monkeypatch
) -> None:
    import tilesegd.batch.local as local

    def boom(*a, **k):
        raise ZeroDivisionError("boom")

    monkeypatch.setattr(local, "load_engine", boom)
    r = CliRunner().invoke(cli, ["-q", *run_args(scene_dir, tiny_model(), tmp_path / "o")])
    assert r.exit_code == EXIT_USAGE
    assert "internal error ZeroDivisionError: boom (rerun with -vv" in r.output
    assert "Traceback" not in r.output
    r = CliRunner().invoke(cli, [*run_args(scene_dir, tiny_model(), tmp_path / "o"), "-vv"])
    assert "Traceback" in r.output


def test_progress_without_a_terminal_is_a_log_line_every_30_s(monkeypatch, caplog) -> None:
    import tilesegd.batch.progress as progress

    clock = {"t": 0.0}
    monkeypatch.setattr(progress.time, "monotonic", lambda: clock["t"])
    monkeypatch.setattr(progress.sys.stderr, "isatty", lambda: False, raising=False)
    with caplog.at_level(logging.INFO, logger="tilesegd"):
        bar = progress.progress_bar(True, total=100.0, desc="scene", unit="MP")
        assert isinstance(bar, progress.LogProgress)
        for _ in range(100):  # 100 updates over 99 s: lines at 30, 60 and 90 s, and the end
            bar.update(1)
            clock["t"] += 1.0
        bar.close()
    lines = [r.message for r in caplog.records if r.message.startswith("scene:")]
    assert len(lines) == 4, lines
    assert "100.0/100.0 MP (100%)" in lines[-1]
    assert progress.progress_bar(False, total=1).disable  # disabled: a silent tqdm


def test_eval_ignores_the_classes_the_model_was_trained_to_ignore(tmp_path: Path) -> None:
    """Semantic Drone Dataset masks carry 'unlabeled'; a model trained with it ignored records
    ignored_classes, and eval leaves it out without --ignore."""
    import torch

    from tilesegd.model.model_file import save_model

    class Constant(torch.nn.Module):  # always class 1 ('grass')
        def forward(self, x):
            z = torch.zeros_like(x[:, :1])
            return torch.cat([z, z + 1.0], 1)

    spec = spec_for(2, tile_size=64, multiple=1, ignored_classes=["unlabeled"])
    spec = type(spec).from_dict({**spec.to_dict(), "classes": ["paved-area", "grass"]})
    model = save_model(Constant(), tmp_path / "m.ts", spec)
    imgs, masks = tmp_path / "images", tmp_path / "masks"
    imgs.mkdir()
    masks.mkdir()
    make_raster(imgs / "f.png", smooth_image(40, 30))
    colors = np.zeros((3, 40, 30), np.uint8)  # unlabeled (0,0,0) on the left ...
    colors[:, :, 15:] = np.array([0, 102, 0])[:, None, None]  # ... grass on the right
    make_raster(masks / "f.png", colors)
    with open(tmp_path / "class_dict.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerows([["name", "r", "g", "b"], ["unlabeled", 0, 0, 0]])
        w.writerows([["paved-area", 128, 64, 128], ["grass", 0, 102, 0]])
    args = ["eval", "-m", str(model), "--images", str(imgs), "--masks", str(masks)]
    args += ["--classes", str(tmp_path / "class_dict.csv"), "-o", str(tmp_path / "ev")]
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 0, r.output
    doc = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert doc["pixels"] == 40 * 15 and doc["pixel_accuracy"] == 1.0

"""Issue 25: torch >= 2.14 deprecates TorchScript (``torch.jit.load`` / ``trace`` / ``save`` warn
with a FutureWarning). tilesegd keeps reading and writing ``.ts`` files, and no user sees the
warning: ``tilesegd run --model m.ts`` and ``tilesegd export ... --output m.ts``, run as a user
runs them with Python's default warning filters (``-W default``), print none of it.

The control test proves the check has teeth: the same ``torch.jit.load`` outside tilesegd does
print the warning (without :func:`tilesegd.model.model_file.quiet_torchscript` the CLI tests
fail)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TinyConvNet, make_raster, smooth_image, spec_for

from tilesegd.model.model_file import load_model, save_model

ROOT = Path(__file__).resolve().parents[2]
JIT_DEPRECATION = re.compile(r"torch\.jit\b[^\n]*deprecat|TorchScript[^\n]*deprecat", re.I)


def python(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """``python -W default ARGS`` in ``tmp_path``, as a user's shell runs it (no
    ``PYTHONWARNINGS``), with a model cache of its own."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    env["TILESEGD_MODEL_CACHE"] = str(tmp_path / "model-cache")
    cmd = [sys.executable, "-W", "default", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)


@pytest.fixture
def ts_model(tmp_path: Path) -> Path:
    spec = spec_for(3, multiple=2, tile_size=64, overlap=16)
    return save_model(TinyConvNet(3, 3), tmp_path / "tiny.ts", spec)


def test_torch_itself_warns_so_the_checks_below_mean_something(
    ts_model: Path, tmp_path: Path
) -> None:
    r = python(tmp_path, "-c", f"import torch; torch.jit.load({str(ts_model)!r})")
    assert r.returncode == 0, r.stderr
    if not JIT_DEPRECATION.search(r.stderr):
        pytest.skip(f"torch {torch.__version__} does not warn about torch.jit: nothing to hide")
    assert "FutureWarning" in r.stderr or "DeprecationWarning" in r.stderr
    strict = python(
        tmp_path, "-W", "error", "-c", f"import torch; torch.jit.load({str(ts_model)!r})"
    )
    assert strict.returncode != 0 and JIT_DEPRECATION.search(strict.stderr)


def test_run_on_a_torchscript_model_prints_no_jit_deprecation(
    ts_model: Path, tmp_path: Path
) -> None:
    make_raster(tmp_path / "scene.tif", smooth_image(120, 90))
    r = python(tmp_path, "-m", "tilesegd", "run", "-i", "scene.tif", "-m", str(ts_model),
               "-o", "out", "--device", "cpu", "--preview-size", "0")  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "out" / "scene" / "mask.tif").is_file()
    assert not JIT_DEPRECATION.search(r.stderr), r.stderr


def test_export_to_torchscript_prints_no_jit_deprecation(tmp_path: Path) -> None:
    from tilesegd.training.checkpoint import save_checkpoint
    from tilesegd.training.model import build_model

    spec = {
        **spec_for(3, multiple=8, tile_size=64).to_dict(),
        "arch": "Unet",
        "encoder": "mobilenet_v2",
        "encoder_depth": 3,
        "decoder_channels": [16, 8, 8],
    }
    net = build_model("Unet", "mobilenet_v2", 3, 3, 3, [16, 8, 8])
    save_checkpoint(tmp_path / "best.ckpt", net.state_dict(), {"spec": spec, "epoch": 1})
    r = python(tmp_path, "-m", "tilesegd", "export", "best.ckpt", "--output", "m.ts")
    assert r.returncode == 0, r.stderr
    assert "m.ts: torchscript; parity vs eager" in r.stdout
    assert not JIT_DEPRECATION.search(r.stderr), r.stderr
    loaded = load_model(tmp_path / "m.ts")
    assert loaded.kind == "torchscript"  # a real TorchScript file, running any size
    out = loaded.module(torch.zeros(1, 3, 40, 56))
    assert out.shape == (1, 3, 40, 56) and np.isfinite(out.detach().numpy()).all()

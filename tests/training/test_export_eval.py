"""Metrics on hand-made confusion matrices, export (torch.export / TorchScript parity, the run's
model file and its TorchScript fallback, TensorRT errors), eval."""

from __future__ import annotations

import csv
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from test_train import config, synthetic_pairs

from tilesegd.api import evaluate
from tilesegd.errors import ConfigError, DeviceError
from tilesegd.evaluation.metrics import confusion_matrix, scores
from tilesegd.model.model_file import load_model, trained_model
from tilesegd.training import model as training_model
from tilesegd.training.checkpoint import load_checkpoint
from tilesegd.training.export import export_model, save_best_model
from tilesegd.training.loop import network_from_state, train


def test_confusion_matrix_counts_and_ignore() -> None:
    t = np.array([0, 0, 1, 1, 2, 255])
    p = np.array([0, 1, 1, 1, 0, 2])
    cm = confusion_matrix(t, p, 3)
    assert cm.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]
    with pytest.raises(ValueError, match="0..2"):
        confusion_matrix(np.array([3]), np.array([0]), 3)


def test_scores_by_hand() -> None:
    # rows = true; class 0: TP 1, FP 1, FN 1; class 1: TP 2, FP 1, FN 0; class 2: TP 0, FP 0, FN 1
    cm = np.array([[1, 1, 0], [0, 2, 0], [1, 0, 0]])
    s = scores(cm, ["a", "b", "c"])
    iou = [1 / 3, 2 / 3, 0.0]
    assert [c["iou"] for c in s["per_class"]] == pytest.approx(iou)
    assert [c["dice"] for c in s["per_class"]] == pytest.approx([0.5, 0.8, 0.0])
    assert [c["precision"] for c in s["per_class"]][:2] == pytest.approx([0.5, 2 / 3])
    assert s["per_class"][2]["precision"] is None  # never predicted: undefined
    assert [c["recall"] for c in s["per_class"]] == pytest.approx([0.5, 1.0, 0.0])
    assert s["miou"] == pytest.approx(sum(iou) / 3)
    assert s["pixel_accuracy"] == pytest.approx(3 / 5)
    # a class absent from labels and predictions is left out of the mean
    cm4 = np.zeros((4, 4), int)
    cm4[:3, :3] = cm
    assert scores(cm4)["miou"] == pytest.approx(sum(iou) / 3)
    assert scores(np.eye(2, dtype=int) * 5)["miou"] == 1.0


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("exp")
    data = synthetic_pairs(root / "data", n=2)
    return data, train(config(data, root / "run", epochs=1), progress=False)


@pytest.mark.parametrize(("suffix", "kind"), [(".pt2", "export"), (".ts", "torchscript")])
def test_export_matches_eager(
    trained: tuple[Path, Path], tmp_path: Path, suffix: str, kind: str
) -> None:
    _, run = trained
    report: dict = {}
    out = export_model(run / "best.ckpt", tmp_path / f"m{suffix}", tile_size=128, report=report)
    assert report["max_abs_diff"] <= 1e-5 and report["argmax_agreement"] == 1.0
    loaded = load_model(out)
    assert loaded.kind == kind
    assert loaded.spec.tile_size == 128 and loaded.spec.extra["dtypes"] == ["uint8"]
    state, st = load_checkpoint(run / "best.ckpt")
    eager = network_from_state(st["spec"], state).eval()
    gen = torch.Generator().manual_seed(1)
    for shape in [(2, 3, 96, 160), (1, 3, 136, 40), (3, 3, 64, 72)]:  # other sizes and batches
        x = torch.randn(*shape, generator=gen)
        with torch.no_grad():
            torch.testing.assert_close(loaded.module(x), eager(x), atol=1e-5, rtol=0)
    with pytest.raises(ConfigError, match="multiple of 8"):
        export_model(run, tmp_path / "bad.ts", tile_size=100)
    with pytest.raises(ConfigError, match="tensorrt"):
        export_model(run, tmp_path / "bad.ts", precision="fp16")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA error")
def test_tensorrt_without_cuda_is_a_clear_error(trained: tuple[Path, Path], tmp_path: Path):
    with pytest.raises(DeviceError, match=r"pip install 'tilesegd\[tensorrt\]'.*CUDA GPU"):
        export_model(trained[1], tmp_path / "m.ts", fmt="tensorrt")


def test_eval_own_predictions_give_miou_1(trained: tuple[Path, Path], tmp_path: Path) -> None:
    data, run = trained
    first = evaluate(
        run / "model.pt2",
        data / "images",
        data / "masks",
        tmp_path / "e1",
        data / "classes.csv",
        save_predictions=True,
        device="cpu",
    )
    # every labelled pixel (2 pairs of 96 x 96 less 4 nodata rows) scored once; the scores are
    # those of the confusion matrix (IoU = TP / (TP + FP + FN), classes never seen left out)
    cm = np.asarray(first["confusion_matrix"])
    assert cm.shape == (3, 3) and cm.sum() == first["pixels"] == 2 * 92 * 96
    tp = np.diag(cm)
    union = cm.sum(0) + cm.sum(1) - tp
    assert first["miou"] == pytest.approx((tp[union > 0] / union[union > 0]).mean())
    assert first["pixel_accuracy"] == pytest.approx(tp.sum() / cm.sum())
    assert json.loads((tmp_path / "e1" / "metrics.json").read_text())["miou"] == first["miou"]
    for name in ("metrics.json", "metrics.csv", "confusion.png"):
        assert (tmp_path / "e1" / name).is_file()
    again = evaluate(
        run / "model.pt2",
        data / "images",
        tmp_path / "e1" / "pred",
        tmp_path / "e2",
        data / "classes.csv",
        device="cpu",
    )
    assert again["miou"] == 1.0 and again["pixel_accuracy"] == 1.0
    assert json.loads((tmp_path / "e2" / "metrics.json").read_text())["miou"] == 1.0


def test_eval_known_masks_hand_computed(trained: tuple[Path, Path], tmp_path: Path) -> None:
    data, run = trained
    first = evaluate(
        run / "model.pt2",
        data / "images",
        data / "masks",
        tmp_path / "e1",
        data / "classes.csv",
        save_predictions=True,
        device="cpu",
    )
    # target = prediction with a known change: pixels predicted soil (value 1) relabelled grass
    (tmp_path / "m").mkdir()
    import rasterio

    cm = np.zeros((3, 3), np.int64)
    for p in sorted((tmp_path / "e1" / "pred").glob("*.png")):
        with rasterio.open(p) as src:
            pred = src.read(1)
        target = pred.copy()
        target[pred == 1] = 2
        target[:5] = 0  # nodata rows: ignored
        with rasterio.open(
            tmp_path / "m" / p.name,
            "w",
            driver="PNG",
            width=pred.shape[1],
            height=pred.shape[0],
            count=1,
            dtype="uint8",
        ) as dst:
            dst.write(target[None])
        ok = target != 0
        cm += confusion_matrix(target[ok] - 1, pred[ok] - 1, 3)
    doc = evaluate(
        run / "model.pt2",
        data / "images",
        tmp_path / "m",
        tmp_path / "e3",
        data / "classes.csv",
        device="cpu",
    )
    assert doc["confusion_matrix"] == cm.tolist()
    exp = scores(cm, ["soil", "grass", "water"])
    assert doc["miou"] == pytest.approx(exp["miou"])
    assert doc["per_class"][0]["iou"] in (None, 0.0)  # soil is never a target any more
    with open(tmp_path / "e3" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["name"] for r in rows[:3]] == ["soil", "grass", "water"]
    assert first["pixels"] > doc["pixels"]


def test_cli_export_and_eval(trained: tuple[Path, Path], tmp_path: Path) -> None:
    from tilesegd.cli.main import cli

    data, run = trained
    r = CliRunner().invoke(
        cli, ["export", str(run / "best.ckpt"), "--output", str(tmp_path / "m.pt2")]
    )
    assert r.exit_code == 0, r.output
    assert f"{tmp_path / 'm.pt2'}: torch.export;" in r.output
    assert "argmax agreement 100.000%" in r.output
    r = CliRunner().invoke(
        cli,
        [
            "eval",
            "--model",
            str(tmp_path / "m.pt2"),
            "--images",
            str(data / "images"),
            "--masks",
            str(data / "masks"),
            "--classes",
            str(data / "classes.csv"),
            "--output",
            str(tmp_path / "ev"),
            "--device",
            "cpu",
        ],
    )
    assert r.exit_code == 0, r.output
    assert "mIoU" in r.output and (tmp_path / "ev" / "metrics.json").is_file()
    r = CliRunner().invoke(cli, ["export", str(tmp_path / "nope.ckpt"), "-o", "x.ts"])
    assert r.exit_code == 3 and "checkpoint not found" in r.output


class BatchBranch(torch.nn.Module):
    """A network whose control flow depends on the batch size: torch.export cannot make that
    dimension dynamic, so ``save_model`` falls back to a static-shape ``.pt2``."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.net(x)
        return y * 2 if x.shape[0] > 8 else y


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")  # BatchBranch's shape test
def test_run_model_falls_back_to_torchscript(
    trained: tuple[Path, Path], tmp_path: Path, monkeypatch, caplog
) -> None:
    _, run = trained
    assert trained_model(run) == run / "model.pt2" and not (run / "model.ts").exists()
    out = tmp_path / "run"
    out.mkdir()
    shutil.copy(run / "best.ckpt", out / "best.ckpt")
    real = training_model.network_from_state
    monkeypatch.setattr(training_model, "network_from_state", lambda s, w: BatchBranch(real(s, w)))
    with caplog.at_level(logging.WARNING, logger="tilesegd"):
        path = save_best_model(out)
    assert path == out / "model.ts" == trained_model(out) and not (out / "model.pt2").exists()
    assert (
        "does not run other input or batch sizes" in caplog.text and "Guard failed" in caplog.text
    )
    loaded = load_model(path)
    assert loaded.kind == "torchscript"
    for shape in [(1, 3, 72, 80), (3, 3, 40, 64)]:  # a .ts runs any size and batch
        assert loaded.module(torch.zeros(shape)).shape == (shape[0], 3, *shape[2:])
    monkeypatch.undo()
    assert save_best_model(out) == out / "model.pt2" == trained_model(out)
    assert not (out / "model.ts").exists()  # the stale fallback of the run before is gone

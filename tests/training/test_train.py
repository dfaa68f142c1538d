"""Training: outputs of a run, exact resume, losses, encoder weights, the CLI."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import make_raster

from tilesegd.config import resolve
from tilesegd.errors import ConfigError, ModelFileError
from tilesegd.model.model_file import load_model
from tilesegd.training import loop
from tilesegd.training.checkpoint import load_checkpoint, save_checkpoint
from tilesegd.training.config import TrainConfig
from tilesegd.training.loop import network_from_state, train
from tilesegd.training.model import build_loss, build_model, class_weights, load_encoder_weights

COLOURS = np.array([[190, 160, 120], [40, 140, 40], [30, 80, 200]], np.float32)
TINY = dict(  # a fast network: 3 stages, slim decoder, 64-px tiles
    arch="Unet",
    encoder="mobilenet_v2",
    encoder_depth=3,
    decoder_channels=[16, 8, 8],
    tile_size=64,
    batch_size=4,
    steps_per_epoch=3,
    epochs=2,
    lr=0.01,
    val_loss_tiles=2,
    device="cpu",
)


def synthetic_pairs(root: Path, n: int = 3, size: int = 96, binary: bool = False) -> Path:
    """``n`` RGB uint8 GeoTIFFs whose classes have distinct colours, value-coded masks
    (``0`` = nodata border, classes 1..3; binary: 0 / 255) and ``classes.csv``."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(42)
    for i in range(n):
        yy, xx = np.mgrid[0:size, 0:size]
        lab = ((np.sin(yy / (7 + i)) + np.cos(xx / 9)) > 0).astype(np.uint8)
        lab[(yy // 24 + xx // 24) % 3 == 0] = 2
        img = COLOURS[lab].transpose(2, 0, 1) + rng.normal(0, 12, (3, size, size))
        make_raster(root / "images" / f"p{i}.tif", np.clip(img, 0, 255).astype(np.uint8))
        if binary:
            mask = np.where(lab == 2, 255, 0).astype(np.uint8)
        else:
            mask = lab + 1
            mask[:4] = 0  # nodata rows
        make_raster(root / "masks" / f"p{i}.tif", mask.astype(np.uint8))
    rows = (
        ["0,background,0,0,0", "255,water,30,80,200"]
        if binary
        else ["0,nodata,0,0,0", "1,soil,190,160,120", "2,grass,40,140,40", "3,water,30,80,200"]
    )
    (root / "classes.csv").write_text("value,name,r,g,b\n" + "\n".join(rows) + "\n")
    return root


def config(data: Path, out: Path, **kw) -> TrainConfig:
    opts = {**TINY, **kw}
    return TrainConfig(
        images=str(data / "images"),
        masks=str(data / "masks"),
        classes=str(data / "classes.csv"),
        output=str(out),
        **opts,
    ).validate()


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return synthetic_pairs(tmp_path_factory.mktemp("train") / "data")


@pytest.fixture(scope="module")
def run(data: Path, tmp_path_factory) -> Path:
    """One uninterrupted 2-epoch run, shared by the tests below."""
    return train(config(data, tmp_path_factory.mktemp("train") / "run"), progress=False)


def test_train_writes_run_directory(run: Path, data: Path, tmp_path: Path) -> None:
    out = run
    for name in (
        "config.yaml",
        "metrics.csv",
        "curves.png",
        "confusion.png",
        "best.ckpt",
        "last.ckpt",
        "model.pt2",
    ):
        assert (out / name).is_file(), name
    assert not (out / "model.ts").exists()  # the TorchScript fallback was not needed
    with open(out / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == [
        "epoch",
        "train_loss",
        "val_loss",
        "val_miou",
        "val_pixel_accuracy",
        "val_dice",
        "lr",
        "seconds",
        "iou_soil",
        "iou_grass",
        "iou_water",
    ]
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    loaded = load_model(out / "model.pt2")
    assert loaded.kind == "export"
    spec = loaded.spec
    assert [c.name for c in spec.classes] == ["soil", "grass", "water"]  # nodata is no output
    assert spec.extra["dtypes"] == ["uint8"] and spec.input_scale == 255.0
    assert spec.multiple == 8 and spec.tile_size >= 64 and len(spec.mean) == 3
    # the measured seamless geometry: overlap = 2 x halo, a core at least as wide as the overlap
    assert spec.overlap is not None and spec.overlap % 16 == 0 and spec.overlap >= 16
    assert spec.tile_size - spec.overlap >= spec.overlap
    assert spec.extra["arch"] == "Unet" and spec.extra["ignored_classes"] == ["nodata"]
    logits = loaded.module(torch.zeros(1, 3, 64, 64))
    assert logits.shape == (1, 3, 64, 64)
    state, st = load_checkpoint(out / "best.ckpt")
    eager = network_from_state(st["spec"], state).eval()
    gen = torch.Generator().manual_seed(0)
    for shape in [(1, 3, 72, 120), (3, 3, 40, 24), (3, 3, 136, 64)]:  # not the 64-px tile
        x = torch.randn(*shape, generator=gen)
        with torch.no_grad():
            torch.testing.assert_close(loaded.module(x), eager(x), atol=1e-4, rtol=1e-4)
    assert st["config"]["encoder"] == "mobilenet_v2" and "optimizer" in st
    assert st["best_miou"] == pytest.approx(max(float(r["val_miou"]) for r in rows), abs=1e-6)
    # the best epoch's val_miou is the mIoU of its validation confusion matrix...
    best = max(rows, key=lambda r: float(r["val_miou"]))
    assert st["epoch"] == int(best["epoch"])
    cm = np.asarray(st["scores"]["confusion_matrix"])
    tp = np.diag(cm)
    union = cm.sum(0) + cm.sum(1) - tp
    assert cm.sum() == 92 * 96  # one held-out 96 x 96 pair less its 4 nodata rows
    assert float(best["val_miou"]) == pytest.approx((tp / union)[union > 0].mean(), abs=1e-6)
    # ...and what `tilesegd eval` gives model.pt2 on the held-out pair (the deployed path)
    from tilesegd.api import evaluate
    from tilesegd.training.split import make_split

    images = sorted((data / "images").glob("*.tif"))
    (val,) = make_split(images, "images", 0.2, 0)[1]
    for kind in ("images", "masks"):
        (tmp_path / kind).mkdir()
        (tmp_path / kind / images[val.index].name).symlink_to(data / kind / images[val.index].name)
    doc = evaluate(out / "model.pt2", tmp_path / "images", tmp_path / "masks", tmp_path / "ev",
                   data / "classes.csv", device="cpu")  # fmt: skip
    # (torch.export vs eager, other batch sizes: allow a few near-tie pixels to flip)
    assert np.abs(np.asarray(doc["confusion_matrix"]) - cm).sum() <= 4
    assert doc["miou"] == pytest.approx(float(best["val_miou"]), abs=1e-3)


def test_resume_matches_uninterrupted_run(
    data: Path, run: Path, tmp_path: Path, monkeypatch
) -> None:
    full = run
    calls = {"n": 0}
    real = loop.plot_curves

    def crash_after_first_epoch(history, path):
        calls["n"] += 1
        if calls["n"] == 1:
            raise KeyboardInterrupt  # simulated kill right after last.ckpt of epoch 1
        return real(history, path)

    monkeypatch.setattr(loop, "plot_curves", crash_after_first_epoch)
    with pytest.raises(KeyboardInterrupt):
        train(config(data, tmp_path / "cut"), progress=False)
    assert load_checkpoint(tmp_path / "cut" / "last.ckpt")[1]["epoch"] == 1
    resumed_cfg = resolve(
        TrainConfig,
        tmp_path / "cut" / "config.yaml",
        {"resume": str(tmp_path / "cut")},
        section="train",
    )
    cut = train(resumed_cfg, progress=False)
    a, sa = load_checkpoint(full / "last.ckpt")
    b, sb = load_checkpoint(cut / "last.ckpt")
    assert sb["epoch"] == 2
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-4)
    for ra, rb in zip(sa["history"], sb["history"], strict=True):
        assert ra["train_loss"] == pytest.approx(rb["train_loss"], abs=1e-5)
        assert ra["val_miou"] == pytest.approx(rb["val_miou"], abs=1e-4)


def test_resume_refuses_changed_settings(data: Path, run: Path) -> None:
    cfg = config(data, run, lr=0.5, resume=str(run))
    with pytest.raises(ConfigError, match="lr"):
        train(cfg, progress=False)


def test_binary_bce_dice_on_0_255_masks(tmp_path: Path) -> None:
    data = synthetic_pairs(tmp_path / "bin", n=2, binary=True)
    out = train(
        config(data, tmp_path / "run", loss="bce+dice", epochs=1, class_weights="balanced"),
        progress=False,
    )
    loaded = load_model(out / "model.pt2")
    assert [c.name for c in loaded.spec.classes] == ["background", "water"]
    assert loaded.spec.extra["binary"] is True
    assert loaded.module(torch.zeros(2, 3, 64, 64)).shape == (2, 2, 64, 64)
    assert loaded.module(torch.zeros(1, 3, 48, 80)).shape == (1, 2, 48, 80)


@pytest.mark.parametrize("loss", ["ce", "dice", "focal", "lovasz", "jaccard", "ce+0.5*dice"])
def test_losses_ignore_unlabelled_pixels(loss: str) -> None:
    terms = TrainConfig(loss=loss).loss_terms()
    fn = build_loss(terms, 3, False, np.array([1.0, 2.0, 0.5], np.float32))
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 8, 8, generator=g, requires_grad=True)
    y = torch.randint(0, 3, (2, 8, 8), generator=g)
    y[:, :4] = 255
    value = fn(logits, y)
    assert value.ndim == 0 and torch.isfinite(value)
    other = logits.detach().clone()
    other[:, :, :4] = torch.randn(2, 3, 4, 8, generator=g) * 10  # change ignored pixels only
    assert float(fn(other, y)) == pytest.approx(value.item(), rel=1e-5, abs=1e-6)
    value.backward()
    assert logits.grad[:, :, :4].abs().max() == 0


def test_bad_loss_and_binary_mismatch() -> None:
    with pytest.raises(ConfigError, match="unknown term"):
        TrainConfig(loss="ce+hinge").validate()
    with pytest.raises(ConfigError, match="two classes"):
        build_loss([(1.0, "bce")], 3, True, None)


def test_balanced_class_weights_median_frequency() -> None:
    w = class_weights("balanced", np.array([100, 300, 0, 600]))
    np.testing.assert_allclose(w, [3.0, 1.0, 3.0, 0.5])  # absent: the largest (more in
    # test_class_weights.py)


def test_encoder_weights_local_file_only(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    with pytest.raises(ConfigError, match="never downloads"):
        TrainConfig(encoder_weights="imagenet").validate()
    torch.manual_seed(1)
    src = build_model("Unet", "mobilenet_v2", 3, 2, 3, [16, 8, 8])
    f = tmp_path / "enc.safetensors"
    save_file({f"encoder.{k}": v.contiguous() for k, v in src.encoder.state_dict().items()}, f)
    torch.manual_seed(2)
    dst = build_model("Unet", "mobilenet_v2", 3, 2, 3, [16, 8, 8])
    load_encoder_weights(dst, f)
    for k, v in src.encoder.state_dict().items():
        torch.testing.assert_close(dst.encoder.state_dict()[k], v)
    with pytest.raises(ConfigError, match="not found"):
        load_encoder_weights(dst, tmp_path / "missing.pth")


def test_checkpoint_round_trip_without_pickle(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    state = {
        "a": torch.arange(3),
        "opt": {0: {"m": torch.ones(2)}},
        "rng": np.arange(4),
        "big": 2**70,
        "t": (1, "x", None),
    }
    save_checkpoint(tmp_path / "c.ckpt", {"w": torch.zeros(2, 2)}, state)
    model, st = load_checkpoint(tmp_path / "c.ckpt")
    assert model["w"].shape == (2, 2) and st["opt"][0]["m"].tolist() == [1.0, 1.0]
    assert st["big"] == 2**70 and st["rng"].tolist() == [0, 1, 2, 3] and st["t"] == [1, "x", None]
    raw = (tmp_path / "c.ckpt").read_bytes()
    header = json.loads(raw[8 : 8 + int.from_bytes(raw[:8], "little")])
    assert header["__metadata__"]["format"] == "tilesegd-ckpt/1"  # a plain safetensors file
    (tmp_path / "bad.ckpt").write_bytes(raw[:100])
    with pytest.raises(ModelFileError, match="bad.ckpt: unreadable checkpoint.*truncated"):
        load_checkpoint(tmp_path / "bad.ckpt")
    save_file({"w": torch.zeros(1)}, tmp_path / "foreign.ckpt")  # safetensors, not ours
    with pytest.raises(ModelFileError, match="foreign.ckpt: not a tilesegd checkpoint"):
        load_checkpoint(tmp_path / "foreign.ckpt")


def test_cli_train_and_errors(data: Path, tmp_path: Path) -> None:
    from tilesegd.cli.main import cli

    runner = CliRunner()
    yml = tmp_path / "tiny.yaml"
    yml.write_text(
        "train:\n  encoder_depth: 3\n  decoder_channels: [16, 8, 8]\n  val_loss_tiles: 1\n"
        "  epochs: 5\n  lr: 0.5\n"
    )
    args = ["-q", "train", "--images", str(data / "images"), "--masks", str(data / "masks"),
            "--classes", str(data / "classes.csv"), "--output", str(tmp_path / "run"),
            "--config", str(yml), "--arch", "Unet", "--encoder", "mobilenet_v2", "--epochs", "1",
            "--tile-size", "64", "--batch-size", "2", "--steps-per-epoch", "2", "--lr", "0.01",
            "--device", "cpu", "--seed", "3"]  # fmt: skip
    res = runner.invoke(cli, args)
    assert res.exit_code == 0, res.output
    saved = (tmp_path / "run" / "config.yaml").read_text()
    assert "epochs: 1" in saved and "lr: 0.01" in saved and "encoder_depth: 3" in saved
    assert load_model(tmp_path / "run" / "model.pt2").spec.multiple == 8
    assert f"model: {tmp_path / 'run' / 'model.pt2'}\n" in res.output
    bad = tmp_path / "bad.csv"
    bad.write_text("value,name,r,g,b\n1,soil,1,1,1\n2,grass,2,2,2\n3,water,3,3,3\n")
    res = runner.invoke(cli, args[:7] + [str(bad)] + args[8:])
    assert res.exit_code == 1
    assert "p0.tif" in res.output and "value(s) 0" in res.output
    res = runner.invoke(cli, ["train", "--images", str(data / "images")])
    assert res.exit_code == 1 and "--masks" in res.output


@pytest.mark.parametrize("arch", ["FPN", "DeepLabV3Plus", "UnetPlusPlus"])
def test_other_smp_architectures_build(arch: str) -> None:
    net = build_model(arch, "mobilenet_v2", 4, 5).eval()
    with torch.no_grad():
        assert net(torch.zeros(1, 4, 64, 64)).shape == (1, 5, 64, 64)
    with pytest.raises(ConfigError, match="cannot build"):
        build_model(arch, "no-such-encoder", 3, 2)


@pytest.mark.parametrize("name", ["drone_unet", "loveda_unet", "binary_buildings"])
def test_shipped_configs_resolve(name: str) -> None:
    path = Path(__file__).resolve().parents[2] / "configs" / f"{name}.yaml"
    cfg = resolve(TrainConfig, path, {"epochs": 1}, section="train")
    assert cfg.epochs == 1 and cfg.arch == "Unet"
    if name == "binary_buildings":
        assert [n for _, n in cfg.loss_terms()] == ["bce", "dice"]
    else:
        assert cfg.ignore in (["unlabeled"], ["nodata"])

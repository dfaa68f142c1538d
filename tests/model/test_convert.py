"""``--runtime auto`` on the CPU: TorchScript / torch.export files converted once to ONNX and
run by onnxruntime (tilesegd.model.convert), with torch as the fallback; the class ids agree
with torch's, the conversion is cached by the file's SHA-256, and run.json says which runtime
ran."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from click.testing import CliRunner
from conftest import TinyConvNet, make_raster, smooth_image, spec_for

import tilesegd.inference.build as build
import tilesegd.model.convert as convert
from tilesegd.cli.main import cli
from tilesegd.inference.build import load_network
from tilesegd.inference.options import EngineOptions
from tilesegd.model.model_file import file_sha256, save_model

pytest.importorskip("onnxruntime", reason="onnxruntime not installed: tilesegd[onnx]")

CPU = EngineOptions(device="cpu")


class WithFFT(torch.nn.Module):
    """A network with an operator the ONNX exporter lacks (``aten::fft_fft2``)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return y + torch.fft.fft2(y).real * 0


def unet_file(path: Path, classes: int = 5) -> Path:
    """A small segmentation-models-pytorch U-Net (random, seeded) as a model file."""
    import segmentation_models_pytorch as smp

    torch.manual_seed(3)
    net = smp.Unet("resnet18", encoder_weights=None, classes=classes, encoder_depth=3,
                   decoder_channels=(32, 16, 8))  # fmt: skip
    spec = spec_for(classes, multiple=8, tile_size=128, overlap=48)
    return save_model(net, path, spec)


def cache_files(cache: Path, model: Path) -> list[str]:
    folder = cache / file_sha256(model)
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


@pytest.mark.parametrize("suffix", [".ts", ".pt2"])
def test_a_model_file_runs_on_onnxruntime_converted_once(
    tmp_path: Path, session_model_cache: Path, monkeypatch, suffix: str
) -> None:
    model = save_model(TinyConvNet(3, 4), tmp_path / f"m{suffix}", spec_for(4, multiple=2))
    net = load_network(model, CPU)
    assert net.runtime == "onnxruntime" and type(net.module).__name__ == "OnnxModel"
    graph, report = convert.converted_paths(net.sha256)
    assert graph.is_file() and json.loads(report.read_text())["ok"]
    assert json.loads(report.read_text())["argmax_agreement"] >= convert.MIN_AGREEMENT

    def no_export(*a, **k):  # noqa: ANN002, ANN003
        raise AssertionError("converted again")

    monkeypatch.setattr(convert, "export_graph", no_export)
    with monkeypatch.context() as m:  # the cached graph: no conversion, not even a torch load
        m.setattr(build, "load_model", no_export)
        again = load_network(model, CPU)
    assert again.runtime == "onnxruntime" and again.sha256 == net.sha256
    assert again.spec == net.spec
    x = torch.rand(2, 3, 48, 40)  # another size than the check's
    torch_net = load_network(model, EngineOptions(device="cpu", runtime="eager")).module
    with torch.no_grad():
        assert torch.allclose(again.module(x), torch_net(x), atol=1e-4)


def test_eager_asks_for_torch_and_converts_nothing(tmp_path: Path, session_model_cache) -> None:
    model = save_model(TinyConvNet(3, 4), tmp_path / "m.ts", spec_for(4, multiple=2))
    net = load_network(model, EngineOptions(device="cpu", runtime="eager"))
    assert net.runtime == "eager" and isinstance(net.module, torch.nn.Module)
    assert cache_files(session_model_cache, model) == []


def test_without_onnxruntime_auto_runs_torch(tmp_path: Path, session_model_cache, monkeypatch):
    model = save_model(TinyConvNet(3, 4), tmp_path / "m.ts", spec_for(4, multiple=2))
    monkeypatch.setattr(convert, "onnxruntime_available", lambda: False)
    net = load_network(model, CPU)
    assert net.runtime == "eager" and isinstance(net.module, torch.nn.Module)
    assert cache_files(session_model_cache, model) == []


@pytest.mark.parametrize("runtime", ["auto", "onnxruntime"])
def test_a_network_that_does_not_convert_falls_back_to_torch_once(
    tmp_path: Path, monkeypatch, caplog, runtime: str
) -> None:
    model = save_model(WithFFT(), tmp_path / "fft.ts", spec_for(4, multiple=2))
    with caplog.at_level(logging.WARNING):
        net = load_network(model, EngineOptions(device="cpu", runtime=runtime))
    assert net.runtime == "eager" and isinstance(net.module, torch.nn.Module)
    assert "cannot run with onnxruntime" in caplog.text and "fft_fft2" in caplog.text
    graph, report = convert.converted_paths(net.sha256)
    assert not graph.exists() and json.loads(report.read_text())["ok"] is False
    monkeypatch.setattr(convert, "export_graph", lambda *a: pytest.fail("retried"))
    assert load_network(model, CPU).runtime == "eager"  # the failure is remembered


def test_a_graph_that_disagrees_with_torch_is_not_used(tmp_path: Path, monkeypatch) -> None:
    """The check is real: a converted graph whose class ids differ (here: its weights
    scrambled before the check) is refused."""
    model = save_model(TinyConvNet(3, 4), tmp_path / "m.ts", spec_for(4, multiple=2))
    real = convert.export_graph

    def scrambled(module, spec, dest):  # noqa: ANN001
        bad = TinyConvNet(3, 4).eval()
        with torch.no_grad():
            for p in bad.parameters():
                p.neg_()  # negated logits: other class ids
        real(bad, spec, dest)

    monkeypatch.setattr(convert, "export_graph", scrambled)
    net = load_network(model, CPU)
    assert net.runtime == "eager"
    report = json.loads(convert.converted_paths(net.sha256)[1].read_text())
    assert report["argmax_agreement"] < convert.MIN_AGREEMENT and "agree on" in report["reason"]


def scene(tmp_path: Path) -> Path:
    shared = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "scenes"
    sample = shared / "swissimage_1091-322_875x600.tif"
    folder = tmp_path / "scenes"
    folder.mkdir()
    if sample.is_file():
        with rasterio.open(sample) as src:
            img = src.read([1, 2, 3])[:, :400, :520]
    else:  # the samples are absent: a smooth synthetic image stands in
        img = smooth_image(400, 520)
    return make_raster(folder / "scene.tif", img)


def test_run_records_the_runtime_and_agrees_with_torch(tmp_path: Path) -> None:
    """``tilesegd run`` with the default runtime (onnxruntime here) gives the class ids torch
    gives on >= 99.99 % of the pixels of a real scene, with a real U-Net, and says so in
    run.json."""
    model = unet_file(tmp_path / "unet.ts")
    src = scene(tmp_path)
    masks = {}
    for runtime in ("auto", "eager"):
        out = tmp_path / runtime
        args = ["-q", "run", "-i", str(src.parent), "-m", str(model), "-o", str(out)]
        args += ["--runtime", runtime, "--device", "cpu", "--tile-size", "192"]
        r = CliRunner().invoke(cli, args)
        assert r.exit_code == 0, r.output
        doc = json.loads((out / "run.json").read_text())
        assert doc["runtime"] == ("onnxruntime" if runtime == "auto" else "eager")
        with rasterio.open(out / "scene" / "mask.tif") as ds:
            masks[runtime] = ds.read(1)
    agree = float(np.mean(masks["auto"] == masks["eager"]))
    assert agree >= 0.9999, agree
    assert len(np.unique(masks["eager"])) > 1  # a real mask, not one class

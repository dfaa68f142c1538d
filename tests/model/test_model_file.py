"""The model-file contract: TorchScript and torch.export archives with tilesegd.json."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest
import torch
from conftest import TinyConvNet, engine_from, spec_for

from tilesegd.errors import ModelFileError
from tilesegd.model.model_file import ModelSpec, load_model, read_spec, save_model


def test_round_trip_torchscript(tiny_model) -> None:
    path = tiny_model(num_classes=5, in_channels=4)
    loaded = load_model(path)
    assert loaded.kind == "torchscript"
    assert loaded.spec.num_classes == 5 and loaded.spec.in_channels == 4
    assert loaded.spec.bands == (1, 2, 3, 4)
    out = loaded.module(torch.zeros(2, 4, 32, 32))
    assert out.shape == (2, 5, 32, 32)


def test_torchscript_and_export_give_the_same_mask(tmp_path) -> None:
    net = TinyConvNet(3, 4)
    spec = spec_for(4, multiple=2, tile_size=64)
    ts = save_model(net, tmp_path / "m.ts", spec)
    pt2 = save_model(net, tmp_path / "m.pt2", spec)
    assert load_model(pt2).kind == "export"
    x = np.random.default_rng(0).integers(0, 255, (3, 3, 64, 64), dtype=np.uint8)
    v = np.ones((3, 64, 64), bool)
    a, _ = engine_from(ts).predict(x, v)
    b, _ = engine_from(pt2).predict(x, v)
    np.testing.assert_array_equal(a, b)


def _rewrite_meta(src, dst, meta: dict | None) -> None:
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for item in zin.infolist():
            if item.filename.endswith("tilesegd.json"):
                if meta is not None:
                    zout.writestr(item, json.dumps(meta))
            else:
                zout.writestr(item, zin.read(item.filename))


def test_missing_metadata_is_named(tiny_model, tmp_path) -> None:
    bad = tmp_path / "nometa.ts"
    _rewrite_meta(tiny_model(), bad, None)
    with pytest.raises(ModelFileError, match="no tilesegd.json"):
        load_model(bad)


def test_missing_fields_are_named(tiny_model, tmp_path) -> None:
    bad = tmp_path / "partial.ts"
    _rewrite_meta(tiny_model(), bad, {"bands": [1, 2, 3]})
    with pytest.raises(ModelFileError, match="classes, in_channels") as exc:
        read_spec(bad)
    assert str(bad) in str(exc.value)


@pytest.mark.parametrize(
    ("meta", "msg"),
    [
        ({"classes": [{"id": 1, "name": "a"}], "in_channels": 3}, "0..K-1"),
        ({"classes": ["a"], "in_channels": 3, "bands": [1, 2]}, "bands"),
        ({"classes": ["a"], "in_channels": 1, "std": [0.0]}, "std"),
        ({"classes": ["a"], "in_channels": 1, "mean": [1, 2]}, "mean and std"),
        ({"classes": [f"c{i}" for i in range(256)], "in_channels": 1}, "at most 255 classes"),
    ],
)
def test_invalid_fields(meta, msg) -> None:
    with pytest.raises(ModelFileError, match=msg):
        ModelSpec.from_dict(meta, "x.ts")


def test_class_count_disagreeing_with_metadata(tmp_path) -> None:
    net = TinyConvNet(3, 4)
    with pytest.raises(ModelFileError, match="lists 5 classes"):
        save_model(net, tmp_path / "m.ts", spec_for(5))  # refused at save time
    good = save_model(net, tmp_path / "m.ts", spec_for(4, multiple=2))
    bad = tmp_path / "bad.ts"
    meta = spec_for(6, multiple=2).to_dict()
    _rewrite_meta(good, bad, meta)
    eng = engine_from(bad)
    with pytest.raises(ModelFileError, match="6 classes"):
        eng.check((32, 32))


def test_missing_and_empty_files(tmp_path) -> None:
    with pytest.raises(ModelFileError, match="not found"):
        load_model(tmp_path / "nope.ts")
    (tmp_path / "empty.ts").write_bytes(b"")
    with pytest.raises(ModelFileError, match="empty"):
        load_model(tmp_path / "empty.ts")


def test_traced_smp_unet_runs(tmp_path) -> None:
    smp = pytest.importorskip("segmentation_models_pytorch")
    net = smp.Unet(
        "mobilenet_v2",
        encoder_weights=None,
        encoder_depth=3,
        decoder_channels=(32, 16, 8),
        in_channels=3,
        classes=3,
    )
    path = save_model(net, tmp_path / "unet.ts", spec_for(3, multiple=8, tile_size=64))
    eng = engine_from(path)
    ids, _ = eng.predict(np.zeros((1, 3, 64, 96), np.uint8), np.ones((1, 64, 96), bool))
    assert ids.shape == (1, 64, 96) and ids.max() < 3

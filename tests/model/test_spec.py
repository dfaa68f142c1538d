"""The model file's optional keys (issue 21 point 4): typed properties of ModelSpec, checked
once when the spec is read, written back exactly as read."""

from __future__ import annotations

import json
import math
import zipfile
from pathlib import Path

import pytest
from conftest import TinyConvNet

from tilesegd.errors import ModelFileError
from tilesegd.model.model_file import read_spec, save_model
from tilesegd.model.spec import META_NAME, ModelSpec

# what `tilesegd train` writes (tilesegd/training/setup.py), in its order
TRAINED = {
    "classes": [
        {"id": 0, "name": "background", "color": [0, 0, 0]},
        {"id": 1, "name": "building", "color": [230, 25, 75]},
    ],
    "in_channels": 3,
    "bands": [1, 2, 3],
    "input_scale": 255.0,
    "mean": [0.4, 0.5, 0.6],
    "std": [0.2, 0.25, 0.3],
    "multiple": 32,
    "tile_size": 256,
    "dtypes": ["uint8"],
    "arch": "Unet",
    "encoder": "mobilenet_v2",
    "encoder_depth": 5,
    "decoder_channels": [256, 128, 64, 32, 16],
    "binary": False,
    "ignored_classes": ["nodata"],
    "normalization": "dataset",
    "gsd": 0.3,
    "scale": 0.5,
    "overlap": 64,
}
# what an ONNX model with Deepness keys gives (tilesegd/model/onnx_meta.py), and the fewest keys
DEEPNESS = {
    "classes": ["background", "building"],
    "in_channels": 3,
    "input_scale": 255.0,
    "mean": None,
    "std": None,
    "multiple": 32,
    "tile_size": 512,
    "dtypes": ["uint8"],
    "output": "probabilities",
    "metadata": "deepness",
    "gsd": 0.25,
    "overlap": 64,
    "seg_thresh": 0.5,
    "max_tile_size": 512,
    "activation_bytes_per_pixel": 120.5,
}
MINIMAL = {"classes": ["a", "b", "c"], "in_channels": 1}
FIELDS = (  # ModelSpec's own fields, written first
    "classes",
    "in_channels",
    "bands",
    "input_scale",
    "mean",
    "std",
    "multiple",
    "tile_size",
)


@pytest.mark.parametrize("meta", [TRAINED, DEEPNESS, MINIMAL], ids=["trained", "onnx", "min"])
def test_optional_keys_read_as_typed_properties_and_written_back_as_read(meta) -> None:
    spec = ModelSpec.from_dict(json.loads(json.dumps(meta)), "m.ts")
    assert spec.gsd == meta.get("gsd") and spec.scale == meta.get("scale")
    assert spec.dtypes == (None if "dtypes" not in meta else tuple(meta["dtypes"]))
    assert spec.max_tile_size == meta.get("max_tile_size")
    assert spec.ignored_classes == tuple(meta.get("ignored_classes", ()))
    assert spec.output == meta.get("output", "logits")
    assert spec.seg_thresh == meta.get("seg_thresh", 0.5)
    assert spec.activation_bytes == meta.get("activation_bytes_per_pixel")
    assert spec.overlap == meta.get("overlap")
    text = json.dumps(spec.to_dict(), indent=1)
    # the fields first (defaults filled in), then every other key in the file's order, as set
    written = json.loads(text)
    assert list(written) == [*FIELDS, *(k for k in meta if k not in FIELDS)]
    assert all(written[k] == meta[k] for k in meta if k not in FIELDS)
    again = ModelSpec.from_dict(json.loads(text), "m.ts")
    assert json.dumps(again.to_dict(), indent=1) == text  # byte-identical round trip


BAD = [
    ("gsd", 0),
    ("gsd", -0.5),
    ("gsd", "0.3"),
    ("gsd", math.inf),
    ("gsd", True),
    ("scale", 0.0),
    ("scale", "half"),
    ("scale", [2]),
    ("dtypes", "uint8"),
    ("dtypes", [8]),
    ("max_tile_size", 0),
    ("max_tile_size", 255.5),
    ("max_tile_size", "512"),
    ("overlap", -2),
    ("overlap", 1.5),
    ("ignored_classes", "nodata"),
    ("output", "softmax"),
    ("seg_thresh", 1.5),
    ("seg_thresh", "0.5"),
    ("activation_bytes_per_pixel", -1),
]


@pytest.mark.parametrize(("key", "value"), BAD)
def test_a_bad_optional_key_is_an_error_naming_the_file_and_the_key(key, value) -> None:
    with pytest.raises(ModelFileError) as err:
        ModelSpec.from_dict({**MINIMAL, key: value}, "/models/m.ts")
    msg = str(err.value)
    assert msg.startswith(f"/models/m.ts: {META_NAME}: {key} must be ") and repr(value) in msg


def test_a_model_file_with_a_bad_key_fails_when_read_and_null_means_absent(tmp_path) -> None:
    good = ModelSpec.from_dict({**MINIMAL, "in_channels": 3, "gsd": None, "scale": 2})
    assert good.gsd is None and good.scale == 2
    bad = ModelSpec(good.classes, 3, (1, 2, 3), extra={"gsd": -1.0})  # built around the check
    path = save_model(TinyConvNet(3, 3), tmp_path / "m.ts", bad)
    with pytest.raises(ModelFileError, match=rf"{path}: {META_NAME}: gsd must be metres"):
        read_spec(path)


def test_saving_a_read_model_file_writes_the_same_tilesegd_json(tmp_path: Path) -> None:
    path = save_model(TinyConvNet(3, 2), tmp_path / "a.ts", ModelSpec.from_dict(TRAINED))
    again = save_model(TinyConvNet(3, 2), tmp_path / "b.ts", read_spec(path))

    def meta(p: Path) -> bytes:
        with zipfile.ZipFile(p) as zf:
            return zf.read(next(n for n in zf.namelist() if n.endswith(META_NAME)))

    assert meta(again) == meta(path)

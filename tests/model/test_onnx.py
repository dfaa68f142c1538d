"""ONNX model files: both metadata styles, ONNX vs TorchScript class ids through the pipeline,
one-channel (sigmoid) models, fixed input sizes, export with parity, and every bad file (each a
ModelFileError, exit 3 before any scene)."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import (
    TinyConvNet,
    engine_for,
    engine_from,
    examples,
    make_raster,
    smooth_image,
    spec_for,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from tilesegd.errors import ModelFileError
from tilesegd.inference.pipeline import predict_array
from tilesegd.model.model_file import DEFAULT_PALETTE, load_model, read_spec, save_model
from tilesegd.model.onnx_meta import binary_logits, to_logits
from tilesegd.model.onnx_model import onnx_providers

ort = pytest.importorskip("onnxruntime", reason="onnxruntime not installed: tilesegd[onnx]")
onnx = pytest.importorskip("onnx", reason="onnx not installed: pip install 'tilesegd[onnx]'")

MEAN, STD = [0.4, 0.5, 0.6], [0.2, 0.25, 0.3]


class Softmaxed(torch.nn.Module):
    """A Deepness-style network: softmax (or, for one channel, sigmoid) probabilities out."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.net(x)
        return torch.sigmoid(y) if y.shape[1] == 1 else torch.softmax(y, 1)


class Flat(torch.nn.Module):
    """A classifier-like output, (B, K): no per-pixel scores."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean((2, 3))


def to_onnx(
    net: torch.nn.Module,
    path: Path,
    props: dict[str, str],
    *,
    size: int | None = None,
    batch: int | None = None,
    in_ch: int = 3,
) -> Path:
    """torch.onnx.export ``net`` (dynamic batch / height / width unless fixed), then write
    ``props`` into the file's metadata_props with the onnx package."""
    axes = {} if batch else {0: "batch"}
    if not size:
        axes.update({2: "height", 3: "width"})
    x = torch.zeros(batch or 2, in_ch, size or 64, size or 64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation and tracer notes
        torch.onnx.export(
            net.eval(),
            (x,),
            str(path),
            input_names=["input"],
            output_names=["scores"],
            dynamic_axes={"input": axes, "scores": axes} if axes else None,
            opset_version=17,
            dynamo=False,
        )
    model = onnx.load(str(path))
    for key, value in props.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, str(path))
    return path


def deepness(**kw) -> dict[str, str]:
    """Deepness / GeoDeep metadata, each value JSON-encoded (a ``str`` value is kept raw)."""
    meta = {
        "model_type": "Segmentor",
        "class_names": {0: "soil", 1: "grass", 2: "water", 3: "road"},
        "resolution": 25,
        "tiles_size": 64,
        "tiles_overlap": 25,
        "standardization_mean": MEAN,
        "standardization_std": STD,
        **kw,
    }
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in meta.items() if v is not None}


def tilesegd_json(spec) -> dict[str, str]:
    return {"tilesegd.json": json.dumps(spec.to_dict())}


def tiles(n: int = 3, side: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 3, side, side), dtype=np.uint8), np.ones((n, side, side), bool)


def scene(h: int = 157, w: int = 203) -> tuple[np.ndarray, np.ndarray]:
    valid = np.ones((h, w), bool)
    valid[20:50, 30:90] = False  # a nodata patch
    return smooth_image(h, w, 3, seed=3), valid


# ---------------------------------------------------------------- metadata styles, parity


def test_tilesegd_json_onnx_gives_the_torchscript_class_ids(tmp_path: Path) -> None:
    net = TinyConvNet(3, 4, seed=1)
    spec = spec_for(4, multiple=2, tile_size=64, mean=MEAN, std=STD, overlap=16)
    ts = save_model(net, tmp_path / "m.ts", spec)
    path = to_onnx(net, tmp_path / "m.onnx", tilesegd_json(spec))
    assert read_spec(path) == spec and read_spec(path).overlap == 16
    loaded = load_model(path)
    assert loaded.kind == "onnx" and loaded.module.providers == ["CPUExecutionProvider"]
    image, valid = scene()
    a = predict_array(engine_from(path, batch_size=4), image, valid)
    b = predict_array(engine_from(ts, batch_size=4), image, valid)
    assert (a[~valid] == 255).all() and (a[valid] < 4).all()
    assert (a != b).mean() <= 1e-4  # float rounding may flip an exact near-tie, nothing more
    assert len(np.unique(a[valid])) > 1


@pytest.mark.parametrize(
    "style",
    ["json", "tile_size-key", "python-literal-names", "multi-head-list", "names-key"],
)
def test_deepness_keys_give_the_spec_and_the_torch_class_ids(tmp_path: Path, style: str) -> None:
    net = TinyConvNet(3, 4, seed=2)
    names = {0: "soil", 1: "grass", 2: "water", 3: "road"}
    kw: dict = {}
    if style == "tile_size-key":
        kw = {"tiles_size": None, "tile_size": 64}
    elif style == "python-literal-names":
        kw = {"class_names": str(names)}  # {0: 'soil', ...}: not JSON, Deepness accepts it
    elif style == "multi-head-list":
        kw = {"class_names": [names, {0: "other"}]}
    elif style == "names-key":
        kw = {"class_names": None, "names": names, "model_type": None}
    path = to_onnx(Softmaxed(net), tmp_path / "d.onnx", deepness(**kw))
    spec = read_spec(path)
    assert [c.name for c in spec.classes] == ["soil", "grass", "water", "road"]
    assert [c.color for c in spec.classes] == DEFAULT_PALETTE[:4]
    assert (spec.in_channels, spec.input_scale, spec.tile_size) == (3, 255.0, 64)
    assert spec.mean == pytest.approx(MEAN) and spec.std == pytest.approx(STD)
    assert spec.overlap == 16 and spec.extra["gsd"] == pytest.approx(0.25)
    assert spec.extra["dtypes"] == ["uint8"] and spec.extra["output"] == "probabilities"
    image, valid = scene()
    got = predict_array(engine_from(path, batch_size=4), image, valid)
    want = predict_array(engine_for(net, spec, batch_size=4), image, valid)
    assert (got != want).mean() <= 1e-4
    # softmax of the runtime's logits gives the model's probabilities back (--save-probs)
    x, v = tiles()
    eng = engine_from(path, batch_size=4, save_probs=True)
    _, probs = eng.predict(x, v)
    _, ref = engine_for(net, spec, batch_size=4, save_probs=True).predict(x, v)
    np.testing.assert_allclose(probs.astype(np.float32), ref.astype(np.float32), atol=2e-3)


def test_fixed_input_size_and_batch_pad_and_chunk(tmp_path: Path) -> None:
    net = TinyConvNet(3, 4, seed=3)
    path = to_onnx(Softmaxed(net), tmp_path / "f.onnx", deepness(tiles_size=None), size=64, batch=1)
    spec = read_spec(path)
    assert spec.tile_size == 64 and spec.multiple == 32  # from the graph's input shape
    runtime = load_model(path).module
    x = torch.rand(3, 3, 32, 48)  # batch 3 through a batch-1 graph; smaller than 64x64
    padded = torch.nn.functional.pad(x, (0, 16, 0, 32))  # zero-padded bottom / right
    with torch.no_grad():
        want = torch.log_softmax(net(padded), 1)[:, :, :32, :48]
        got = runtime(x)  # the runtime takes normalised input, like any network
    assert got.shape == (3, 4, 32, 48)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    with pytest.raises(ModelFileError, match=r"64x64 inputs only.*--tile-size 64"):
        runtime(torch.rand(1, 3, 96, 64))
    image, valid = scene(100, 90)  # every tile is 64x64: the same ids as torch
    got_ids = predict_array(engine_from(path, batch_size=4), image, valid)
    want_ids = predict_array(engine_for(net, spec, batch_size=4), image, valid)
    assert (got_ids != want_ids).mean() <= 1e-4
    eng = engine_from(path, batch_size=4)
    with pytest.raises(ModelFileError, match="--tile-size 64"):  # before any scene
        eng.check((128, 128))


# ---------------------------------------------------------------- one-channel models


def test_sigmoid_model_with_seg_thresh(tmp_path: Path) -> None:
    net = TinyConvNet(3, 1, seed=4)
    t = 0.3
    path = to_onnx(
        Softmaxed(net),
        tmp_path / "s.onnx",
        deepness(
            class_names={0: "building"},
            seg_thresh=t,
            standardization_mean=None,
            standardization_std=None,
        ),
    )
    spec = read_spec(path)
    assert [c.name for c in spec.classes] == ["background", "building"]
    assert spec.extra["seg_thresh"] == t and spec.mean == (0.0, 0.0, 0.0)
    x, v = tiles(4)
    ids, probs = engine_from(path, batch_size=4, save_probs=True).predict(x, v)
    with torch.no_grad():
        p = torch.sigmoid(net(torch.from_numpy(x).float() / 255)).numpy()[:, 0].astype(np.float64)
    clear = np.abs(p - t) > 1e-5  # float rounding can only move pixels at the threshold
    assert clear.mean() > 0.99 and 0.05 < (p > t).mean() < 0.95
    np.testing.assert_array_equal(ids[clear], (p > t)[clear].astype(np.uint8))
    recentred = p * (1 - t) / (p * (1 - t) + t * (1 - p))  # documented in binary_logits
    np.testing.assert_allclose(probs[:, 1].astype(np.float64), recentred, atol=2e-3)


def test_one_channel_logit_model_in_tilesegd_json(tmp_path: Path) -> None:
    net = TinyConvNet(3, 1, seed=5)
    spec = spec_for(2, multiple=2, tile_size=64, seg_thresh=0.7)  # output: logits (default)
    path = to_onnx(net, tmp_path / "l.onnx", tilesegd_json(spec))
    x, v = tiles(2)
    ids, _ = engine_from(path, batch_size=2).predict(x, v)
    with torch.no_grad():
        z = net(torch.from_numpy(x).float() / 255).numpy()[:, 0].astype(np.float64)
    p = 1 / (1 + np.exp(-z))
    clear = np.abs(z - math.log(0.7 / 0.3)) > 1e-4
    np.testing.assert_array_equal(ids[clear], (p > 0.7)[clear].astype(np.uint8))


probs_st = st.lists(
    st.one_of(st.floats(0, 1, width=32), st.sampled_from([0.0, 1.0, 0.25, 0.5, 0.7])),
    min_size=1,
    max_size=40,
)


@settings(max_examples=examples(60), deadline=None)
@given(p=probs_st, t=st.one_of(st.floats(0, 1), st.sampled_from([0.0, 1.0, 0.25, 0.5, 0.7])))
def test_binary_logits_argmax_is_p_above_threshold(p: list[float], t: float) -> None:
    v = torch.tensor(p, dtype=torch.float32).view(1, 1, 1, -1)
    logits = binary_logits(v, t, probabilities=True)
    ids = logits.max(1).indices[0, 0].numpy()  # the engine's argmax (first max on ties)
    want = np.asarray(v[0, 0, 0], np.float64) > t
    np.testing.assert_array_equal(ids, want)
    assert torch.isfinite(torch.softmax(logits, 1)).all()


@settings(max_examples=examples(60), deadline=None)
@given(
    z=st.lists(st.floats(-30, 30, width=32), min_size=1, max_size=40),
    t=st.floats(0, 1),
)
def test_binary_logits_of_logits_is_sigmoid_above_threshold(z: list[float], t: float) -> None:
    v = torch.tensor(z, dtype=torch.float32).view(1, 1, 1, -1)
    ids = binary_logits(v, t, probabilities=False).max(1).indices[0, 0].numpy()
    zz = np.asarray(v[0, 0, 0], np.float64)
    with np.errstate(divide="ignore"):
        want = zz > (np.log(t) - np.log1p(-t) if 0 < t < 1 else (-np.inf if t <= 0 else np.inf))
    np.testing.assert_array_equal(ids, want)


@settings(max_examples=examples(40), deadline=None)
@given(k=st.integers(2, 6), seed=st.integers(0, 10_000))
def test_probabilities_become_log_probabilities(k: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    p = torch.softmax(torch.randn(2, k, 3, 5, generator=g) * 5, 1)
    logits = to_logits(p, k, "probabilities", 0.5)
    assert torch.equal(logits.max(1).indices, p.max(1).indices)
    torch.testing.assert_close(torch.softmax(logits, 1), p, atol=1e-6, rtol=1e-5)


# ---------------------------------------------------------------- loading details


def test_read_spec_builds_no_session(tmp_path: Path, monkeypatch) -> None:
    path = to_onnx(Softmaxed(TinyConvNet(3, 4)), tmp_path / "r.onnx", deepness())

    def boom(*a, **k):
        raise AssertionError("read_spec must not build a session")

    monkeypatch.setattr(ort, "InferenceSession", boom)
    assert read_spec(path).num_classes == 4


def test_providers_for_each_device() -> None:
    assert onnx_providers(torch.device("cpu"), ["CUDAExecutionProvider"]) == [
        "CPUExecutionProvider"
    ]
    avail = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert onnx_providers(torch.device("cuda:1"), avail) == [
        ("TensorrtExecutionProvider", {"device_id": 1}),
        ("CUDAExecutionProvider", {"device_id": 1}),
        "CPUExecutionProvider",
    ]
    assert onnx_providers(torch.device("cuda"), ["CPUExecutionProvider"]) == [
        "CPUExecutionProvider"
    ]


def test_missing_onnxruntime_is_a_clear_error(tmp_path: Path, monkeypatch) -> None:
    import importlib.util

    path = to_onnx(Softmaxed(TinyConvNet(3, 4)), tmp_path / "r.onnx", deepness())
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: None if n == "onnxruntime" else real(n, *a)
    )
    with pytest.raises(
        ModelFileError, match=r"onnxruntime package: pip install 'tilesegd\[onnx\]'"
    ):
        load_model(path)


def test_external_data_beside_the_model_loads(tmp_path: Path) -> None:
    net = TinyConvNet(3, 4, seed=6)
    path = to_onnx(Softmaxed(net), tmp_path / "e.onnx", deepness())
    model = onnx.load(str(path))
    onnx.save_model(
        model, str(path), save_as_external_data=True, location="e.bin", size_threshold=0
    )
    assert (tmp_path / "e.bin").is_file()
    x, v = tiles(2)
    got, _ = engine_from(path, batch_size=2).predict(x, v)
    want, _ = engine_for(net, read_spec(path), batch_size=2).predict(x, v)
    assert (got != want).mean() <= 1e-4


# ---------------------------------------------------------------- bad files


def _external(tmp_path: Path, location: str) -> Path:
    """A model whose weights live in external data at ``location`` (as written in the file)."""
    (tmp_path / "m").mkdir(exist_ok=True)
    path = to_onnx(Softmaxed(TinyConvNet(3, 4)), tmp_path / "m" / "x.onnx", deepness())
    model = onnx.load(str(path))
    onnx.save_model(
        model, str(path), save_as_external_data=True, location="w.bin", size_threshold=0
    )
    model = onnx.load(str(path), load_external_data=False)
    for t in model.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = location
    onnx.save(model, str(path))
    return path


def bad_file(tmp_path: Path, kind: str) -> tuple[Path, str]:
    """A bad ``.onnx`` file of ``kind`` and the message it must give."""
    good = lambda name, net=None, props=None, **kw: to_onnx(  # noqa: E731
        net or Softmaxed(TinyConvNet(3, 4)),
        tmp_path / name,
        deepness() if props is None else props,
        **kw,
    )
    if kind.startswith("truncated"):
        data = good("t.onnx").read_bytes()
        cut = {"truncated-half": len(data) // 2, "truncated-end": len(data) - 3}[kind]
        p = tmp_path / f"{kind}.onnx"
        p.write_bytes(data[:cut])
        return p, "truncated"
    if kind == "garbage":
        p = tmp_path / "g.onnx"
        p.write_bytes(b"\x08\x07" + bytes(range(256)) * 8)
        return p, "truncated or corrupt"
    if kind == "detector":
        return good("d.onnx", props=deepness(model_type="Detector")), "Segmentor"
    if kind == "output-rank":
        return good(
            "o.onnx", net=Flat(), props=deepness(class_names={0: "a", 1: "b", 2: "c"})
        ), "per-pixel"
    if kind == "class-count":
        spec = spec_for(3, multiple=2, tile_size=64)  # the graph outputs 4 channels
        return good(
            "c.onnx", net=TinyConvNet(3, 4), props=tilesegd_json(spec)
        ), "4 channels.*3 classes"
    if kind == "class-count-deepness":
        return good("cd.onnx", props=deepness(class_names={0: "a", 1: "b", 2: "c"})), "4 channels"
    if kind == "no-input-size":
        return good("n.onnx", props=deepness(tiles_size=None)), "tile_size"
    if kind == "no-metadata":
        return good("nm.onnx", props={}), "neither tilesegd.json nor Deepness"
    if kind == "ext-parent":
        (tmp_path / "w.bin").write_bytes(b"\0" * 16)
        return _external(tmp_path, "../w.bin"), "not a relative path inside the model's folder"
    if kind == "ext-absolute":
        return _external(tmp_path, str(tmp_path / "m" / "w.bin")), "not a relative path inside"
    if kind == "ext-missing":
        p = _external(tmp_path, "w.bin")
        (tmp_path / "m" / "w.bin").unlink()
        return p, "missing"
    raise AssertionError(kind)


BAD = [
    "truncated-half",
    "truncated-end",
    "garbage",
    "detector",
    "output-rank",
    "class-count",
    "class-count-deepness",
    "no-input-size",
    "no-metadata",
    "ext-parent",
    "ext-absolute",
    "ext-missing",
]


@pytest.mark.parametrize("kind", BAD)
def test_bad_onnx_files_are_model_file_errors(tmp_path: Path, kind: str) -> None:
    path, message = bad_file(tmp_path, kind)
    with pytest.raises(ModelFileError, match=message) as info:
        read_spec(path)
    assert str(path) in str(info.value) and info.value.exit_code == 3
    with pytest.raises(ModelFileError, match=message):
        load_model(path)


@pytest.mark.parametrize("kind", ["truncated-half", "detector", "class-count", "ext-parent"])
def test_run_exits_3_before_any_scene(tmp_path: Path, kind: str) -> None:
    from tilesegd.cli.main import cli

    path, _ = bad_file(tmp_path, kind)
    (tmp_path / "in").mkdir()
    make_raster(tmp_path / "in" / "a.tif", smooth_image(40, 50))
    out = tmp_path / "out"
    r = CliRunner().invoke(
        cli, ["-q", "run", "-i", str(tmp_path / "in"), "-m", str(path), "-o", str(out)]
    )
    assert r.exit_code == 3, r.output
    assert str(path) in r.output and "Traceback" not in r.output
    assert not (out / "a").exists()


# ---------------------------------------------------------------- export


def checkpoint(path: Path, *, binary: bool = False, input_scale: float = 255.0, **kw) -> Path:
    """A random-init smp Unet checkpoint (no training), as `tilesegd train` writes them."""
    from tilesegd.training.checkpoint import save_checkpoint
    from tilesegd.training.loop import network_from_state

    names = ["background", "building"] if binary else ["soil", "grass", "water"]
    spec = {
        "classes": [{"id": i, "name": n} for i, n in enumerate(names)],
        "in_channels": 3,
        "input_scale": input_scale,
        "mean": MEAN,
        "std": STD,
        "multiple": 8,
        "tile_size": 64,
        "overlap": 20,
        "dtypes": ["uint8" if input_scale == 255 else "uint16"],
        "arch": "Unet",
        "encoder": "mobilenet_v2",
        "encoder_depth": 3,
        "decoder_channels": [16, 8, 8],
        "binary": binary,
        **kw,
    }
    torch.manual_seed(0)
    net = network_from_state(spec)
    inner = net.net if binary else net
    return save_checkpoint(path, inner.state_dict(), {"spec": spec, "epoch": 1, "best_miou": 0.5})


def _eager(ckpt: Path) -> tuple[torch.nn.Module, dict]:
    from tilesegd.training.checkpoint import load_checkpoint
    from tilesegd.training.loop import network_from_state

    state, st_ = load_checkpoint(ckpt)
    return network_from_state(st_["spec"], state).eval(), st_["spec"]


@pytest.mark.parametrize("case", ["uint8", "uint16-binary-gsd"], ids=["uint8", "uint16-binary-gsd"])
def test_export_onnx_parity_and_interop_metadata(tmp_path: Path, case: str) -> None:
    from tilesegd.training.export import export_model

    kw = {"input_scale": 65535.0, "binary": True, "gsd": 0.05} if case != "uint8" else {}
    ckpt = checkpoint(tmp_path / "best.ckpt", **kw)
    report: dict = {}
    out = export_model(ckpt, tmp_path / "m.onnx", "onnx", tile_size=64, report=report)
    assert report["diff_units"] == "probability" and report["dynamic_size"] is False
    assert report["max_abs_diff"] <= 1e-4 and report["argmax_agreement"] >= 0.999
    model = onnx.load(str(out))
    props = {p.key: p.value for p in model.metadata_props}
    dims = [d.dim_value or d.dim_param for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 3, 64, 64]  # Deepness / GeoDeep read the tile size from here
    names = ["background", "building"] if kw else ["soil", "grass", "water"]
    assert json.loads(props["class_names"]) == {str(i): n for i, n in enumerate(names)}
    assert json.loads(props["model_type"]) == "Segmentor"
    assert json.loads(props["tile_size"]) == json.loads(props["tiles_size"]) == 64
    assert json.loads(props["tiles_overlap"]) == 32  # ceil(100 * 20 / 64): keeps >= 20 px
    assert json.loads(props["standardization_mean"]) == [0.0, 0.0, 0.0]
    assert json.loads(props["seg_thresh"]) == 0.0 and json.loads(props["seg_small_segment"]) == 0
    assert ("resolution" in props) == bool(kw) and json.loads(props.get("resolution", "5")) == 5
    # what Deepness / GeoDeep do: uint8 / 255 -> session -> (zero below seg_thresh) argmax
    net, spec = _eager(ckpt)
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 256, (2, 3, 64, 64)).astype(np.float32)
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    probs = sess.run(None, {sess.get_inputs()[0].name: raw / 255})[0]
    mean, std = np.reshape(MEAN, (1, 3, 1, 1)), np.reshape(STD, (1, 3, 1, 1))
    with torch.no_grad():
        want = net(torch.from_numpy(((raw / spec["input_scale"] - mean) / std).astype(np.float32)))
    np.testing.assert_allclose(probs, torch.softmax(want, 1).numpy(), atol=1e-4)
    # tilesegd reads the same file through tilesegd.json, or through the Deepness keys alone
    via_json = read_spec(out)
    assert via_json.extra["output"] == "probabilities" and via_json.input_scale == 255.0
    assert via_json.extra["normalization_in_graph"]["input_scale"] == spec["input_scale"]
    del model.metadata_props[[p.key for p in model.metadata_props].index("tilesegd.json")]
    onnx.save(model, str(tmp_path / "deepness_only.onnx"))
    via_keys = read_spec(tmp_path / "deepness_only.onnx")
    assert [c.name for c in via_keys.classes] == [c.name for c in via_json.classes]
    assert (via_keys.tile_size, via_keys.overlap) == (64, 20)
    assert via_keys.extra.get("gsd") == via_json.extra.get("gsd")
    x, v = tiles(2)
    a, _ = engine_from(out, batch_size=2).predict(x, v)
    b, _ = engine_from(tmp_path / "deepness_only.onnx", batch_size=2).predict(x, v)
    np.testing.assert_array_equal(a, b)


def test_export_onnx_dynamic_size_and_cli(tmp_path: Path) -> None:
    from tilesegd.cli.main import cli

    ckpt = checkpoint(tmp_path / "best.ckpt")
    out = tmp_path / "dyn.onnx"
    r = CliRunner().invoke(
        cli, ["export", str(ckpt), "-o", str(out), "--format", "onnx", "--dynamic-size"]
    )
    assert r.exit_code == 0, r.output
    assert "max abs probability diff" in r.output and "argmax agreement 100.000%" in r.output
    model = onnx.load(str(out))
    dims = [d.dim_value or d.dim_param for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 3, "height", "width"]
    net, _ = _eager(ckpt)
    x = torch.rand(2, 3, 96, 136)  # another size, normalised input
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    with torch.no_grad():
        got = load_model(out).module(x).exp()
        want = torch.softmax(net((x - mean) / std), 1)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    assert not list(tmp_path.glob(".*.tmp*"))  # no temporary file left behind
    r = CliRunner().invoke(cli, ["export", str(ckpt), "-o", str(out), "--dynamic-size"])
    assert r.exit_code == 1 and "--dynamic-size applies to --format onnx" in r.output


@pytest.mark.parametrize("dynamic", [True, False], ids=["dynamic-size", "fixed-size"])
def test_exported_onnx_sees_nodata_and_borders_like_the_torchscript_file(tmp_path, dynamic):
    """The ONNX graph normalises inside itself: nodata and tile padding must reach it as the
    value its normalisation maps to 0, as they reach the TorchScript network (issue 16: >=
    99.99 % agreement on the samples)."""
    from tilesegd.inference.pipeline import predict_array
    from tilesegd.training.export import export_model

    ckpt = checkpoint(tmp_path / "best.ckpt")
    ts = export_model(ckpt, tmp_path / "m.ts", "torchscript")
    kw = {} if dynamic else {"tile_size": 64}
    ox = export_model(ckpt, tmp_path / "m.onnx", "onnx", dynamic_size=dynamic, **kw)
    rng = np.random.default_rng(4)
    img = rng.integers(0, 256, (3, 150, 170)).astype(np.uint8)
    valid = np.ones((150, 170), bool)
    valid[:, :40] = False  # a nodata collar
    valid[100:, 120:] = False
    # a fixed-size graph caps the tile at its input: compare at the same tile grid
    kw = {} if dynamic else {"tile_size": 64}
    a = predict_array(engine_from(ts, batch_size=2), img, valid, **kw)
    b = predict_array(engine_from(ox, batch_size=2), img, valid, **kw)
    assert (a == b).mean() >= 0.9999, (a != b).sum()
    small = img[:, :50, :45]  # smaller than the 64-px fixed input: padded like nodata
    a = predict_array(engine_from(ts, batch_size=2), small)
    b = predict_array(engine_from(ox, batch_size=2), small)
    assert (a == b).mean() >= (0.9999 if dynamic else 0.95)


def test_a_fixed_size_export_takes_the_tile_that_runs_fewest_pixels(tmp_path: Path) -> None:
    """Deepness and GeoDeep run the graph's one input size: ``export --format onnx`` sizes it
    by the default rule for a large scene (deploy_tile), not at the 64-px training tile, which
    with a 20-px overlap would run 4.4x an 8192-px scene's pixels."""
    from tilesegd.inference.geometry import DEPLOY_SCENE, deploy_tile, pixels_run
    from tilesegd.training.export import export_model

    ckpt = checkpoint(tmp_path / "best.ckpt", multiple=32, overlap=96, tile_size=256)
    out = export_model(ckpt, tmp_path / "m.onnx", "onnx")
    dims = [d.dim_value for d in onnx.load(str(out)).graph.input[0].type.tensor_type.shape.dim]
    spec = read_spec(out)
    tile = deploy_tile(spec)
    assert dims[2:] == [tile, tile] and spec.tile_size == tile and tile > 256
    n = DEPLOY_SCENE
    assert pixels_run(n, n, tile, 96, 32) < pixels_run(n, n, 256, 96, 32) / 2
    assert pixels_run(n, n, tile, 96, 32) == min(
        pixels_run(n, n, t, 96, 32) for t in range(192, tile + 1, 32)
    )

"""Engine: out-of-memory halving (simulated on the CPU), batch padding, runtimes, stage times."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import TinyConvNet, engine_for, smooth_image, spec_for

from tilesegd.errors import ConfigError, DeviceError, ModelFileError
from tilesegd.inference.accel import resolve_runtime
from tilesegd.inference.engine import Engine
from tilesegd.inference.pipeline import predict_array


class FlakyNet(torch.nn.Module):
    """Wraps a network; raises CUDA out-of-memory for batches larger than ``limit`` tiles and
    records the batch size of every call (successful or not)."""

    def __init__(self, net: torch.nn.Module, limit: int) -> None:
        super().__init__()
        self.net = net
        self.limit = limit
        self.sizes: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.sizes.append(x.shape[0])
        if x.shape[0] > self.limit:
            raise torch.cuda.OutOfMemoryError(
                "CUDA out of memory. Tried to allocate 2.00 GiB (simulated)"
            )
        return self.net(x)


def _engine(batch_size: int, **kw) -> Engine:
    return engine_for(TinyConvNet(3, 5), spec_for(5, multiple=2), batch_size=batch_size, **kw)


def _tiles(n: int, side: int = 48, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    x = np.stack([smooth_image(side, side, 3, seed=seed + i) for i in range(n)])
    valid = np.ones((n, side, side), bool)
    valid[0, :5] = False  # some nodata
    return x, valid


def test_oom_halves_batch_and_output_is_identical(monkeypatch: pytest.MonkeyPatch) -> None:
    x, valid = _tiles(11)
    ref = _engine(2)  # what the engine must converge to: calls of 2 tiles
    want, _ = ref.predict(x, valid)

    eng = _engine(8)
    flaky = FlakyNet(eng._net, limit=2)
    monkeypatch.setattr(eng, "_net", flaky)
    got, _ = eng.predict(x, valid)

    assert eng.batch_size == 2
    assert eng.oom_retries == 2  # 8 -> 4 -> 2
    assert flaky.sizes[:2] == [8, 4]  # the failed attempts
    assert set(flaky.sizes[2:]) == {2}  # then only 2-tile calls (the last one padded)
    np.testing.assert_array_equal(got, want)
    assert (got[0, :5] == want[0, :5]).all()

    # later batches start at the reduced size: no more failures
    before = len(flaky.sizes)
    eng.predict(x[:4], valid[:4])
    assert flaky.sizes[before:] == [2, 2]


def test_oom_in_the_pipeline_gives_the_same_mask(monkeypatch: pytest.MonkeyPatch) -> None:
    img = smooth_image(150, 170, 3, seed=3)
    want = predict_array(_engine(2), img, tile_size=48, overlap=8, block_size=96)
    eng = _engine(8)
    monkeypatch.setattr(eng, "_net", FlakyNet(eng._net, limit=3))
    got = predict_array(eng, img, tile_size=48, overlap=8, block_size=96)
    assert eng.batch_size == 2 and eng.oom_retries == 2
    np.testing.assert_array_equal(got, want)


def test_oom_for_one_tile_is_a_device_error(monkeypatch: pytest.MonkeyPatch) -> None:
    eng = _engine(4)
    monkeypatch.setattr(eng, "_net", FlakyNet(eng._net, limit=0))
    x, valid = _tiles(3)
    with pytest.raises(DeviceError, match="out of memory even for one 48x48 tile"):
        eng.predict(x, valid)


def test_other_runtime_errors_are_not_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    eng = _engine(4)

    def broken(x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("shape mismatch in layer 3")

    monkeypatch.setattr(eng, "_net", broken)
    x, valid = _tiles(3)
    with pytest.raises(ModelFileError, match="shape mismatch"):  # a new shape: said clearly
        eng.predict(x, valid)
    assert eng.batch_size == 4 and eng.oom_retries == 0
    eng._checked.add((x.shape[2], x.shape[3]))  # a shape that ran before: raised as it is
    with pytest.raises(RuntimeError, match="shape mismatch"):
        eng.predict(x, valid)
    assert eng.batch_size == 4 and eng.oom_retries == 0


def test_ids_do_not_depend_on_batch_mates() -> None:
    eng = _engine(4)
    x, valid = _tiles(3)
    together, _ = eng.predict(x, valid)
    for i in range(3):
        alone, _ = eng.predict(x[i : i + 1], valid[i : i + 1])
        np.testing.assert_array_equal(alone[0], together[i])


def test_class_ids_are_the_first_maximum() -> None:
    """max().indices replaced argmax: same ids, ties resolved to the lowest class."""

    class Fixed(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            b, _, h, w = x.shape
            logits = torch.zeros(b, 4, h, w)
            logits[:, 2, : h // 2] = 1.0  # class 2 wins in the top half
            logits[:, 3, : h // 2] = 1.0  # ... tied with class 3: the first wins
            return logits

    eng = engine_for(Fixed(), spec_for(4, multiple=1), batch_size=2)
    ids, _ = eng.predict(*_tiles(1, side=8))
    assert (ids[0, :4] == 2).all() and (ids[0, 4:] == 0).all()


def test_probabilities_and_stage_times() -> None:
    eng = _engine(2, save_probs=True)
    x, valid = _tiles(3)
    ids, probs = eng.predict(x, valid, core=(4, 6, 40, 30))
    assert ids.shape == (3, 40, 30) and ids.dtype == np.uint8
    assert probs.shape == (3, 5, 40, 30) and probs.dtype == np.float16
    np.testing.assert_allclose(probs.astype(np.float32).sum(1), 1.0, atol=5e-3)
    np.testing.assert_array_equal(probs.argmax(1), ids)
    assert eng.times.infer > 0 and eng.times.h2d > 0
    assert eng.calls == 1 and eng.tiles == 3


def test_runtime_resolution() -> None:
    cpu = torch.device("cpu")
    assert resolve_runtime("auto", cpu) == "eager"
    assert resolve_runtime("eager", cpu) == "eager"
    with pytest.raises(DeviceError, match="needs a CUDA device"):
        resolve_runtime("cudagraph", cpu)
    with pytest.raises(DeviceError, match="needs a CUDA device"):
        resolve_runtime("tensorrt", cpu)
    with pytest.raises(ConfigError, match="runtime must be one of"):
        resolve_runtime("onnx", cpu)
    with pytest.raises(DeviceError):
        _engine(2, runtime="cudagraph")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("runtime", ["eager", "cudagraph"])
def test_cuda_runtimes_match_the_cpu(runtime: str) -> None:
    x, valid = _tiles(5)
    want, _ = _engine(2).predict(x, valid)
    eng = engine_for(
        TinyConvNet(3, 5),
        spec_for(5, multiple=2),
        device="cuda",
        precision="fp32",
        batch_size=2,
        runtime=runtime,
    )
    for _ in range(2):  # the second pass replays the captured graphs
        got, _ = eng.predict(x, valid)
        assert (got == want).mean() > 0.999
    assert eng.times.h2d > 0 and eng.times.infer > 0


class LayoutProbe(torch.nn.Module):
    """Wraps a network and records whether each input was channels-last (NHWC) in memory;
    with ``flatten_view`` it first ``view()``s the input as (B, C*H*W), which NHWC strides
    cannot satisfy (as networks written for NCHW only may do)."""

    def __init__(self, net: torch.nn.Module, flatten_view: bool = False) -> None:
        super().__init__()
        self.net = net
        self.flatten_view = flatten_view
        self.nhwc: list[bool] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.nhwc.append(
            x.shape[1] > 1
            and x.is_contiguous(memory_format=torch.channels_last)
            and not x.is_contiguous()
        )
        if self.flatten_view:
            b, c, h, w = x.shape
            x = x.view(b, c * h * w).view(b, c, h, w)
        return self.net(x)


def test_cpu_feeds_nhwc_and_falls_back_to_nchw_for_networks_that_need_it() -> None:
    x, valid = _tiles(5)
    want, _ = engine_for(TinyConvNet(3, 5), spec_for(5, multiple=2), batch_size=4).predict(x, valid)

    probe = LayoutProbe(TinyConvNet(3, 5))
    eng = engine_for(probe, spec_for(5, multiple=2), batch_size=4)
    got, _ = eng.predict(x, valid)
    assert probe.nhwc[-2:] == [True, True]  # the two batch calls ran on NHWC input
    np.testing.assert_array_equal(got, want)

    strict = LayoutProbe(TinyConvNet(3, 5), flatten_view=True)
    eng = engine_for(strict, spec_for(5, multiple=2), batch_size=4)
    got, _ = eng.predict(x, valid)  # NHWC fails in check(): NCHW from then on, no error
    assert strict.nhwc[0] is True and not any(strict.nhwc[1:])
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("channels_last", [True, False])
def test_normalisation_matches_the_formula_and_zeroes_nodata(channels_last: bool) -> None:
    spec = spec_for(3, multiple=2)
    eng = engine_for(TinyConvNet(3, 3), spec, batch_size=2)
    eng._channels_last = channels_last
    x, valid = _tiles(2, side=20)
    scale = np.float32(spec.input_scale)
    mean = np.asarray(spec.mean, np.float32).reshape(1, -1, 1, 1)
    std = np.asarray(spec.std, np.float32).reshape(1, -1, 1, 1)
    ref = (x.astype(np.float32) / scale - mean) / std
    for v in (valid, np.ones_like(valid)):  # partly nodata, and all valid (multiply skipped)
        got = eng._normalise(torch.from_numpy(x), torch.from_numpy(v))
        assert got.is_contiguous(memory_format=torch.channels_last) == channels_last
        assert got.dtype == torch.float32 and got.data_ptr() != torch.from_numpy(x).data_ptr()
        np.testing.assert_allclose(got.numpy(), ref * v[:, None], rtol=1e-5, atol=1e-5)
    assert (x[0, :, :5] != 0).any()  # so the nodata rows above really were zeroed

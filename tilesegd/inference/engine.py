"""The engine: batches of raw tiles in, uint8 class ids (and optional float16 probabilities) out.

Raw tiles (uint8 stays uint8 until the device) are moved to the device, normalised there
(``x / input_scale``, then ``(x - mean) / std``; invalid pixels set to 0, i.e. the mean),
run through the network, cropped to the core and reduced by argmax on the device; only uint8
ids (and optional float16 probabilities) come back.

On CUDA each batch is staged in pinned host memory and runs on three CUDA streams: copy-in,
compute and copy-out, ordered by events, so batch *n+1* is copied in and batch *n-1* copied out
while batch *n* computes; the pipeline keeps two batches in flight. The network runs under
fp16 / bf16 autocast, through TensorRT, a captured CUDA graph or ``torch.compile`` when asked
(see :mod:`tilesegd.inference.accel`). On CUDA out-of-memory the batch is split in halves and retried,
and later batches use the smaller size (outputs are identical: tiles are independent).
"""

from __future__ import annotations

import logging
import time
from dataclasses import FrozenInstanceError
from typing import Any

import numpy as np
import torch

from tilesegd.errors import ModelFileError
from tilesegd.inference.accel import (
    GraphRunner,
    check_cuda_oom_message,
    oom_error,
    runtime_of,
)
from tilesegd.inference.checks import check_output, network_failure
from tilesegd.inference.device import (
    EngineTimes,
    Pending,
    resolve_device,
    resolve_precision,
    submit_cuda,
)
from tilesegd.inference.geometry import Geometry
from tilesegd.inference.options import DEFAULT_OPTIONS, EngineOptions
from tilesegd.model.model_file import ModelSpec, Runtime
from tilesegd.model.spec import CONFIDENCE_LOW

log = logging.getLogger(__name__)


def _pad(t: torch.Tensor, size: int) -> torch.Tensor:
    """``t`` with zero entries appended along dim 0 up to ``size``."""
    if len(t) >= size:
        return t
    return torch.cat([t, t.new_zeros((size - len(t), *t.shape[1:]))])


COUNTERS = frozenset({"calls", "tiles", "slots", "oom_retries"})
EXACT_PADDING = frozenset({"eager", "onnxruntime"})  # runtimes whose short calls are verified
"""The engine's public attributes that change while it runs (statistics); every other public
attribute is fixed when it is built."""


class Engine:
    """Run a segmentation network on batches of raw tiles.

    Built once, from everything it needs, and never changed afterwards: its settings
    (``options``), its tile ``geometry`` and what follows from them are read-only (assigning a
    public attribute raises :class:`dataclasses.FrozenInstanceError`; build another engine
    instead). Only its statistics (:data:`COUNTERS`, ``times``) change as it runs, and, on its
    own, the call size after a CUDA out-of-memory error and the runtime after a failed
    TensorRT build. :mod:`tilesegd.inference.build` builds engines in the order a run does:
    model file, device and memory budget, geometry, engine.

    Args:
        module: a :class:`~tilesegd.model.model_file.Runtime` mapping float32 (B, C, H, W) to logits
            (B, K, H, W): an ``nn.Module``, TorchScript or ``torch.export`` module, or an ONNX
            model (:class:`tilesegd.model.onnx_model.OnnxModel`, always run eagerly on NCHW input).
        spec: the model's :class:`~tilesegd.model.model_file.ModelSpec` (normalisation, classes).
        geometry: the run's :class:`~tilesegd.inference.geometry.Geometry`; its ``batch_size``
            is the most tiles per network call (halved on CUDA out-of-memory).
        options: device, precision, runtime and outputs
            (:class:`~tilesegd.inference.options.EngineOptions`).
        source: the model's name in messages (its path).

    Raises:
        DeviceError: device, precision or runtime not available. ConfigError: an unknown
            precision or runtime name.
    """

    def __init__(
        self,
        module: Runtime,
        spec: ModelSpec,
        geometry: Geometry,
        options: EngineOptions = DEFAULT_OPTIONS,
        *,
        source: str = "<model>",
    ) -> None:
        self.options, self.geometry, self.spec, self.source = options, geometry, spec, source
        self.device = resolve_device(options.device)
        self.dtype = resolve_precision(options.precision, self.device)
        # a runtime that is not a torch module (onnxruntime: tilesegd.model.onnx_model.OnnxModel) is
        # called as is: eager, NCHW float32, no autocast; it picks its own accelerations
        self._runtime = runtime_of(module, options.runtime, self.device)
        self._torch_net = isinstance(module, torch.nn.Module)
        self.save_probs = options.save_probs
        self.min_confidence = options.min_confidence
        self.confidence = options.computes_confidence
        self._batch = max(1, int(geometry.batch_size))  # halved on CUDA out-of-memory
        self._cuda = self.device.type == "cuda"
        # NHWC input: on the CPU oneDNN's convolutions run 1.6-2x faster on it than on NCHW
        # (smp Unet-mobilenet_v2 and a 1x1 conv, 2 threads; benchmarks/RESULTS.md); on CUDA
        # the module's weights are converted too (below). A fixed rule, never autotuned, so a
        # rerun or resumed run always takes the same kernels (byte-identical masks).
        self._channels_last = not self._cuda and self._torch_net
        self.module = self._prepare(module)
        self._net = self.module  # what the step calls: the module, or its TensorRT engine
        self._autocast_on = self.dtype != torch.float32 and self._torch_net
        self._a, self._b, self._fill = self._normalisation(spec)
        self._checked: set[tuple[int, int]] = set()
        self._graphs: GraphRunner | None = None
        self._core: tuple[int, int, int, int] | None = None
        if self._cuda:
            torch.backends.cudnn.benchmark = True  # fixed tile shapes: autotune once
            self._streams = tuple(torch.cuda.Stream(device=self.device) for _ in range(3))
        self.calls = 0  # network calls made (for tests and statistics)
        self.tiles = 0  # tiles run through the network
        self.slots = 0  # tiles the network computed: with padding and verification calls
        # (tile shape, batch size) -> {call size: same logits as a full call, bit for bit}
        self._exact: dict[tuple[tuple[int, ...], int], dict[int, bool]] = {}
        self.oom_retries = 0  # times a batch was halved after an out-of-memory error
        self.times = EngineTimes()
        self._built = True

    def __setattr__(self, name: str, value: Any) -> None:
        if "_built" in self.__dict__ and not name.startswith("_") and name not in COUNTERS:
            raise FrozenInstanceError(
                f"Engine.{name} is fixed when the engine is built; build another Engine "
                "(tilesegd.inference.build) with the EngineOptions / Geometry you need"
            )
        object.__setattr__(self, name, value)

    @property
    def batch_size(self) -> int:
        """The most tiles per network call: the geometry's, halved after each CUDA
        out-of-memory error."""
        return self._batch

    @property
    def runtime(self) -> str:
        """The runtime running the network (``eager`` after a failed accelerated build)."""
        return self._runtime

    def _prepare(self, module: Runtime) -> Runtime:
        """The module on the device, in eval mode, channels-last on CUDA, compiled when asked
        (a TorchScript module cannot be: a warning, then eager)."""
        if isinstance(module, torch.nn.Module):
            try:
                module = module.eval()
            except NotImplementedError:  # torch.export modules are always in eval mode
                pass
            module = module.to(self.device)
            if self._cuda and self._runtime != "tensorrt":
                try:  # NHWC lets cuDNN use tensor cores without layout transposes
                    module = module.to(memory_format=torch.channels_last)
                    self._channels_last = True
                except Exception:
                    pass
        if self._runtime == "compile" and isinstance(module, torch.jit.ScriptModule):
            log.warning(
                "%s: torch.compile cannot compile a TorchScript model; running it eagerly "
                "(save the network as torch.export .pt2 to compile it)",
                self.source,
            )
            self._runtime = "eager"
        if self._runtime == "compile":
            module = torch.compile(module)
        return module

    def _normalisation(self, spec: ModelSpec) -> tuple[torch.Tensor, torch.Tensor, Any]:
        """``(a, b, fill)`` on the device: normalised = raw * a + b, per channel; nodata gets
        ``fill`` (``None``: 0, the normalised mean)."""
        scale = np.asarray(spec.std, np.float32) * np.float32(spec.input_scale)
        a = torch.from_numpy(1.0 / scale).view(1, -1, 1, 1).to(self.device)
        mean = np.asarray(spec.mean, np.float32) / np.asarray(spec.std, np.float32)
        b = torch.from_numpy(-mean).view(1, -1, 1, 1).to(self.device)
        fill = np.asarray(spec.nodata_fill, np.float32)
        fill_t = torch.from_numpy(fill).view(1, -1, 1, 1).to(self.device) if fill.any() else None
        return a, b, fill_t

    def check(self, tile_shape: tuple[int, int]) -> None:
        """Validate the network on one all-zero ``tile_shape`` (H, W) tile: its output against
        the spec (once per shape). Only validates; :meth:`build_tensorrt` compiles.

        Raises:
            ModelFileError: the network's class count or output size disagrees with its
                ``tilesegd.json``, or the network fails on this input size.
        """
        if tile_shape in self._checked:
            return
        x = torch.zeros(1, self.spec.in_channels, *tile_shape, device=self.device)
        if self._channels_last and not self._cuda:
            x = x.contiguous(memory_format=torch.channels_last)
        out = self._first_call(x, self.module)
        check_output(out, self.spec, tile_shape, self.source)
        if self._cuda:
            torch.cuda.synchronize(self.device)
        self._checked.add(tile_shape)

    def build_tensorrt(self, tile_shape: tuple[int, int]) -> None:
        """With the ``tensorrt`` runtime, compile the network's TensorRT engine for
        ``tile_shape`` (H, W) tiles, batches of 1 to :attr:`batch_size` (once: later calls, and
        other runtimes, do nothing). A build that fails is a warning, then eager.
        """
        if self._runtime != "tensorrt" or self._net is not self.module:
            return
        from tilesegd.inference.tensorrt import compile_tensorrt

        try:
            self._net = compile_tensorrt(
                self.module, self.spec.in_channels, tile_shape, self._batch, self.dtype, self.device
            )
            self._autocast_on = False  # TensorRT picks its own kernel precisions
        except Exception as exc:
            log.warning("TensorRT build failed (%s); running eagerly", str(exc)[:300])
            self._runtime = "eager"
        if self._cuda:
            torch.cuda.synchronize(self.device)

    def _autocast(self):
        if not self._autocast_on:
            return torch.autocast(self.device.type, enabled=False)
        # no weight-cast cache: required for CUDA graph capture, harmless otherwise
        return torch.autocast(self.device.type, dtype=self.dtype, cache_enabled=False)

    def _normalise(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        # in place on one fresh float32 copy (3x faster on the CPU than out-of-place ops), NCHW
        # then one reorder to NHWC (torch reorders float32 ~3x faster than uint8); the nodata
        # multiply is skipped for all-valid batches on the CPU (on CUDA the test would wait for
        # the device): 8.7 -> 6.9 ms per 8 x 512^2 uint8 batch on 2 cores
        x = x.to(torch.float32, copy=True).mul_(self._a).add_(self._b)
        if self._cuda or not bool(valid.all()):
            if self._fill is None:
                x.mul_(valid.unsqueeze(1))
            else:  # nodata at the value the model's own normalisation maps to 0
                x.sub_(self._fill).mul_(valid.unsqueeze(1)).add_(self._fill)
        if self._channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def _logits(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Normalise and run the network: (B, K, H, W) logits."""
        t0 = time.perf_counter()
        x = self._normalise(x, valid)
        if not self._cuda:  # on the CPU "host-to-device" is the conversion + normalisation
            self.times.h2d += time.perf_counter() - t0
        shape = tuple(x.shape[2:])
        if shape in self._checked:
            with torch.inference_mode(), self._autocast():
                logits = self._net(x)
        else:  # a new tile shape is validated on its first real call, not by a dry run
            logits = self._first_call(x)
            check_output(logits, self.spec, shape, self.source)
            self._checked.add(shape)
        if isinstance(logits, (tuple, list)):
            logits = logits[0]
        return logits

    def _first_call(self, x: torch.Tensor, net: Any = None) -> Any:
        """``net`` (default: what the step calls) on the first batch of a tile shape: NCHW from
        then on if it refuses NHWC input (a network that ``view()`` s it), and a
        :class:`ModelFileError` if it fails."""
        net = self._net if net is None else net
        try:
            with torch.inference_mode(), self._autocast():
                try:
                    return net(x)
                except Exception as exc:
                    nhwc = self._channels_last and not self._cuda and x.dim() == 4
                    if not nhwc or check_cuda_oom_message(exc) or isinstance(exc, ModelFileError):
                        raise
                    log.debug("%s: NHWC input failed (%s), feeding NCHW", self.source, exc)
                    self._channels_last = False
                    return net(x.contiguous())
        except ModelFileError:  # a runtime's own diagnosis (e.g. a fixed ONNX input size)
            raise
        except Exception as exc:
            if check_cuda_oom_message(exc):
                raise
            raise network_failure(self.source, (1, *x.shape[1:]), exc) from None

    def _reduce(self, logits: torch.Tensor):
        """Crop logits to the core, argmax (and softmax)."""
        r0, c0, h, w = self._core
        logits = logits[:, :, r0 : r0 + h, c0 : c0 + w]
        # max().indices == argmax (first maximum on ties) but runs 2-10x faster than argmax
        # over the channel dim of NCHW on the CPU (measured in benchmarks/)
        top = logits.max(1)
        ids = top.indices.to(torch.uint8)
        probs = conf = None
        if self.save_probs or self.confidence:
            p = torch.softmax(logits.float(), 1)
            probs = p.to(torch.float16) if self.save_probs else None
        if self.confidence:
            best = p.max(1).values  # the softmax of the top logit
            conf = torch.floor(best * 100).clamp_(0, 100).to(torch.uint8)
            if self.min_confidence is not None:
                conf |= (best < self.min_confidence).to(torch.uint8) * CONFIDENCE_LOW
        return ids, probs, conf

    def _step(self, x: torch.Tensor, valid: torch.Tensor):
        """Device-side step: normalise, network, crop to the core, argmax (and softmax)."""
        return self._reduce(self._logits(x, valid))

    def _call(self, x: torch.Tensor, valid: torch.Tensor):
        """One network call on a slice of the batch (the unit that may run out of memory)."""
        if self._runtime == "cudagraph":
            if self._graphs is None:
                self._graphs = GraphRunner(self._step)
            with torch.inference_mode():
                return self._graphs(x, valid)
        with torch.inference_mode():
            return self._step(x, valid)

    def _call_padded(self, x: torch.Tensor, valid: torch.Tensor, size: int):
        """Call the network so a tile's class ids never depend on how many batch-mates it had:
        kernels may pick other algorithms for other batch sizes (1e-4 logit differences flip
        near-ties; Unet-mobilenet_v2 on 2 CPU threads differs alone but not in 2..7 tiles),
        and a resumed or distributed run groups tiles differently.

        A short slice of ``n`` tiles is padded with zero tiles to the smallest call size
        ``s >= n`` verified to give the same logits, bit for bit, as a call of ``size`` (else to
        ``size``). A size is verified once per tile shape, on a real short slice that runs both
        ways (the padded result is used): the smallest untried ``s >= n`` below the best known.
        Only on the :data:`EXACT_PADDING` runtimes and while no out-of-memory halving happened (compiled
        runtimes would rebuild per batch size; memory is short after an OOM)."""
        n = len(x)
        if n >= size:
            self.slots += n
            return self._call(x, valid)
        known = self._exact.setdefault((tuple(x.shape[2:]), size), {})
        call = next((k for k in range(n, size) if known.get(k)), size)
        trial = next((k for k in range(n, call) if k not in known), None)
        if trial is not None and self.options.trim_batches and self._runtime in EXACT_PADDING:
            if self.oom_retries == 0:
                return self._verify(x, valid, size, trial, known)
        self.slots += call
        outputs = self._call(_pad(x, call), _pad(valid, call))
        return tuple(None if t is None else t[:n] for t in outputs)

    def _verify(self, x, valid, size: int, trial: int, known: dict[int, bool]):
        """Run a short slice padded to ``size`` (the result returned) and to ``trial``; record
        in ``known`` whether its tiles' logits are bitwise the same both ways."""
        n = len(x)
        with torch.inference_mode():
            full = self._logits(_pad(x, size), _pad(valid, size))
            part = self._logits(_pad(x, trial), _pad(valid, trial))
            known[trial] = bool(torch.equal(part[:n], full[:n]))
            self.slots += size + trial
            outputs = self._reduce(full)
        return tuple(None if t is None else t[:n] for t in outputs)

    def _run_split(self, x: torch.Tensor, valid: torch.Tensor):
        """Run ``x`` in slices of at most ``batch_size`` tiles; on out-of-memory halve the
        slice and retry (device-independent, so the logic is testable on the CPU)."""
        parts, n, i = [], len(x), 0
        step = self._batch
        while i < n:
            try:
                parts.append(self._call_padded(x[i : i + step], valid[i : i + step], step))
                i += step
            except (torch.cuda.OutOfMemoryError, RuntimeError) as exc:
                if not check_cuda_oom_message(exc):
                    raise
                if step == 1:
                    raise oom_error(tuple(x.shape)) from None
                step = max(1, step // 2)
                self._batch = step
                self.oom_retries += 1
                if self._cuda:
                    torch.cuda.empty_cache()
                log.warning("CUDA out of memory: retrying with %d tiles per call", step)
        if len(parts) == 1:
            return parts[0]
        return tuple(
            None if part[0] is None else torch.cat(part) for part in zip(*parts, strict=True)
        )

    def submit(self, x: np.ndarray, valid: np.ndarray, core: tuple[int, int, int, int]) -> Pending:
        """Start one batch.

        Args:
            x: (B, C, H, W) raw tiles, any numeric dtype (uint8 is shipped as uint8).
            valid: (B, H, W) bool, False where the pixel is nodata or padding.
            core: ``(row, col, height, width)`` of the core to return, in tile pixels.

        Returns:
            A :class:`Pending` whose result is ``(ids (B, h, w) uint8, probs (B, K, h, w)
            float16 or None)``.

        Raises:
            DeviceError: out of device memory even for one tile.
        """
        # a new tile shape is validated on its first real call (_logits), not by a dry run
        self.build_tensorrt(tuple(x.shape[2:]))  # at the first batch, unless built before
        if x.dtype not in (np.uint8, np.float32):
            x = x.astype(np.float32)
        if self._core != tuple(core):
            self._core = tuple(core)
            self._graphs = None  # graphs bake the crop in
        self.calls += 1
        self.tiles += len(x)
        if self._cuda:
            return self._submit_cuda(x, valid)
        t0, h2d0 = time.perf_counter(), self.times.h2d
        outputs = self._run_split(torch.from_numpy(x), torch.from_numpy(valid))
        self.times.infer += time.perf_counter() - t0 - (self.times.h2d - h2d0)
        return Pending(outputs)

    def _submit_cuda(self, x: np.ndarray, valid: np.ndarray) -> Pending:
        return submit_cuda(self._streams, x, valid, self._run_split, self.device, self.times)

    def predict(
        self, x: np.ndarray, valid: np.ndarray, core: tuple[int, int, int, int] | None = None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Synchronous :meth:`submit` (core defaults to the whole tile)."""
        core = core or (0, 0, x.shape[2], x.shape[3])
        return self.submit(x, valid, core).result()

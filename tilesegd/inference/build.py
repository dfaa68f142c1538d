"""Building an engine in one order, the same for ``tilesegd run``, ``tilesegd eval`` and
training's validation:

1. the model file (or a network in memory) and its spec;
2. the device, precision and memory budget (:func:`resolve_target`);
3. the tile geometry, from the user's options and that budget
   (:func:`~tilesegd.inference.geometry.geometry_for`);
4. the :class:`~tilesegd.inference.engine.Engine`, built with that geometry and never changed.

A run resolves its geometry between steps 3 and 4 as part of its setup
(:meth:`tilesegd.batch.plan.RunSetup.resolve`, through the same
:func:`~tilesegd.inference.geometry.geometry_for`), so it holds a :class:`Network` and calls
:meth:`Network.engine` itself; :func:`open_engine` and :func:`build_engine` do all four steps.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

import torch

from tilesegd.inference.accel import resolve_runtime, runtime_of
from tilesegd.inference.budget import DeviceBudget
from tilesegd.inference.device import resolve_device, resolve_precision
from tilesegd.inference.engine import Engine
from tilesegd.inference.geometry import (
    DEFAULT_TILING,
    Geometry,
    TilingOptions,
    geometry_for,
)
from tilesegd.inference.options import DEFAULT_OPTIONS, EngineOptions
from tilesegd.model.model_file import LoadedModel, ModelSpec, Runtime, load_model


@dataclass(frozen=True)
class Target:
    """Where and how a network runs.

    Attributes:
        device: the resolved device (``auto`` made concrete).
        dtype: the autocast precision (``torch.float32`` = none).
        budget: what one network call may use there (:class:`DeviceBudget`).
    """

    device: torch.device
    dtype: torch.dtype
    budget: DeviceBudget


def resolve_target(options: EngineOptions) -> Target:
    """The device, precision and memory budget ``options`` ask for (the runtime is checked too,
    so an unavailable one fails before any geometry is resolved).

    Raises:
        DeviceError: the device, precision or runtime is not available. ConfigError: an
            unknown precision or runtime name.
    """
    device = resolve_device(options.device)
    dtype = resolve_precision(options.precision, device)
    resolve_runtime(options.runtime, device)
    return Target(device, dtype, DeviceBudget.of(device, dtype))


@dataclass(frozen=True)
class Network:
    """A network on its way to an engine: steps 1 and 2 done (module docstring).

    Attributes:
        module: the network (on ``target.device``).
        spec: its metadata.
        options: the engine's settings.
        target: the resolved device, precision and budget.
        source: the model's name in messages (its path).
        sha256: the model file's SHA-256 (hex; ``""`` for a network in memory).
    """

    module: Runtime
    spec: ModelSpec
    options: EngineOptions
    target: Target
    source: str = "<model>"
    sha256: str = ""

    @classmethod
    def of(
        cls, module: Runtime, spec: ModelSpec, options: EngineOptions, source: str = "<model>"
    ) -> Network:
        """A network in memory, its target resolved from ``options`` (:func:`resolve_target`)."""
        return cls(module, spec, options, resolve_target(options), source)

    def geometry(
        self, tiling: TilingOptions = DEFAULT_TILING, cost: tuple[tuple[int, float], ...] = ()
    ) -> Geometry:
        """Step 3: the tile geometry for ``tiling`` on this target, with the network's measured
        throughput ``cost`` when given (:func:`~tilesegd.inference.geometry.geometry_for`)."""
        return geometry_for(
            self.spec, tiling, self.target.budget, save_probs=self.options.save_probs, cost=cost
        )

    @property
    def runtime(self) -> str:
        """The runtime the engine will run (:func:`~tilesegd.inference.accel.runtime_of`)."""
        return runtime_of(self.module, self.options.runtime, self.target.device)

    def measure_cost(self, tiling: TilingOptions) -> tuple[tuple[int, float], ...]:
        """The network's throughput curve, ``((tile px, megapixels per second), ...)``, between
        the smallest and the largest tile the default rule may give a scene
        (:mod:`tilesegd.inference.costmodel`; cached by the model file's SHA-256, this runtime
        and device; measured every time for a network in memory); empty when every scene runs
        one fixed tile (``--tile-size``, or a model file without a measured overlap)."""
        from tilesegd.inference.costmodel import curve_sizes, measure_throughput

        g = self.geometry(tiling)
        if not g.min_tile or g.min_tile >= g.tile_size:
            return ()
        sizes = curve_sizes(g.min_tile, g.tile_size, g.multiple)
        device = self.target.device
        call = timed_call(self.module, device, self.target.dtype)
        return measure_throughput(
            call, self.spec.in_channels, sizes, sha256=self.sha256, runtime=self.runtime,
            device=device_name(device),
        )  # fmt: skip

    def tolerant_overlap(self, tolerance: float) -> int:
        """The overlap (pixels, ``2 x halo``) at which tile cores agree with whole-image
        inference on all but a ``tolerance`` share of pixels
        (:func:`tilesegd.model.halo.measure_halo` with ``agreement = 1 - tolerance``, on its
        seeded synthetic scene, up to the model file's own measured halo, so never more than
        it), measured once per model file, runtime and tolerance (cached, ~1-2 s).

        Raises:
            ConfigError: the model file has no measured overlap to trade.
        """
        from tilesegd.errors import ConfigError
        from tilesegd.inference.costmodel import cached_value
        from tilesegd.model.halo import measure_halo

        if self.spec.overlap is None:
            raise ConfigError(
                f"{self.source}: --seam-tolerance needs a model file with a measured overlap "
                "(written by tilesegd train); give --overlap for this one"
            )
        top = max(self.spec.multiple, self.spec.overlap // 2)

        def measure() -> int:
            return measure_halo(self.module, self.spec.in_channels, self.spec.multiple,
                                max_halo=top, agreement=1.0 - tolerance,
                                device=self.target.device)  # fmt: skip

        key = f"halo|{self.runtime}|{tolerance!r}|{top}"
        return 2 * int(cached_value(self.sha256, key, measure))

    def engine(self, geometry: Geometry) -> Engine:
        """Step 4: the engine, built with ``geometry``."""
        return Engine(self.module, self.spec, geometry, self.options, source=self.source)


def device_name(device: torch.device) -> str:
    """``cpu``, or ``cuda:N <GPU name>`` (throughput differs between GPU models)."""
    if device.type != "cuda":
        return device.type
    return f"{device} {torch.cuda.get_device_name(device)}"


def timed_call(module: Runtime, device: torch.device, dtype: torch.dtype):
    """``x -> module(x)`` as the engine calls it, for timing: the input moved to ``device``
    (channels-last for a torch module, as the engine feeds it), under autocast at ``dtype``,
    synchronised on CUDA."""
    torch_net = isinstance(module, torch.nn.Module)
    fmt = torch.channels_last if torch_net else torch.contiguous_format
    autocast = torch_net and dtype != torch.float32

    def call(x: torch.Tensor):
        x = x.to(device).contiguous(memory_format=fmt)
        with torch.autocast(device.type, dtype=dtype, enabled=autocast):
            out = module(x)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return out

    return call


def load_network(
    path: str | os.PathLike[str], options: EngineOptions, *, sha256: str | None = None
) -> Network:
    """Steps 1 and 2 for a model file: load it onto ``options.device``, then resolve the
    precision, runtime and budget (in this order, so the errors come as they always did).
    A TorchScript / torch.export file that :func:`wants_onnxruntime` is replaced by its cached
    ONNX conversion (made now the first time; torch when it does not convert).

    Raises:
        DeviceError: the device, precision or runtime is not available. ModelFileError: an
            unusable model file, or its SHA-256 is not ``sha256``.
    """
    from tilesegd.model.model_file import file_sha256
    from tilesegd.storage.urls import parse_location

    device = resolve_device(options.device)
    local = parse_location(path) is None and os.path.isfile(path)
    digest = file_sha256(path).lower() if local else None  # a URL: hashed once fetched
    cached = cached_conversion(path, options, device, digest, sha256) if local else None
    if cached is not None:  # no torch load: the converted graph is all the run needs
        net = Network.of(cached.module, cached.spec, options, str(path))
        return dataclasses.replace(net, sha256=digest)
    loaded = load_model(path, device, sha256=sha256)
    digest = digest or (sha256 or file_sha256(loaded.path)).lower()
    fp32 = resolve_precision(options.precision, device) == torch.float32
    if wants_onnxruntime(options.runtime, device, fp32) and loaded.kind != "onnx":
        from tilesegd.model.convert import onnx_twin

        twin = onnx_twin(loaded, digest, device)
        if twin is not None:
            loaded = twin
        elif options.runtime == "onnxruntime":
            options = dataclasses.replace(options, runtime="eager")  # warned by onnx_twin
    net = Network.of(loaded.module, loaded.spec, options, str(path))
    return dataclasses.replace(net, sha256=digest)


def cached_conversion(
    path: str | os.PathLike[str],
    options: EngineOptions,
    device: torch.device,
    digest: str,
    sha256: str | None,
) -> LoadedModel | None:
    """The cached ONNX conversion of the local .ts / .pt2 file ``path`` (SHA-256 ``digest``),
    when the run wants onnxruntime and an earlier run converted this very file (``digest``
    matches any ``sha256`` pin); else ``None`` and :func:`load_network` takes the usual path
    (and raises its errors in the usual order). Loading a ``.pt2`` with torch takes seconds
    that are then thrown away."""
    from tilesegd.errors import TilesegdError
    from tilesegd.model.convert import cached_twin
    from tilesegd.model.model_file import is_onnx

    if is_onnx(path) or (sha256 is not None and sha256.lower() != digest):
        return None
    try:
        fp32 = resolve_precision(options.precision, device) == torch.float32
    except TilesegdError:
        return None
    if not wants_onnxruntime(options.runtime, device, fp32):
        return None
    return cached_twin(path, digest, device)


def wants_onnxruntime(runtime: str, device: torch.device, fp32: bool = True) -> bool:
    """Whether a TorchScript / torch.export model file runs through its ONNX conversion
    (:func:`tilesegd.model.convert.onnx_twin`): ``--runtime onnxruntime``, or ``auto`` on the
    CPU at fp32 (``fp32``: a ``--precision bf16`` run keeps torch's autocast) with onnxruntime
    installed (faster there than torch's kernels: ``benchmarks/RESULTS.md``, "Runtimes")."""
    from tilesegd.model.convert import onnxruntime_available

    if runtime == "onnxruntime":
        return True
    return runtime == "auto" and device.type == "cpu" and fp32 and onnxruntime_available()


def open_engine(
    path: str | os.PathLike[str],
    options: EngineOptions = DEFAULT_OPTIONS,
    tiling: TilingOptions = DEFAULT_TILING,
    *,
    sha256: str | None = None,
) -> Engine:
    """An engine for a model file (:func:`load_network`), with the geometry of ``tiling`` on
    its device and the network's measured throughput (as ``tilesegd run`` resolves it).

    Raises:
        DeviceError, ModelFileError: as :func:`load_network`. ConfigError: ``tiling`` cannot
            make a tile grid.
    """
    net = load_network(path, options, sha256=sha256)
    return net.engine(net.geometry(tiling, net.measure_cost(tiling)))


def build_engine(
    module: Runtime,
    spec: ModelSpec,
    options: EngineOptions = DEFAULT_OPTIONS,
    tiling: TilingOptions = DEFAULT_TILING,
    *,
    source: str = "<model>",
) -> Engine:
    """An engine for a network in memory, with the geometry of ``tiling`` on its device.

    Raises:
        DeviceError: the device, precision or runtime is not available. ConfigError:
            ``tiling`` cannot make a tile grid.
    """
    net = Network.of(module, spec, options, source)
    return net.engine(net.geometry(tiling))

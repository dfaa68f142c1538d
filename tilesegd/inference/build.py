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

import os
from dataclasses import dataclass

import torch

from tilesegd.inference.accel import resolve_runtime
from tilesegd.inference.device import resolve_device, resolve_precision
from tilesegd.inference.engine import Engine
from tilesegd.inference.geometry import (
    DEFAULT_TILING,
    DeviceBudget,
    Geometry,
    TilingOptions,
    geometry_for,
)
from tilesegd.inference.options import DEFAULT_OPTIONS, EngineOptions
from tilesegd.model.model_file import ModelSpec, Runtime, load_model


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
    """

    module: Runtime
    spec: ModelSpec
    options: EngineOptions
    target: Target
    source: str = "<model>"

    @classmethod
    def of(
        cls, module: Runtime, spec: ModelSpec, options: EngineOptions, source: str = "<model>"
    ) -> Network:
        """A network in memory, its target resolved from ``options`` (:func:`resolve_target`)."""
        return cls(module, spec, options, resolve_target(options), source)

    def geometry(self, tiling: TilingOptions = DEFAULT_TILING) -> Geometry:
        """Step 3: the tile geometry for ``tiling`` on this target
        (:func:`~tilesegd.inference.geometry.geometry_for`)."""
        return geometry_for(
            self.spec, tiling, self.target.budget, save_probs=self.options.save_probs
        )

    def engine(self, geometry: Geometry) -> Engine:
        """Step 4: the engine, built with ``geometry``."""
        return Engine(self.module, self.spec, geometry, self.options, source=self.source)


def load_network(
    path: str | os.PathLike[str], options: EngineOptions, *, sha256: str | None = None
) -> Network:
    """Steps 1 and 2 for a model file: load it onto ``options.device``, then resolve the
    precision, runtime and budget (in this order, so the errors come as they always did).

    Raises:
        DeviceError: the device, precision or runtime is not available. ModelFileError: an
            unusable model file, or its SHA-256 is not ``sha256``.
    """
    loaded = load_model(path, resolve_device(options.device), sha256=sha256)
    return Network.of(loaded.module, loaded.spec, options, str(path))


def open_engine(
    path: str | os.PathLike[str],
    options: EngineOptions = DEFAULT_OPTIONS,
    tiling: TilingOptions = DEFAULT_TILING,
    *,
    sha256: str | None = None,
) -> Engine:
    """An engine for a model file (:func:`load_network`), with the geometry of ``tiling`` on
    its device (as ``tilesegd run`` resolves it).

    Raises:
        DeviceError, ModelFileError: as :func:`load_network`. ConfigError: ``tiling`` cannot
            make a tile grid.
    """
    net = load_network(path, options, sha256=sha256)
    return net.engine(net.geometry(tiling))


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

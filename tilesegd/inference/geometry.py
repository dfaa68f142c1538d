"""A run's tile geometry, resolved once from the options, the model's metadata and the device.

Every part of a run (the engine's batch size, each scene's tile grid, the distributed workers,
the fingerprint that decides what may be resumed) receives the same :class:`Geometry`, made by
:func:`geometry_for` from the user's :class:`TilingOptions` and the device's
:class:`~tilesegd.inference.budget.DeviceBudget`; ``tilesegd eval`` and training's validation resolve theirs the same way,
and nothing else picks a tile size, an overlap or a batch size.

**The default rule** (a model file with a measured ``overlap`` = 2 x halo, which
``tilesegd train`` writes; :mod:`tilesegd.model.halo`). Exact ("crop the halo") stitching runs about
``(tile / core)^2`` times the scene's pixels, ``core = tile - overlap``, so the tile should be as
large as memory allows, not the training tile:

1. **Budget tile**: the largest tile (a multiple of the model's ``multiple``, at most
   :data:`MAX_TILE`) whose network call fits the memory budget
   (:func:`~tilesegd.inference.budget.memory_budget`: an eighth of the machine's memory, at
   least 1.25 GiB, on the CPU; a quarter of the device's memory on CUDA; ``--memory-budget``),
   given the bytes one input pixel costs during a call
   (:func:`~tilesegd.inference.budget.call_bytes_per_pixel`: the network's activations, from
   the model file's ``activation_bytes_per_pixel`` when it has one, plus the engine's own
   buffers). Never smaller than :func:`min_seamless_tile` (``4 x halo``, whose core is as wide
   as the two halos).
2. **Per scene**: each scene runs the tile between that minimum and the budget tile that costs
   least for its size (:func:`fit_tile`): with a measured throughput curve
   (:mod:`tilesegd.inference.costmodel`, ``Geometry.cost``) the fewest predicted seconds,
   ``pixels_run / throughput(tile)``; without one, the fewest network pixels. Edge tiles reach
   past the scene: a 4096-px scene with a 96-px halo runs 1.66x its pixels with 1760-px tiles
   but 1.32x with 1568-px ones. A scene no larger than the tile runs as one whole tile (exact,
   no halo). Blocks are a whole number of cores of that tile
   (:class:`~tilesegd.raster.tiling.TileGrid`), so no tile straddles a block edge.
3. **Batch**: :func:`default_batch` of the budget tile (~2 megapixels per call; one tile of
   1448 px or more), never more tiles than fit the budget.

``--tile-size`` and ``--overlap`` always win (a given ``--tile-size`` is used for every scene).
Model files without a measured overlap (random weights, third-party exports) keep their
``tile_size`` and a 64-px overlap: nothing is known of their context.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
from dataclasses import astuple, dataclass

from tilesegd.errors import ConfigError
from tilesegd.inference.budget import CPU_BUDGET, DeviceBudget, call_bytes_per_pixel
from tilesegd.model.spec import ModelSpec
from tilesegd.raster.tiling import TileGrid

log = logging.getLogger(__name__)

DEFAULT_BLOCK = 2048
DEFAULT_OVERLAP = 64  # pixels, for model files that carry no measured overlap
BATCH_PIXELS = 8 * 512 * 512  # the default batch holds about this many pixels
MAX_TILE = 4096  # pixels: beyond it (t / core)^2 gains little and one tile is a GPU's worth


@dataclass(frozen=True)
class Geometry:
    """Tile geometry of a run (all in pixels).

    Attributes:
        tile_size: network input side (with ``min_tile``: the largest a scene may use).
        overlap: pixels shared by neighbouring tiles (``2 x halo``).
        multiple: the network's size multiple (from the model file).
        block_size: approximate block side (unit of reading, writing and resume).
        batch_size: tiles per network call.
        min_tile: 0 = every scene uses ``tile_size``; else each scene uses the tile between
            ``min_tile`` and ``tile_size`` that costs least (:func:`fit_tile`).
        cost: the network's measured throughput curve, ``((tile px, megapixels per second),
            ...)`` (:mod:`tilesegd.inference.costmodel`); empty = count network pixels only.
    """

    tile_size: int
    overlap: int
    multiple: int
    block_size: int
    batch_size: int
    min_tile: int = 0
    cost: tuple[tuple[int, float], ...] = ()

    @property
    def halo(self) -> int:
        """Context cropped from each side of a tile."""
        return self.overlap // 2

    def tile_for(self, height: int, width: int) -> int:
        """The tile side (pixels) a ``height x width`` scene runs."""
        if not self.min_tile:
            return self.tile_size
        m, lo, hi = self.multiple, self.min_tile, self.tile_size
        return fit_tile(height, width, self.overlap, m, lo, hi, self.cost)

    def grid(self, height: int, width: int) -> TileGrid:
        """The :class:`~tilesegd.raster.tiling.TileGrid` of a ``height x width`` scene."""
        tile = self.tile_for(height, width)
        return TileGrid(height, width, tile, self.overlap, self.multiple, self.block_size)

    def settings(self) -> tuple[int, ...]:
        """The values that change the masks (for the run's fingerprint)."""
        return astuple(self)


def fit_overlap(tile: int, overlap: int, multiple: int) -> int:
    """The model's ``overlap`` (pixels, even) fitted into a ``tile``-px tile: at most
    ``tile - multiple`` so every tile keeps a core, rounded down to even; warns
    (:func:`warn_capped`) when that is less than the model needs to be seamless."""
    fitted = max(0, min(overlap, tile - multiple)) // 2 * 2
    if fitted < overlap:
        warn_capped(tile, fitted, overlap, min_seamless_tile(overlap // 2, multiple))
    return fitted


@functools.cache
def warn_capped(tile: int, overlap: int, needed: int, model_tile: int) -> None:
    """Warn, once per geometry, that the tile is too small for the model's measured overlap."""
    log.warning(
        "tile %d px leaves room for a %d-px overlap, less than the %d px the model needs to be "
        "seamless; use --tile-size %d or more",
        tile,
        overlap,
        needed,
        model_tile,
    )


@functools.cache
def warn_over_budget(tile: int, budget_tile: int, budget: int, call_bytes: float) -> None:
    """Warn, once, that the smallest seamless tile is larger than the memory budget allows
    (``budget`` bytes per call at ``call_bytes`` bytes per input pixel)."""
    log.warning(
        "the model's measured halo needs %d-px tiles, more than the %d px the memory budget "
        "allows (%.0f MiB per network call at %.0f bytes per input pixel); running %d-px "
        "tiles (pass --tile-size to choose)",
        tile,
        budget_tile,
        budget / 2**20,
        call_bytes,
        tile,
    )


def default_batch(tile: int) -> int:
    """Tiles per network call when none is given: 8 tiles of up to 512^2 pixels and
    proportionally fewer of larger tiles (~2.1 megapixels per call, at least 1), so memory does
    not grow with a model's larger seamless tile."""
    return max(1, min(8, BATCH_PIXELS // (tile * tile)))


@dataclass(frozen=True)
class TilingOptions:
    """The user's tiling options, before they meet a model and a device (``None``: the default
    rule of the module docstring).

    Attributes:
        tile_size: network input side, pixels (used as is for every scene).
        overlap: pixels shared by neighbouring tiles.
        block_size: approximate block side, pixels.
        batch_size: tiles per network call.
        memory_budget: bytes one network call may use (``--memory-budget``); ``None`` = the
            device's (:func:`~tilesegd.inference.budget.memory_budget`).
    """

    tile_size: int | None = None
    overlap: int | None = None
    block_size: int = DEFAULT_BLOCK
    batch_size: int | None = None
    memory_budget: int | None = None


DEFAULT_TILING = TilingOptions()
"""No tiling options: the default rule (a frozen instance, shared)."""


def geometry_for(
    spec: ModelSpec,
    tiling: TilingOptions,
    budget: DeviceBudget,
    *,
    save_probs: bool = False,
    cost: tuple[tuple[int, float], ...] = (),
) -> Geometry:
    """The tile geometry for a model on a device: the one function ``tilesegd run`` (local and
    distributed), ``tilesegd eval`` and training's validation resolve their geometry with, so
    the three tile alike for the same model, device and options.

    Args:
        spec: the model's metadata.
        tiling: the user's options (:class:`TilingOptions`).
        budget: the device's memory budget and precision (:meth:`DeviceBudget.of`);
            ``tiling.memory_budget`` replaces its bytes.
        save_probs: probabilities are kept (more bytes per pixel).
        cost: the network's measured throughput curve
            (:func:`tilesegd.inference.costmodel.measure_throughput`); kept in the geometry
            when the default rule picks each scene's tile (``min_tile``), else dropped.

    Raises:
        ConfigError: the options cannot make a tile grid (:func:`resolve_geometry`).
    """
    geometry = resolve_geometry(
        spec,
        tile_size=tiling.tile_size,
        overlap=tiling.overlap,
        block_size=tiling.block_size,
        batch_size=tiling.batch_size,
        budget=tiling.memory_budget or budget.bytes,
        dtype_bytes=budget.dtype_bytes,
        save_probs=save_probs,
    )
    if cost and geometry.min_tile and geometry.min_tile < geometry.tile_size:
        geometry = dataclasses.replace(geometry, cost=tuple(cost))
    return geometry


def min_seamless_tile(halo: int, multiple: int) -> int:
    """The smallest default tile: ``4 x halo`` rounded up to ``multiple`` (a core as wide as the
    two halos, so a tile runs at most 4x its core's pixels), and at least a core of
    ``multiple`` pixels."""
    m = max(1, int(multiple))
    return max(math.ceil(4 * halo / m) * m, math.ceil((2 * halo + m) / m) * m)


def budget_tile(halo: int, multiple: int, call_pixels: float, max_tile: int = MAX_TILE) -> int:
    """The largest tile side (pixels, a multiple of ``multiple``) with ``tile^2 <=
    call_pixels`` and ``tile <= max_tile``, raised to :func:`min_seamless_tile` if smaller."""
    m = max(1, int(multiple))
    fit = math.isqrt(max(0, int(call_pixels))) // m * m
    return max(min_seamless_tile(halo, m), min(fit, max_tile // m * m))


def pixels_run(height: int, width: int, tile: int, overlap: int, multiple: int) -> int:
    """Network input pixels to segment a ``height x width`` scene with this geometry: every
    tile (edge tiles padded past the scene), as :class:`~tilesegd.raster.tiling.TileGrid` cuts it.
    All-nodata tiles, which the pipeline skips, are counted too (an upper bound)."""
    g = TileGrid(height, width, tile, overlap, multiple, tile)
    (th, tw), (ch, cw) = g.tile_shape, g.core_shape
    return math.ceil(height / ch) * th * math.ceil(width / cw) * tw


@functools.lru_cache(maxsize=4096)
def fit_tile(
    height: int,
    width: int,
    overlap: int,
    multiple: int,
    min_tile: int,
    max_tile: int,
    cost: tuple[tuple[int, float], ...] = (),
) -> int:
    """The tile side between ``min_tile`` and ``max_tile`` (multiples of ``multiple``) that costs
    least for a ``height x width`` scene: the fewest predicted seconds,
    ``pixels_run / throughput(tile)`` (:func:`pixels_run`;
    :func:`~tilesegd.inference.costmodel.throughput_at` of the measured ``cost`` curve), or with
    no curve the fewest network pixels; among equals, the smallest (least memory). ``max_tile``
    when the range is empty."""
    from tilesegd.inference.costmodel import throughput_at

    m = max(1, int(multiple))
    lo = max(math.ceil(min_tile / m) * m, math.ceil((overlap + m) / m) * m)
    hi = max_tile // m * m
    if lo >= hi:
        return max_tile

    def seconds(t: int) -> tuple[float, int]:
        px = pixels_run(height, width, t, overlap, m)
        return (px / throughput_at(cost, t) if cost else px, t)

    return min(range(lo, hi + 1, m), key=seconds)


DEPLOY_SCENE = 8192  # pixels: the scene side a fixed-size export is sized for


def deploy_tile(spec: ModelSpec, scene: int = DEPLOY_SCENE) -> int:
    """The fixed tile side (pixels) for a model file that other tools run at one input size
    (``export --format onnx`` for QGIS Deepness and GeoDeep): the default rule's tile for a
    ``scene x scene`` image under the CPU's least budget
    (:data:`~tilesegd.inference.budget.CPU_BUDGET`, so it runs on modest machines), by network
    pixels (no throughput is known for another tool's runtime); the model's ``tile_size`` when
    it has no measured overlap."""
    if spec.overlap is None:
        return spec.tile_size
    m, overlap = spec.multiple, spec.overlap
    hi = budget_tile(overlap // 2, m, CPU_BUDGET / call_bytes_per_pixel(spec))
    lo = min(hi, min_seamless_tile(overlap // 2, m))
    return fit_tile(scene, scene, overlap, m, lo, hi)


def resolve_geometry(
    spec: ModelSpec,
    *,
    tile_size: int | None = None,
    overlap: int | None = None,
    block_size: int = DEFAULT_BLOCK,
    batch_size: int | None = None,
    budget: int | None = None,
    dtype_bytes: int = 4,
    activation_bytes: float | None = None,
    save_probs: bool = False,
) -> Geometry:
    """Resolve the options against the model and the memory budget (module docstring).

    Args:
        spec: the model's metadata; ``spec.overlap`` (measured) switches the default rule on.
        tile_size, overlap, block_size, batch_size: the user's options (pixels; ``None`` =
            default). A given ``tile_size`` is used as is for every scene.
        budget: bytes one network call may use; ``None`` =
            :data:`~tilesegd.inference.budget.CPU_BUDGET` (pass
            :func:`~tilesegd.inference.budget.device_budget` on a device).
        dtype_bytes: bytes per activation value (4 fp32, 2 under fp16 / bf16 autocast).
        activation_bytes: float32 bytes per input pixel a call of the network adds to memory
            (on CUDA :func:`tilesegd.model.halo.measure_activation_bytes` measures it exactly);
            ``None`` = the model file's ``activation_bytes_per_pixel``, else
            :data:`~tilesegd.inference.budget.DEFAULT_ACTIVATION_BYTES`.
        save_probs: probabilities are kept (more bytes per pixel).

    * ``tile_size``: the option; else, with a measured overlap, the budget tile fitted per scene
      (``min_tile`` set); else the model's ``tile_size``.
    * ``overlap``: the option, else the model file's measured ``overlap`` (capped to leave a
      core of ``multiple`` pixels when a given tile is smaller than the model needs, with a
      warning), else 64 px, or a quarter of tiles smaller than 256 px.
    * ``batch_size``: the option, else :func:`default_batch`, no more tiles than fit the budget.

    Raises:
        ConfigError: the values cannot make a tile grid (tile not a multiple of the model's
            ``multiple``, overlap odd or too large, block too small).
    """
    if tile_size is None and spec.overlap is not None:
        return _budget_geometry(
            spec,
            overlap=spec.overlap if overlap is None else overlap,
            block_size=block_size,
            batch_size=batch_size,
            call_bytes=call_bytes_per_pixel(
                spec,
                activation_bytes=activation_bytes,
                dtype_bytes=dtype_bytes,
                save_probs=save_probs,
            ),
            budget=budget or CPU_BUDGET,
        )
    tile = tile_size or spec.tile_size
    if tile_size is not None:
        check_tile_size(tile_size, spec)
    if overlap is None and spec.overlap is not None:
        overlap = fit_overlap(tile, spec.overlap, spec.multiple)
    if overlap is None:
        overlap = min(DEFAULT_OVERLAP, tile // 4) // 2 * 2
    geometry = Geometry(tile, overlap, spec.multiple, block_size, batch_size or default_batch(tile))
    return _checked(geometry)


def _budget_geometry(
    spec: ModelSpec,
    *,
    overlap: int,
    block_size: int,
    batch_size: int | None,
    call_bytes: float,
    budget: int,
) -> Geometry:
    """The default rule's geometry (module docstring, steps 1-3)."""
    m, halo = spec.multiple, overlap // 2
    call_pixels = budget / call_bytes
    tile = budget_tile(halo, m, call_pixels)
    if tile * tile > call_pixels:
        warn_over_budget(tile, math.isqrt(int(call_pixels)) // m * m, budget, call_bytes)
    cap = spec.max_tile_size  # e.g. an ONNX graph with a fixed input size
    if cap and tile > cap:
        tile = max(m, cap // m * m)
        overlap = fit_overlap(tile, overlap, m)
    batch = batch_size or max(1, min(default_batch(tile), int(call_pixels // (tile * tile))))
    lo = min(tile, min_seamless_tile(halo, m))
    return _checked(Geometry(tile, overlap, m, block_size, batch, min_tile=lo))


def check_tile_size(tile: int, spec: ModelSpec) -> None:
    """Check a ``--tile-size`` against the model's ``multiple`` before anything is said about
    its overlap, suggesting a tile the model can use: with a measured overlap, the smallest
    seamless tile (:func:`min_seamless_tile`, as :func:`warn_capped` says) when ``tile`` is
    below it, else the two nearest multiples.

    Raises:
        ConfigError: ``tile`` is not a positive multiple of ``spec.multiple``.
    """
    m = max(1, int(spec.multiple))
    if tile >= m and tile % m == 0:
        return
    what = f"--tile-size {tile} must be a positive multiple of the model's multiple ({m})"
    if spec.overlap is not None:
        need = min_seamless_tile(spec.overlap // 2, m)
        if tile < need:
            raise ConfigError(
                f"{what}; use {need} or more, the smallest tile with room for the model's "
                f"measured {spec.overlap}-px overlap (smaller multiples run, but not seamlessly)"
            )
    below = max(m, tile // m * m)
    raise ConfigError(f"{what}; try {below} or {below + m}")


def _checked(geometry: Geometry) -> Geometry:
    """``geometry`` if its largest and smallest tiles make a tile grid, else a ConfigError."""
    g = geometry
    try:
        for tile in {g.tile_size, g.min_tile or g.tile_size}:
            TileGrid(10**5, 10**5, tile, g.overlap, g.multiple, g.block_size)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return geometry

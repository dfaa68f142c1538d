"""One resolved run configuration: defaults < YAML file (``--config``) < command-line flags.

The resolved :class:`RunConfig` is validated once and written into every output's metadata
(``run.json``, the Zarr attributes and the GeoTIFF tags), so a mask always says how it was made.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tilesegd.errors import ConfigError
from tilesegd.inference.runtimes import RUNTIMES

if TYPE_CHECKING:  # pragma: no cover
    from tilesegd.inference.geometry import Geometry, TilingOptions
    from tilesegd.inference.options import EngineOptions
    from tilesegd.model.spec import ModelSpec

log = logging.getLogger(__name__)

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "fp16", "bf16")
CLUSTERS = ("local", "local-cuda")
COMPRESSIONS = ("deflate", "zstd", "lzw", "none")


def default_workers() -> int:
    """Reader/writer threads: the CPU count, capped at 8."""
    return max(1, min(8, os.cpu_count() or 1))


def parse_shard(text: str) -> tuple[int, int]:
    """``"I/N"`` -> ``(I, N)`` with ``0 <= I < N``.

    Raises:
        ConfigError: not two integers ``I/N`` in range (e.g. ``--shard 3/8``).
    """
    parts = str(text).split("/")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise ConfigError(f"shard must be I/N with 0 <= I < N (e.g. 0/4), got {text!r}")
    i, n = int(parts[0]), int(parts[1])
    if not 0 <= i < n:
        raise ConfigError(
            f"shard {text!r}: need 0 <= I < N (I is 0-based, e.g. $SLURM_ARRAY_TASK_ID)"
        )
    return i, n


@dataclass
class RunConfig:
    """Every setting of ``tilesegd run``.

    Attributes:
        input: raster files or directories (searched recursively).
        model: the model file (``.ts`` TorchScript or ``.pt2`` torch.export).
        output: output directory, or an object-storage prefix (``s3://bucket/prefix/``,
            ``gs://``, ``az://``).
        scratch: local folder where scene outputs are built before upload to an
            object-storage output (``None``: the temp folder).
        tile_size: network input side, pixels, for every scene; ``None`` = chosen per scene
            from the model's measured halo, its measured throughput and the memory budget
            (:func:`~tilesegd.inference.geometry.resolve_geometry`), or the model's ``tile_size``
            when its file has no measured overlap.
        overlap: pixels shared by neighbouring tiles (a halo of ``overlap / 2`` each side);
            ``None`` = the model file's measured ``overlap``, else 64, or a quarter of tiles
            smaller than 256 px.
        batch_size: tiles per network call (halved automatically on CUDA out-of-memory);
            ``None`` = :func:`~tilesegd.inference.geometry.default_batch` of the tile size.
        memory_budget: memory one network call may use (``"3GiB"``, ``"1500MB"``, bytes); it
            bounds the default tile; ``None`` = the device's
            (:func:`~tilesegd.inference.budget.memory_budget`).
        seam_tolerance: the share of pixels (0-0.5) whose class may differ from whole-image
            inference: the overlap is then the one the network needs for that agreement
            (:meth:`~tilesegd.inference.build.Network.tolerant_overlap`), at most its measured
            one (tuned for 0.001); larger runs faster. ``None`` = the measured overlap.
        device: ``auto`` (CUDA if present, else CPU), ``cpu``, ``cuda`` or ``cuda:N``.
        precision: ``auto`` (fp16 on CUDA, fp32 on CPU), ``fp32``, ``fp16``, ``bf16``.
        workers: reader / writer threads; with ``cluster: local``, the number of Dask worker
            processes (each then uses CPU count / workers threads).
        save_probs: also write stitched float16 class probabilities ``probs`` (K, H, W).
        block_size: approximate block side, pixels (unit of read / write / resume; Zarr chunk).
        bands: override the model's 1-based input bands (e.g. ``[1, 1, 1]`` for a grey scene).
        max_megapixels: refuse scenes larger than this before reading (a pixel budget).
        allow_vrt: accept a ``.tif``/``.tiff`` that is really a VRT, and VRTs reaching the network.
        allow_no_georef: accept GeoTIFFs without valid georeferencing (outputs carry none).
        overwrite: recompute scenes already done instead of skipping them.
        model_sha256: refuse the model file unless its SHA-256 matches.
        compress: GeoTIFF compression (``deflate``, ``zstd``, ``lzw``).
        preview_size: longest side of ``preview.png`` in pixels (0 disables the preview).
        compile: shorthand for ``runtime: compile``.
        runtime: how the network runs: ``auto`` (CUDA: TensorRT when torch-tensorrt is
            installed, else a captured CUDA graph; CPU: onnxruntime when installed, the model
            file converted once and cached, else eager), ``eager``, ``compile``
            (``torch.compile``, CPU or CUDA), ``cudagraph`` (CUDA), ``tensorrt`` (CUDA,
            needs ``tilesegd[tensorrt]``) or ``onnxruntime`` (needs ``tilesegd[onnx]``).
        scheduler: an existing Dask scheduler (``tcp://HOST:PORT``, or its scheduler file):
            blocks are computed by its workers (needs ``tilesegd[distributed]``; shared
            filesystem).
        cluster: start a Dask cluster for this run: ``local`` (``workers`` worker processes)
            or ``local-cuda`` (dask-cuda, one worker per GPU).
        shard: ``"I/N"``: process only scene ``I`` of every ``N`` (0-based, by sorted path),
            for job arrays without a scheduler.
        save_confidence: also write ``confidence.tif``: the top class's softmax probability
            x 100 (uint8 0-100, nodata 255), and a ``confidence`` array in ``pred.zarr``.
        min_confidence: a probability in (0, 1): pixels whose top-class probability is below
            it become nodata in the mask and the areas (counted in run.json).
        aoi: a polygon file (any OGR format, any CRS): only pixels whose centre is inside are
            segmented; the rest are nodata; blocks and tiles outside are never read or run.
        aoi_crs: the AOI file's CRS when it has none (e.g. ``EPSG:4326``).
        zones: a polygon file of zones (parcels, districts...): class areas per zone in
            ``zones.csv`` / ``zones.gpkg`` per scene and ``zones_summary.csv`` per run.
        zones_crs: the zones file's CRS when it has none.
        zone_field: the zones' attribute that names them (default: the feature id).
        vector: also write ``polygons.gpkg``: one polygon per connected region of a class.
        vector_classes: class names to vectorise (default: all but ``background``).
        min_area: minimum mapping unit of the polygons, m2 (smaller regions are left out of
            ``polygons.gpkg``; the mask is unchanged).
        simplify: simplification tolerance of the polygons, pixels (shared edges stay shared).
        resample: ``auto``: scenes whose ground sampling distance differs from the model's by
            more than ``gsd_tolerance`` are segmented on a grid of the model's GSD and the
            mask written back on the scene's grid; ``off``: every scene runs as it is.
        gsd: the model's GSD in metres per pixel (overrides the model file's ``gsd``).
        gsd_tolerance: relative GSD difference that still runs a scene as it is (0.1 = 10 %).
        scene_gsd: the GSD of plain frames without georeferencing (metres per pixel).
        asset: the STAC asset key segmented in each Item (default: ``visual``, else the only
            data GeoTIFF asset).
        stac_api: a STAC API root URL to run an item search on (:mod:`tilesegd.stac.search`).
        collections: the collection ids the search covers.
        bbox: the search's ``[west, south, east, north]``, degrees (default: the AOI's bounds).
        datetime: the search's RFC 3339 instant or range.
        query: the search's ``query`` extension object, as JSON text.
        max_items: the most Items the search takes.
    """

    input: list[str] = field(default_factory=list)
    model: str | None = None
    output: str | None = None
    scratch: str | None = None
    tile_size: int | None = None
    overlap: int | None = None
    batch_size: int | None = None
    memory_budget: str | None = None
    seam_tolerance: float | None = None
    device: str = "auto"
    precision: str = "auto"
    workers: int = field(default_factory=default_workers)
    save_probs: bool = False
    block_size: int = 2048
    bands: list[int] | None = None
    max_megapixels: float = 20_000.0
    allow_vrt: bool = False
    allow_no_georef: bool = False
    overwrite: bool = False
    model_sha256: str | None = None
    compress: str = "deflate"
    preview_size: int = 1024
    compile: bool = False
    runtime: str = "auto"
    scheduler: str | None = None
    cluster: str | None = None
    shard: str | None = None
    save_confidence: bool = False
    min_confidence: float | None = None
    aoi: str | None = None
    aoi_crs: str | None = None
    zones: str | None = None
    zones_crs: str | None = None
    zone_field: str | None = None
    vector: bool = False
    vector_classes: list[str] | None = None
    min_area: float = 0.0
    simplify: float = 0.0
    resample: str = "auto"
    gsd: float | None = None
    gsd_tolerance: float = 0.1
    scene_gsd: float | None = None
    asset: str | None = None
    stac_api: str | None = None
    collections: list[str] = field(default_factory=list)
    bbox: list[float] | None = None
    datetime: str | None = None
    query: str | None = None
    max_items: int | None = None

    def validate(self) -> RunConfig:
        """Check types and ranges.

        Raises:
            ConfigError: naming the bad setting and the accepted values.
        """
        if self.tile_size is not None and self.tile_size < 1:
            raise ConfigError(f"tile_size must be >= 1 pixel, got {self.tile_size}")
        if self.overlap is not None and (self.overlap < 0 or self.overlap % 2):
            raise ConfigError(f"overlap must be an even number of pixels >= 0, got {self.overlap}")
        if self.batch_size is not None and self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.workers < 1:
            raise ConfigError(f"workers must be >= 1, got {self.workers}")
        if self.block_size < 32:
            raise ConfigError(f"block_size must be >= 32 pixels, got {self.block_size}")
        dev = self.device.split(":")[0]
        if dev not in DEVICES or (":" in self.device and not self.device.split(":")[1].isdigit()):
            raise ConfigError(f"device must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        if self.precision not in PRECISIONS:
            raise ConfigError(
                f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}"
            )
        if self.compress.lower() not in COMPRESSIONS:
            raise ConfigError(
                f"compress must be one of {', '.join(COMPRESSIONS)}, got {self.compress!r}"
            )
        if self.runtime not in RUNTIMES:
            raise ConfigError(f"runtime must be one of {', '.join(RUNTIMES)}, got {self.runtime!r}")
        if self.seam_tolerance is not None and not 0 <= self.seam_tolerance < 0.5:
            raise ConfigError(
                f"seam_tolerance must be a share of pixels in [0, 0.5), e.g. 0.01, got "
                f"{self.seam_tolerance}"
            )
        if self.memory_budget is not None:
            from tilesegd.inference.budget import parse_memory_size

            parse_memory_size(self.memory_budget)
        if self.bands is not None and (not self.bands or min(self.bands) < 1):
            raise ConfigError(f"bands must list 1-based band numbers, got {self.bands}")
        if self.max_megapixels <= 0:
            raise ConfigError("max_megapixels must be > 0")
        if self.cluster is not None and self.cluster not in CLUSTERS:
            raise ConfigError(f"cluster must be one of {', '.join(CLUSTERS)}, got {self.cluster!r}")
        if self.cluster and self.scheduler:
            raise ConfigError(
                "give either --scheduler (an existing cluster) or --cluster, not both"
            )
        if self.shard is not None:
            parse_shard(self.shard)
        self.validate_products()
        return self

    def validate_products(self) -> None:
        """Check the options of the optional outputs (confidence, AOI, zones, polygons).

        Raises:
            ConfigError: naming the bad option.
        """
        if self.min_confidence is not None and not 0 < self.min_confidence < 1:
            raise ConfigError(
                f"min_confidence must be a probability between 0 and 1 (e.g. 0.5), got "
                f"{self.min_confidence}"
            )
        from tilesegd.outputs.polygons import check_options

        check_options(self.min_area, self.simplify)
        for option, needs in (
            ("aoi_crs", "aoi"),
            ("zones_crs", "zones"),
            ("zone_field", "zones"),
        ):
            if getattr(self, option) and not getattr(self, needs):
                raise ConfigError(f"--{option.replace('_', '-')} needs --{needs} FILE")
        if self.resample not in ("auto", "off"):
            raise ConfigError(f"resample must be auto or off, got {self.resample!r}")
        for name in ("gsd", "scene_gsd"):
            value = getattr(self, name)
            if value is not None and not 0 < value < float("inf"):
                raise ConfigError(f"{name} must be metres per pixel > 0, got {value}")
        if not 0 <= self.gsd_tolerance < float("inf"):
            raise ConfigError(f"gsd_tolerance must be >= 0 (e.g. 0.1), got {self.gsd_tolerance}")
        if isinstance(self.vector_classes, str):  # the flag's, or YAML's, "a,b"
            self.vector_classes = [n for n in self.vector_classes.split(",") if n.strip()]

    def engine_options(self) -> EngineOptions:
        """The engine's settings for this run: the one place a run's options become them
        (local runs, Dask workers and the workers' engine cache all use it).

        ``compile`` is the ``compile`` runtime; ``save_confidence`` the engine's confidence.
        """
        from tilesegd.inference.options import EngineOptions

        return EngineOptions(
            device=self.device,
            precision=self.precision,
            runtime="compile" if self.compile else self.runtime,
            save_probs=self.save_probs,
            confidence=self.save_confidence,
            min_confidence=self.min_confidence,
        )

    def tiling(self) -> TilingOptions:
        """This run's tiling options (:class:`~tilesegd.inference.geometry.TilingOptions`)."""
        from tilesegd.inference.budget import parse_memory_size
        from tilesegd.inference.geometry import TilingOptions

        budget = None if self.memory_budget is None else parse_memory_size(self.memory_budget)
        return TilingOptions(self.tile_size, self.overlap, self.block_size, self.batch_size, budget)

    def geometry(
        self,
        spec: ModelSpec,
        budget: int | None = None,
        dtype_bytes: int = 4,
        cost: tuple[tuple[int, float], ...] = (),
    ) -> Geometry:
        """This run's tile geometry for a model
        (:func:`~tilesegd.inference.geometry.geometry_for`, as ``tilesegd eval`` and training's
        validation resolve theirs).

        Args:
            budget: the device's memory budget for one network call, bytes (``None``: the
                CPU's; see :func:`~tilesegd.inference.budget.device_budget`).
            dtype_bytes: bytes per activation value at the run's precision (2 for fp16/bf16).
            cost: the network's measured throughput curve
                (:func:`~tilesegd.inference.costmodel.measure_throughput`), or none.

        Raises:
            ConfigError: the tile size / overlap / block size cannot make a tile grid.
        """
        from tilesegd.inference.budget import CPU_BUDGET, DeviceBudget
        from tilesegd.inference.geometry import geometry_for

        device = DeviceBudget(budget or CPU_BUDGET, dtype_bytes)
        return geometry_for(spec, self.tiling(), device, save_probs=self.save_probs, cost=cost)

    def bands_for(self, spec: ModelSpec) -> tuple[int, ...]:
        """The 1-based raster bands fed to the model: ``bands`` if given, else the model's.

        Raises:
            ConfigError: ``bands`` does not list one band per model input channel.
        """
        if not self.bands:
            return spec.bands
        if len(self.bands) != spec.in_channels:
            raise ConfigError(
                f"--bands lists {len(self.bands)} band(s) ({','.join(map(str, self.bands))}) but "
                f"the model takes {spec.in_channels} input channel(s); list {spec.in_channels}, "
                f"e.g. --bands {','.join(['1'] * spec.in_channels)}"
            )
        return tuple(self.bands)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable copy (what goes into outputs' metadata): input and model
        locations with their secrets masked (a presigned URL's signature, ``user:password@``;
        :func:`tilesegd.storage.redact.redact`)."""
        from tilesegd.storage.redact import redact

        out = dataclasses.asdict(self)
        out["input"] = [redact(i) for i in out["input"] or []]
        out["model"] = redact(out["model"]) if out["model"] is not None else None
        out["output"] = redact(out["output"]) if out["output"] is not None else None
        out["stac_api"] = redact(out["stac_api"]) if out["stac_api"] is not None else None
        return out


def load_yaml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a YAML config file into a mapping with ``-`` in keys turned into ``_``.

    Raises:
        ConfigError: the file is missing, not YAML, or not a mapping.
    """
    import yaml

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: config file not found")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML ({exc})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: a config file must be a mapping of option: value")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def resolve(
    cls: type,
    config_file: str | os.PathLike[str] | None,
    overrides: dict[str, Any],
    section: str | None = None,
) -> Any:
    """Build a config dataclass from defaults, a YAML file and explicit overrides.

    Args:
        cls: the dataclass (:class:`RunConfig` or a training config).
        config_file: optional YAML path; if it has a ``section`` key (``run:``, ``train:``),
            that mapping is used, top-level keys otherwise.
        overrides: flag values; ``None`` means "not given" and does not override.

    Raises:
        ConfigError: unknown keys (named, with the file) or invalid values.
    """
    names = {f.name for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    if config_file:
        data = load_yaml(config_file)
        if section and isinstance(data.get(section), dict):
            data = {str(k).replace("-", "_"): v for k, v in data[section].items()}
        else:
            data = {k: v for k, v in data.items() if not isinstance(v, dict) or k in names}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(
                f"{config_file}: unknown option(s) {', '.join(unknown)}; "
                f"valid options are {', '.join(sorted(names))}"
            )
        values.update(data)
    values.update({k: v for k, v in overrides.items() if v is not None and v != ()})
    if isinstance(values.get("input"), str):
        values["input"] = [values["input"]]
    try:
        cfg = cls(**values)
    except TypeError as exc:
        raise ConfigError(f"invalid configuration: {exc}") from None
    return cfg.validate() if hasattr(cfg, "validate") else cfg

"""A model's metadata (``tilesegd.json``): classes, input bands, normalisation, geometry.

Pure data with no torch import, so that the writers, the area report and the run's bookkeeping
can describe classes without loading the network (:mod:`tilesegd.model.model_file` loads and saves the
networks that carry this metadata). See the README, "The model file", for every field.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from tilesegd.errors import ModelFileError

if TYPE_CHECKING:  # pragma: no cover
    import torch

NODATA = 255
"""The class id of nodata in every mask tilesegd writes (uint8 masks: class ids 0..254)."""
CONFIDENCE_LOW = 128
"""Flag bit added by the engine to a confidence value (0-100) whose top-class probability is
below ``--min-confidence`` (the pixel becomes nodata in the mask)."""
META_NAME = "tilesegd.json"
REQUIRED_FIELDS = ("classes", "in_channels")
OUTPUTS = ("logits", "probabilities")
"""What a graph's output holds (the optional ``output`` key; ``logits`` by default)."""
ACTIVATION_KEY = "activation_bytes_per_pixel"
"""The optional key of the network's float32 activation bytes per input pixel."""
DEFAULT_PALETTE = [
    (0, 0, 0),
    (230, 25, 75),
    (60, 180, 75),
    (255, 225, 25),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
    (250, 190, 212),
    (0, 128, 128),
    (220, 190, 255),
    (170, 110, 40),
    (255, 250, 200),
    (128, 0, 0),
    (170, 255, 195),
    (128, 128, 0),
    (255, 215, 180),
    (0, 0, 128),
    (128, 128, 128),
    (255, 255, 255),
    (100, 100, 255),
    (255, 100, 100),
]


@dataclass(frozen=True)
class ClassInfo:
    """One output class: ``id`` (0..K-1, the logit channel), ``name``, ``color`` (r, g, b 0-255)."""

    id: int
    name: str
    color: tuple[int, int, int]


@dataclass(frozen=True)
class ModelSpec:
    """The parsed ``tilesegd.json`` of a model file (see the module docstring for each field).

    Attributes:
        classes: K classes, ids 0..K-1 in order.
        in_channels: number of input channels the network takes.
        bands: 1-based raster band numbers fed to the network, ``len == in_channels``.
        input_scale: raw raster values are divided by this (255 for uint8 imagery).
        mean, std: per-channel normalisation applied after scaling, ``len == in_channels``.
        multiple: model height and width must be multiples of this (pixels).
        tile_size: suggested tile size in pixels (a multiple of ``multiple``).
        extra: every other key of ``tilesegd.json``, in the file's order (written back as
            read). The optional keys of :data:`OPTIONAL_KEYS` are checked when the spec is
            read (:meth:`from_dict`) and read through properties: ``overlap``, ``gsd``,
            ``scale``, ``dtypes``, ``max_tile_size``, ``ignored_classes``, ``output``,
            ``seg_thresh``, ``activation_bytes``; others (``arch``...) are kept as they are.
    """

    classes: tuple[ClassInfo, ...]
    in_channels: int
    bands: tuple[int, ...]
    input_scale: float = 255.0
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    multiple: int = 32
    tile_size: int = 512
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def overlap(self) -> int | None:
        """Suggested tile overlap in pixels (``2 * halo``), or ``None`` if the file has none."""
        v = self.extra.get("overlap")
        return None if v is None else int(v)

    @property
    def gsd(self) -> float | None:
        """The ground sampling distance the model was trained at, metres per pixel (as the
        file writes it), or ``None``."""
        return self.extra.get("gsd")

    @property
    def scale(self) -> float | None:
        """The factor its training frames were resampled by (``tilesegd train --scale``), or
        ``None``."""
        return self.extra.get("scale")

    @property
    def dtypes(self) -> tuple[str, ...] | None:
        """The pixel types (NumPy names) the model was trained on, or ``None`` (any)."""
        v = self.extra.get("dtypes")
        return None if v is None else tuple(v)

    @property
    def max_tile_size(self) -> int | None:
        """The largest tile side the network takes (pixels; a fixed-size ONNX graph), or
        ``None``."""
        v = self.extra.get("max_tile_size")
        return None if v is None else int(v)

    @property
    def ignored_classes(self) -> tuple[str, ...]:
        """Names of the dataset classes left out of training (``()`` when none)."""
        return tuple(self.extra.get("ignored_classes") or ())

    @property
    def output(self) -> str:
        """What the graph outputs: ``logits`` (the default) or ``probabilities``."""
        return str(self.extra.get("output") or "logits")

    @property
    def seg_thresh(self) -> float:
        """The threshold of a one-channel (sigmoid) output (default 0.5)."""
        v = self.extra.get("seg_thresh")
        return 0.5 if v is None else float(v)

    @property
    def activation_bytes(self) -> float | None:
        """The network's float32 activation bytes per input pixel (``ACTIVATION_KEY``), or
        ``None``."""
        return self.extra.get(ACTIVATION_KEY)

    @property
    def nodata_fill(self) -> tuple[float, ...]:
        """Per channel, the normalised input value given to nodata and padding pixels.

        0 (the normalised mean) for every ordinary model file. A graph that normalises inside
        itself (``normalization_in_graph``: ``input_scale`` s, ``mean`` m, ``std`` of the
        training data, as ``tilesegd export --format onnx`` writes) gets the value that its
        own normalisation maps to 0, ``(m * s / input_scale - mean) / std``, so it sees nodata
        exactly as the network it was exported from did."""
        inner = self.extra.get("normalization_in_graph")
        if not inner:
            return (0.0,) * self.in_channels
        s, m = float(inner.get("input_scale", 255.0)), inner.get("mean") or [0.0] * self.in_channels
        return tuple(
            (float(mi) * s / self.input_scale - mo) / so
            for mi, mo, so in zip(m, self.mean, self.std, strict=True)
        )

    @property
    def num_classes(self) -> int:
        """K, the number of output channels."""
        return len(self.classes)

    def to_dict(self) -> dict[str, Any]:
        """The JSON-serialisable form written as ``tilesegd.json``."""
        d = asdict(self)
        d["classes"] = [{"id": c.id, "name": c.name, "color": list(c.color)} for c in self.classes]
        for key in ("bands", "mean", "std"):
            d[key] = list(d[key])
        extra = d.pop("extra")
        d.update(extra)
        return d

    @classmethod
    def from_dict(cls, meta: dict[str, Any], source: str = "<model>") -> ModelSpec:
        """Validate and parse a ``tilesegd.json`` mapping.

        Raises:
            ModelFileError: a required field is missing or a field (required or one of
                :data:`OPTIONAL_KEYS`) has a bad value; the message names the file and every
                missing field, or the bad one.
        """
        if not isinstance(meta, dict):
            raise ModelFileError(f"{source}: {META_NAME} must hold a JSON object")
        missing = [k for k in REQUIRED_FIELDS if k not in meta]
        if missing:
            raise ModelFileError(
                f"{source}: {META_NAME} lacks required field(s) {', '.join(missing)}; "
                "re-export the model with `tilesegd export` or add them (see README, model file)"
            )

        def bad(msg: str) -> ModelFileError:
            return ModelFileError(f"{source}: {META_NAME}: {msg}")

        try:
            in_ch = int(meta["in_channels"])
            raw_classes = meta["classes"]
            classes = []
            for i, c in enumerate(raw_classes):
                if isinstance(c, str):
                    c = {"id": i, "name": c}
                color = c.get("color") or DEFAULT_PALETTE[i % len(DEFAULT_PALETTE)]
                classes.append(
                    ClassInfo(int(c["id"]), str(c["name"]), tuple(int(v) for v in color[:3]))
                )
            bands = tuple(int(b) for b in meta.get("bands") or range(1, in_ch + 1))
            scale = float(meta.get("input_scale", 255.0))
            mean = tuple(float(v) for v in meta.get("mean") or [0.0] * in_ch)
            std = tuple(float(v) for v in meta.get("std") or [1.0] * in_ch)
            multiple = int(meta.get("multiple", 32))
            tile_size = int(meta.get("tile_size", 512))
        except (KeyError, TypeError, ValueError) as exc:
            raise bad(f"malformed field ({exc!r}); see README, model file") from None
        if in_ch < 1:
            raise bad(f"in_channels must be >= 1, got {in_ch}")
        if not classes:
            raise bad("classes is empty; list one entry per output channel")
        if len(classes) > 255:
            raise bad(
                f"{len(classes)} classes, but masks are uint8 with 255 as nodata: at most 255 "
                "classes (ids 0..254); merge classes or split the model"
            )
        if [c.id for c in classes] != list(range(len(classes))):
            raise bad("class ids must be 0..K-1 in order, got " + str([c.id for c in classes]))
        if len(bands) != in_ch or min(bands) < 1:
            raise bad(f"bands {list(bands)} must list {in_ch} 1-based band numbers")
        if len(mean) != in_ch or len(std) != in_ch:
            raise bad(f"mean and std must have {in_ch} values (one per input channel)")
        if any(s <= 0 for s in std) or scale <= 0:
            raise bad("std values and input_scale must be > 0")
        if multiple < 1 or tile_size < multiple:
            raise bad(f"multiple ({multiple}) must be >= 1 and tile_size ({tile_size}) >= it")
        known = {
            "classes",
            "in_channels",
            "bands",
            "input_scale",
            "mean",
            "std",
            "multiple",
            "tile_size",
        }
        extra = {k: v for k, v in meta.items() if k not in known}
        check_optional(extra, source)
        return cls(tuple(classes), in_ch, bands, scale, mean, std, multiple, tile_size, extra)


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _positive(v: Any) -> bool:
    return _number(v) and v > 0


def _fraction(v: Any) -> bool:
    return _number(v) and 0 <= v <= 1


def _whole(v: Any, least: int) -> bool:
    return _number(v) and v == int(v) and v >= least


def _names(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(n, str) for n in v)


OPTIONAL_KEYS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "overlap": (lambda v: _whole(v, 0), "a whole number of pixels >= 0"),
    "gsd": (_positive, "metres per pixel > 0"),
    "scale": (_positive, "a resampling factor > 0"),
    "dtypes": (_names, 'a list of pixel type names (e.g. ["uint8"])'),
    "max_tile_size": (lambda v: _whole(v, 1), "a whole number of pixels >= 1"),
    "ignored_classes": (_names, "a list of class names"),
    "output": (lambda v: v in OUTPUTS, " or ".join(OUTPUTS)),
    "seg_thresh": (_fraction, "a number in [0, 1]"),
    ACTIVATION_KEY: (_positive, "bytes per pixel > 0"),
}
"""The optional keys of ``tilesegd.json`` that tilesegd reads: ``{key: (check, what a good
value is)}``. A key absent or ``null`` takes its default."""


def check_optional(meta: dict[str, Any], source: str) -> None:
    """Check the optional keys of a ``tilesegd.json`` mapping (:data:`OPTIONAL_KEYS`).

    Raises:
        ModelFileError: naming the file, the key, the value and what it must be.
    """
    for key, (ok, what) in OPTIONAL_KEYS.items():
        v = meta.get(key)
        if v is not None and not ok(v):
            raise ModelFileError(
                f"{source}: {META_NAME}: {key} must be {what}, got {v!r}; fix or remove it "
                "(see README, the model file)"
            )


class Runtime(Protocol):
    """What the engine calls: a network on one device.

    ``runtime(x)`` maps float32 ``x`` (B, C, H, W) (a torch tensor on the runtime's device, any
    memory format) to logits (B, K, H, W) on the same device. A ``torch.nn.Module``
    (TorchScript, ``torch.export``, eager) satisfies it, and so does
    :class:`tilesegd.model.onnx_model.OnnxModel` (onnxruntime). The engine converts, compiles,
    autocasts and graph-captures only ``torch.nn.Module`` runtimes; any other runtime is called
    as is on NCHW float32 input and picks its own accelerations.
    """

    def __call__(self, x: torch.Tensor) -> torch.Tensor: ...


@dataclass
class LoadedModel:
    """A loaded network and its spec.

    Attributes:
        module: the network, a :class:`Runtime`: float32 (B, C, H, W) -> logits (B, K, H, W).
        spec: the parsed ``tilesegd.json`` (or an ONNX model's metadata).
        path: the file it came from.
        kind: ``"torchscript"``, ``"export"`` or ``"onnx"``.
    """

    module: Runtime
    spec: ModelSpec
    path: Path
    kind: str


def check_file(path: Path) -> None:
    """Raise :class:`ModelFileError` unless ``path`` is an existing, non-empty file."""
    if not path.is_file():
        raise ModelFileError(f"{path}: model file not found; pass an existing --model FILE")
    if path.stat().st_size == 0:
        raise ModelFileError(f"{path}: model file is empty (0 bytes); re-export or re-copy it")

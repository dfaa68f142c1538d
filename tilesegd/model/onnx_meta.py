"""ONNX model metadata and output conventions (pure Python / torch; imports neither onnx nor
onnxruntime: :mod:`tilesegd.model.onnx_model` reads the file and runs it).

An ONNX model file describes itself in its ``metadata_props`` (string key -> string value),
read in this order:

1. ``tilesegd.json``: the same JSON as in ``.ts`` / ``.pt2`` files (README, "The model file").
   Optional extra keys for ONNX: ``output`` (``"logits"``, the default, or
   ``"probabilities"``: the graph ends in softmax / sigmoid) and ``seg_thresh``.
2. Otherwise the keys of the QGIS Deepness plugin and GeoDeep, each a JSON-encoded value
   (Deepness docs, "Adding metadata to ONNX model", and ``ModelBase.get_metadata_*`` in
   PUTvision/qgis-plugin-deepness; ``create_session`` in uav4geo/GeoDeep):

   ======================== =========================================================
   ``model_type``           must be ``Segmentor`` (case-insensitive, as Deepness)
   ``class_names``          ``{id: name}`` (JSON, or a Python literal as Deepness
                            accepts); a list of such dicts (one per output head): the
                            first is used. ``names`` is accepted too (older Deepness).
   ``resolution``           cm/px -> ``gsd`` (metres)
   ``tile_size``            pixels (``tiles_size`` too: Deepness's docs and code differ);
                            a fixed graph input size takes precedence (both tools tile
                            with the graph's input size)
   ``tiles_overlap``        percent of the tile shared by neighbours -> ``overlap`` =
                            ``floor(tile * pct / 100)`` px, rounded down to even (GeoDeep)
   ``standardization_mean`` applied after dividing by 255: ``input_scale`` 255, ``mean``,
   ``standardization_std``  ``std``
   ``seg_thresh``           one-channel (sigmoid) models: class 1 where ``p > seg_thresh``
                            (default 0.5, as GeoDeep)
   ======================== =========================================================

   Such models output probabilities (softmax over K channels, or one sigmoid channel; Deepness
   "Model classes and requirements") and were trained on 8-bit imagery divided by 255, so the
   spec gets ``output: probabilities`` and ``dtypes: ["uint8"]``; colours come from
   :data:`tilesegd.model.model_file.DEFAULT_PALETTE`.

The engine expects logits; :func:`to_logits` maps every convention to logits whose argmax is
the class and whose softmax is the class probability (see there for one-channel models).
"""

from __future__ import annotations

import ast
import json
import logging
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tilesegd.errors import ModelFileError
from tilesegd.model.spec import META_NAME, ModelSpec

if TYPE_CHECKING:  # pragma: no cover
    import torch

log = logging.getLogger(__name__)

DEEPNESS_KEYS = ("model_type", "class_names", "names")
_EPS = 1e-7  # probabilities are clamped to [eps, 1 - eps] before the logit
_TINY = 1e-30  # smallest logit margin that still wins argmax (float32-normal)
_MAX_MULTIPLE = 32  # the largest size multiple assumed for a Deepness graph


@dataclass(frozen=True)
class GraphIO:
    """What tilesegd needs of an ONNX graph's interface.

    Attributes:
        input_name: the one image input.
        input_shape: its dims, ``None`` for a symbolic (dynamic) one; ``None`` if undeclared.
        input_fp16: the input is float16 (else float32).
        output_name: the first output (the class scores).
        output_shape: its dims as ``input_shape``.
        n_outputs: how many outputs the graph has (only the first is used).
        output_fp32: the output is declared float32.
    """

    input_name: str
    input_shape: tuple[int | None, ...] | None
    input_fp16: bool
    output_name: str
    output_shape: tuple[int | None, ...] | None
    n_outputs: int = 1
    output_fp32: bool = True

    def fixed(self, which: str, axis: int) -> int | None:
        """A fixed dim of ``input`` / ``output`` (``None`` if symbolic or undeclared)."""
        shape = self.input_shape if which == "input" else self.output_shape
        return shape[axis] if shape is not None and len(shape) > axis else None

    @property
    def fixed_hw(self) -> tuple[int, int] | None:
        """``(H, W)`` of a graph that takes only one input size, else ``None``."""
        h, w = self.fixed("input", 2), self.fixed("input", 3)
        return (h, w) if h and w else None


def spec_from_metadata(props: dict[str, str], io: GraphIO, source: str) -> ModelSpec:
    """Build the :class:`ModelSpec` of an ONNX model from its ``metadata_props``.

    Args:
        props: the model's metadata (key -> string value).
        io: its graph interface (input / output shapes).
        source: the file, for messages.

    Raises:
        ModelFileError: no usable metadata, a ``model_type`` other than ``Segmentor``, a
            malformed value, an input size that cannot be inferred, or metadata that disagrees
            with the graph (channels, class count, output rank).
    """
    if META_NAME in props:
        try:
            meta = json.loads(props[META_NAME])
        except json.JSONDecodeError as exc:
            raise ModelFileError(f"{source}: {META_NAME} is not valid JSON ({exc})") from None
        spec = ModelSpec.from_dict(meta, source)
    elif any(k in props for k in DEEPNESS_KEYS):
        spec = ModelSpec.from_dict(_deepness_meta(props, io, source), f"{source} (Deepness keys)")
    else:
        raise ModelFileError(
            f"{source}: the ONNX model carries neither {META_NAME} nor Deepness / GeoDeep "
            "metadata (model_type, class_names); export it with `tilesegd export --format onnx` "
            "or add the keys to its metadata_props (README, ONNX models)"
        )
    check_against_graph(spec, io, source)
    return spec


def _value(props: dict[str, str], key: str) -> Any:
    """A metadata value: JSON, else a Python literal (Deepness accepts both), else the text."""
    raw = props.get(key)
    if raw is None:
        return None
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        pass
    try:
        return ast.literal_eval(raw) if len(raw) < 100_000 else raw
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return raw


def _number(props: dict[str, str], key: str, source: str, kind: type = float) -> Any:
    v = _value(props, key)
    if v is None:
        return None
    try:
        return kind(float(v))
    except (TypeError, ValueError):
        raise ModelFileError(f"{source}: metadata {key} = {props[key]!r} is not a number") from None


def _class_names(v: Any, source: str) -> list[str] | None:
    if v is None:
        return None
    if isinstance(v, list) and v:
        if len(v) > 1:
            log.warning(
                "%s: class_names lists %d output heads; tilesegd runs the first", source, len(v)
            )
        v = v[0]
    try:
        items = sorted((int(k), str(name)) for k, name in v.items())
    except (AttributeError, TypeError, ValueError):
        raise ModelFileError(
            f"{source}: metadata class_names must map class ids to names, e.g. "
            '{"0": "background", "1": "building"}'
        ) from None
    if [k for k, _ in items] != list(range(len(items))):
        raise ModelFileError(
            f"{source}: class_names ids {[k for k, _ in items]} must be 0..K-1 without gaps"
        )
    return [name for _, name in items]


def _deepness_meta(props: dict[str, str], io: GraphIO, source: str) -> dict[str, Any]:
    """The ``tilesegd.json`` equivalent of Deepness / GeoDeep metadata (see module doc)."""
    kind = _value(props, "model_type")
    if kind is not None and str(kind).capitalize() != "Segmentor":
        raise ModelFileError(
            f"{source}: model_type is {kind!r}; tilesegd runs segmentation models only "
            "(model_type Segmentor, per-pixel class scores), not detectors or regressors"
        )
    mean = _value(props, "standardization_mean")
    std = _value(props, "standardization_std")
    in_ch = io.fixed("input", 1) or (len(mean) if isinstance(mean, list) else None)
    if in_ch is None:
        raise ModelFileError(
            f"{source}: the graph's input channel count is dynamic and no "
            "standardization_mean gives it; export the model with a fixed channel axis"
        )
    tile = _number(props, "tile_size", source, int) or _number(props, "tiles_size", source, int)
    if io.fixed_hw:
        tile = min(io.fixed_hw)  # both tools feed the graph's own input size
    if tile is None:
        raise ModelFileError(
            f"{source}: the graph's input height / width are dynamic and the metadata has no "
            "tile_size (or tiles_size); add one (pixels) or export with a fixed input size"
        )
    k_out = io.fixed("output", 1)
    names = _class_names(_value(props, "class_names") or _value(props, "names"), source)
    if names is None:
        if k_out is None:
            raise ModelFileError(
                f"{source}: no class_names and the output channel count is dynamic; add "
                'class_names ({"0": "background", ...}) to the metadata'
            )
        names = [f"class_{i}" for i in range(k_out)]
    if len(names) == 1 and k_out in (1, None):  # Deepness: one sigmoid channel = background + it
        names = ["background", names[0]]
    h, w = io.fixed_hw or (tile, tile)
    meta: dict[str, Any] = {
        "classes": names,
        "in_channels": in_ch,
        "input_scale": 255.0,
        "mean": [float(v) for v in mean] if isinstance(mean, list) else None,
        "std": [float(v) for v in std] if isinstance(std, list) else None,
        "multiple": math.gcd(h, w, _MAX_MULTIPLE),
        "tile_size": tile,
        "dtypes": ["uint8"],
        "output": "probabilities",
        "metadata": "deepness",
    }
    res = _number(props, "resolution", source)
    if res is not None and res > 0:
        meta["gsd"] = res / 100.0  # cm/px -> m
    pct = _number(props, "tiles_overlap", source)
    if pct is not None:
        meta["overlap"] = int(tile * max(0.0, pct) / 100.0) // 2 * 2
    if len(names) == 2:
        meta["seg_thresh"] = _number(props, "seg_thresh", source) if "seg_thresh" in props else 0.5
    return meta


def check_against_graph(spec: ModelSpec, io: GraphIO, source: str) -> None:
    """Check a spec against the graph's declared shapes (what is fixed in the graph).

    Raises:
        ModelFileError: input not (B, C, H, W), another channel count, an output rank other
            than 4, an output channel count that is neither K nor 1 (for K = 2 classes), or a
            ``tile_size`` larger than a fixed input (``output`` and ``seg_thresh`` were
            checked when the spec was read: :data:`tilesegd.model.spec.OPTIONAL_KEYS`).
    """
    if io.input_shape is not None and len(io.input_shape) != 4:
        raise ModelFileError(
            f"{source}: the graph's input has shape {_dims(io.input_shape)}; tilesegd feeds "
            "images as (batch, channels, height, width)"
        )
    c = io.fixed("input", 1)
    if c is not None and c != spec.in_channels:
        raise ModelFileError(
            f"{source}: the graph takes {c} input channels, but the metadata says "
            f"in_channels {spec.in_channels}; make them agree"
        )
    if io.output_shape is not None and len(io.output_shape) != 4:
        raise ModelFileError(
            f"{source}: the graph's output has shape {_dims(io.output_shape)}; a segmentation "
            "model outputs per-pixel class scores (batch, classes, height, width) (a detector "
            "or classifier cannot run in tilesegd)"
        )
    k, want = io.fixed("output", 1), spec.num_classes
    if k is not None and k != want and not (k == 1 and want == 2):
        raise ModelFileError(
            f"{source}: the graph outputs {k} channels, but the metadata lists {want} classes "
            f"({', '.join(c.name for c in spec.classes)}); fix the class list"
        )
    if io.fixed_hw and spec.tile_size > min(io.fixed_hw):
        raise ModelFileError(
            f"{source}: tile_size {spec.tile_size} is larger than the graph's fixed input "
            f"{io.fixed_hw[0]}x{io.fixed_hw[1]}; set tile_size to at most {min(io.fixed_hw)}"
        )


def _dims(shape: tuple[int | None, ...]) -> str:
    return "(" + ", ".join("?" if d is None else str(d) for d in shape) + ")"


def to_logits(out: torch.Tensor, num_classes: int, output: str, threshold: float) -> torch.Tensor:
    """Map a graph's output to the logits the engine expects.

    Args:
        out: (B, K', H, W) float scores: logits, or probabilities (``output="probabilities"``).
        num_classes: K in the spec.
        output: ``"logits"`` or ``"probabilities"``.
        threshold: ``seg_thresh`` for a one-channel output with K = 2.

    Returns:
        (B, K, H, W) float32 logits: ``out`` itself; ``log(p)`` for probabilities (same argmax,
        and softmax gives ``p`` back); for one channel see :func:`binary_logits`. Any other
        channel count is returned unchanged (the engine reports the mismatch).
    """
    out = out.float()
    if out.ndim == 4 and out.shape[1] == 1 and num_classes == 2:
        return binary_logits(out, threshold, output == "probabilities")
    if output == "probabilities":
        return out.clamp_min(_TINY).log()
    return out


def binary_logits(v: torch.Tensor, threshold: float, probabilities: bool) -> torch.Tensor:
    """Two-class logits ``[0, d]`` from a one-channel output.

    The argmax is class 1 exactly where the model's probability exceeds ``threshold``:
    ``p > t`` for a probability output (Deepness / GeoDeep: the graph ends in a sigmoid;
    Deepness keeps ``p >= t``, which differs only at equality), ``sigmoid(x) > t``, i.e.
    ``x > logit(t)``, for a logit output. ``d = logit(p) - logit(t)``, so the softmax
    probability of class 1 is ``p (1 - t) / (p (1 - t) + t (1 - p))``: the model's ``p``
    re-centred so that the threshold maps to 0.5 (``p`` itself when ``t = 0.5``); with
    ``--save-probs`` that is what is stored.

    Args:
        v: (B, 1, H, W) float probabilities or logits.
        threshold: ``t`` in [0, 1].
        probabilities: ``v`` holds probabilities (else logits).

    Returns:
        (B, 2, H, W) float32 logits.
    """
    import torch

    v = v.float()
    tc = min(max(float(threshold), _EPS), 1.0 - _EPS)
    logit_t = math.log(tc) - math.log1p(-tc)
    if probabilities:
        p = v.clamp(_EPS, 1.0 - _EPS)
        d = torch.log(p) - torch.log1p(-p) - logit_t
        cut = float(threshold)
    else:
        d = v - logit_t
        t = float(threshold)
        cut = -math.inf if t <= 0 else math.inf if t >= 1 else math.log(t) - math.log1p(-t)
    above = v.double() > cut  # in float64: a float32 compare would round the threshold
    d = torch.where(above, d.clamp(min=_TINY), d.clamp(max=0.0))
    return torch.cat([torch.zeros_like(d), d], 1)


def interop_metadata(spec: ModelSpec) -> dict[str, str]:
    """``metadata_props`` for a model file that tilesegd, Deepness and GeoDeep all read.

    ``spec`` describes the graph as written by ``tilesegd export --format onnx``: input
    ``raw / 255`` (normalisation inside the graph), output softmax probabilities. The keys:
    ``tilesegd.json`` (the spec), ``model_type`` Segmentor, ``class_names`` ``{"id": name}``,
    ``tile_size`` and ``tiles_size``, ``tiles_overlap`` (percent, rounded up so the tools keep
    at least the measured overlap), ``standardization_mean`` / ``_std``, ``seg_thresh`` 0 and
    ``seg_small_segment`` 0 (plain argmax, no small-segment removal: tilesegd's behaviour),
    ``resolution`` (cm/px) when the spec has ``gsd``.

    Raises:
        ValueError: ``spec.input_scale`` is not 255 (Deepness and GeoDeep divide by 255).
    """
    if spec.input_scale != 255.0:
        raise ValueError("Deepness and GeoDeep divide by 255: bake other scales into the graph")
    tile = spec.tile_size
    overlap = spec.overlap if spec.overlap is not None else min(64, tile // 4) // 2 * 2
    props = {
        META_NAME: json.dumps(spec.to_dict()),
        "model_type": json.dumps("Segmentor"),
        "class_names": json.dumps({str(c.id): c.name for c in spec.classes}),
        "tile_size": json.dumps(tile),
        "tiles_size": json.dumps(tile),
        "tiles_overlap": json.dumps(math.ceil(100 * overlap / tile)),
        "standardization_mean": json.dumps(list(spec.mean)),
        "standardization_std": json.dumps(list(spec.std)),
        "seg_thresh": json.dumps(0.0),
        "seg_small_segment": json.dumps(0),
    }
    if spec.gsd:
        props["resolution"] = json.dumps(round(float(spec.gsd) * 100.0, 6))
    return props

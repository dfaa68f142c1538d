"""``tilesegd export --format onnx``: one ONNX file for tilesegd, QGIS Deepness and GeoDeep.

Both tools feed a graph ``uint8 / 255`` (no other scaling), apply Deepness's optional
``standardization_mean`` / ``_std`` (GeoDeep ignores them), take their tile size from the
graph's input shape, and expect softmax probabilities (they zero those below ``seg_thresh``
before the argmax). So the written graph is :class:`DeployNet`: ``raw / 255`` in, the trained
normalisation inside, softmax out; its ``tilesegd.json`` says ``input_scale`` 255, ``mean`` 0,
``std`` 1, ``output: probabilities`` (and keeps the trained values under
``normalization_in_graph``). A model trained on other than 8-bit imagery (``input_scale`` !=
255, e.g. uint16) runs correctly in tilesegd, but those tools only ever feed 8-bit values.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Any

import torch

from tilesegd import atomic
from tilesegd.errors import ModelFileError
from tilesegd.model.model_file import ModelSpec, load_model
from tilesegd.model.parity import compare_scores

log = logging.getLogger(__name__)

ONNX_OPSET = 17
INPUT_NAME, OUTPUT_NAME = "input", "probabilities"


class DeployNet(torch.nn.Module):
    """``net`` as the ONNX file runs it: input ``raw / 255`` (B, C, H, W) float32; inside,
    ``(raw / input_scale - mean) / std`` as in training; out softmax probabilities
    (B, K, H, W) float32."""

    def __init__(self, net: torch.nn.Module, spec: ModelSpec) -> None:
        super().__init__()
        self.net = net
        std = torch.tensor(spec.std, dtype=torch.float32).view(1, -1, 1, 1)
        mean = torch.tensor(spec.mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.register_buffer("a", 255.0 / (spec.input_scale * std))
        self.register_buffer("b", -mean / std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.net(x * self.a + self.b), 1)


def onnx_spec(meta: dict[str, Any], source: str) -> ModelSpec:
    """The ``tilesegd.json`` of the exported graph, from the checkpoint's spec ``meta``."""
    trained = ModelSpec.from_dict(meta, source)
    c = trained.in_channels
    return ModelSpec.from_dict(
        {
            **meta,
            "input_scale": 255.0,
            "mean": [0.0] * c,
            "std": [1.0] * c,
            "output": "probabilities",
            "normalization_in_graph": {
                "input_scale": trained.input_scale,
                "mean": list(trained.mean),
                "std": list(trained.std),
            },
        },
        source,
    )


def export_onnx(
    net: torch.nn.Module, meta: dict[str, Any], output: Path, dynamic_size: bool = False
) -> dict[str, Any]:
    """Write ``net`` as an ONNX model file (atomically) and check it against eager PyTorch.

    Args:
        net: the eager network, float32 normalised (B, C, H, W) -> logits (B, K, H, W).
        meta: its ``tilesegd.json`` (trained ``input_scale`` / ``mean`` / ``std``, ``tile_size``).
        output: the ``.onnx`` file to write.
        dynamic_size: dynamic input height / width where the network allows (checked by
            running the file at a second size; else a warning and a fixed size).

    Returns:
        ``{"max_abs_diff": probability units, "argmax_agreement": [0, 1], "diff_units":
        "probability", "dynamic_size": bool}``, on a seeded batch of 2 random raw tiles.

    Raises:
        ModelFileError: the file cannot be written.
    """
    from tilesegd.model.onnx_meta import interop_metadata
    from tilesegd.model.onnx_model import write_metadata

    trained = ModelSpec.from_dict(meta, str(output))
    spec = onnx_spec(meta, str(output))
    if trained.input_scale != 255.0:
        log.warning(
            "%s: trained on raw values / %g (not 8-bit imagery): tilesegd runs it correctly, "
            "but Deepness and GeoDeep only feed 8-bit values / 255",
            output,
            trained.input_scale,
        )
    if not spec.gsd:
        log.warning("%s: no gsd in the model: GeoDeep will assume 10 cm/px", output)
    deploy = DeployNet(net.eval().cpu(), trained).eval()
    props = interop_metadata(spec)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = str(atomic.new_temporary(output, ".tmp.onnx"))
    dynamic = False
    try:
        for dynamic in [True, False] if dynamic_size else [False]:
            _trace(deploy, Path(tmp), spec, dynamic)
            write_metadata(tmp, props)
            if not dynamic or _runs_at_other_size(deploy, Path(tmp), spec):
                break
            log.warning(
                "%s: the network needs a fixed input size; exported %d px", output, spec.tile_size
            )
        atomic.replace(tmp, output)
    except OSError as exc:
        raise ModelFileError(f"{output}: cannot write the ONNX model ({exc})") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    side = spec.tile_size
    if dynamic:
        side = min(side, max(64, 2 * spec.multiple))
    gen = torch.Generator().manual_seed(0)
    raw = torch.rand(2, spec.in_channels, side, side, generator=gen) * trained.input_scale
    check = _parity(net, trained, load_model(output, "cpu").module, raw)
    return {**check, "diff_units": "probability", "dynamic_size": dynamic}


def _parity(net: torch.nn.Module, trained: ModelSpec, onnx_net: Any, raw: torch.Tensor) -> dict:
    """Softmax of the eager net on normalised ``raw`` vs the ONNX file on ``raw / 255``."""
    mean = torch.tensor(trained.mean).view(1, -1, 1, 1)
    std = torch.tensor(trained.std).view(1, -1, 1, 1)
    with torch.no_grad():
        want = torch.softmax(net((raw / trained.input_scale - mean) / std), 1)
        got = onnx_net(raw / 255.0).exp()  # the runtime gives log-probabilities
    return compare_scores(want, got)


def _trace(deploy: DeployNet, path: Path, spec: ModelSpec, dynamic: bool) -> None:
    """``torch.onnx.export`` (TorchScript-based exporter) with a dynamic batch axis."""
    axes = {0: "batch", 2: "height", 3: "width"} if dynamic else {0: "batch"}
    x = torch.zeros(2, spec.in_channels, spec.tile_size, spec.tile_size)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation and tracer notes
        torch.onnx.export(
            deploy,
            (x,),
            str(path),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: axes, OUTPUT_NAME: axes},
            opset_version=ONNX_OPSET,
            dynamo=False,
        )


def _runs_at_other_size(deploy: DeployNet, path: Path, spec: ModelSpec) -> bool:
    """Whether the file gives the eager class ids at a non-square size other than the tile's."""
    m = spec.multiple
    h, w = spec.tile_size, spec.tile_size + m if spec.tile_size <= 64 else spec.tile_size - m
    x = torch.rand(1, spec.in_channels, h, w, generator=torch.Generator().manual_seed(1))
    try:
        with torch.no_grad():
            want = deploy(x)
            got = load_model(path, "cpu").module(x)
    except Exception as exc:  # onnxruntime refuses the shape
        log.debug("dynamic-size check failed: %s", exc)
        return False
    return got.shape == want.shape and compare_scores(want, got)["argmax_agreement"] >= 0.999

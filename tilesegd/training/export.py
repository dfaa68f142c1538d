"""``tilesegd export``: a training checkpoint -> a deployable model file; and the model file
``tilesegd train`` writes into RUNDIR (:func:`save_best_model`).

* ``torchscript``: by the output's suffix a ``torch.export`` archive (``.pt2``: dynamic batch,
  height and width) or a TorchScript file (``.ts``, traced), both made on the CPU and saved
  with ``tilesegd.json`` by :func:`tilesegd.model.model_file.save_model`; the reloaded file is
  checked against the eager network (max abs logit difference, argmax agreement), and a
  ``.pt2`` also at other input sizes and batch sizes (:func:`check_dynamic`).
* ``tensorrt``: traced on CUDA and compiled by :mod:`tilesegd.inference.tensorrt` for a static
  ``(batch_size, C, tile_size, tile_size)`` input, saved as TorchScript with the same
  ``tilesegd.json`` (plus ``runtime: tensorrt``, ``static_input`` and ``precision``).
* ``onnx``: see :mod:`tilesegd.training.export_onnx`. ``torch.onnx.export`` (opset 17) of the net:
  input ``raw / 255`` (what the QGIS Deepness plugin and GeoDeep feed), the trained
  normalisation inside the graph, softmax probabilities out; a dynamic batch axis, and a fixed
  ``tile_size`` input side unless ``dynamic_size`` (both tools take their tile size from the
  graph's input shape, so they cannot open a dynamic one). Its ``metadata_props`` carry
  ``tilesegd.json`` and the Deepness / GeoDeep keys (:func:`tilesegd.model.onnx_meta.interop_metadata`).
  Parity: softmax probabilities of the reloaded file (onnxruntime) against the eager network.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import torch

from tilesegd import atomic
from tilesegd.errors import ConfigError, ModelFileError
from tilesegd.model.model_file import (
    FALLBACK_FILE,
    META_NAME,
    MODEL_FILE,
    ModelSpec,
    load_model,
    quiet_torchscript,
    save_model,
)
from tilesegd.model.parity import compare_scores, parity
from tilesegd.training.checkpoint import load_checkpoint

log = logging.getLogger(__name__)

FORMATS = ("torchscript", "tensorrt", "onnx")


def export_tile(spec: ModelSpec, fmt: str, tile_size: int | None, dynamic_size: bool) -> int:
    """The tile side (pixels) an export records: ``tile_size`` if given; for a fixed-size ONNX
    graph the default rule's tile for a large scene
    (:func:`tilesegd.inference.geometry.deploy_tile`), not the training tile; else the
    checkpoint's.

    Raises:
        ConfigError: ``tile_size`` is not a multiple of the model's ``multiple``.
    """
    tile = tile_size or spec.tile_size
    if fmt == "onnx" and not dynamic_size and tile_size is None:
        from tilesegd.inference.geometry import deploy_tile

        tile = deploy_tile(spec)
    if tile % spec.multiple:
        raise ConfigError(
            f"--tile-size {tile} must be a multiple of {spec.multiple} for this model; try "
            f"{max(spec.multiple, tile // spec.multiple * spec.multiple)}"
        )
    return tile


def export_model(
    ckpt: str | os.PathLike[str],
    output: str | os.PathLike[str],
    fmt: str = "torchscript",
    precision: str = "fp32",
    tile_size: int | None = None,
    batch_size: int | None = None,
    report: dict[str, Any] | None = None,
    dynamic_size: bool = False,
) -> Path:
    """Export a checkpoint (or a run directory: its ``best.ckpt``) to a model file.

    Args:
        ckpt: ``RUNDIR/best.ckpt``, ``last.ckpt`` or RUNDIR.
        output: the model file to write (``fmt="torchscript"``: ``.pt2`` writes torch.export,
            any other suffix, e.g. ``.ts``, TorchScript).
        fmt: ``torchscript`` (TorchScript or torch.export, by the suffix), ``tensorrt`` or
            ``onnx``.
        precision: ``fp32``; ``fp16`` only for ``tensorrt`` (TorchScript and ONNX stay fp32;
            TorchScript is run in fp16 by ``tilesegd run --precision fp16``).
        tile_size: the model's suggested (TensorRT, and ONNX without ``dynamic_size``: fixed)
            tile side in pixels; default the checkpoint's, and for a fixed-size ONNX graph of a
            model with a measured overlap the default rule's tile for a large scene
            (:func:`tilesegd.inference.geometry.deploy_tile`: 256-px training tiles with a
            192-px halo would run 4x the pixels in Deepness / GeoDeep, and still seam).
        batch_size: TensorRT's fixed batch size (default 8); unused for TorchScript.
        report: if given, filled with the parity check (``max_abs_diff``, in logit units, or
            probability units for ONNX: ``diff_units``; ``argmax_agreement``), ``format`` and
            ``output``.
        dynamic_size: ONNX only: dynamic input height / width where the network allows (for
            tilesegd; Deepness and GeoDeep need the fixed size).

    Returns:
        The written path.

    Raises:
        ConfigError: unknown format / precision, or a tile size that is not a multiple of the
            model's ``multiple``.
        ModelFileError: unreadable checkpoint; ``onnx`` without onnx / onnxruntime installed.
        DeviceError: ``tensorrt`` without CUDA or torch-tensorrt.
    """
    from tilesegd.training.model import network_from_state

    if fmt not in FORMATS:
        raise ConfigError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if precision not in ("fp32", "fp16"):
        raise ConfigError(f"--precision must be fp32 or fp16, got {precision!r}")
    if fmt != "tensorrt" and precision != "fp32":
        raise ConfigError(
            "--precision fp16 applies to --format tensorrt; a TorchScript model stays fp32 and "
            "runs in fp16 with `tilesegd run --precision fp16`"
        )
    if dynamic_size and fmt != "onnx":
        raise ConfigError("--dynamic-size applies to --format onnx")
    if fmt == "tensorrt":
        from tilesegd.inference.tensorrt import require_tensorrt

        require_tensorrt()  # fail before any work
    if fmt == "onnx":
        from tilesegd.model.onnx_model import require_onnx

        require_onnx()
    model_state, st = load_checkpoint(ckpt)
    meta = dict(st["spec"])
    meta["trained"] = {"epoch": st.get("epoch"), "val_miou": st.get("best_miou")}
    spec = ModelSpec.from_dict(meta, str(ckpt))
    meta["tile_size"] = tile = export_tile(spec, fmt, tile_size, dynamic_size)
    net = network_from_state(meta, model_state).eval()
    output = Path(output)
    if fmt == "torchscript":
        spec = ModelSpec.from_dict(meta, str(output))
        side = min(tile, max(64, 2 * spec.multiple))
        save_model(net, output, spec, example_size=side)
        loaded = load_model(output, "cpu")
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(2, spec.in_channels, side, side, generator=gen)
        check = parity(net, loaded.module, x)
        problem = check_dynamic(net, output, spec) if loaded.kind == "export" else None
        if problem is not None:
            log.warning(
                "%s: this torch.export file does not run other input or batch sizes (%s); export "
                "to a .ts file (TorchScript) for one that does",
                output,
                problem,
            )
    elif fmt == "onnx":
        from tilesegd.training.export_onnx import export_onnx

        check = export_onnx(net, meta, output, dynamic_size)
    else:
        check = _export_tensorrt(net, meta, output, tile, batch_size or 8, precision)
    check.setdefault("diff_units", "logit")
    log.info(
        "exported %s (%s): max abs %s diff vs eager %.3g, argmax agreement %.5f",
        output,
        fmt,
        check["diff_units"],
        check["max_abs_diff"],
        check["argmax_agreement"],
    )
    if report is not None:
        report.update(check, format=fmt, output=str(output))
    return output


def _export_tensorrt(
    net: torch.nn.Module,
    meta: dict[str, Any],
    output: Path,
    tile: int,
    batch: int,
    precision: str,
) -> dict[str, float]:
    from tilesegd.inference.tensorrt import compile_tensorrt

    c = int(meta["in_channels"])
    net = net.cuda()
    x = torch.randn(batch, c, tile, tile, device="cuda", generator=None)
    with quiet_torchscript(), torch.no_grad():
        traced = torch.jit.trace(net, x[:1], check_trace=False)
    dtype = torch.float32 if precision == "fp32" else torch.float16
    trt_mod = compile_tensorrt(traced, c, (tile, tile), batch, dtype, "cuda", min_batch=batch)
    check = parity(net, trt_mod, x)
    meta = {
        **meta,
        "runtime": "tensorrt",
        "static_input": [batch, c, tile, tile],
        "precision": precision,
    }
    spec = ModelSpec.from_dict(meta, str(output))
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = str(atomic.new_temporary(output))
    try:
        with quiet_torchscript():
            torch.jit.save(trt_mod, tmp, _extra_files={META_NAME: json.dumps(spec.to_dict())})
        atomic.replace(tmp, output)
    except OSError as exc:
        raise ModelFileError(f"{output}: cannot write the TensorRT model ({exc})") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return check


def check_dynamic(eager: torch.nn.Module, path: Path, spec: ModelSpec) -> str | None:
    """Load the model file ``path`` and run it, on the CPU, at sizes other than the tile it was
    exported with, non-square multiples of ``spec.multiple``: (1, C, S + m, S + 2m) and
    (3, C, s, s + m), with ``S`` = ``spec.tile_size`` (at most 512) and ``s`` about S / 2 (at
    least 4m); its logits must match the eager network's (to 1e-3 of their magnitude).

    Args:
        eager: the network the file was made from (on the CPU, eval mode).
        path: the model file.
        spec: its metadata.

    Returns:
        ``None`` when it runs so, else what failed (one line): a static-shape torch.export
        file fails at batch 1.
    """
    m, c = spec.multiple, spec.in_channels
    side = max(m, min(spec.tile_size, 512) // m * m)
    small = max(4 * m, side // 2 // m * m)
    gen = torch.Generator().manual_seed(0)
    try:
        module = load_model(path, "cpu").module
        for shape in ((1, c, side + m, side + 2 * m), (3, c, small, small + m)):
            x = torch.randn(*shape, generator=gen)
            with torch.no_grad():
                want, got = eager(x), module(x)
            if got.shape != want.shape:
                return f"input {shape}: output {tuple(got.shape)}, not {tuple(want.shape)}"
            diff = compare_scores(want, got)["max_abs_diff"]
            if not diff <= 1e-3 * max(1.0, float(want.abs().max())):
                return f"input {shape}: logits differ from the eager network's by {diff:.3g}"
    except Exception as exc:  # torch.export's guards raise AssertionError / RuntimeError
        return f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}"
    return None


def save_best_model(
    out: Path, measure_tile: int | None = None, device: str | torch.device = "cpu"
) -> Path:
    """Write ``out/model.pt2`` (torch.export) from ``out/best.ckpt`` (model-file contract, via
    ``save_model``), checked to run at other input sizes and batch sizes
    (:func:`check_dynamic`); where it does not (a network torch.export cannot export with a
    dynamic input size), ``out/model.ts`` (TorchScript) instead, with a logged warning. The
    other of the two, left by an earlier run in ``out``, is removed.

    Args:
        out: the run directory.
        measure_tile: when given, the best weights' seamless geometry is measured first (tiles
            of at least this many pixels, :func:`tilesegd.training.validate.seamless_spec`) and
            recorded in ``best.ckpt`` too (training measured it at no epoch: every validation
            image fitted one tile).
        device: where to measure.

    Returns:
        The model file written.

    Raises:
        ModelFileError: unreadable ``best.ckpt``. OSError: the file cannot be written.
    """
    from tilesegd.training.checkpoint import save_checkpoint
    from tilesegd.training.model import network_from_state
    from tilesegd.training.validate import seamless_spec

    model_state, st = load_checkpoint(out / "best.ckpt")
    net = network_from_state(st["spec"], model_state)
    if measure_tile is not None:
        spec = ModelSpec.from_dict(st["spec"], str(out / "best.ckpt"))
        spec = seamless_spec(net.to(device), spec, False, measure_tile, torch.device(device))
        st["spec"] = spec.to_dict()
        save_checkpoint(out / "best.ckpt", model_state, st)
        net = net.cpu()
    meta = dict(st["spec"])
    meta["trained"] = {"epoch": st["epoch"], "val_miou": round(st["best_miou"], 6)}
    path = _save_run_model(net.eval(), out, meta)
    stale = out / (FALLBACK_FILE if path.name == MODEL_FILE else MODEL_FILE)
    if stale.is_file():
        stale.unlink()
        log.info("removed %s (an earlier run's; the model is now %s)", stale, path)
    return path


def _save_run_model(net: torch.nn.Module, out: Path, meta: dict[str, Any]) -> Path:
    """``out/model.pt2`` when it passes :func:`check_dynamic`, else ``out/model.ts``."""
    path = out / MODEL_FILE
    spec = ModelSpec.from_dict(meta, str(path))
    example = min(spec.tile_size, 4 * spec.multiple)
    try:
        save_model(net, path, spec, example_size=example)
        problem = check_dynamic(net, path, spec)
    except (OSError, ModelFileError):
        raise
    except Exception as exc:  # torch.export cannot export this network at all
        problem = f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}"
    if problem is None:
        return path
    log.warning(
        "%s: the torch.export file does not run other input or batch sizes (%s); writing "
        "%s (TorchScript) instead",
        path,
        problem,
        FALLBACK_FILE,
    )
    path.unlink(missing_ok=True)
    path = out / FALLBACK_FILE
    return save_model(net, path, ModelSpec.from_dict(meta, str(path)), example_size=example)

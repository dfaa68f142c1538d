"""TorchScript and torch.export model files converted once to ONNX, for onnxruntime.

On the CPU onnxruntime runs the project's U-Nets faster than torch's own kernels
(``benchmarks/RESULTS.md``, "Runtimes"), so ``--runtime auto`` runs every model file through it:
the network is exported with ``torch.onnx.export`` (the TorchScript-based exporter, opset
:data:`OPSET`, dynamic batch, height and width), checked against torch on seeded random tiles at
two sizes, and kept in the model cache beside fetched models,
``<cache>/<sha256 of the model file>/`` (:func:`tilesegd.storage.fetch.cache_dir`):

* ``onnx-opset17-torch<version>.onnx``: the converted graph (:func:`export_graph`) (logits out; the engine normalises
  the raw tile as it does for torch);
* ``onnx-opset17-torch<version>.json``: the check's figures, or why the conversion failed (a
  failed conversion is not retried for the same file and torch; delete the JSON to retry).

The converted graph runs under the source file's own ``tilesegd.json`` spec. Conversion costs a
few seconds once per model file; every later run loads the cached graph.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import warnings
from pathlib import Path
from typing import Any

import torch

from tilesegd import atomic
from tilesegd.errors import ModelFileError
from tilesegd.model.parity import compare_scores
from tilesegd.model.spec import LoadedModel, ModelSpec

log = logging.getLogger(__name__)

OPSET = 17
QUIET_LOGGERS = ("onnx_ir", "onnxscript", "torch.onnx", "torch.export", "torch._dynamo")
MIN_AGREEMENT = 0.9999  # class ids of the converted graph vs torch, on the check's random tiles
_CHECK_SEED = 0


def onnxruntime_available() -> bool:
    """Whether ``onnx`` and ``onnxruntime`` are installed (``pip install 'tilesegd[onnx]'``)."""
    return all(importlib.util.find_spec(n) is not None for n in ("onnx", "onnxruntime"))


def converted_paths(sha256: str, cache: Path | None = None) -> tuple[Path, Path]:
    """``(graph, report)`` paths of the converted model of the file with this SHA-256 (hex)."""
    from tilesegd.storage.fetch import cache_dir

    stem = f"onnx-opset{OPSET}-torch{torch.__version__.split('+')[0]}"
    folder = (cache or cache_dir()) / sha256.lower()
    return folder / f"{stem}.onnx", folder / f"{stem}.json"


def export_graph(module: Any, spec: ModelSpec, dest: Path) -> None:
    """Write ``module`` (float32 (B, C, H, W) -> logits (B, K, H, W)) to ``dest`` as ONNX with
    dynamic batch, height and width axes, atomically.

    TorchScript modules and plain ``nn.Module`` s go through the TorchScript-based exporter
    (``torch.onnx.export(dynamo=False)``, opset :data:`OPSET`, ~1 s for a U-Net); ``torch.export``
    modules (``.pt2``) through the dynamo exporter (``dynamo=True``, needs ``onnxscript``,
    ~10-15 s), since tracing them bakes their input size into the graph.

    Raises:
        Exception: whatever the exporter raises for a network it cannot export.
    """
    side = max(4 * spec.multiple, 64) // spec.multiple * spec.multiple
    x = torch.zeros(2, spec.in_channels, side, side)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = atomic.new_temporary(dest, ".tmp.onnx")
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the exporters' deprecation and tracer notes
            if is_export_module(module):
                export_dynamo(module, x, tmp)  # opset OPSET + 1
            else:
                axes = {0: "batch", 2: "height", 3: "width"}
                torch.onnx.export(
                    module,
                    (x,),
                    str(tmp),
                    input_names=["input"],
                    output_names=["logits"],
                    dynamic_axes={"input": axes, "logits": axes},
                    opset_version=OPSET,
                    dynamo=False,
                )
        atomic.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def is_export_module(module: Any) -> bool:
    """Whether ``module`` came from a ``torch.export`` archive (such modules refuse
    ``train()`` / ``eval()``)."""
    try:
        module.eval()
    except NotImplementedError:
        return True
    return False


def export_dynamo(module: Any, x: torch.Tensor, dest: Path) -> None:
    """``torch.onnx.export(dynamo=True)`` of a ``torch.export`` module at example ``x``, with
    batch, height and width left to torch.export's ``Dim.AUTO`` (symbolic in the ONNX graph).

    Raises:
        ModuleNotFoundError: ``onnxscript`` is not installed. Exception: the exporter's own.
    """
    import importlib.util

    if importlib.util.find_spec("onnxscript") is None:
        raise ModuleNotFoundError(
            "converting a .pt2 file needs onnxscript: pip install 'tilesegd[onnx]'"
        )
    auto = torch.export.Dim.AUTO  # within the source program's own ranges (no new guard)
    shapes = ({0: auto, 2: auto, 3: auto},)
    for name in QUIET_LOGGERS:  # their INFO lines (passes, constant folding) are not ours
        logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLogger(name).level))
    program = torch.onnx.export(
        module, (x,), dynamo=True, dynamic_shapes=shapes, opset_version=OPSET + 1,
        verbose=False,
    )  # fmt: skip
    program.save(str(dest))


def check_sizes(spec: ModelSpec) -> list[tuple[int, int, int]]:
    """``(batch, height, width)`` of the check's random tiles: a square one and a non-square
    one of another size (so a graph that baked in one input size fails), multiples of
    ``spec.multiple``."""
    m = max(1, spec.multiple)
    side = max(128, 2 * m) // m * m
    return [(2, side, side), (1, side + m, side - m if side - m >= m else side + 2 * m)]


def compare(module: Any, converted: Any, spec: ModelSpec) -> dict[str, float]:
    """Class-id agreement (share of pixels, [0, 1]; the lowest over the sizes) and the largest
    absolute logit difference between torch ``module`` and ``converted`` on seeded uniform
    random tiles in the normalised input range (:func:`check_sizes`;
    :func:`tilesegd.model.parity.compare_scores` per size).

    Raises:
        ModelFileError: the outputs differ in shape. Exception: either network fails on a size.
    """
    gen = torch.Generator().manual_seed(_CHECK_SEED)
    agree, diff = 1.0, 0.0
    for n, h, w in check_sizes(spec):
        x = torch.rand(n, spec.in_channels, h, w, generator=gen) * 4 - 2
        with torch.no_grad():
            want, got = module(x), converted(x)
        if got.shape != want.shape:
            raise ModelFileError(f"output shape {tuple(got.shape)} != {tuple(want.shape)}")
        scores = compare_scores(want, got)
        agree = min(agree, scores["argmax_agreement"])
        diff = max(diff, scores["max_abs_diff"])
    return {"argmax_agreement": agree, "max_abs_diff": diff}


def convert(loaded: LoadedModel, sha256: str, cache: Path | None = None) -> dict[str, Any]:
    """Convert a loaded TorchScript / torch.export model to ONNX in the cache and check it
    (module docstring); records the outcome in the report JSON.

    Returns:
        The report: ``{"ok": bool, "reason": str, "argmax_agreement", "max_abs_diff",
        "seconds", ...}``.
    """
    import time
    from importlib.metadata import version

    from tilesegd.model.onnx_model import session_model

    graph, report_path = converted_paths(sha256, cache)
    report_path.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    module = loaded.module.cpu() if hasattr(loaded.module, "cpu") else loaded.module
    dynamo = is_export_module(module)
    report: dict[str, Any] = {"source": str(loaded.path), "ok": False}
    report.update(exporter="dynamo" if dynamo else "torchscript", opset=OPSET + dynamo)
    report["onnxruntime"] = version("onnxruntime")
    try:
        export_graph(module, loaded.spec, graph)
        check = compare(module, session_model(graph, loaded.spec, "cpu"), loaded.spec)
        report.update(check)
        report["ok"] = check["argmax_agreement"] >= MIN_AGREEMENT
        if not report["ok"]:
            report["reason"] = f"class ids agree on {check['argmax_agreement']:.4%} of pixels"
    except Exception as exc:  # the exporter's and onnxruntime's own errors, ModelFileError
        report["reason"] = f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
    report["seconds"] = round(time.perf_counter() - start, 2)
    if not report["ok"] and graph.exists():
        graph.unlink()
    atomic.write_text(report_path, json.dumps(report, indent=1))
    return report


def onnx_twin(
    loaded: LoadedModel, sha256: str, device: str | torch.device = "cpu", cache: Path | None = None
) -> LoadedModel | None:
    """``loaded`` run by onnxruntime: its cached ONNX conversion, made now if the cache has none
    (a few seconds, once per model file and torch version), on ``device``.

    Returns:
        A :class:`LoadedModel` whose module is an :class:`~tilesegd.model.onnx_model.OnnxModel`
        under ``loaded.spec`` (kind ``"onnx"``); ``loaded`` itself when it is an ONNX file;
        ``None`` when onnxruntime is not installed or the network does not convert (why is
        logged: the caller runs it with torch).
    """
    if loaded.kind == "onnx":
        return loaded
    if not onnxruntime_available():
        log.info("onnxruntime is not installed (pip install 'tilesegd[onnx]'): running torch")
        return None
    from tilesegd.model.onnx_model import session_model

    graph = checked_graph(sha256, cache)
    if graph is not None:
        return LoadedModel(
            session_model(graph, loaded.spec, device), loaded.spec, loaded.path, "onnx"
        )
    graph, report_path = converted_paths(sha256, cache)
    report = read_report(report_path)
    if report is None or report.get("ok"):  # never converted, or the graph is gone
        log.info("%s: converting to ONNX for onnxruntime (once; cached in %s)", loaded.path, graph)
        report = convert(loaded, sha256, cache)
    if not report.get("ok"):
        log.warning(
            "%s: cannot run with onnxruntime (%s); running it with torch (eager). Delete %s "
            "to retry",
            loaded.path,
            report.get("reason", "conversion failed"),
            report_path,
        )
        return None
    module = session_model(graph, loaded.spec, device)
    return LoadedModel(module, loaded.spec, loaded.path, "onnx")


def cached_twin(
    path: str | os.PathLike[str], sha256: str, device: str | torch.device = "cpu"
) -> LoadedModel | None:
    """The model file at ``path`` (SHA-256 ``sha256``) as its cached, checked ONNX conversion on
    ``device``, without loading it with torch (its spec is read from ``tilesegd.json``);
    ``None`` when the cache holds no good conversion, or onnxruntime is not installed.

    Raises:
        ModelFileError: the file's metadata is unreadable; onnxruntime cannot load the graph.
    """
    from tilesegd.model.model_file import read_spec
    from tilesegd.model.onnx_model import session_model

    graph = checked_graph(sha256) if onnxruntime_available() else None
    if graph is None:
        return None
    spec = read_spec(path)
    return LoadedModel(session_model(graph, spec, device), spec, Path(path), "onnx")


def checked_graph(sha256: str, cache: Path | None = None) -> Path | None:
    """The cached ONNX graph of the file with this SHA-256 when its conversion report says it
    passed the check (:func:`convert`) and the graph is there; else ``None``."""
    graph, report_path = converted_paths(sha256, cache)
    report = read_report(report_path)
    return graph if report and report.get("ok") and graph.is_file() else None


def read_report(path: Path) -> dict[str, Any] | None:
    """The conversion report at ``path``, or ``None`` if absent or unreadable."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None

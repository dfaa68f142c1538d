"""The model-file contract: load and save self-describing TorchScript / torch.export files.

A model file is either

* a TorchScript archive (``torch.jit.save``, usually ``.ts``), or
* a ``torch.export`` archive (``torch.export.save``, ``.pt2``),

each carrying an extra file ``tilesegd.json`` that describes how to feed the network::

    {"classes": [{"id": 0, "name": "background", "color": [0, 0, 0]}, ...],
     "in_channels": 3, "bands": [1, 2, 3], "input_scale": 255.0,
     "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
     "multiple": 32, "tile_size": 512}

The network maps float32 ``(B, in_channels, H, W)`` to logits ``(B, K, H, W)`` with
``K = len(classes)``; ``H`` and ``W`` must be multiples of ``multiple``. Raw raster values are
divided by ``input_scale``, then normalised per channel with ``(x - mean) / std``.

Optional: ``"overlap"`` (pixels, even): the tile overlap ``tilesegd run`` uses by default, for
tiles of ``tile_size``. ``tilesegd train`` measures it (:func:`tilesegd.model.halo.measure_halo`) so
that the stitched masks agree with whole-image inference.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import warnings
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from tilesegd import atomic
from tilesegd.errors import ModelFileError
from tilesegd.model.spec import (
    DEFAULT_PALETTE,
    META_NAME,
    REQUIRED_FIELDS,
    ClassInfo,
    LoadedModel,
    ModelSpec,
    Runtime,
    check_file,
)
from tilesegd.storage.urls import parse_location
from tilesegd.warnfilter import WARNINGS_LOCK

__all__ = [
    "DEFAULT_PALETTE",
    "META_NAME",
    "REQUIRED_FIELDS",
    "ClassInfo",
    "LoadedModel",
    "ModelSpec",
    "Runtime",
    "check_file",
    "file_sha256",
    "load_model",
    "quiet_torchscript",
    "read_spec",
    "save_model",
    "trained_model",
]

if TYPE_CHECKING:  # pragma: no cover
    import torch

log = logging.getLogger(__name__)

# torch >= 2.14: "`torch.jit.load` is deprecated. Please switch to `torch.export`." (and
# trace / save / script alike), a FutureWarning; DeprecationWarning too, should torch switch
_JIT_DEPRECATED = r".*torch\.jit\b.*deprecated"


@contextlib.contextmanager
def quiet_torchscript() -> Iterator[None]:
    """Hide torch's TorchScript deprecation warnings (``torch.jit.load`` / ``trace`` / ``save``
    / ``script`` "is deprecated", torch >= 2.14) inside the block, whatever ``-W`` or
    ``PYTHONWARNINGS`` say; every other warning is shown as usual, and the filters are restored
    on exit (no process-wide filter is left behind).

    Reading TorchScript files stays supported (users have them); the warning names a torch
    API, which users cannot act on. Blocks are serialised by a lock, since
    :func:`warnings.catch_warnings` swaps process-wide state.
    """
    with WARNINGS_LOCK, warnings.catch_warnings():
        for category in (FutureWarning, DeprecationWarning):
            warnings.filterwarnings("ignore", message=_JIT_DEPRECATED, category=category)
        yield


MODEL_FILE = "model.pt2"  # what `tilesegd train` writes into RUNDIR (torch.export)...
FALLBACK_FILE = "model.ts"  # ...or, for a network torch.export cannot make dynamic, TorchScript


def trained_model(rundir: str | os.PathLike[str]) -> Path:
    """The model file ``tilesegd train`` wrote into ``rundir``: ``model.pt2``, else ``model.ts``
    (a network that torch.export cannot export with a dynamic input size, or a run made by an
    older tilesegd); ``rundir / "model.pt2"`` when there is neither. No torch import (the demo
    calls it)."""
    rundir = Path(rundir)
    for name in (MODEL_FILE, FALLBACK_FILE):
        if (rundir / name).is_file():
            return rundir / name
    return rundir / MODEL_FILE


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _is_export_archive(path: Path) -> bool:
    if path.suffix == ".pt2":
        return True
    try:
        with zipfile.ZipFile(path) as zf:
            return any(
                n.endswith("serialized_exported_program.json") or "/models/" in n
                for n in zf.namelist()
            ) and not any(n.endswith("constants.pkl") for n in zf.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def is_onnx(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` names an ONNX model file (by its ``.onnx`` suffix)."""
    return Path(path).suffix.lower() == ".onnx"


def read_spec(path: str | os.PathLike[str]) -> ModelSpec:
    """Read only the ``tilesegd.json`` of a model file (no network is loaded; for ``.onnx``
    files the metadata of :func:`tilesegd.model.onnx_model.read_onnx_spec`, no session built).

    Raises:
        ModelFileError: the file is missing, not a zip archive, or has no valid metadata.
    """
    path = Path(path)
    check_file(path)
    if is_onnx(path):
        from tilesegd.model.onnx_model import read_onnx_spec

        return read_onnx_spec(path)
    try:
        with zipfile.ZipFile(path) as zf:
            names = [n for n in zf.namelist() if n.split("/")[-1] == META_NAME]
            if not names:
                raise ModelFileError(
                    f"{path}: no {META_NAME} inside this model file; save it with "
                    "`tilesegd export` or add the metadata (README, model file)"
                )
            meta = json.loads(zf.read(names[0]).decode("utf-8"))
    except zipfile.BadZipFile:
        with open(path, "rb") as f:
            head = f.read(2)
        if head[:1] == b"\x80":  # pickle protocol 2+: a torch.save / Lightning checkpoint
            raise ModelFileError(
                f"{path}: a Python pickle (a training checkpoint?), not a model file; it is "
                "never unpickled. Export it with `tilesegd export`"
            ) from None
        raise ModelFileError(
            f"{path}: not a TorchScript or torch.export archive (truncated or corrupt?); "
            "re-export or re-copy the model file (an ONNX model needs the .onnx suffix)"
        ) from None
    except json.JSONDecodeError as exc:
        raise ModelFileError(f"{path}: {META_NAME} is not valid JSON ({exc})") from None
    return ModelSpec.from_dict(meta, str(path))


_OPAQUE_PREFIX = "opaque_obj_"  # torch.export's arbitrary-pickle constants (pickle.loads)


def _refuse_pickled_code(path: Path) -> None:
    """Refuse a ``torch.export`` archive holding opaque Python objects: torch would load them
    with plain ``pickle.loads``, which runs any code the file carries."""
    try:
        from torch.export.pt2_archive.constants import OPAQUE_OBJ_FILENAME_PREFIX as prefix
    except ImportError:  # pragma: no cover - older torch
        prefix = _OPAQUE_PREFIX
    with zipfile.ZipFile(path) as zf:
        for name in zf.namelist():
            text = name
            if name.endswith("constants_config.json"):
                text = zf.read(name).decode("utf-8", "replace")
            if prefix in text:
                raise ModelFileError(
                    f"{path}: the archive carries pickled Python objects ({name}), which could "
                    "run code when loaded; refused. Export a plain network (tensors only)"
                )


@contextlib.contextmanager
def _weights_only_loads() -> Iterator[None]:
    """Force every ``torch.load`` inside (e.g. in ``torch.export.load``, which asks for
    ``weights_only=False`` for pickled weights and sample inputs) to ``weights_only=True``:
    torch's restricted unpickler then refuses any callable that is not a tensor type, so a
    payload never runs. Uses torch's own ``TORCH_FORCE_WEIGHTS_ONLY_LOAD`` switch."""
    key = "TORCH_FORCE_WEIGHTS_ONLY_LOAD"
    old = os.environ.get(key)
    os.environ[key] = "1"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = old


def load_model(
    path: str | os.PathLike[str], device: str | torch.device = "cpu", sha256: str | None = None
) -> LoadedModel:
    """Load a model file (TorchScript, torch.export or ONNX) and its ``tilesegd.json``.

    ``.onnx`` files go to :func:`tilesegd.model.onnx_model.load_onnx` (onnxruntime).

    TorchScript archives are loaded with ``torch.jit.load``, whose unpickler only knows
    TorchScript types (a pickled Python callable is refused, never run). ``.pt2`` archives are
    loaded with ``torch.export.load`` with every ``torch.load`` forced to ``weights_only=True``,
    and archives holding opaque pickled objects are refused. Pickles (``.pt``, ``.ckpt``) are
    never loaded: they are not model files (export them with ``tilesegd export``).

    Args:
        path: the model file, or its URL (``s3://``, ``gs://``, ``az://``, ``https://``),
            fetched once into the model cache (:func:`tilesegd.storage.fetch.fetch_model`).
        device: where to put the weights.
        sha256: if given, the file's SHA-256 must equal it (a pin against a swapped model).

    Raises:
        ModelFileError: missing, empty, truncated or corrupt file; missing or invalid metadata;
            SHA-256 mismatch; a model URL that cannot be fetched.
    """
    import torch

    if parse_location(path) is not None:  # s3:// gs:// az:// http(s)://: the cached copy
        from tilesegd.storage.fetch import fetch_model

        path = fetch_model(path, sha256)
    path = Path(path)
    check_file(path)
    if sha256 is not None:
        actual = file_sha256(path)
        if actual.lower() != sha256.lower():
            raise ModelFileError(
                f"{path}: SHA-256 is {actual}, but --model-sha256 pins {sha256}; "
                "check that this is the model you meant"
            )
    if is_onnx(path):
        from tilesegd.model.onnx_model import load_onnx

        return load_onnx(path, device)
    spec = read_spec(path)
    try:
        if _is_export_archive(path):
            _refuse_pickled_code(path)
            with _weights_only_loads():
                ep = torch.export.load(str(path))
            module = ep.module()
            module.to(device)
            kind = "export"
        else:
            with quiet_torchscript():
                module = torch.jit.load(str(path), map_location=device)
                module.eval()
            kind = "torchscript"
    except ModelFileError:
        raise
    except Exception as exc:  # torch raises RuntimeError / ValueError / zip errors
        raise _load_error(path, exc) from None
    return LoadedModel(module, spec, path, kind)


def _load_error(path: Path, exc: Exception) -> ModelFileError:
    """One-line :class:`ModelFileError` for a failed ``torch.jit.load`` / ``torch.export.load``."""
    import pickle

    detail = " ".join(str(exc).split())  # torch's messages span lines; ours take one
    if isinstance(exc, pickle.UnpicklingError) or "Unknown type name" in detail:
        found = re.search(r"Unsupported global: GLOBAL (\S+)|Unknown type name '([^']+)'", detail)
        what = next((g for g in found.groups() if g), "?") if found else "?"
        return ModelFileError(
            f"{path}: the model file carries pickled Python objects that are not plain tensors "
            f"(it calls {what}); refused, nothing in it was run. Re-export the network with "
            "`tilesegd export` (TorchScript or torch.export)"
        )
    if "constants.pkl" in detail:
        return ModelFileError(
            f"{path}: a zip archive that is not a TorchScript model (a torch.save checkpoint?); "
            "checkpoints are never unpickled: export it with `tilesegd export`"
        )
    return ModelFileError(
        f"{path}: cannot load the network ({type(exc).__name__}: {detail[:200]}); "
        "the file may be truncated or from an incompatible torch; re-export it"
    )


def save_model(
    model: torch.nn.Module,
    path: str | os.PathLike[str],
    spec: ModelSpec,
    *,
    example_size: int | None = None,
    fmt: str | None = None,
) -> Path:
    """Trace/export ``model`` and save it with ``tilesegd.json``, atomically.

    Args:
        model: an ``nn.Module`` mapping float32 (B, in_channels, H, W) to logits (B, K, H, W).
        path: destination; ``.pt2`` selects torch.export, anything else TorchScript.
        spec: the metadata to embed.
        example_size: side in pixels of the example input used for tracing
            (default: ``spec.multiple * 2``).
        fmt: ``"torchscript"`` or ``"export"`` to override the suffix rule.

    A ``torch.export`` archive takes a dynamic batch size and dynamic height / width (multiples
    of ``spec.multiple``); a network that does not export so is saved with the static input
    shape ``(2, in_channels, side, side)`` of the example, with a logged warning (such a file
    runs only that shape: write TorchScript instead).

    Returns:
        The written path.

    Raises:
        ModelFileError: the network does not produce ``spec.num_classes`` channels.
        OSError: the file cannot be written.
    """
    import torch

    path = Path(path)
    fmt = fmt or ("export" if path.suffix == ".pt2" else "torchscript")
    model = model.eval().cpu()
    side = example_size or max(spec.multiple * 2, 64)
    example = torch.zeros(1, spec.in_channels, side, side)
    with torch.no_grad():
        out = model(example)
    if out.ndim != 4 or out.shape[1] != spec.num_classes:
        raise ModelFileError(
            f"{path}: the network outputs shape {tuple(out.shape)}, but the metadata lists "
            f"{spec.num_classes} classes; make them agree"
        )
    meta = json.dumps(spec.to_dict(), indent=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    # 0666 less the umask, not mkstemp's 0600; torch.export.save logs a warning for a name
    # that does not end in .pt2
    tmp = str(atomic.new_temporary(path, ".tmp.pt2" if fmt == "export" else ".tmp"))
    try:
        if fmt == "export":
            ep = _export_program(model, spec, side, path)
            torch.export.save(ep, tmp, extra_files={META_NAME: meta})
        else:
            with quiet_torchscript(), torch.no_grad():
                traced = torch.jit.trace(model, example, check_trace=False)
                torch.jit.save(traced, tmp, _extra_files={META_NAME: meta})
        atomic.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _export_program(
    model: torch.nn.Module, spec: ModelSpec, side: int, path: Path
) -> torch.export.ExportedProgram:
    """``torch.export.export`` of ``model`` on a (2, in_channels, side, side) example, with a
    dynamic batch (1..1024) and height / width (``spec.multiple`` x 1..1024); static shapes,
    with a logged warning, when the network does not export with dynamic ones.

    Returns:
        The ``torch.export.ExportedProgram``.

    Raises:
        Exception: whatever ``torch.export`` raises for a network it cannot export at all.
    """
    import torch

    n = torch.export.Dim("n", min=1, max=1024)
    hb = torch.export.Dim("hb", min=1, max=1024)
    wb = torch.export.Dim("wb", min=1, max=1024)
    shapes = ({0: n, 2: spec.multiple * hb, 3: spec.multiple * wb},)  # by position: any name
    example = torch.zeros(2, spec.in_channels, side, side)
    try:
        return torch.export.export(model, (example,), dynamic_shapes=shapes)
    except Exception as exc:  # some networks only export with static shapes
        detail = " ".join(str(exc).split())[:200]
        log.warning(
            "%s: torch.export cannot export this network with a dynamic input size "
            "(%s: %s); saved for the static input shape %s only (a .ts file runs any size)",
            path,
            type(exc).__name__,
            detail,
            tuple(example.shape),
        )
        return torch.export.export(model, (example,))

"""Training checkpoints without pickle: one safetensors file with JSON in its metadata header.

A ``.ckpt`` file is a plain `safetensors <https://huggingface.co/docs/safetensors>`_ file:

* tensors ``model/<name>``: the network's ``state_dict`` (float weights and buffers);
* tensors ``state/<n>``: every tensor found inside the training state (optimizer moments, RNG
  states, AMP scaler...);
* metadata ``tilesegd.ckpt``: a JSON document (format ``tilesegd-ckpt/1``) holding the rest of
  the state, where each tensor is replaced by ``{"__tensor__": "state/<n>"}`` and dicts with
  non-string keys by ``{"__items__": [[key, value], ...]}``.

Loading reads only tensors and JSON: no pickled code can run (``safetensors.safe_open``). The
file can be inspected with ``safetensors`` or ``python -m json.tool`` on its header.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tilesegd import atomic
from tilesegd.errors import ModelFileError

FORMAT = "tilesegd-ckpt/1"
META_KEY = "tilesegd.ckpt"


def _flatten(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, torch.Tensor):
        key = f"state/{len(tensors)}"
        tensors[key] = obj.detach().cpu().contiguous().clone()
        return {"__tensor__": key}
    if isinstance(obj, np.ndarray):
        return _flatten(torch.from_numpy(np.ascontiguousarray(obj)), tensors)
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj):
            return {k: _flatten(v, tensors) for k, v in obj.items()}
        return {"__items__": [[k, _flatten(v, tensors)] for k, v in obj.items()]}
    if isinstance(obj, (list, tuple)):
        return [_flatten(v, tensors) for v in obj]
    if isinstance(obj, (np.integer, np.floating, np.bool_)):
        return obj.item()
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    raise TypeError(f"cannot store {type(obj).__name__} in a checkpoint")


def _unflatten(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, dict):
        if set(obj) == {"__tensor__"}:
            return tensors[obj["__tensor__"]]
        if set(obj) == {"__items__"}:
            return {k: _unflatten(v, tensors) for k, v in obj["__items__"]}
        return {k: _unflatten(v, tensors) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_unflatten(v, tensors) for v in obj]
    return obj


def save_checkpoint(
    path: str | os.PathLike[str], model_state: dict[str, torch.Tensor], state: dict[str, Any]
) -> Path:
    """Write a checkpoint atomically (temporary file + rename).

    Args:
        path: destination ``.ckpt``.
        model_state: the network's ``state_dict()``.
        state: JSON-able training state; tensors / NumPy arrays anywhere inside are stored as
            tensors.

    Returns:
        The written path.
    """
    from safetensors.torch import save_file

    path = Path(path)
    tensors = {f"model/{k}": v.detach().cpu().contiguous().clone() for k, v in model_state.items()}
    extra: dict[str, torch.Tensor] = {}
    tree = _flatten(state, extra)
    tensors.update(extra)
    meta = {"format": FORMAT, META_KEY: json.dumps(tree)}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = str(atomic.new_temporary(path))
    try:
        save_file(tensors, tmp, metadata=meta)
        atomic.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def load_checkpoint(
    path: str | os.PathLike[str],
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a checkpoint written by :func:`save_checkpoint` (no pickle involved).

    A run directory may be given instead of a file: its ``best.ckpt`` is read.

    Returns:
        ``(model_state, state)``.

    Raises:
        ModelFileError: missing, truncated or foreign file (names it and how to fix it).
    """
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if path.is_dir():
        path = path / "best.ckpt"
    if not path.is_file():
        raise ModelFileError(f"{path}: checkpoint not found; give RUNDIR/best.ckpt or last.ckpt")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            if meta.get("format") != FORMAT or META_KEY not in meta:
                raise ModelFileError(
                    f"{path}: not a tilesegd checkpoint (no {FORMAT} metadata); checkpoints "
                    "come from `tilesegd train` (RUNDIR/best.ckpt)"
                )
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
        tree = json.loads(meta[META_KEY])
    except (SafetensorError, OSError, ValueError) as exc:
        if isinstance(exc, ModelFileError):
            raise
        raise ModelFileError(
            f"{path}: unreadable checkpoint ({type(exc).__name__}: {str(exc)[:150]}); the file "
            "may be truncated; use the other checkpoint (best.ckpt / last.ckpt) or retrain"
        ) from None
    model_state = {k[len("model/") :]: v for k, v in tensors.items() if k.startswith("model/")}
    return model_state, _unflatten(tree, tensors)

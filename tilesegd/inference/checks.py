"""Checks of a network against its model file's metadata (``tilesegd.json``), on one tile
(:meth:`tilesegd.inference.engine.Engine.check`)."""

from __future__ import annotations

from typing import Any

from tilesegd.errors import ModelFileError
from tilesegd.model.spec import ModelSpec


def check_output(out: Any, spec: ModelSpec, tile_shape: tuple[int, int], source: str) -> None:
    """Check a network's output for one ``tile_shape`` (H, W) input against its spec:
    (1, K, H, W) logits (the first of a tuple), ``K`` = the spec's class count.

    Raises:
        ModelFileError: another class count or output size (saying which, and how to fix it).
    """
    if isinstance(out, (tuple, list)):
        out = out[0]
    if out.ndim != 4 or out.shape[1] != spec.num_classes:
        raise ModelFileError(
            f"{source}: the network outputs {out.shape[1]} channels, but tilesegd.json lists "
            f"{spec.num_classes} classes; fix the metadata or re-export the model"
        )
    if tuple(out.shape[2:]) != tuple(tile_shape):
        raise ModelFileError(
            f"{source}: output size {tuple(out.shape[2:])} differs from the input size "
            f"{tuple(tile_shape)}; tilesegd needs logits at full input resolution"
        )


def network_failure(source: str, shape: tuple[int, ...], exc: Exception) -> ModelFileError:
    """The error for a network that raised ``exc`` on a ``shape`` (1, C, H, W) input."""
    return ModelFileError(
        f"{source}: the network fails on a {shape} input ({type(exc).__name__}: "
        f"{str(exc)[:200]}); check in_channels, multiple and the tile size"
    )

"""Validation after each epoch: the deployed inference path on whole validation images."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from tilesegd.evaluation.metrics import confusion_matrix
from tilesegd.evaluation.scoring import Scorer
from tilesegd.model.spec import ModelSpec
from tilesegd.raster.regrid import to_native
from tilesegd.training.data import PairStore
from tilesegd.training.model import TwoClassLogits
from tilesegd.training.split import Region, as_region

if TYPE_CHECKING:  # pragma: no cover
    from tilesegd.inference.engine import Engine


def validate_epoch(
    model: torch.nn.Module,
    spec: ModelSpec,
    binary: bool,
    store: PairStore,
    val_idx: list[int | Region],
    val_tiles: tuple[torch.Tensor, torch.Tensor] | None,
    loss_fn: torch.nn.Module,
    device: torch.device,
) -> tuple[float | None, dict[str, Any]]:
    """Score ``model`` after an epoch.

    The loss is computed on fixed validation tiles ``val_tiles`` (x (n, C, T, T) float32
    normalised, y (n, T, T) int64); the metrics come from whole validation images run through
    the deployed path: a copy of the network in :class:`tilesegd.inference.engine.Engine` (precision
    ``auto``: fp32 on the CPU, fp16 on CUDA; :func:`validation_engine`) scored by
    :class:`tilesegd.evaluation.scoring.Scorer` (the tiled, stitched inference of ``tilesegd run``,
    with the geometry it resolves on this device without tiling options). ``val_idx`` holds
    pair indices or :class:`~tilesegd.training.split.Region` s: each image is predicted whole,
    once, on its training grid, and only the rows of its validation regions are scored. A pair
    resampled for training (``--gsd`` / ``--scale``) is predicted at the training resolution and
    scored at its mask's native resolution: the class ids go back to the mask's grid by nearest
    neighbour (:func:`tilesegd.training.resample.to_native`), and a validation strip scores the
    native rows whose centres fall in it.

    Returns:
        ``(val_loss or None, scores)`` with ``scores`` from :func:`tilesegd.evaluation.metrics.scores`.
    """
    model.eval()
    val_loss = None
    if val_tiles is not None:
        with torch.no_grad():
            x, y = val_tiles
            val_loss = float(loss_fn(model(x.to(device)), y.to(device)))
    scorer = Scorer(validation_engine(model, spec, binary, device))
    return val_loss, score_store(scorer, store, val_idx)


def validation_engine(
    model: torch.nn.Module, spec: ModelSpec, binary: bool, device: torch.device
) -> Engine:
    """The deployed path validation scores with: an engine on a copy of ``model`` (eager,
    precision ``auto``), with the geometry ``tilesegd run`` resolves for ``spec`` on ``device``
    without tiling options (:func:`tilesegd.inference.build.build_engine`: the device's memory
    budget, as ``run`` and ``eval``)."""
    from tilesegd.inference.build import build_engine
    from tilesegd.inference.options import EngineOptions

    net = copy.deepcopy(model)
    options = EngineOptions(device=str(device), runtime="eager")
    return build_engine(TwoClassLogits(net) if binary else net, spec, options)


def score_store(
    scorer: Scorer, store: PairStore, regions: Sequence[int | Region]
) -> dict[str, Any]:
    """Predict each pair of ``regions`` whole on its training grid and score the regions' rows
    at the masks' native resolution.

    Args:
        scorer: the deployed path (its confusion matrix accumulates).
        store: the pairs and their training grids.
        regions: pair indices or :class:`~tilesegd.training.split.Region` s (training-grid rows).

    Returns:
        ``scorer.scores()`` (:func:`tilesegd.evaluation.metrics.scores`) after adding these pairs.
    """
    regions = [as_region(r) for r in regions]
    for i in dict.fromkeys(r.index for r in regions):
        image, ids = store.get(i)
        rows = [r.rows for r in regions if r.index == i]
        grid = store.grids[i]
        if not grid.resampled:
            scorer.add(image, ids, rows=rows)
            continue
        target = store.native_ids(i)  # scored on the mask's own grid, like tilesegd eval
        pred = to_native(scorer.predict(image), target.shape)
        for r in map(grid.native_rows, rows):
            scorer.confusion += confusion_matrix(target[r], pred[r], len(scorer.names))
    return scorer.scores()


def halo_matters(store: PairStore, regions: Sequence[int | Region], tile: int) -> bool:
    """Whether a validation image is larger than one ``tile``-px tile on its training grid;
    if none is, each is predicted as a single tile and the halo changes no score."""
    return any(max(store.grids[r.index].shape) > tile for r in map(as_region, regions))


def seamless_spec(
    model: torch.nn.Module, spec: ModelSpec, binary: bool, min_tile: int, device: torch.device
) -> ModelSpec:
    """``spec`` with the inference ``tile_size`` and ``overlap`` (pixels) these weights need to
    agree with whole-image inference (:func:`tilesegd.model.halo.measure_halo`, tiles of at least
    ``min_tile``); validation and the saved model file use them, so the validation score is
    what ``tilesegd run`` delivers."""
    from tilesegd.model.halo import measure_halo, seamless_geometry

    net = TwoClassLogits(model) if binary else model
    halo = measure_halo(net, spec.in_channels, spec.multiple, device=device)
    tile, overlap = seamless_geometry(halo, min_tile, spec.multiple)
    return dataclasses.replace(spec, tile_size=tile, extra={**spec.extra, "overlap": overlap})

"""Validation after each epoch: the deployed inference path on whole validation images, and
what a run records of it (``metrics.csv`` with per-class IoU, the never-predicted warning)."""

from __future__ import annotations

import copy
import csv
import dataclasses
import logging
import re
import unicodedata
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from tilesegd import atomic
from tilesegd.evaluation.metrics import confusion_matrix
from tilesegd.evaluation.scoring import Scorer
from tilesegd.model.spec import ModelSpec
from tilesegd.raster.regrid import to_native
from tilesegd.training.data import PairStore
from tilesegd.training.model import TwoClassLogits
from tilesegd.training.split import Region, as_region

if TYPE_CHECKING:  # pragma: no cover
    from tilesegd.inference.engine import Engine

log = logging.getLogger(__name__)

# metrics.csv: these columns, then one ``iou_<class>`` column per class (:func:`iou_columns`)
CSV_FIELDS = (
    "epoch",
    "train_loss",
    "val_loss",
    "val_miou",
    "val_pixel_accuracy",
    "val_dice",
    "lr",
    "seconds",
)


def iou_columns(names: Sequence[str]) -> list[str]:
    """The ``metrics.csv`` column of each class's validation IoU: ``iou_<name>`` with the name
    folded to ASCII, lower-cased, every run of other characters than ``a-z0-9`` made one ``_``
    (``"Paved-Area"`` -> ``iou_paved_area``); a name left empty becomes the class id
    (``iou_3``), and a name already taken gets ``_<id>`` appended."""
    cols: list[str] = []
    for i, name in enumerate(names):
        ascii_name = unicodedata.normalize("NFKD", str(name)).encode("ascii", "ignore").decode()
        safe = re.sub(r"[^a-z0-9]+", "_", ascii_name.lower()).strip("_") or str(i)
        col = f"iou_{safe}"
        cols.append(f"{col}_{i}" if col in cols or col in CSV_FIELDS else col)
    return cols


def per_class_iou(scores: dict[str, Any], names: Sequence[str]) -> dict[str, float | None]:
    """``{iou column: IoU rounded to 6 decimals, or None}`` from
    :func:`tilesegd.evaluation.metrics.scores` (``None``: the class is neither in the
    validation masks nor predicted)."""
    per = {c["id"]: c["iou"] for c in scores["per_class"]}
    return {
        col: None if per.get(i) is None else round(float(per[i]), 6)
        for i, col in enumerate(iou_columns(names))
    }


def write_metrics(path: Path, history: list[dict[str, Any]], names: Sequence[str] = ()) -> None:
    """``metrics.csv``: one row per epoch, :data:`CSV_FIELDS` then :func:`iou_columns` of
    ``names`` (empty where a row lacks a value), written atomically."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="") as f:
        fields = [*CSV_FIELDS, *iou_columns(names)]
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        w.writerows(history)
    atomic.replace(tmp, path)


def warn_unpredicted(
    scores: dict[str, Any] | None,
    train_predicted: np.ndarray | None,
    names: Sequence[str],
    epoch: int,
) -> list[str]:
    """Log a warning naming the classes the final epoch never predicted, and return them.

    Judged on the validation pixels when ``scores`` (:func:`tilesegd.evaluation.metrics.scores`
    of the final epoch) counts any, else on the training pixels of that epoch.

    Args:
        scores: the final epoch's validation scores, or ``None``.
        train_predicted: (K,) int pixels of each class predicted on the final epoch's training
            tiles (labelled pixels only), or ``None``.
        names: the K class names.
        epoch: the final epoch (1-based), for the message.

    Returns:
        The names of the classes never predicted (empty: no warning).
    """
    if scores is not None and scores.get("pixels"):
        cm = np.asarray(scores["confusion_matrix"], np.int64)
        predicted, support, where = cm.sum(0), cm.sum(1), "validation"
    elif train_predicted is not None:
        predicted, support, where = np.asarray(train_predicted), None, "training"
    else:
        return []
    missing = [i for i in range(len(names)) if predicted[i] == 0]
    if not missing:
        return []
    listed = ", ".join(
        names[i] if support is None else f"{names[i]} ({int(support[i])} px in the masks)"
        for i in missing
    )
    log.warning(
        "%d of %d classes never predicted on the %s pixels of the last epoch (%d): %s. The "
        "model will rarely or never output them; see their iou_ columns in metrics.csv (more "
        "training, more examples of them, or class_weights may help)",
        len(missing),
        len(names),
        where,
        epoch,
        listed,
    )
    return [names[i] for i in missing]


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

"""``tilesegd eval``: score a model file against labelled images.

Each image goes through the deployed path (:class:`tilesegd.inference.engine.Engine` and the tiled,
stitched :func:`tilesegd.inference.pipeline.predict_array`); the confusion matrix summed over all images
gives per-class IoU, Dice, precision and recall, mIoU and pixel accuracy
(:mod:`tilesegd.evaluation.metrics`, through :class:`tilesegd.evaluation.scoring.Scorer`, the scoring path that
training's validation uses too). Outputs: ``metrics.json``, ``metrics.csv``, ``confusion.png``
and, with ``save_predictions``, ``pred/<stem>.png`` (masks in the same coding as the inputs).
"""

from __future__ import annotations

import csv
import json
import logging
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tilesegd.errors import ConfigError, DatasetError, IncompatibleInputError
from tilesegd.evaluation.metrics import confusion_matrix, plot_confusion, scores
from tilesegd.model.spec import ModelSpec
from tilesegd.raster.labels import IGNORE_INDEX, ClassMap, find_pairs, read_classes, read_raster
from tilesegd.raster.regrid import Grid, grid_for, read_image, read_valid, to_native

log = logging.getLogger(__name__)


def model_classmap(
    spec: ModelSpec, classes: str | Path | None, ignore: Sequence[str] = ()
) -> tuple[ClassMap, np.ndarray]:
    """The mask coding and a lookup ``csv id -> model class id``.

    Without ``classes`` masks hold model class ids (255 = ignore) or model colours. With a
    classes CSV its non-ignored classes are matched to the model's by name
    (case-insensitive); the classes the model was trained to ignore (its file's
    ``ignored_classes``, e.g. ``unlabeled``) are ignored too, besides ``ignore``.

    Raises:
        ConfigError: a CSV class the model does not know (ignore it with ``--ignore``).
    """
    if classes is None:
        cmap = ClassMap.from_names(
            [c.name for c in spec.classes], [c.color for c in spec.classes], "<model classes>"
        )
        lut = np.arange(256, dtype=np.uint8)
        return cmap, lut
    in_csv = {e.name.lower() for e in read_classes(classes).entries}
    trained_ignored = [n for n in spec.ignored_classes if n.lower() in in_csv]
    cmap = read_classes(classes, [*ignore, *trained_ignored])
    model_ids = {c.name.lower(): c.id for c in spec.classes}
    unknown = [n for n in cmap.names if n.lower() not in model_ids]
    if unknown:
        raise ConfigError(
            f"{classes}: class(es) {', '.join(unknown)} are not outputs of the model "
            f"({', '.join(c.name for c in spec.classes)}); ignore them with --ignore NAME"
        )
    lut = np.full(256, IGNORE_INDEX, np.uint8)
    for i, n in enumerate(cmap.names):
        lut[i] = model_ids[n.lower()]
    return cmap, lut


def _write_prediction(path: Path, ids: np.ndarray, cmap: ClassMap, lut: np.ndarray) -> None:
    import rasterio
    import rasterio.errors

    inv = np.full(256, IGNORE_INDEX, np.uint8)  # model id -> csv id
    for csv_id in range(cmap.num_classes):
        inv[lut[csv_id]] = csv_id
    values = cmap.decode(inv[ids], mode="value")
    dtype = "uint8" if values.max() < 256 and values.min() >= 0 else "uint16"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        with rasterio.open(
            path, "w", driver="PNG", width=ids.shape[1], height=ids.shape[0], count=1, dtype=dtype
        ) as dst:
            dst.write(values.astype(dtype)[None])


def read_pair(
    pair: Any, spec: ModelSpec, grid: Grid, cmap: ClassMap, lut: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Read one image/mask pair for scoring: the image on its model ``grid``, the mask native.

    Returns:
        ``(image (C, h, w) native dtype, valid (h, w) bool, target (H, W) uint8)``: ``(h, w)``
        is ``grid.shape`` (:func:`tilesegd.raster.regrid.read_image`: GDAL average / bilinear, nodata
        where it covers half of a footprint); ``target`` holds the model's class ids on the
        mask's native grid, 255 (ignore) where the mask says so or the image is nodata.

    Raises:
        IncompatibleInputError: imagery of a dtype the model was not trained on.
        DatasetError: the mask is not pixel-aligned with its image, a band is out of range, an
            unknown mask value.
    """
    image, valid = read_image(pair.image, grid, spec.bands)
    dtypes = spec.dtypes
    if dtypes and image.dtype.name not in dtypes:
        raise IncompatibleInputError(
            f"{pair.image}: {image.dtype.name} imagery, but the model was trained on "
            f"{', '.join(dtypes)}; convert the images or use a model trained on this type"
        )
    raw, _ = read_raster(pair.mask)
    if raw.shape[1:] != grid.native_shape:
        raise DatasetError(
            f"{pair.mask}: mask size {raw.shape[1:]} differs from image {grid.native_shape} "
            "(H, W); masks must be pixel-aligned with their images"
        )
    target = lut[cmap.encode(raw, pair.mask)]
    target[~(read_valid(pair.image) if grid.resampled else valid)] = IGNORE_INDEX
    return image, valid, target


def score_on_grid(
    scorer: Any, image: np.ndarray, valid: np.ndarray, target: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Predict an image on its model grid and score it at the mask's native resolution.

    Args:
        scorer: a :class:`tilesegd.evaluation.scoring.Scorer` (its confusion matrix accumulates).
        image: (C, h, w) raw pixels on the model grid, model band order.
        valid: (h, w) bool validity on the model grid.
        target: (H, W) uint8 native class ids, 255 = ignore.

    Returns:
        ``(confusion (K, K) int64, prediction (H, W) uint8 on the native grid)``: the class ids
        go back to the native grid by nearest neighbour (:func:`tilesegd.raster.regrid.to_native`).
    """
    pred = to_native(scorer.predict(image, valid), target.shape)
    cm = confusion_matrix(target, pred, len(scorer.names))
    scorer.confusion += cm
    return cm, pred


def evaluate(
    model: str | os.PathLike[str],
    images: str | os.PathLike[str],
    masks: str | os.PathLike[str],
    output: str | os.PathLike[str],
    classes: str | os.PathLike[str] | None = None,
    *,
    ignore: Sequence[str] = (),
    device: str = "auto",
    precision: str = "auto",
    batch_size: int | None = None,
    tile_size: int | None = None,
    overlap: int | None = None,
    save_predictions: bool = False,
) -> dict[str, Any]:
    """Evaluate ``model`` on every image/mask pair and write the reports into ``output``.

    Args:
        model: a model file (TorchScript / torch.export with ``tilesegd.json``).
        images, masks: folders paired by file stem.
        output: report directory (created).
        classes: classes CSV of the masks (see :func:`model_classmap`).
        ignore: class names to leave out of the scores.
        device, precision, batch_size: as for ``tilesegd run``.
        tile_size, overlap: tiling in pixels (default: as ``tilesegd run``, the model file's
            tile size and measured overlap).

    A model trained at a chosen resolution (its file's ``gsd`` or ``scale``) predicts each image
    resampled to it, as ``tilesegd run`` does, and is scored at the mask's native resolution
    (:func:`score_on_grid`).
        save_predictions: also write ``pred/<stem>.png``.

    Returns:
        The ``metrics.json`` document: ``miou``, ``mean_dice``, ``pixel_accuracy``,
        ``per_class`` (id, name, iou, dice, precision, recall, support), ``confusion_matrix``
        (rows = true class) and ``per_image`` mIoU.

    Raises:
        ModelFileError: the model file is unusable.
        DatasetError / IncompatibleInputError: unmatched pairs, unknown mask values, images whose
            bands or dtype do not fit the model.
    """
    from tilesegd.evaluation.scoring import Scorer
    from tilesegd.inference.engine import Engine
    from tilesegd.inference.geometry import resolve_geometry

    engine = Engine.from_file(model, device=device, precision=precision)
    spec = engine.spec
    geometry = resolve_geometry(spec, tile_size=tile_size, overlap=overlap, batch_size=batch_size)
    scorer = Scorer(engine, geometry)
    cmap, lut = model_classmap(spec, classes, ignore)
    pairs = find_pairs(images, masks)
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    if save_predictions:
        (out / "pred").mkdir(exist_ok=True)
    names = [c.name for c in spec.classes]
    per_image: dict[str, Any] = {}
    resampled = 0
    for pair in pairs:
        grid = grid_for(pair.image, spec.gsd, spec.scale)
        image, valid, target = read_pair(pair, spec, grid, cmap, lut)
        if grid.resampled:  # predicted at the model's resolution, scored at the mask's
            cm, pred = score_on_grid(scorer, image, valid, target)
            resampled += 1
        else:
            cm, pred = scorer.add(image, target, valid)
        per_image[pair.name] = {"miou": scores(cm, names)["miou"], "pixels": int(cm.sum())}
        if save_predictions:
            _write_prediction(out / "pred" / f"{pair.name}.png", pred, cmap, lut)
        log.info("%s: mIoU %s", pair.name, per_image[pair.name]["miou"])
    doc = scorer.scores()
    doc.update(
        model=str(Path(model).resolve()), images=str(images), masks=str(masks), per_image=per_image
    )
    doc.update(model_gsd_m=spec.gsd, model_scale=spec.scale)
    doc["resampled_images"] = resampled
    (out / "metrics.json").write_text(json.dumps(doc, indent=2))
    with open(out / "metrics.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["class_id", "name", "iou", "dice", "precision", "recall", "support"])
        for c in doc["per_class"]:
            w.writerow(
                [c["id"], c["name"], c["iou"], c["dice"], c["precision"], c["recall"], c["support"]]
            )
        w.writerow(["", "mean", doc["miou"], doc["mean_dice"], "", "", doc["pixels"]])
        w.writerow(["", "pixel_accuracy", doc["pixel_accuracy"], "", "", "", doc["pixels"]])
    plot_confusion(scorer.confusion, names, out / "confusion.png")
    return doc

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
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tilesegd.errors import ConfigError, DatasetError, IncompatibleInputError
from tilesegd.evaluation.metrics import confusion_matrix, plot_confusion, scores
from tilesegd.inference.geometry import TilingOptions
from tilesegd.inference.options import EngineOptions
from tilesegd.model.spec import ModelSpec
from tilesegd.raster.labels import IGNORE_INDEX, ClassMap, find_pairs, read_classes, read_raster
from tilesegd.raster.regrid import Grid, grid_for, read_image, read_valid, to_native

if TYPE_CHECKING:  # pragma: no cover
    from tilesegd.inference.engine import Engine

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


@dataclass(frozen=True)
class EvalConfig:
    """Every setting of ``tilesegd eval`` (:func:`tilesegd.api.evaluate` builds it).

    Attributes:
        model: a model file (TorchScript, torch.export or ONNX, with its ``tilesegd.json``).
        images, masks: folders paired by file stem.
        output: the report directory (created).
        classes: the masks' classes CSV (see :func:`model_classmap`); ``None``: the model's.
        ignore: class names to leave out of the scores.
        engine: device and precision, as for ``tilesegd run`` (the runtime stays ``auto``).
        tiling: tile size, overlap and batch size (``None``: as ``tilesegd run``, the model
            file's tile size and measured overlap on the device's memory budget).
        save_predictions: also write ``pred/<stem>.png``.
    """

    model: str | os.PathLike[str]
    images: str | os.PathLike[str]
    masks: str | os.PathLike[str]
    output: str | os.PathLike[str]
    classes: str | os.PathLike[str] | None = None
    ignore: tuple[str, ...] = ()
    engine: EngineOptions = EngineOptions()
    tiling: TilingOptions = TilingOptions()
    save_predictions: bool = False

    def open_engine(self) -> Engine:
        """The engine images are scored with: the model on its device, with the geometry
        ``tilesegd run`` resolves there for the same options
        (:func:`tilesegd.inference.build.open_engine`).

        Raises:
            ModelFileError: the model file is unusable. DeviceError: the device or precision
                is not available. ConfigError: the tiling cannot make a tile grid.
        """
        from tilesegd.inference.build import open_engine

        return open_engine(self.model, self.engine, self.tiling)


def evaluate(cfg: EvalConfig) -> dict[str, Any]:
    """Evaluate ``cfg.model`` on every image/mask pair and write the reports into
    ``cfg.output``: ``metrics.json``, ``metrics.csv`` and ``confusion.png`` (and the
    predictions with ``cfg.save_predictions``).

    A model trained at a chosen resolution (its file's ``gsd`` or ``scale``) predicts each image
    resampled to it, as ``tilesegd run`` does, and is scored at the mask's native resolution
    (:func:`score_on_grid`).

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

    scorer = Scorer(cfg.open_engine())
    spec = scorer.engine.spec
    cmap, lut = model_classmap(spec, cfg.classes, cfg.ignore)
    pairs = find_pairs(cfg.images, cfg.masks)
    out = Path(cfg.output)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.save_predictions:
        (out / "pred").mkdir(exist_ok=True)
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
        per_image[pair.name] = {"miou": scores(cm, scorer.names)["miou"], "pixels": int(cm.sum())}
        if cfg.save_predictions:
            _write_prediction(out / "pred" / f"{pair.name}.png", pred, cmap, lut)
        log.info("%s: mIoU %s", pair.name, per_image[pair.name]["miou"])
    doc = scorer.scores()
    doc.update(
        model=str(Path(cfg.model).resolve()),
        images=str(cfg.images),
        masks=str(cfg.masks),
        per_image=per_image,
    )
    doc.update(model_gsd_m=spec.gsd, model_scale=spec.scale)
    doc["resampled_images"] = resampled
    write_reports(out, doc, scorer.confusion, scorer.names)
    return doc


def write_reports(out: Path, doc: dict[str, Any], confusion: np.ndarray, names: list[str]) -> None:
    """``metrics.json``, ``metrics.csv`` and ``confusion.png`` of ``doc`` (:func:`evaluate`'s
    document) and its (K, K) int64 ``confusion`` matrix into the folder ``out``."""
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
    plot_confusion(confusion, names, out / "confusion.png")

"""Scoring through the deployed path, shared by ``tilesegd eval`` and training's validation.

Every image is segmented whole by the same tiled, stitched inference as ``tilesegd run``
(:func:`tilesegd.inference.pipeline.predict_array` with the engine's geometry: tile size, overlap
and batch size from :func:`tilesegd.inference.geometry.geometry_for` on the engine's device, as
``tilesegd run`` resolves them), and compared with its target in one confusion matrix summed over
the images (:mod:`tilesegd.evaluation.metrics`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from tilesegd.evaluation.metrics import confusion_matrix, scores

if TYPE_CHECKING:  # pragma: no cover
    from tilesegd.inference.engine import Engine


class Scorer:
    """Accumulates the confusion matrix of an engine's predictions over images.

    Args:
        engine: the network, built with the geometry its images are tiled with
            (:mod:`tilesegd.inference.build`).
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.geometry = engine.geometry
        self.names = [c.name for c in engine.spec.classes]
        k = len(self.names)
        self.confusion = np.zeros((k, k), np.int64)

    def predict(self, image: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
        """(H, W) uint8 class ids of a (C, H, W) image (255 where ``valid`` is False)."""
        from tilesegd.inference.pipeline import predict_array

        return predict_array(self.engine, image, valid, geometry=self.geometry)

    def add(
        self,
        image: np.ndarray,
        target: np.ndarray,
        valid: np.ndarray | None = None,
        rows: Sequence[slice] = (slice(None),),
    ) -> tuple[np.ndarray, np.ndarray]:
        """Predict ``image`` and score it against ``target`` on ``rows``.

        Args:
            image: (C, H, W) raw pixels in model band order.
            target: (H, W) uint8 class ids, 255 = ignore.
            valid: (H, W) bool input validity (nodata pixels are not scored).
            rows: row ranges to score (default: all; a validation strip scores only its own).

        Returns:
            ``(confusion (K, K) int64 of this image, prediction (H, W) uint8)``.
        """
        pred = self.predict(image, valid)
        k = len(self.names)
        cm = np.zeros((k, k), np.int64)
        for r in rows:
            cm += confusion_matrix(target[r], pred[r], k)
        self.confusion += cm
        return cm, pred

    def scores(self) -> dict[str, Any]:
        """:func:`tilesegd.evaluation.metrics.scores` of everything added so far."""
        return scores(self.confusion, self.names)

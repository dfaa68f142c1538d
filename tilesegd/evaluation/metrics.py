"""Segmentation metrics from a confusion matrix, and the training / evaluation plots.

Definitions (per class ``c``, from the confusion matrix ``cm[true, pred]``; the usual ones, as in
the PASCAL VOC / Cityscapes benchmarks and mmsegmentation's ``IoUMetric``):

* ``TP = cm[c, c]``, ``FP = cm[:, c].sum() - TP``, ``FN = cm[c, :].sum() - TP``
* IoU ``TP / (TP + FP + FN)``; Dice (F1) ``2 TP / (2 TP + FP + FN)``
* precision ``TP / (TP + FP)``; recall ``TP / (TP + FN)``
* pixel accuracy ``trace(cm) / cm.sum()``
* mIoU / mean Dice: the mean over classes whose union ``TP + FP + FN`` is non-zero (a class
  absent from both the labels and the predictions is NaN and left out, not counted as 0 or 1).

Pixels labelled with the ignore index (255) are excluded before counting.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

IGNORE_INDEX = 255


def confusion_matrix(
    target: np.ndarray, pred: np.ndarray, num_classes: int, ignore_index: int = IGNORE_INDEX
) -> np.ndarray:
    """Count ``(true, predicted)`` class pairs.

    Args:
        target: (...) integer class ids, ``ignore_index`` = not labelled.
        pred: (...) integer class ids, same shape; ``ignore_index`` (no prediction, e.g. an
            invalid pixel) is also excluded.
        num_classes: K.

    Returns:
        (K, K) int64, rows = true class, columns = predicted class.

    Raises:
        ValueError: shapes differ, or an id is outside ``0..K-1`` (other than the ignore index).
    """
    target, pred = np.asarray(target), np.asarray(pred)
    if target.shape != pred.shape:
        raise ValueError(f"target shape {target.shape} != prediction shape {pred.shape}")
    t, p = target.ravel().astype(np.int64), pred.ravel().astype(np.int64)
    keep = (t != ignore_index) & (p != ignore_index)
    t, p = t[keep], p[keep]
    if t.size and (t.max() >= num_classes or p.max() >= num_classes or min(t.min(), p.min()) < 0):
        raise ValueError(f"class ids must be in 0..{num_classes - 1} (or {ignore_index})")
    return np.bincount(t * num_classes + p, minlength=num_classes**2).reshape(
        num_classes, num_classes
    )


def _div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(b > 0, a / np.where(b > 0, b, 1), np.nan)


def scores(cm: np.ndarray, names: Sequence[str] | None = None) -> dict[str, Any]:
    """All metrics of a confusion matrix (definitions in the module docstring).

    Args:
        cm: (K, K) counts, rows = true class.
        names: K class names (default ``class0``...).

    Returns:
        ``{"miou", "mean_dice", "pixel_accuracy", "per_class": [{"id", "name", "iou", "dice",
        "precision", "recall", "support"}...], "confusion_matrix": [[...]]}``; undefined values
        are ``None`` (NaN in the arrays).
    """
    cm = np.asarray(cm, np.float64)
    k = cm.shape[0]
    names = list(names) if names is not None else [f"class{i}" for i in range(k)]
    tp = np.diag(cm)
    fp = cm.sum(0) - tp
    fn = cm.sum(1) - tp
    iou = _div(tp, tp + fp + fn)
    dice = _div(2 * tp, 2 * tp + fp + fn)
    precision = _div(tp, tp + fp)
    recall = _div(tp, tp + fn)
    total = cm.sum()

    def clean(v: float) -> float | None:
        return None if math.isnan(v) else float(v)

    def nanmean(a: np.ndarray) -> float | None:
        return None if np.all(np.isnan(a)) else float(np.nanmean(a))

    return {
        "miou": nanmean(iou),
        "mean_dice": nanmean(dice),
        "pixel_accuracy": float(tp.sum() / total) if total else None,
        "pixels": int(total),
        "per_class": [
            {
                "id": i,
                "name": names[i],
                "iou": clean(iou[i]),
                "dice": clean(dice[i]),
                "precision": clean(precision[i]),
                "recall": clean(recall[i]),
                "support": int(cm[i].sum()),
            }
            for i in range(k)
        ],
        "confusion_matrix": cm.astype(np.int64).tolist(),
    }


def plot_confusion(cm: np.ndarray, names: Sequence[str], path: str | Path) -> Path:
    """Write a row-normalised confusion matrix (recall per true class) as a PNG (matplotlib Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = np.asarray(cm, np.float64)
    norm = _div(cm, cm.sum(1, keepdims=True))
    k = len(names)
    size = max(4.0, 0.45 * k + 2)
    fig, ax = plt.subplots(figsize=(size, size * 0.9))
    im = ax.imshow(np.nan_to_num(norm), vmin=0, vmax=1, cmap="Blues")
    ax.set_xticks(range(k), names, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(k), names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("confusion (row-normalised)")
    if k <= 12:
        for i in range(k):
            for j in range(k):
                if not np.isnan(norm[i, j]):
                    ax.text(
                        j,
                        i,
                        f"{norm[i, j]:.2f}",
                        ha="center",
                        va="center",
                        fontsize=7,
                        color="white" if norm[i, j] > 0.5 else "black",
                    )
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_curves(history: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Write loss (train, val) and validation mIoU / pixel accuracy per epoch as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = [h["epoch"] for h in history]

    def col(key: str) -> list[float]:
        return [np.nan if h.get(key) is None else float(h[key]) for h in history]

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    a.plot(ep, col("train_loss"), "o-", label="train")
    a.plot(ep, col("val_loss"), "o-", label="validation")
    a.set_xlabel("epoch")
    a.set_ylabel("loss")
    a.legend()
    b.plot(ep, col("val_miou"), "o-", label="val mIoU")
    b.plot(ep, col("val_pixel_accuracy"), "o-", label="val pixel accuracy")
    b.plot(ep, col("val_dice"), "o-", label="val mean Dice")
    b.set_xlabel("epoch")
    b.set_ylim(0, 1)
    b.legend()
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path

"""What a run shows a practitioner (issue 27): each class's validation IoU per epoch in
``metrics.csv``, and a warning at the end of training naming the classes never predicted."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import numpy as np
import pytest
from test_train import config, synthetic_pairs

from tilesegd.training.checkpoint import load_checkpoint
from tilesegd.training.loop import CSV_FIELDS, train
from tilesegd.training.validate import iou_columns, warn_unpredicted

# the classes of synthetic_pairs, renamed to need sanitising, and a class with no pixels at all
CLASSES = ["0,nodata,0,0,0", "1,Bare soil,190,160,120", "2,grass,40,140,40",
           "3,Water/Lake,30,80,200", "4,Snow (none),250,250,250"]  # fmt: skip
COLUMNS = ["iou_bare_soil", "iou_grass", "iou_water_lake", "iou_snow_none"]
WARNER = "tilesegd.training.validate"


def test_iou_columns_are_safe_and_unique() -> None:
    cols = iou_columns(["Bare soil", "bare-soil", "Végétation", "", "  ", "ar-marker", "lr"])
    assert cols == ["iou_bare_soil", "iou_bare_soil_1", "iou_vegetation", "iou_3", "iou_4",
                    "iou_ar_marker", "iou_lr"]  # fmt: skip
    assert all(c.replace("_", "").isalnum() and c.isascii() for c in cols)


def test_per_class_iou_columns_and_the_unpredicted_warning(tmp_path: Path, caplog) -> None:
    data = synthetic_pairs(tmp_path / "data")
    (data / "classes.csv").write_text("value,name,r,g,b\n" + "\n".join(CLASSES) + "\n")
    cfg = config(data, tmp_path / "run", epochs=1, class_weights="inverse_sqrt")
    with caplog.at_level(logging.WARNING, logger=WARNER):
        run = train(cfg, progress=False)
    with open(run / "metrics.csv") as f:
        (row,) = list(csv.DictReader(f))
    assert list(row) == [*CSV_FIELDS, *COLUMNS]
    # independently: IoU of each class from the validation confusion matrix of epoch 1
    _, st = load_checkpoint(run / "best.ckpt")
    cm = np.asarray(st["scores"]["confusion_matrix"], np.float64)
    assert cm.shape == (4, 4) and cm.sum() == 92 * 96  # one 96 x 96 pair less 4 nodata rows
    assert cm[3].sum() == 0  # no snow pixel
    ious = []
    for c, col in enumerate(COLUMNS):
        tp, union = cm[c, c], cm[c].sum() + cm[:, c].sum() - cm[c, c]
        if union == 0:
            assert row[col] == ""  # neither in the masks nor predicted
            continue
        ious.append(tp / union)
        assert float(row[col]) == pytest.approx(tp / union, abs=1e-6), col
    assert float(row["val_miou"]) == pytest.approx(np.mean(ious), abs=1e-6)
    # the warning names exactly the classes with no predicted validation pixel
    never = [n for c, n in enumerate(["Bare soil", "grass", "Water/Lake", "Snow (none)"])
             if cm[:, c].sum() == 0]  # fmt: skip
    warned = [r.getMessage() for r in caplog.records if "never predicted" in r.getMessage()]
    if never:
        (msg,) = warned
        assert f"{len(never)} of 4 classes never predicted on the validation pixels" in msg
        for name in never:
            assert name in msg
    else:
        assert warned == []


def test_unpredicted_warning_from_validation_else_training(caplog) -> None:
    names = ["a", "b", "c"]
    cm = np.array([[5, 0, 1], [2, 0, 0], [0, 0, 3]])  # b never predicted; 2 b pixels
    scores = {"pixels": int(cm.sum()), "confusion_matrix": cm.tolist()}
    with caplog.at_level(logging.WARNING, logger=WARNER):
        assert warn_unpredicted(scores, np.array([9, 9, 0]), names, 7) == ["b"]
    (rec,) = caplog.records
    assert rec.levelno == logging.WARNING
    assert "1 of 3 classes never predicted on the validation pixels of the last epoch (7): " \
           "b (2 px in the masks)" in rec.getMessage()  # fmt: skip
    caplog.clear()
    empty = {"pixels": 0, "confusion_matrix": np.zeros((3, 3), int).tolist()}
    with caplog.at_level(logging.WARNING, logger=WARNER):
        assert warn_unpredicted(empty, np.array([9, 0, 0]), names, 2) == ["b", "c"]
        assert warn_unpredicted(scores, None, names, 2) == ["b"]
        assert warn_unpredicted({"pixels": 0}, None, names, 2) == []
        assert warn_unpredicted(scores | {"confusion_matrix": np.eye(3).tolist()}, None,
                                names, 2) == []  # fmt: skip
    assert "2 of 3 classes never predicted on the training pixels of the last epoch (2): b, c" \
           in caplog.records[0].getMessage()  # fmt: skip
    assert len(caplog.records) == 2


def test_train_warns_when_classes_are_never_predicted(tmp_path: Path, caplog, monkeypatch) -> None:
    """A network whose class-0 logit starts 10^4 above the others predicts only class 0 (a
    few AdamW steps of lr 0.01 cannot move it): the warning names the three others."""
    from tilesegd.training import loop

    real = loop.build_model

    def biased(*args, **kw):
        net = real(*args, **kw)
        bias = net.segmentation_head[0].bias
        bias.data.zero_()
        bias.data[0] = 1e4
        return net

    monkeypatch.setattr(loop, "build_model", biased)
    data = synthetic_pairs(tmp_path / "data")
    (data / "classes.csv").write_text("value,name,r,g,b\n" + "\n".join(CLASSES) + "\n")
    with caplog.at_level(logging.WARNING, logger=WARNER):
        run = train(config(data, tmp_path / "run", epochs=1), progress=False)
    cm = np.asarray(load_checkpoint(run / "best.ckpt")[1]["scores"]["confusion_matrix"])
    assert cm[:, 1:].sum() == 0  # only class 0 predicted
    (msg,) = [r.getMessage() for r in caplog.records if "never predicted" in r.getMessage()]
    assert "3 of 4 classes never predicted on the validation pixels of the last epoch (1)" in msg
    for c, name in enumerate(["grass", "Water/Lake", "Snow (none)"], start=1):
        assert f"{name} ({int(cm[c].sum())} px in the masks)" in msg
    assert "Bare soil" not in msg

"""README claims of `tilesegd train` that had no test (issue 13): early stopping on validation
mIoU (``patience``), the frozen-encoder warm-up (``freeze_encoder_epochs``) and gradient
accumulation (``accumulate``).

One short run serves all three (training is the slow part): 3 batches an epoch accumulated 2 by
2, the encoder frozen for the first epoch, ``patience`` 1, and a learning rate so small that the
validation mIoU cannot improve, so the run stops early. What it did is read back from its
outputs: ``metrics.csv``, and ``best.ckpt`` / ``last.ckpt``, whose AdamW state counts the
optimiser steps each parameter took.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from test_train import config, synthetic_pairs

from tilesegd.training.checkpoint import load_checkpoint
from tilesegd.training.loop import train
from tilesegd.training.model import build_model

NET = ("Unet", "mobilenet_v2", 3, 3, 3, [16, 8, 8])  # as test_train.TINY: 3 classes, depth 3
SETTINGS = dict(
    epochs=5,
    steps_per_epoch=3,
    accumulate=2,  # optimiser steps per epoch: ceil(3 / 2) = 2 (the last one takes 1 batch)
    freeze_encoder_epochs=1,
    patience=1,
    lr=1e-6,  # weights move (AdamW steps ~lr) but the class ids do not: no better mIoU
    schedule="constant",
)


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory) -> tuple[Path, Path, dict]:
    """``(RUNDIR, encoder weights file, the encoder's initial state)``."""
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("claims")
    data = synthetic_pairs(root / "data")
    torch.manual_seed(5)
    encoder = build_model(*NET).encoder.state_dict()
    weights = root / "encoder.safetensors"
    save_file({k: v.contiguous() for k, v in encoder.items()}, weights)
    cfg = config(data, root / "run", encoder_weights=str(weights), **SETTINGS)
    return train(cfg, progress=False), weights, encoder


def history(run: Path) -> list[dict]:
    with open(run / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def used_parameters() -> set[str]:
    """Names of the network's parameters that get a gradient (an encoder of depth 3 keeps
    mobilenet_v2's deeper stages, unused)."""
    net = build_model(*NET)
    net(torch.rand(2, 3, 64, 64)).sum().backward()
    return {n for n, p in net.named_parameters() if p.grad is not None}


def optimiser_steps(state: dict) -> dict[str, int]:
    """Parameter name -> AdamW steps taken (0: never updated), from a checkpoint's state."""
    names = [n for n, _ in build_model(*NET).named_parameters()]
    opt = state["optimizer"]
    assert opt["param_groups"][0]["params"] == list(range(len(names)))
    per_index = {int(k): int(float(v["step"])) for k, v in opt["state"].items()}
    return {n: per_index.get(i, 0) for i, n in enumerate(names)}


def test_patience_stops_when_val_miou_stops_improving(stopped_run) -> None:
    run, _, _ = stopped_run
    rows = history(run)
    # the rule, replayed on the recorded mIoUs: stop after `patience` epochs without a better one
    best, stale, expected = -1.0, 0, SETTINGS["epochs"]
    for r in rows:
        miou = float(r["val_miou"])
        best, stale = (miou, 0) if miou > best else (best, stale + 1)
        if stale >= SETTINGS["patience"]:
            expected = int(r["epoch"])
            break
    assert [int(r["epoch"]) for r in rows] == list(range(1, expected + 1))
    assert len(rows) < SETTINGS["epochs"]  # it did stop early
    _, last = load_checkpoint(run / "last.ckpt")
    assert last["epoch"] == len(rows) and last["stale"] == SETTINGS["patience"]


def test_encoder_is_frozen_for_the_warm_up_epochs_only(stopped_run) -> None:
    run, _, encoder = stopped_run
    best_state, best = load_checkpoint(run / "best.ckpt")
    last_state, last = load_checkpoint(run / "last.ckpt")
    assert best["epoch"] == SETTINGS["freeze_encoder_epochs"] == 1 and last["epoch"] == 2
    enc = {f"encoder.{k}": v for k, v in encoder.items()}
    # after the warm-up epoch: the encoder (weights and batch-norm statistics) untouched...
    for k, v in enc.items():
        torch.testing.assert_close(best_state[k], v, atol=0, rtol=0, msg=k)
    # ...while the decoder and head did train
    heads = [k for k in best_state if not k.startswith("encoder.") and k.endswith("weight")]
    assert all(not torch.equal(best_state[k], last_state[k]) for k in heads)
    # after epoch 2 the encoder has trained too (every parameter that gets a gradient)
    used = sorted(k for k in used_parameters() if k.startswith("encoder."))
    assert len(used) > 10
    assert [k for k in used if torch.equal(last_state[k], enc[k])] == []


def test_gradient_accumulation_counts_optimiser_steps(stopped_run) -> None:
    """With ``accumulate`` a, an epoch of s batches makes ceil(s / a) optimiser steps; the frozen
    encoder makes none in its warm-up epochs."""
    run, _, _ = stopped_run
    per_epoch = math.ceil(SETTINGS["steps_per_epoch"] / SETTINGS["accumulate"])
    assert per_epoch == 2
    used = used_parameters()
    for ckpt, epoch in (("best.ckpt", 1), ("last.ckpt", 2)):
        steps = optimiser_steps(load_checkpoint(run / ckpt)[1])
        encoder = {n: s for n, s in steps.items() if n.startswith("encoder.") and n in used}
        others = {n: s for n, s in steps.items() if not n.startswith("encoder.")}
        assert {s for n, s in steps.items() if n not in used} == {0}
        assert set(others.values()) == {epoch * per_epoch}, (ckpt, set(others.values()))
        assert set(encoder.values()) == {(epoch - 1) * per_epoch}, (ckpt, set(encoder.values()))
    assert np.isfinite([float(r["train_loss"]) for r in history(run)]).all()

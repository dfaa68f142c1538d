"""The training loop: ``tilesegd train``.

One epoch = ``steps_per_epoch`` batches of random native-resolution tiles
(:class:`~tilesegd.train.data.TileSampler`), AdamW, a OneCycle / cosine schedule stepped per
optimiser step, optional gradient accumulation, fp16 AMP on CUDA and a frozen-encoder warm-up.
After each epoch the model is validated on whole validation images through the deployed path
(:class:`tilesegd.engine.Engine` + :func:`tilesegd.pipeline.predict_array`, tiled and stitched),
so the validation score is what ``tilesegd run`` will deliver.

Everything random derives from ``seed``: the split, the initialisation, and the tiles and
augmentations of epoch ``e`` (``numpy.random.default_rng([seed, e])``). ``last.ckpt`` holds the
weights, optimiser, scheduler, AMP scaler and torch RNG state at the end of an epoch, so
``resume`` reaches the same weights as an uninterrupted run (same device, within fp tolerance).

RUNDIR receives ``config.yaml``, ``metrics.csv``, ``curves.png``, ``confusion.png``,
``best.ckpt``, ``last.ckpt`` (see :mod:`~tilesegd.train.checkpoint`) and ``model.ts`` (the best
epoch, in the model-file contract).
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import math
import os
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tilesegd.errors import ConfigError
from tilesegd.model_file import ModelSpec, save_model
from tilesegd.train.checkpoint import load_checkpoint, save_checkpoint
from tilesegd.train.config import TrainConfig
from tilesegd.train.data import (
    PairStore,
    find_pairs,
    read_classes,
    scan,
)
from tilesegd.train.metrics import plot_confusion, plot_curves
from tilesegd.train.model import (
    TwoClassLogits,
    build_loss,
    build_model,
    class_weights,
    load_encoder_weights,
    network_from_state,
)
from tilesegd.train.split import make_split
from tilesegd.train.tiles import TileSampler
from tilesegd.train.validate import validate_epoch

log = logging.getLogger(__name__)

__all__ = ["TrainConfig", "train", "network_from_state"]

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
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
# settings that may change on --resume (everything else must match the checkpoint)
RESUME_FREE = {"device", "output", "resume", "patience", "cache_mb"}


def _steps(cfg: TrainConfig, pixels: np.ndarray) -> int:
    if cfg.steps_per_epoch:
        return cfg.steps_per_epoch
    return max(1, math.ceil(float(pixels.sum()) / (cfg.tile_size**2 * cfg.batch_size)))


def _scheduler(cfg: TrainConfig, opt: torch.optim.Optimizer, total: int):
    if cfg.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=max(2, total))
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, total))
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda _step: 1.0)


def _write_yaml(path: Path, cfg: TrainConfig) -> None:
    import yaml

    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(yaml.safe_dump({"train": cfg.to_dict()}, sort_keys=False))
    os.replace(tmp, path)


def _write_metrics(path: Path, history: list[dict[str, Any]]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
        w.writeheader()
        w.writerows(history)
    os.replace(tmp, path)


def _check_resume(cfg: TrainConfig, saved: dict[str, Any]) -> None:
    diff = [
        f"{k}: {saved.get(k)!r} -> {v!r}"
        for k, v in cfg.to_dict().items()
        if k not in RESUME_FREE and k in saved and saved[k] != v
    ]
    if diff:
        raise ConfigError(
            f"--resume {cfg.resume}: settings differ from the checkpoint ({'; '.join(diff)}); "
            "resume with the run's own config.yaml, or start a new run"
        )


def _set_frozen(model: torch.nn.Module, frozen: bool) -> None:
    enc = getattr(model, "encoder", None)
    if enc is None:
        return
    for p in enc.parameters():
        p.requires_grad_(not frozen)
    if frozen:
        enc.eval()  # keep batch-norm statistics of the frozen encoder


def train(cfg: TrainConfig, progress: bool = True) -> Path:
    """Train a segmentation network and write RUNDIR (see the module docstring).

    Args:
        cfg: resolved settings (``cfg.validate()`` is called again here).
        progress: show a tqdm bar per epoch (loss, tiles/s).

    Returns:
        RUNDIR (``cfg.output``, or ``cfg.resume`` when resuming without an output).

    Raises:
        ConfigError: missing or invalid settings, or a resume with changed settings.
        DatasetError: unmatched pairs, unknown mask values or colours, mixed image types.
        DeviceError: the device is not available.
    """
    from tqdm import tqdm

    from tilesegd.engine import resolve_device

    cfg.validate()
    resume_state = None
    if cfg.resume:
        ckpt = Path(cfg.resume) / "last.ckpt"
        cfg.output = cfg.output or cfg.resume
        model_state0, resume_state = load_checkpoint(ckpt)
        _check_resume(cfg, resume_state["config"])
    missing = [n for n in ("images", "masks", "classes", "output") if not getattr(cfg, n)]
    if missing:
        raise ConfigError(
            f"train needs {', '.join('--' + m for m in missing)} (or --resume RUNDIR)"
        )
    out = Path(cfg.output)
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(cfg.device)
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)

    classmap = read_classes(cfg.classes, cfg.ignore)
    pairs = find_pairs(cfg.images, cfg.masks)
    train_idx, val_idx = make_split(
        [p.image for p in pairs], cfg.val_split, cfg.val_fraction, cfg.seed
    )
    store = PairStore(pairs, classmap, cfg.cache_mb)
    stats = scan(store, train_idx, sorted({r.index for r in train_idx + val_idx}))
    log.info(
        "%d pairs: training on %s, validating on %s",
        len(pairs),
        ", ".join(r.describe(pairs[r.index].name) for r in train_idx),
        ", ".join(r.describe(pairs[r.index].name) for r in val_idx),
    )
    mean, std = stats.mean, stats.std
    if cfg.normalization == "imagenet":
        if stats.bands != 3:
            raise ConfigError(
                f"normalization imagenet needs 3-band images, these have {stats.bands}"
            )
        mean, std = IMAGENET_MEAN, IMAGENET_STD
    terms = cfg.loss_terms()
    binary = any(n == "bce" for _, n in terms)
    k = classmap.num_classes
    model = build_model(
        cfg.arch,
        cfg.encoder,
        stats.bands,
        1 if binary else k,
        cfg.encoder_depth,
        cfg.decoder_channels,
    )
    if cfg.encoder_weights and resume_state is None:
        load_encoder_weights(model, cfg.encoder_weights)
    multiple = int(getattr(model.encoder, "output_stride", cfg.multiple) or cfg.multiple)
    spec_dict = {
        "classes": [
            {"id": i, "name": e.name, "color": list(e.color)}
            for i, e in enumerate(classmap.classes)
        ],
        "in_channels": stats.bands,
        "bands": list(range(1, stats.bands + 1)),
        "input_scale": stats.input_scale,
        "mean": mean,
        "std": std,
        "multiple": max(multiple, cfg.multiple),
        "tile_size": cfg.val_tile_size or cfg.tile_size,
        "dtypes": [stats.dtype],
        "arch": cfg.arch,
        "encoder": cfg.encoder,
        "encoder_depth": cfg.encoder_depth,
        "decoder_channels": cfg.decoder_channels,
        "binary": binary,
        "ignored_classes": classmap.ignored_names,
        "normalization": cfg.normalization,
    }
    spec = ModelSpec.from_dict(spec_dict, "<train>")
    weights = class_weights(cfg.class_weights, stats.class_pixels)
    loss_fn = build_loss(terms, k, binary, weights).to(device)
    model.to(device)

    sampler = TileSampler(
        store,
        train_idx,
        stats.pixels,
        cfg.tile_size,
        cfg.scale_jitter,
        cfg.augment,
        stats.input_scale,
        mean,
        std,
    )
    val_tiles = None
    if cfg.val_loss_tiles:
        vs = TileSampler(
            store,
            val_idx,
            np.ones(len(val_idx)),
            cfg.tile_size,
            0.0,
            False,
            stats.input_scale,
            mean,
            std,
        )
        x, y = vs.sample(np.random.default_rng([cfg.seed, 1 << 30]), cfg.val_loss_tiles)
        val_tiles = (torch.from_numpy(x), torch.from_numpy(y))
    steps = _steps(cfg, stats.pixels)
    opt_steps = math.ceil(steps / cfg.accumulate)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = _scheduler(cfg, opt, cfg.epochs * opt_steps)
    use_amp = bool(cfg.amp) and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)

    start, history, best, stale = 0, [], -1.0, 0
    if resume_state is not None:
        model.load_state_dict(model_state0)
        opt.load_state_dict(resume_state["optimizer"])
        sched.load_state_dict(resume_state["scheduler"])
        scaler.load_state_dict(resume_state["scaler"])
        torch.set_rng_state(resume_state["rng_torch"])
        if device.type == "cuda" and resume_state.get("rng_cuda") is not None:
            torch.cuda.set_rng_state(resume_state["rng_cuda"], device)
        start, history = int(resume_state["epoch"]), list(resume_state["history"])
        best, stale = float(resume_state["best_miou"]), int(resume_state["stale"])
        log.info("resuming %s at epoch %d/%d", cfg.resume, start + 1, cfg.epochs)
    _write_yaml(out / "config.yaml", cfg)
    log.info(
        "%s-%s, %d classes (%s), %d steps/epoch of %d tiles of %d px on %s",
        cfg.arch,
        cfg.encoder,
        k,
        ", ".join(classmap.names),
        steps,
        cfg.batch_size,
        cfg.tile_size,
        device,
    )

    def state(epoch: int) -> dict[str, Any]:
        return {
            "config": cfg.to_dict(),
            "spec": spec.to_dict(),
            "epoch": epoch,
            "history": history,
            "best_miou": best,
            "stale": stale,
            "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(),
            "scaler": scaler.state_dict(),
            "rng_torch": torch.get_rng_state(),
            "rng_cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        }

    for epoch in range(start, cfg.epochs):
        t0 = time.perf_counter()
        model.train()
        frozen = epoch < cfg.freeze_encoder_epochs
        _set_frozen(model, frozen)
        rng = np.random.default_rng([cfg.seed, epoch])
        losses: list[float] = []
        bar = tqdm(
            total=steps,
            desc=f"epoch {epoch + 1}/{cfg.epochs}",
            unit="batch",
            disable=not progress,
            leave=False,
        )
        opt.zero_grad(set_to_none=True)
        for step in range(steps):
            x, y = sampler.sample(rng, cfg.batch_size)
            x, y = torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)
            with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
                loss = loss_fn(model(x), y)
            scaler.scale(loss / cfg.accumulate).backward()
            if (step + 1) % cfg.accumulate == 0 or step + 1 == steps:
                scaler.step(opt)
                scaler.update()
                opt.zero_grad(set_to_none=True)
                sched.step()
            losses.append(float(loss.detach()))
            rate = (step + 1) * cfg.batch_size / (time.perf_counter() - t0)
            bar.set_postfix(loss=f"{np.mean(losses):.4f}", tiles_s=f"{rate:.1f}")
            bar.update()
        bar.close()
        if frozen:
            _set_frozen(model, False)
        spec = _seamless_spec(model, spec, binary, cfg, device)
        val_loss, sc = validate_epoch(
            model, spec, binary, store, val_idx, val_tiles, loss_fn, device
        )
        miou = sc["miou"] if sc["miou"] is not None else 0.0
        row = {
            "epoch": epoch + 1,
            "train_loss": round(float(np.mean(losses)), 6),
            "val_loss": None if val_loss is None else round(val_loss, 6),
            "val_miou": round(miou, 6),
            "val_pixel_accuracy": round(sc["pixel_accuracy"] or 0.0, 6),
            "val_dice": round(sc["mean_dice"] or 0.0, 6),
            "lr": opt.param_groups[0]["lr"],
            "seconds": round(time.perf_counter() - t0, 2),
        }
        history.append(row)
        improved = miou > best
        if improved:
            best, stale = miou, 0
        else:
            stale += 1
        st = state(epoch + 1)
        if improved:
            st["scores"] = sc
            save_checkpoint(out / "best.ckpt", model.state_dict(), st)
            plot_confusion(
                np.asarray(sc["confusion_matrix"]), classmap.names, out / "confusion.png"
            )
        save_checkpoint(out / "last.ckpt", model.state_dict(), st)
        _write_metrics(out / "metrics.csv", history)
        plot_curves(history, out / "curves.png")
        log.info(
            "epoch %d/%d: train loss %.4f, val loss %s, val mIoU %.4f, pixel acc %.4f "
            "(tile %d, overlap %d px), %.1f s%s",
            epoch + 1,
            cfg.epochs,
            row["train_loss"],
            row["val_loss"],
            miou,
            row["val_pixel_accuracy"],
            spec.tile_size,
            spec.overlap,
            row["seconds"],
            " (best)" if improved else "",
        )
        if cfg.patience and stale >= cfg.patience:
            log.info("early stop: no better validation mIoU for %d epochs", stale)
            break
    _save_best_model(out, spec)
    return out


def _seamless_spec(
    model: torch.nn.Module, spec: ModelSpec, binary: bool, cfg: TrainConfig, device: torch.device
) -> ModelSpec:
    """``spec`` with the inference ``tile_size`` and ``overlap`` this epoch's weights need to
    agree with whole-image inference (:func:`tilesegd.halo.measure_halo`); validation and the
    saved model file use them, so the validation score is what ``tilesegd run`` delivers."""
    from tilesegd.halo import measure_halo, seamless_geometry

    net = TwoClassLogits(model) if binary else model
    halo = measure_halo(net, spec.in_channels, spec.multiple, device=device)
    tile, overlap = seamless_geometry(halo, cfg.val_tile_size or cfg.tile_size, spec.multiple)
    return dataclasses.replace(spec, tile_size=tile, extra={**spec.extra, "overlap": overlap})


def _save_best_model(out: Path, spec: ModelSpec) -> Path:
    """Write ``model.ts`` from ``best.ckpt`` (model-file contract, via ``save_model``)."""
    model_state, st = load_checkpoint(out / "best.ckpt")
    net = network_from_state(st["spec"], model_state)
    meta = dict(st["spec"])
    meta["trained"] = {"epoch": st["epoch"], "val_miou": round(st["best_miou"], 6)}
    return save_model(
        net,
        out / "model.ts",
        ModelSpec.from_dict(meta, str(out / "model.ts")),
        example_size=min(spec.tile_size, 4 * spec.multiple),
    )

"""The training loop: ``tilesegd train``.

One epoch = ``steps_per_epoch`` batches of random native-resolution tiles
(:class:`~tilesegd.training.tiles.TileSampler`), AdamW, a OneCycle / cosine schedule stepped per
optimiser step, optional gradient accumulation, fp16 AMP on CUDA and a frozen-encoder warm-up.
After each epoch the model is validated on whole validation images through the deployed path
(:class:`tilesegd.evaluation.scoring.Scorer`: the engine and the tiled, stitched inference of ``run``),
so the validation score is what ``tilesegd run`` will deliver.

Everything random derives from ``seed``: the split, the initialisation, and the tiles and
augmentations of epoch ``e`` (``numpy.random.default_rng([seed, e])``). ``last.ckpt`` holds the
weights, optimiser, scheduler, AMP scaler and torch RNG state at the end of an epoch, so
``resume`` reaches the same weights as an uninterrupted run (same device, within fp tolerance).

RUNDIR receives ``config.yaml``, ``metrics.csv`` (a row per epoch: losses, validation mIoU,
pixel accuracy, Dice and each class's IoU), ``curves.png``, ``confusion.png``, ``best.ckpt``,
``last.ckpt`` (see :mod:`~tilesegd.training.checkpoint`) and ``model.pt2`` (the best epoch, in the
model-file contract: a torch.export archive with a dynamic input size; ``model.ts``, TorchScript,
for a network that does not export so: :func:`~tilesegd.training.export.save_best_model`). At the
end a warning names the classes the last epoch never predicted.
"""

from __future__ import annotations

import logging
import math
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tilesegd import atomic
from tilesegd.batch.progress import progress_bar
from tilesegd.errors import ConfigError
from tilesegd.evaluation.metrics import plot_confusion, plot_curves
from tilesegd.raster.labels import IGNORE_INDEX
from tilesegd.training.checkpoint import load_checkpoint, save_checkpoint
from tilesegd.training.config import TrainConfig
from tilesegd.training.export import save_best_model
from tilesegd.training.model import (
    build_loss,
    build_model,
    class_weights,
    load_encoder_weights,
    network_from_state,
)
from tilesegd.training.setup import TrainData, model_spec, prepare, samplers
from tilesegd.training.validate import (
    CSV_FIELDS,
    halo_matters,
    per_class_iou,
    seamless_spec,
    validate_epoch,
    warn_unpredicted,
    write_metrics,
)

log = logging.getLogger(__name__)

__all__ = ["CSV_FIELDS", "TrainConfig", "train", "network_from_state"]

# settings that may change on --resume (everything else must match the checkpoint)
RESUME_FREE = {"device", "output", "resume", "patience", "cache_mb"}


def steps_per_epoch(cfg: TrainConfig, pixels: np.ndarray) -> int:
    """``steps_per_epoch``, else enough batches to cover the training pixels once."""
    if cfg.steps_per_epoch:
        return cfg.steps_per_epoch
    return max(1, math.ceil(float(pixels.sum()) / (cfg.tile_size**2 * cfg.batch_size)))


def make_scheduler(cfg: TrainConfig, opt: torch.optim.Optimizer, total: int) -> Any:
    """OneCycle (Smith & Topin 2019) or cosine over ``total`` optimiser steps, else constant."""
    if cfg.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=max(2, total))
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, total))
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda _step: 1.0)


def write_yaml(path: Path, cfg: TrainConfig) -> None:
    """``config.yaml`` (the ``train:`` section), atomically."""
    import yaml

    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(yaml.safe_dump({"train": cfg.to_dict()}, sort_keys=False))
    atomic.replace(tmp, path)


def check_resume(cfg: TrainConfig, saved: dict[str, Any]) -> None:
    """Refuse a resume whose settings differ from the checkpoint's (except
    :data:`RESUME_FREE`).

    Raises:
        ConfigError: naming every changed setting.
    """
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


def autocast_dtype(amp: bool, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of training steps: with ``amp``, float16 on CUDA (with gradient
    scaling) and bfloat16 on a CPU with native bf16 instructions (AVX512-BF16 or AMX, where
    oneDNN runs bf16 convolutions faster than float32); ``None`` (float32) otherwise."""
    if not amp:
        return None
    if device.type == "cuda":
        return torch.float16
    if device.type == "cpu" and torch.backends.mkldnn.is_available():
        return torch.bfloat16 if torch.ops.mkldnn._is_mkldnn_bf16_supported() else None
    return None


def set_frozen(model: torch.nn.Module, frozen: bool) -> None:
    """Freeze (or unfreeze) the encoder's weights; a frozen encoder keeps its batch-norm
    statistics (eval mode)."""
    enc = getattr(model, "encoder", None)
    if enc is None:
        return
    for p in enc.parameters():
        p.requires_grad_(not frozen)
    if frozen:
        enc.eval()


class TrainRun:
    """The optimisation state of one run and its epochs.

    Args:
        cfg: the settings.
        data: the labelled data (:func:`tilesegd.training.setup.prepare`).
        device: where to train.
        resume: ``(weights, state)`` of ``last.ckpt`` when resuming.
    """

    def __init__(
        self, cfg: TrainConfig, data: TrainData, device: torch.device, resume: Any = None
    ) -> None:
        self.cfg, self.data, self.device = cfg, data, device
        terms = cfg.loss_terms()
        self.binary = any(n == "bce" for _, n in terms)
        k = data.classmap.num_classes
        model = build_model(
            cfg.arch,
            cfg.encoder,
            data.stats.bands,
            1 if self.binary else k,
            cfg.encoder_depth,
            cfg.decoder_channels,
        )
        if cfg.encoder_weights and resume is None:
            load_encoder_weights(model, cfg.encoder_weights)
        multiple = int(getattr(model.encoder, "output_stride", cfg.multiple) or cfg.multiple)
        self.spec = model_spec(cfg, data, self.binary, multiple)
        weights = class_weights(cfg.class_weights, data.stats.class_pixels, cfg.class_weight_cap)
        self.loss_fn = build_loss(terms, k, self.binary, weights).to(device)
        self.model = model.to(device, memory_format=torch.channels_last)
        self.sampler, self.val_tiles = samplers(cfg, data)
        self.halo_each_epoch = halo_matters(
            data.store, data.val_idx, cfg.val_tile_size or cfg.tile_size
        )
        self.steps = steps_per_epoch(cfg, data.stats.pixels)
        opt_steps = math.ceil(self.steps / cfg.accumulate)
        self.opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.sched = make_scheduler(cfg, self.opt, cfg.epochs * opt_steps)
        self.amp_dtype = autocast_dtype(cfg.amp, device)
        self.use_amp = self.amp_dtype == torch.float16  # gradient scaling: fp16 only
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp)
        self.start, self.history, self.best, self.stale = 0, [], -1.0, 0
        self.predicted = torch.zeros(k, dtype=torch.int64, device=device)  # this epoch's
        if resume is not None:
            self.restore(*resume)

    def restore(self, weights: dict[str, torch.Tensor], st: dict[str, Any]) -> None:
        """Continue from ``last.ckpt``: weights, optimiser, scheduler, scaler, RNG, history."""
        self.model.load_state_dict(weights)
        self.opt.load_state_dict(st["optimizer"])
        self.sched.load_state_dict(st["scheduler"])
        self.scaler.load_state_dict(st["scaler"])
        torch.set_rng_state(st["rng_torch"])
        if self.device.type == "cuda" and st.get("rng_cuda") is not None:
            torch.cuda.set_rng_state(st["rng_cuda"], self.device)
        self.start, self.history = int(st["epoch"]), list(st["history"])
        self.best, self.stale = float(st["best_miou"]), int(st["stale"])
        log.info("resuming %s at epoch %d/%d", self.cfg.resume, self.start + 1, self.cfg.epochs)

    def state(self, epoch: int) -> dict[str, Any]:
        """Everything but the weights that a checkpoint holds at the end of ``epoch``."""
        cuda = self.device.type == "cuda"
        return {
            "config": self.cfg.to_dict(),
            "spec": self.spec.to_dict(),
            "epoch": epoch,
            "history": self.history,
            "best_miou": self.best,
            "stale": self.stale,
            "optimizer": self.opt.state_dict(),
            "scheduler": self.sched.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng_torch": torch.get_rng_state(),
            "rng_cuda": torch.cuda.get_rng_state(self.device) if cuda else None,
        }

    def train_epoch(self, epoch: int, progress: bool) -> list[float]:
        """One epoch of ``steps`` batches (tiles of epoch ``epoch``'s seeded RNG), with
        gradient accumulation and AMP on CUDA; returns the batch losses."""
        cfg, t0 = self.cfg, time.perf_counter()
        self.model.train()
        frozen = epoch < cfg.freeze_encoder_epochs
        set_frozen(self.model, frozen)
        rng = np.random.default_rng([cfg.seed, epoch])
        losses: list[float] = []
        self.predicted.zero_()
        desc = f"epoch {epoch + 1}/{cfg.epochs}"
        bar = progress_bar(progress, total=self.steps, desc=desc, unit="batch", leave=False)
        self.opt.zero_grad(set_to_none=True)
        for step in range(self.steps):
            x, y = self.sampler.sample(rng, cfg.batch_size)
            update = (step + 1) % cfg.accumulate == 0 or step + 1 == self.steps
            losses.append(float(self.step(torch.from_numpy(x), torch.from_numpy(y), update)))
            rate = (step + 1) * cfg.batch_size / (time.perf_counter() - t0)
            bar.set_postfix_str(f"loss={np.mean(losses):.4f}, tiles_s={rate:.1f}", refresh=False)
            bar.update()
        bar.close()
        if frozen:
            set_frozen(self.model, False)
        return losses

    def step(self, x: torch.Tensor, y: torch.Tensor, update: bool = True) -> torch.Tensor:
        """One training step on a batch: forward and loss (under autocast, see
        :func:`autocast_dtype`), backward, and with ``update`` the optimiser and scheduler
        steps (else the gradient accumulates).

        Args:
            x: (B, C, T, T) float32 normalised tiles (any device; moved to the run's, and to
                channels-last, the layout oneDNN's and cuDNN's fastest kernels use).
            y: (B, T, T) int64 class ids, 255 = ignore.

        Returns:
            The batch loss (a 0-d tensor, detached).
        """
        x = x.to(self.device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        y = y.to(self.device, non_blocking=True)
        with torch.autocast(
            self.device.type, dtype=self.amp_dtype or torch.float32, enabled=bool(self.amp_dtype)
        ):
            logits = self.model(x)
            loss = self.loss_fn(logits, y)
        self.count_predictions(logits.detach(), y)
        self.scaler.scale(loss / self.cfg.accumulate).backward()
        if update:
            self.scaler.step(self.opt)
            self.scaler.update()
            self.opt.zero_grad(set_to_none=True)
            self.sched.step()
        return loss.detach()

    def count_predictions(self, logits: torch.Tensor, y: torch.Tensor) -> None:
        """Add the batch's predicted classes on labelled pixels to :attr:`predicted` (what
        the end-of-training warning falls back on without validation pixels)."""
        pred = (logits[:, 0] > 0).long() if self.binary else logits.argmax(1)
        k = len(self.predicted)
        self.predicted += torch.bincount(pred[y != IGNORE_INDEX], minlength=k)[:k]

    def validate(self, epoch: int, losses: list[float], t0: float) -> tuple[dict, dict]:
        """Measure the seamless geometry (when a validation image needs more than one tile;
        else once, for the best epoch, at the end), validate through the deployed path, and
        return ``(metrics.csv row, scores)``."""
        if self.halo_each_epoch:
            tile = self.cfg.val_tile_size or self.cfg.tile_size
            self.spec = seamless_spec(self.model, self.spec, self.binary, tile, self.device)
        val_loss, sc = validate_epoch(
            self.model,
            self.spec,
            self.binary,
            self.data.store,
            self.data.val_idx,
            self.val_tiles,
            self.loss_fn,
            self.device,
        )
        row = {
            "epoch": epoch + 1,
            "train_loss": round(float(np.mean(losses)), 6),
            "val_loss": None if val_loss is None else round(val_loss, 6),
            "val_miou": round(sc["miou"] if sc["miou"] is not None else 0.0, 6),
            "val_pixel_accuracy": round(sc["pixel_accuracy"] or 0.0, 6),
            "val_dice": round(sc["mean_dice"] or 0.0, 6),
            "lr": self.opt.param_groups[0]["lr"],
            "seconds": round(time.perf_counter() - t0, 2),
            **per_class_iou(sc, self.data.classmap.names),
        }
        return row, sc

    def record(self, out: Path, row: dict[str, Any], sc: dict[str, Any]) -> bool:
        """Append the epoch to the history, write checkpoints, metrics.csv and plots; return
        whether validation mIoU improved."""
        miou = sc["miou"] if sc["miou"] is not None else 0.0
        self.history.append(row)
        improved = miou > self.best
        self.best, self.stale = (miou, 0) if improved else (self.best, self.stale + 1)
        st = self.state(row["epoch"])
        if improved:
            st["scores"] = sc
            save_checkpoint(out / "best.ckpt", self.model.state_dict(), st)
            names = self.data.classmap.names
            plot_confusion(np.asarray(sc["confusion_matrix"]), names, out / "confusion.png")
        save_checkpoint(out / "last.ckpt", self.model.state_dict(), st)
        write_metrics(out / "metrics.csv", self.history, self.data.classmap.names)
        plot_curves(self.history, out / "curves.png")
        log.info(
            "epoch %d/%d: train loss %.4f, val loss %s, val mIoU %.4f, pixel acc %.4f "
            "(tile %d, overlap %s), %.1f s%s",
            row["epoch"],
            self.cfg.epochs,
            row["train_loss"],
            row["val_loss"],
            miou,
            row["val_pixel_accuracy"],
            self.spec.tile_size,
            "measured at the end" if self.spec.overlap is None else f"{self.spec.overlap} px",
            row["seconds"],
            " (best)" if improved else "",
        )
        return improved


def train(cfg: TrainConfig, progress: bool = True) -> Path:
    """Train a segmentation network and write RUNDIR (see the module docstring).

    Args:
        cfg: resolved settings (``cfg.validate()`` is called again here).
        progress: show progress per epoch (loss, tiles/s).

    Returns:
        RUNDIR (``cfg.output``, or ``cfg.resume`` when resuming without an output).

    Raises:
        ConfigError: missing or invalid settings, or a resume with changed settings.
        DatasetError: unmatched pairs, unknown mask values or colours, mixed image types.
        DeviceError: the device is not available.
    """
    from tilesegd.inference.engine import resolve_device

    cfg.validate()
    resume = None
    if cfg.resume:
        cfg.output = cfg.output or cfg.resume
        resume = load_checkpoint(Path(cfg.resume) / "last.ckpt")
        check_resume(cfg, resume[1]["config"])
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
    data = prepare(cfg)
    run = TrainRun(cfg, data, device, resume)
    write_yaml(out / "config.yaml", cfg)
    log.info(
        "%s-%s, %d classes (%s), %d steps/epoch of %d tiles of %d px on %s",
        cfg.arch,
        cfg.encoder,
        data.classmap.num_classes,
        ", ".join(data.classmap.names),
        run.steps,
        cfg.batch_size,
        cfg.tile_size,
        device,
    )
    sc = None
    for epoch in range(run.start, cfg.epochs):
        t0 = time.perf_counter()
        losses = run.train_epoch(epoch, progress)
        row, sc = run.validate(epoch, losses, t0)
        run.record(out, row, sc)
        if cfg.patience and run.stale >= cfg.patience:
            log.info("early stop: no better validation mIoU for %d epochs", run.stale)
            break
    if sc is not None:
        warn_unpredicted(sc, run.predicted.cpu().numpy(), data.classmap.names, epoch + 1)
    tile = cfg.val_tile_size or cfg.tile_size
    save_best_model(out, None if run.halo_each_epoch else tile, device)
    return out

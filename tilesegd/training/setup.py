"""What a training run trains on: pairs, split, dataset statistics, the model's spec, samplers.

:func:`prepare` reads the classes CSV, pairs images with masks, plans each pair's training grid
(native, or resampled by ``gsd`` / ``scale``: :mod:`tilesegd.training.resample`), splits them
(whole images or row strips of the training grids), scans the training part (class pixels,
mean / std, dtype, bands) and returns a :class:`TrainData`; :func:`model_spec` turns it into
the model file's metadata (with the training resolution: ``gsd``, ``scale``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from tilesegd.errors import ConfigError
from tilesegd.model.spec import ModelSpec
from tilesegd.raster.labels import ClassMap, Pair, find_pairs, read_classes
from tilesegd.raster.regrid import Grid
from tilesegd.training.config import TrainConfig
from tilesegd.training.data import DatasetStats, PairStore, scan
from tilesegd.training.resample import plan_grids, training_gsd
from tilesegd.training.split import Region, make_split
from tilesegd.training.tiles import TileSampler

log = logging.getLogger(__name__)

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


@dataclass
class TrainData:
    """The labelled data of a run.

    Attributes:
        classmap: mask coding and the K output classes.
        pairs: image/mask pairs (sorted by stem).
        train_idx, val_idx: training and validation regions (whole images or row strips).
        store: decoded pairs (LRU cache).
        stats: the training part's statistics (bands, dtype, input scale, class pixels...).
        mean, std: per-band normalisation after scaling (dataset's, or ImageNet's).
        gsd: the training resolution in metres per pixel (``None`` when unknown).
    """

    classmap: ClassMap
    pairs: list[Pair]
    train_idx: list[Region]
    val_idx: list[Region]
    store: PairStore
    stats: DatasetStats
    mean: list[float]
    std: list[float]
    gsd: float | None = None


def prepare(cfg: TrainConfig) -> TrainData:
    """Read, pair, split and scan the training data.

    Raises:
        ConfigError: bad classes CSV or normalisation. DatasetError: unmatched pairs, unknown
            mask values, mixed image types.
    """
    classmap = read_classes(cfg.classes, cfg.ignore)
    pairs = find_pairs(cfg.images, cfg.masks)
    images = [p.image for p in pairs]
    grids = plan_grids(images, cfg.gsd, cfg.scale)
    gsd = training_gsd(grids, cfg.gsd)
    log_resolution(pairs, grids, gsd)
    heights = [g.out_height for g in grids]
    train_idx, val_idx = make_split(images, cfg.val_split, cfg.val_fraction, cfg.seed, heights)
    store = PairStore(pairs, classmap, cfg.cache_mb, grids)
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
    return TrainData(classmap, pairs, train_idx, val_idx, store, stats, mean, std, gsd)


def log_resolution(pairs: list[Pair], grids: list[Grid], gsd: float | None) -> None:
    """Log the training resolution and how many pairs are resampled to it."""
    moved = [(p, g) for p, g in zip(pairs, grids, strict=True) if g.resampled]
    where = f"{gsd:.4g} m/px" if gsd is not None else "an unknown pixel size (plain frames)"
    if not moved:
        log.info("training at the native resolution of every pair, %s", where)
        return
    p, g = moved[0]
    log.info(
        "training at %s: %d of %d pairs resampled on the fly (%s: %dx%d -> %dx%d px)",
        where,
        len(moved),
        len(pairs),
        p.name,
        g.width,
        g.height,
        g.out_width,
        g.out_height,
    )


def model_spec(cfg: TrainConfig, data: TrainData, binary: bool, multiple: int) -> ModelSpec:
    """The model file's metadata (``tilesegd.json``) for a network trained on ``data``.

    ``multiple`` is the network's own size multiple (its encoder's output stride). The training
    resolution is recorded as ``gsd`` (metres per pixel, when known) and ``scale`` (the
    ``--scale`` factor, when given).
    """
    stats = data.stats
    meta: dict[str, Any] = {
        "classes": [
            {"id": i, "name": e.name, "color": list(e.color)}
            for i, e in enumerate(data.classmap.classes)
        ],
        "in_channels": stats.bands,
        "bands": list(range(1, stats.bands + 1)),
        "input_scale": stats.input_scale,
        "mean": data.mean,
        "std": data.std,
        "multiple": max(multiple, cfg.multiple),
        "tile_size": cfg.val_tile_size or cfg.tile_size,
        "dtypes": [stats.dtype],
        "arch": cfg.arch,
        "encoder": cfg.encoder,
        "encoder_depth": cfg.encoder_depth,
        "decoder_channels": cfg.decoder_channels,
        "binary": binary,
        "ignored_classes": data.classmap.ignored_names,
        "normalization": cfg.normalization,
    }
    if data.gsd is not None:
        meta["gsd"] = round(data.gsd, 6)
    if cfg.scale is not None:
        meta["scale"] = float(cfg.scale)
    return ModelSpec.from_dict(meta, "<train>")


def samplers(
    cfg: TrainConfig, data: TrainData
) -> tuple[TileSampler, tuple[torch.Tensor, torch.Tensor] | None]:
    """The training tile sampler, and the fixed validation-loss tiles (``val_loss_tiles``
    tiles drawn once with a seed of their own; ``None`` when 0)."""
    stats = data.stats
    sampler = TileSampler(
        data.store,
        data.train_idx,
        stats.pixels,
        cfg.tile_size,
        cfg.scale_jitter,
        cfg.augment,
        stats.input_scale,
        data.mean,
        data.std,
    )
    if not cfg.val_loss_tiles:
        return sampler, None
    vs = TileSampler(
        data.store,
        data.val_idx,
        np.ones(len(data.val_idx)),
        cfg.tile_size,
        0.0,
        False,
        stats.input_scale,
        data.mean,
        data.std,
    )
    x, y = vs.sample(np.random.default_rng([cfg.seed, 1 << 30]), cfg.val_loss_tiles)
    return sampler, (torch.from_numpy(x), torch.from_numpy(y))

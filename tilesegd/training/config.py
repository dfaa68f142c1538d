"""The resolved settings of ``tilesegd train``: defaults < ``--config FILE`` (``train:`` section
or top level) < flags, built by :func:`tilesegd.config.resolve`."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from tilesegd.errors import ConfigError
from tilesegd.training.split import SPLITS

LOSS_TERMS = ("ce", "bce", "dice", "focal", "lovasz", "jaccard")
SCHEDULES = ("onecycle", "cosine", "constant")
NORMALIZATIONS = ("dataset", "imagenet")
# class_weights schemes by name (:func:`tilesegd.training.model.class_weights`); a list of K
# numbers, or None (no weighting, the default), is accepted too
CLASS_WEIGHTINGS = ("balanced", "inverse_sqrt")


@dataclass
class TrainConfig:
    """Every setting of ``tilesegd train``.

    Attributes:
        images, masks: folders of images and masks, paired by file stem.
        classes: classes CSV (``value,name,r,g,b`` or ``name,r,g,b``).
        output: the run directory (RUNDIR).
        arch: smp architecture name (``Unet``, ``UnetPlusPlus``, ``FPN``, ``DeepLabV3Plus``...).
        encoder: smp encoder name (``mobilenet_v2``, ``resnet34``, ``efficientnet-b0``...).
        encoder_depth: encoder stages (3-5); the model needs sides that are multiples of
            ``2 ** encoder_depth`` pixels.
        decoder_channels: passed to smp (a list for Unet, with ``encoder_depth`` entries).
        encoder_weights: a LOCAL file (safetensors or a ``torch.save`` state dict) with encoder
            weights; ``None`` = random init. Nothing is ever downloaded.
        epochs: training epochs.
        steps_per_epoch: batches per epoch; ``None`` = enough tiles to cover the training
            pixels once.
        batch_size: tiles per batch.
        accumulate: batches whose gradients are summed per optimiser step.
        gsd: train at this pixel size, metres: georeferenced pairs are resampled to it from
            their own pixel size; pairs without georeferencing are taken to be at it (after
            ``scale``, if given). Recorded in the model file (``gsd``); ``None`` = the median
            pixel size of georeferenced pairs, unresampled (see
            :mod:`tilesegd.training.resample`).
        scale: resample pairs without georeferencing (every pair when ``gsd`` is ``None``) by
            this factor (0.25: a quarter of the rows and columns); recorded in the model file
            (``scale``). ``None`` = native.
        tile_size: training tile side, pixels of the training grid (a multiple of
            ``2 ** encoder_depth``).
        val_tile_size: tile side for validation inference (default ``tile_size``).
        lr: peak learning rate (AdamW).
        weight_decay: AdamW weight decay.
        schedule: ``onecycle``, ``cosine`` (per optimiser step) or ``constant``.
        loss: ``+``-separated terms, each optionally weighted (``ce+0.5*dice``): ``ce``,
            ``dice``, ``focal``, ``lovasz``, ``jaccard``; ``bce`` for two-class (binary) data.
        class_weights: ``None`` (no weighting, the default), ``balanced`` (median frequency
            balancing, Eigen & Fergus 2015), ``inverse_sqrt`` (proportional to
            ``1 / sqrt(frequency)``) or a list of K weights, for ``ce`` / ``bce``; see
            :func:`tilesegd.training.model.class_weights`. Measured in
            ``benchmarks/bench_recipes.py`` (``benchmarks/RESULTS.md``).
        class_weight_cap: with ``balanced`` / ``inverse_sqrt``, the largest ratio of the
            largest to the smallest class weight (>= 1); ``None`` = no cap.
        ignore: class names whose pixels are ignored (a class named ``nodata`` always is).
        val_fraction: share of pairs (``images``) or of each image's rows (``regions``) held
            out for validation (at least one pair / row each side).
        val_split: ``images`` (hold out whole images) or ``regions`` (hold out a strip of every
            image's rows; for a few large scenes); see :mod:`tilesegd.training.split`.
        seed: seeds the split, initialisation, tile sampling and augmentation.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        amp: mixed precision: fp16 autocast + gradient scaling on CUDA, bf16 autocast on a
            CPU with native bf16 instructions (AVX512-BF16 / AMX: ~2x faster steps there,
            ``benchmarks/RESULTS.md``); float32 elsewhere.
        patience: stop after this many epochs without a better validation mIoU (0 = never).
        freeze_encoder_epochs: train only the decoder for this many first epochs.
        augment: flips, 90-degree rotations, brightness/contrast, scale jitter.
        scale_jitter: relative scale jitter ``j`` (0 = native resolution only).
        normalization: ``dataset`` (per-channel mean/std of the training images after scaling)
            or ``imagenet`` (3-band only).
        val_loss_tiles: fixed validation tiles used for the validation loss.
        cache_mb: decoded images kept in memory (MiB).
        resume: a run directory whose ``last.ckpt`` to continue from.
    """

    images: str | None = None
    masks: str | None = None
    classes: str | None = None
    output: str | None = None
    arch: str = "Unet"
    encoder: str = "mobilenet_v2"
    encoder_depth: int = 5
    decoder_channels: list[int] | int | None = None
    encoder_weights: str | None = None
    epochs: int = 20
    steps_per_epoch: int | None = None
    batch_size: int = 8
    accumulate: int = 1
    gsd: float | None = None
    scale: float | None = None
    tile_size: int = 512
    val_tile_size: int | None = None
    lr: float = 1e-3
    weight_decay: float = 1e-4
    schedule: str = "onecycle"
    loss: str = "ce+dice"
    class_weights: str | list[float] | None = None
    class_weight_cap: float | None = None
    ignore: list[str] = field(default_factory=list)
    val_fraction: float = 0.2
    val_split: str = "images"
    seed: int = 0
    device: str = "auto"
    amp: bool = True
    patience: int = 0
    freeze_encoder_epochs: int = 0
    augment: bool = True
    scale_jitter: float = 0.25
    normalization: str = "dataset"
    val_loss_tiles: int = 8
    cache_mb: float = 4096.0
    resume: str | None = None

    @property
    def multiple(self) -> int:
        """Side multiple the network needs, pixels."""
        return 2**self.encoder_depth

    def loss_terms(self) -> list[tuple[float, str]]:
        """``"ce+0.5*dice"`` -> ``[(1.0, "ce"), (0.5, "dice")]``.

        Raises:
            ConfigError: an unknown term or a bad weight.
        """
        terms = []
        for part in str(self.loss).lower().replace(" ", "").split("+"):
            w, _, name = part.rpartition("*")
            try:
                weight = float(w) if w else 1.0
            except ValueError:
                raise ConfigError(f"loss {self.loss!r}: bad weight {w!r}") from None
            if name not in LOSS_TERMS:
                raise ConfigError(
                    f"loss {self.loss!r}: unknown term {name!r}; use {', '.join(LOSS_TERMS)} "
                    "joined by + (e.g. ce+dice, bce+dice)"
                )
            terms.append((weight, name))
        return terms

    def validate(self) -> TrainConfig:
        """Check types and ranges.

        Raises:
            ConfigError: naming the bad setting and what is accepted.
        """
        if isinstance(self.ignore, str):
            self.ignore = [self.ignore]
        self.ignore = list(self.ignore or [])
        for name in ("epochs", "batch_size", "accumulate", "tile_size"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.steps_per_epoch is not None and self.steps_per_epoch < 1:
            raise ConfigError(f"steps_per_epoch must be >= 1, got {self.steps_per_epoch}")
        if not 1 <= self.encoder_depth <= 5:
            raise ConfigError(f"encoder_depth must be 1..5, got {self.encoder_depth}")
        for name in ("tile_size", "val_tile_size"):
            v = getattr(self, name)
            if v is not None and v % self.multiple:
                raise ConfigError(
                    f"{name} {v} must be a multiple of {self.multiple} (2 ** encoder_depth); "
                    f"try {max(self.multiple, v // self.multiple * self.multiple)}"
                )
        if self.gsd is not None and not float(self.gsd) > 0:
            raise ConfigError(f"gsd must be > 0 (metres per pixel), got {self.gsd}")
        if self.scale is not None and not 0.0 < float(self.scale) <= 16.0:
            raise ConfigError(f"scale must be in (0, 16] (0.25 = quarter size), got {self.scale}")
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigError(f"val_fraction must be between 0 and 1, got {self.val_fraction}")
        if self.val_split not in SPLITS:
            raise ConfigError(
                f"val_split must be one of {', '.join(SPLITS)}, got {self.val_split!r}"
            )
        if self.lr <= 0 or self.weight_decay < 0:
            raise ConfigError("lr must be > 0 and weight_decay >= 0")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"schedule must be one of {', '.join(SCHEDULES)}")
        if self.normalization not in NORMALIZATIONS:
            raise ConfigError(f"normalization must be one of {', '.join(NORMALIZATIONS)}")
        if not 0.0 <= self.scale_jitter < 1.0:
            raise ConfigError(f"scale_jitter must be in [0, 1), got {self.scale_jitter}")
        if self.patience < 0 or self.freeze_encoder_epochs < 0 or self.val_loss_tiles < 0:
            raise ConfigError("patience, freeze_encoder_epochs and val_loss_tiles must be >= 0")
        self.check_class_weights()
        dev = str(self.device).split(":")[0]
        if dev not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"device must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        if self.encoder_weights is not None and str(self.encoder_weights).lower() == "imagenet":
            raise ConfigError(
                "encoder_weights imagenet: tilesegd never downloads weights; download the "
                "encoder's state dict once and pass its local path (--encoder-weights FILE)"
            )
        self.loss_terms()
        return self

    def check_class_weights(self) -> None:
        """Check ``class_weights`` and ``class_weight_cap`` (the list's length is checked
        against the classes when training starts).

        Raises:
            ConfigError: an unknown scheme, a list with a value that is not a number > 0, or a
                cap below 1.
        """
        cw, cap = self.class_weights, self.class_weight_cap
        if isinstance(cw, list):
            if not all(isinstance(v, (int, float)) and 0 < v < float("inf") for v in cw):
                raise ConfigError(f"class_weights must be numbers > 0, got {cw!r}")
        elif cw is not None and cw not in CLASS_WEIGHTINGS:
            raise ConfigError(
                f"class_weights must be null (no weighting), {', '.join(CLASS_WEIGHTINGS)} or a "
                f"list of one weight per class, got {cw!r}"
            )
        if cap is not None and not (isinstance(cap, (int, float)) and cap >= 1):
            raise ConfigError(f"class_weight_cap must be a number >= 1 (max / min), got {cap!r}")

    def to_dict(self) -> dict[str, Any]:
        """A YAML/JSON-serialisable copy."""
        return dataclasses.asdict(self)

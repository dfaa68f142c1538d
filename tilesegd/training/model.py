"""Networks and losses for training: smp models built offline, losses from ``smp.losses``.

Binary (two-class) training with ``bce`` uses a one-channel network; for inference it is wrapped
in :class:`TwoClassLogits`, whose logits ``[0, z]`` give ``softmax = [1 - sigmoid(z),
sigmoid(z)]`` and ``argmax = (z > 0)``, so the model-file contract (K logit channels) holds.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tilesegd.errors import ConfigError
from tilesegd.raster.labels import IGNORE_INDEX
from tilesegd.training.config import CLASS_WEIGHTINGS

log = logging.getLogger(__name__)


class TwoClassLogits(torch.nn.Module):
    """Wrap a (B, 1, H, W) binary-logit network as (B, 2, H, W) logits ``[0, z]``."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.net(x)
        return torch.cat([torch.zeros_like(z), z], 1)


def build_model(
    arch: str,
    encoder: str,
    in_channels: int,
    out_channels: int,
    encoder_depth: int = 5,
    decoder_channels: list[int] | int | None = None,
) -> torch.nn.Module:
    """``smp.create_model(arch, encoder_name=encoder, encoder_weights=None, ...)``.

    Returns:
        A network mapping float32 (B, in_channels, H, W) to (B, out_channels, H, W) logits.

    Raises:
        ConfigError: unknown architecture / encoder or incompatible options (smp's message).
    """
    import segmentation_models_pytorch as smp

    kwargs: dict[str, Any] = dict(
        encoder_name=encoder, encoder_weights=None, in_channels=in_channels, classes=out_channels
    )
    if encoder_depth != 5:
        kwargs["encoder_depth"] = encoder_depth
    if decoder_channels is not None:
        kwargs["decoder_channels"] = decoder_channels
    try:
        return smp.create_model(arch, **kwargs)
    except (KeyError, ValueError, TypeError, AssertionError, RuntimeError) as exc:
        raise ConfigError(
            f"cannot build {arch} with encoder {encoder} (depth {encoder_depth}, decoder "
            f"{decoder_channels}): {str(exc)[:300]}; see the smp docs for valid names"
        ) from None


def load_encoder_weights(model: torch.nn.Module, path: str | Path) -> None:
    """Load a local encoder state dict into ``model.encoder``; never downloads.

    Accepts ``.safetensors`` or a ``torch.save`` dict (read with ``weights_only=True``: no
    pickled code runs). Keys may carry an ``encoder.`` prefix; tensors whose shape differs (a
    first convolution for another band count) are skipped with a warning.

    Raises:
        ConfigError: missing or unreadable file, or no key matches the encoder.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: encoder weights file not found (--encoder-weights FILE)")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
            state = state.get("state_dict", state) if isinstance(state, dict) else state
    except Exception as exc:
        raise ConfigError(f"{path}: cannot read encoder weights ({str(exc)[:200]})") from None
    if not isinstance(state, dict):
        raise ConfigError(f"{path}: expected a state dict of tensors")
    state = {k.removeprefix("encoder."): v for k, v in state.items()}
    own = model.encoder.state_dict()
    ok = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    skipped = [k for k in state if k in own and k not in ok]
    if not ok:
        raise ConfigError(
            f"{path}: no tensor matches the {type(model.encoder).__name__} encoder; is it "
            "for another encoder?"
        )
    if skipped:
        log.warning("%s: %d tensor(s) skipped (shape differs): %s", path, len(skipped), skipped[:3])
    model.encoder.load_state_dict(ok, strict=False)
    log.info("loaded %d/%d encoder tensors from %s", len(ok), len(own), path)


def class_weights(
    spec: str | list[float] | None, counts: np.ndarray, cap: float | None = None
) -> np.ndarray | None:
    """Per-class weights of the ``ce`` loss (``bce``: ``pos_weight = w[1] / w[0]``).

    ``f_c = counts[c] / counts.sum()`` is the share of labelled training pixels of class
    ``c``; a class is *present* when ``f_c > 0``.

    * ``None``: no weighting (``None`` is returned; the default).
    * a list of K numbers: used as given (finite, > 0; ``cap`` does not apply).
    * ``"balanced"``: median frequency balancing (Eigen & Fergus, "Predicting Depth, Surface
      Normals and Semantic Labels with a Common Multi-Scale Convolutional Architecture",
      ICCV 2015): ``w_c = median(f) / f_c``, the median over present classes, then
      clipped to [0.05, 20] (as tilesegd always did). Eigen & Fergus take ``f_c`` over the
      images where ``c`` occurs; here it is over all training pixels.
    * ``"inverse_sqrt"``: ``w_c = 1 / (sqrt(f_c) * sum_j sqrt(f_j))``, i.e. proportional to
      ``1 / sqrt(f_c)`` and normalised so that the pixel-weighted mean weight
      ``sum_c f_c w_c`` is 1 (a softer balancing: a class 100 x rarer gets 10 x the weight,
      not 100 x).

    ``cap`` (``class_weight_cap``, >= 1) bounds the ratio of the largest to the smallest
    weight of present classes: weights above ``cap * min(w)`` are lowered to it (the rarest
    classes lose weight, the frequent ones keep theirs); inverse_sqrt weights are then rescaled
    to a pixel-weighted mean of 1 again. The scale of the weights does not change the loss
    (``CrossEntropyLoss`` divides by the summed weights of a batch's pixels; ``bce`` uses a
    ratio); the ratios do.

    A class with no training pixels contributes no loss term whatever its weight; it gets the
    largest weight of the present classes (as rare as the rarest), so every weight is finite,
    positive, within the cap and ordered inversely to frequency. With no labelled pixels at
    all every weight is 1.

    Args:
        spec: ``None``, ``"balanced"``, ``"inverse_sqrt"`` or a list of K weights.
        counts: (K,) integer (or float) labelled training pixels per class id, >= 0.
        cap: the largest ratio max / min of the weights, or ``None`` (no cap).

    Returns:
        ``None`` for no weighting, else (K,) float32 weights, all finite and > 0.

    Raises:
        ConfigError: an unknown ``spec``; a list of the wrong length or with a value that is
            not a finite positive number; ``cap`` < 1.
        ValueError: ``counts`` not one-dimensional, or with negative or non-finite values.
    """
    if spec is None:
        return None
    counts = np.asarray(counts, np.float64)
    if counts.ndim != 1 or not np.all(np.isfinite(counts)) or np.any(counts < 0):
        raise ValueError(f"class counts must be a (K,) array of pixels >= 0, got {counts!r}")
    k = len(counts)
    if isinstance(spec, (list, tuple)):
        w = np.asarray(spec, np.float64)
        if len(w) != k:
            raise ConfigError(f"class_weights lists {len(w)} values for {k} classes")
        if not np.all(np.isfinite(w)) or np.any(w <= 0):
            raise ConfigError(f"class_weights must be finite numbers > 0, got {list(spec)}")
        return w.astype(np.float32)
    if spec not in CLASS_WEIGHTINGS:
        raise ConfigError(
            f"class_weights must be {', '.join(CLASS_WEIGHTINGS)}, a list of {k} numbers or "
            f"null (no weighting), got {spec!r}"
        )
    if cap is not None and not float(cap) >= 1.0:
        raise ConfigError(f"class_weight_cap must be >= 1 (max / min weight), got {cap!r}")
    present = counts > 0
    if not present.any():
        return np.ones(k, np.float32)
    fp = counts[present] / counts.sum()
    if spec == "balanced":
        wp = np.clip(np.median(fp) / fp, 0.05, 20.0)
    else:
        wp = 1.0 / np.sqrt(fp)
    if cap is not None:
        wp = np.minimum(wp, float(cap) * wp.min())
    if spec == "inverse_sqrt":
        wp = wp / float((fp * wp).sum())  # sum(fp) is 1
    w = np.full(k, wp.max())
    w[present] = wp
    return w.astype(np.float32)


class _MaskedJaccard(torch.nn.Module):
    """Soft Jaccard loss (smp's ``soft_jaccard_score``) over labelled pixels only."""

    def __init__(self, binary: bool) -> None:
        super().__init__()
        self.binary = binary

    def forward(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        from segmentation_models_pytorch.losses._functional import soft_jaccard_score

        keep = (y != IGNORE_INDEX).unsqueeze(1).float()
        if self.binary:
            p, t = torch.sigmoid(logits) * keep, (y == 1).unsqueeze(1).float() * keep
        else:
            k = logits.shape[1]
            p = logits.softmax(1) * keep
            t = torch.nn.functional.one_hot(torch.where(keep[:, 0] > 0, y, 0), k)
            t = t.permute(0, 3, 1, 2).float() * keep
        dims = (0, 2, 3)
        score = soft_jaccard_score(p, t, dims=dims)
        return ((1.0 - score) * (t.sum(dims) > 0).float()).mean()


class CombinedLoss(torch.nn.Module):
    """Weighted sum of loss terms; ``forward(logits, y)`` with logits (B, K or 1, H, W) float
    and y (B, H, W) int64 ids (255 = ignore)."""

    def __init__(self, terms: list[tuple[float, str, torch.nn.Module]], binary: bool) -> None:
        super().__init__()
        self.weights = [w for w, _, _ in terms]
        self.names = [n for _, n, _ in terms]
        self.fns = torch.nn.ModuleList(f for _, _, f in terms)
        self.binary = binary

    def forward(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        total = logits.new_zeros(())
        for w, name, fn in zip(self.weights, self.names, self.fns, strict=True):
            if self.binary and name == "bce":
                target = y.unsqueeze(1).float()
            elif self.binary and name != "jaccard":
                target = y.unsqueeze(1)
            else:
                target = y
            total = total + w * fn(logits, target)
        return total


def build_loss(
    terms: list[tuple[float, str]], num_classes: int, binary: bool, weights: np.ndarray | None
) -> CombinedLoss:
    """Build the loss from parsed terms (:meth:`TrainConfig.loss_terms`).

    Multiclass: ``ce`` = ``torch.nn.CrossEntropyLoss(weight, ignore_index=255)``; ``dice``,
    ``focal``, ``lovasz`` = ``smp.losses`` in ``multiclass`` mode with ``ignore_index=255``.
    Binary (K = 2 with ``bce``): ``bce`` = ``smp.losses.SoftBCEWithLogitsLoss`` (``pos_weight``
    = w1 / w0 when weighted), the others in ``binary`` mode. ``jaccard`` masks ignored pixels.

    Raises:
        ConfigError: ``bce`` with K != 2, or ``ce`` mixed with ``bce``.
    """
    from segmentation_models_pytorch import losses as L

    mode = "binary" if binary else "multiclass"
    built = []
    for w, name in terms:
        if name == "ce":
            if binary:
                raise ConfigError("loss: use bce (not ce) together with bce for binary data")
            wt = None if weights is None else torch.as_tensor(weights, dtype=torch.float32)
            fn: torch.nn.Module = torch.nn.CrossEntropyLoss(weight=wt, ignore_index=IGNORE_INDEX)
        elif name == "bce":
            if num_classes != 2:
                raise ConfigError(
                    f"loss bce is for two classes (background, foreground); this dataset has "
                    f"{num_classes}; use ce+dice"
                )
            pw = None if weights is None else torch.tensor([weights[1] / weights[0]])
            fn = L.SoftBCEWithLogitsLoss(ignore_index=IGNORE_INDEX, pos_weight=pw)
        elif name == "dice":
            fn = L.DiceLoss(mode, ignore_index=IGNORE_INDEX)
        elif name == "focal":
            fn = L.FocalLoss(mode, ignore_index=IGNORE_INDEX)
        elif name == "lovasz":
            fn = L.LovaszLoss(mode, ignore_index=IGNORE_INDEX)
        else:
            fn = _MaskedJaccard(binary)
        built.append((w, name, fn))
    return CombinedLoss(built, binary)


def network_from_state(
    spec: dict[str, Any], model_state: dict[str, torch.Tensor] | None = None
) -> torch.nn.Module:
    """Rebuild the deployable network (K logit channels) from a checkpoint's ``spec``.

    Raises:
        ConfigError: the architecture cannot be rebuilt.
    """
    k = len(spec["classes"])
    binary = bool(spec.get("binary"))
    net = build_model(
        spec["arch"],
        spec["encoder"],
        int(spec["in_channels"]),
        1 if binary else k,
        int(spec.get("encoder_depth", 5)),
        spec.get("decoder_channels"),
    )
    if model_state is not None:
        net.load_state_dict(model_state)
    return TwoClassLogits(net) if binary else net

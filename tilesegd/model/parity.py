"""Parity of an exported or converted network with the eager one it came from
(``tilesegd export``, :mod:`tilesegd.model.convert`)."""

from __future__ import annotations

from typing import Any

import torch


def parity(eager: torch.nn.Module, other: Any, x: torch.Tensor) -> dict[str, float]:
    """Compare two networks on ``x`` (B, C, H, W) float32.

    Returns:
        ``{"max_abs_diff": float (logit units), "argmax_agreement": float in [0, 1]}``.
    """
    with torch.no_grad():
        return compare_scores(eager(x), other(x))


def compare_scores(a: torch.Tensor, b: torch.Tensor) -> dict[str, float]:
    """Max absolute difference and argmax agreement of two (B, K, H, W) score tensors."""
    a, b = a.float(), b.float()
    return {
        "max_abs_diff": float((a - b).abs().max()),
        "argmax_agreement": float((a.argmax(1) == b.argmax(1)).float().mean()),
    }

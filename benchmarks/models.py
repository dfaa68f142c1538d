"""The benchmark networks, saved as tilesegd model files (TorchScript + ``tilesegd.json``).

* ``trivial``: a 1x1 convolution 3 -> K (fixed seed). It costs almost nothing, so a run with it
  measures the pipeline itself (read, decode, stitch, write) rather than the network.
* ``unet``: ``segmentation_models_pytorch.Unet("mobilenet_v2", encoder_weights=None)`` with
  random weights (nothing is downloaded), the realistic workload.

Every tool in the benchmark (tilesegd and the peers) runs the very same TorchScript file.
"""

from __future__ import annotations

from pathlib import Path

import torch

from tilesegd.model.model_file import ModelSpec, save_model

MEAN = [0.485, 0.456, 0.406]
STD = [0.229, 0.224, 0.225]


class Trivial(torch.nn.Module):
    """1x1 convolution, (B, 3, H, W) float32 -> (B, K, H, W) logits; no spatial context."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.conv = torch.nn.Conv2d(3, num_classes, 1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=g))
            self.conv.bias.copy_(torch.randn(num_classes, generator=g) * 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def spec(num_classes: int) -> ModelSpec:
    """ImageNet normalisation, RGB bands 1-3, 512-px tiles, multiple 32."""
    return ModelSpec.from_dict(
        {
            "classes": [{"id": i, "name": f"class{i}"} for i in range(num_classes)],
            "in_channels": 3,
            "bands": [1, 2, 3],
            "input_scale": 255.0,
            "mean": MEAN,
            "std": STD,
            "multiple": 32,
            "tile_size": 512,
        }
    )


def build(kind: str, num_classes: int, folder: Path) -> Path:
    """Save (or reuse) ``folder/<kind>_<K>.ts`` and return its path.

    Args:
        kind: ``trivial`` or ``unet`` (smp Unet-mobilenet_v2, random weights, seed 0).
        num_classes: K output classes.
    """
    path = folder / f"{kind}_{num_classes}.ts"
    if path.exists():
        return path
    torch.manual_seed(0)
    if kind == "trivial":
        net = Trivial(num_classes)
    elif kind == "unet":
        import segmentation_models_pytorch as smp

        net = smp.Unet("mobilenet_v2", encoder_weights=None, classes=num_classes)
    else:
        raise ValueError(f"unknown model kind {kind!r}; use trivial or unet")
    return save_model(net, path, spec(num_classes), example_size=512)

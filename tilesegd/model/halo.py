"""How much context a network needs: the halo that makes tiled inference seamless.

A tile's border is the network's zero padding. Pixels near it see padding where whole-image
inference would see the scene, and a trained U-Net reaches far: its deepest convolutions run at
1/32 resolution, where one padded cell spans 32 pixels. The classic remedy is overlap-tile
inference with a halo (Ronneberger et al., "U-Net", MICCAI 2015, Fig. 2): keep only each tile's
core. How wide the halo must be depends on the trained weights, not only the architecture: a
random-weight Unet-mobilenet_v2 agrees with whole-image inference at a 32-px halo, while the same
network trained on 256-px LoveDA tiles needed 192-224 px, depending on the training run
(measured, ``benchmarks/RESULTS.md``).

:func:`measure_halo` measures it: on a fixed synthetic scene (smooth Gaussian noise, seeded, so
the answer depends only on the network), it runs a reference window with ample context, then
windows that give a central core ``h`` pixels of real context on every side, and returns the
smallest ``h`` (a multiple of the network's side multiple) whose core class ids agree with the
reference on at least ``agreement`` of its pixels.
"""

from __future__ import annotations

import logging
import math

import torch

log = logging.getLogger(__name__)


def _smooth_noise(channels: int, side: int, seed: int, cell: int = 16) -> torch.Tensor:
    """(1, channels, side, side) float32, unit variance, features ~``cell`` pixels wide:
    seeded Gaussian noise on a coarse grid, upsampled bicubically."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(1, channels, side // cell + 4, side // cell + 4, generator=g)
    x = torch.nn.functional.interpolate(
        coarse, scale_factor=cell, mode="bicubic", align_corners=False
    )[..., 2 * cell : 2 * cell + side, 2 * cell : 2 * cell + side]
    return (x / x.std()).contiguous()


def measure_halo(
    net: torch.nn.Module,
    in_channels: int,
    multiple: int,
    *,
    max_halo: int = 256,
    agreement: float = 0.999,
    device: str | torch.device = "cpu",
    seed: int = 0,
) -> int:
    """The halo (pixels of context each side of a tile's core) the network needs.

    Args:
        net: maps float32 (1, C, H, W) normalised input to (1, K, H, W) logits; H, W multiples
            of ``multiple``: a torch module (run in eval mode without gradients) or a runtime
            (:class:`~tilesegd.model.onnx_model.OnnxModel`).
        in_channels: C.
        multiple: the side multiple the network needs (pixels); the halo is a multiple of it.
        max_halo: the largest halo tried, pixels; returned (with a warning) if none agrees.
        agreement: the share of core pixels whose class id must match the reference.
        device: where to run.
        seed: the synthetic scene's seed.

    Returns:
        The halo in pixels, ``multiple <= halo <= max_halo`` (rounded to a multiple).

    Cost: one forward pass of ``(2 * max_halo + 4 * multiple + 64)^2`` pixels plus up to
    ``max_halo / multiple`` smaller ones (about 1.5 s for Unet-mobilenet_v2 on 2 CPU cores).
    """
    step = max(1, int(multiple))
    max_halo = max(step, math.ceil(max_halo / step) * step)
    core = math.ceil(64 / step) * step  # 64^2 or more core pixels are compared
    margin = max_halo + 2 * step  # the reference sees more context than any window
    side = core + 2 * margin
    x = _smooth_noise(in_channels, side, seed).to(device)
    module = isinstance(net, torch.nn.Module)  # else a runtime (an onnxruntime OnnxModel)
    was_training = net.training if module else False
    if module:
        net.eval()
    try:
        with torch.inference_mode():
            ref = net(x).argmax(1)[0, margin : margin + core, margin : margin + core]
            for h in range(step, max_halo + 1, step):
                o = margin - h
                w = x[..., o : o + core + 2 * h, o : o + core + 2 * h]
                got = net(w.contiguous()).argmax(1)[0, h : h + core, h : h + core]
                if (got == ref).float().mean().item() >= agreement:
                    return h
    finally:
        if module:
            net.train(was_training)
    log.warning(
        "the network's class ids still depend on context beyond %d px; tiles with a %d-px "
        "halo may show seams (pass a larger --overlap)",
        max_halo,
        max_halo,
    )
    return max_halo


def seamless_geometry(halo: int, min_tile: int, multiple: int) -> tuple[int, int]:
    """``(tile_size, overlap)`` in pixels for a measured ``halo``: ``overlap = 2 * halo`` and
    the smallest tile (a multiple of ``multiple``, at least ``min_tile``) whose core is at least
    as wide as the two halos together (so each tile computes at most 4x its core's pixels)."""
    tile = max(min_tile, math.ceil(4 * halo / multiple) * multiple)
    return tile, 2 * halo


def measure_activation_bytes(
    net: torch.nn.Module,
    in_channels: int,
    multiple: int,
    *,
    device: str | torch.device = "cpu",
    side: int = 256,
) -> float:
    """float32 bytes the network holds per input pixel at the peak of one forward pass.

    Runs one seeded ``(1, in_channels, side, side)`` input (``side`` rounded up to
    ``multiple``; NHWC on the CPU, as the engine feeds it) and takes the peak of the tensors
    torch allocates while it runs, the input excluded and the logits included, divided by the
    pixels. On CUDA that is ``torch.cuda.max_memory_allocated`` above the memory in use before
    the call; on the CPU the peak of the allocations and frees that torch's profiler records
    (``profile_memory``). A fully convolutional network's activations grow linearly with the
    pixels (smp Unet-mobilenet_v2: the same bytes per pixel at 128^2, 256^2 and 384^2), so
    :func:`tilesegd.inference.budget.call_bytes_per_pixel` scales it to any tile.

    Measured: smp Unet-mobilenet_v2, default decoder, 318.5 eager / 128 TorchScript (the JIT
    frees dead tensors early); the slim LoveDA demo decoder 208 / 112. On CUDA the caching
    allocator's peak is what the call needs. On the CPU the process grows more than the tensors
    (the slim TorchScript U-Net: 257-314 B/px of resident memory after a few calls: glibc
    arenas, oneDNN, the TorchScript profiling run), so the CPU budget uses the calibrated
    :data:`tilesegd.inference.budget.DEFAULT_ACTIVATION_BYTES`, not this figure.

    Args:
        net: maps float32 (1, C, H, W) to (1, K, H, W) logits (eval mode, no gradients).
        in_channels: C.
        multiple: the network's side multiple (pixels).
        device: where to run.
        side: probe side in pixels.

    Returns:
        Bytes per input pixel (float32 activations, batch of one).
    """
    step = max(1, int(multiple))
    side = max(step, math.ceil(side / step) * step)
    dev = torch.device(device)
    x = _smooth_noise(in_channels, side, seed=0).to(dev)
    if dev.type != "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    module = isinstance(net, torch.nn.Module)  # else a runtime (an onnxruntime OnnxModel)
    was_training = net.training if module else False
    if module:
        net.eval()
    try:
        with torch.inference_mode():
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
                base = torch.cuda.memory_allocated(dev)
                torch.cuda.reset_peak_memory_stats(dev)
                net(x)
                torch.cuda.synchronize(dev)
                peak = torch.cuda.max_memory_allocated(dev) - base
            else:
                peak = _cpu_peak_bytes(net, x)
    finally:
        net.train(was_training)
    return peak / (side * side)


def _cpu_peak_bytes(net: torch.nn.Module, x: torch.Tensor) -> int:
    """Peak bytes of the tensors torch allocates during ``net(x)`` on the CPU (the legacy
    autograd profiler with ``profile_memory``: allocations are the ops' own memory, frees are
    its ``[memory]`` events; replayed in time order)."""
    from torch.autograd import profiler

    with profiler.profile(profile_memory=True, use_kineto=False) as prof:
        net(x)
    events = sorted(  # at equal times allocations first: never below the true peak
        (e.time_range.start, -e.self_cpu_memory_usage)
        for e in prof.function_events
        if e.self_cpu_memory_usage
    )
    live = peak = 0
    for _, neg in events:
        nbytes = -neg
        live += nbytes
        peak = max(peak, live)
    return peak

"""``tilesegd train``: train an smp network on image/mask pairs; writes a run directory."""

from __future__ import annotations

from pathlib import Path

import click

from tilesegd.cli.options import is_quiet, verbosity_options


@click.command(context_settings={"max_content_width": 100})
@click.option("--images", type=click.Path(), help="Folder of images (GeoTIFF, PNG, JPEG).")
@click.option("--masks", type=click.Path(), help="Folder of masks, matched to images by stem.")
@click.option(
    "--classes",
    type=click.Path(),
    help="Classes CSV: value,name,r,g,b or name,r,g,b (Semantic Drone Dataset class_dict.csv).",
)
@click.option("--output", "-o", type=click.Path(), help="Run directory (RUNDIR).")
@click.option("--config", "config_file", type=click.Path(), help="YAML config (train: section).")
@click.option(
    "--arch", help="smp architecture: Unet (default), UnetPlusPlus, FPN, DeepLabV3Plus..."
)
@click.option("--encoder", help="smp encoder (default mobilenet_v2).")
@click.option(
    "--encoder-weights",
    type=click.Path(),
    help="LOCAL encoder weights file (safetensors / state dict); nothing is downloaded.",
)
@click.option("--epochs", type=int, help="Epochs (default 20).")
@click.option(
    "--steps-per-epoch", type=int, help="Batches per epoch (default: cover the data once)."
)
@click.option("--batch-size", type=int, help="Tiles per batch (default 8).")
@click.option(
    "--gsd",
    type=float,
    help="Train at this pixel size, metres: georeferenced pairs are resampled to it on the fly "
    "(images: area average, masks: majority); recorded in the model file. Default: each pair's "
    "own (the median is recorded).",
)
@click.option(
    "--scale",
    type=float,
    help="Resample plain frames (no georeferencing) by this factor on the fly, e.g. 0.25; "
    "recorded in the model file. With --gsd, the frames so resampled are taken to be at --gsd.",
)
@click.option(
    "--tile-size", type=int, help="Training tile side in pixels of the training grid (default 512)."
)
@click.option("--lr", type=float, help="Peak learning rate, AdamW (default 1e-3).")
@click.option("--loss", help="Loss terms joined by +: ce, dice, focal, lovasz, jaccard, bce.")
@click.option("--ignore", multiple=True, help="Class name to ignore (repeatable).")
@click.option(
    "--val-fraction",
    type=float,
    help="Share of pairs (or of each image's rows, with --val-split regions) held out for "
    "validation (default 0.2).",
)
@click.option(
    "--val-split",
    type=click.Choice(["images", "regions"]),
    help="images: hold out whole images (default); regions: hold out a strip of every image's "
    "rows, for a few large scenes (always used with a single pair).",
)
@click.option("--seed", type=int, help="Random seed (default 0).")
@click.option("--device", help="auto (default), cpu, cuda or cuda:N.")
@click.option("--patience", type=int, help="Early stop after N epochs without better mIoU.")
@click.option(
    "--resume",
    type=click.Path(),
    help="Continue the run in RUNDIR from its last.ckpt (uses RUNDIR/config.yaml).",
)
@verbosity_options
@click.pass_context
def train(ctx: click.Context, config_file: str | None, **flags: object) -> None:
    """Train a segmentation model; writes config.yaml, metrics.csv, curves.png, confusion.png,
    best.ckpt, last.ckpt and model.pt2 (torch.export; model.ts, TorchScript, for a network that
    cannot be exported with a dynamic input size) into RUNDIR.

    \b
    tilesegd train --images data/images --masks data/masks --classes classes.csv \\
        --output runs/a --config configs/loveda_unet.yaml
    tilesegd train --resume runs/a
    """
    from tilesegd.api import train as run_training
    from tilesegd.model.model_file import trained_model

    flags["ignore"] = list(flags["ignore"]) or None  # type: ignore[arg-type]
    if flags.get("resume") and not config_file:
        config_file = str(Path(str(flags["resume"])) / "config.yaml")
    out = run_training(config_file=config_file, progress=not is_quiet(ctx), **flags)
    click.echo(f"model: {trained_model(out)}\nrun:   {out}")

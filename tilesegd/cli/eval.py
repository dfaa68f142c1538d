"""``tilesegd eval``: score a model against labelled images (tiled, at the model's resolution)."""

from __future__ import annotations

import click

from tilesegd.cli.options import verbosity_options


@click.command("eval", context_settings={"max_content_width": 100})
@click.option(
    "--model", "-m", required=True, type=click.Path(), help="Model file (.ts / .pt2 / .onnx)."
)
@click.option("--images", required=True, type=click.Path(), help="Folder of images.")
@click.option("--masks", required=True, type=click.Path(), help="Folder of masks (same stems).")
@click.option(
    "--classes",
    type=click.Path(),
    help="Classes CSV of the masks (default: masks hold the model's class ids or colours).",
)
@click.option(
    "--ignore",
    multiple=True,
    help="Class name to leave out of the scores (repeatable); the classes the model was "
    "trained to ignore (its ignored_classes, e.g. unlabeled) are always left out.",
)
@click.option("--output", "-o", required=True, type=click.Path(), help="Report directory.")
@click.option(
    "--tile-size", type=int, help="Tile side in pixels [default: as tilesegd run, the model's]."
)
@click.option(
    "--overlap",
    type=int,
    help="Pixels shared by neighbouring tiles [default: as tilesegd run, the model file's "
    "measured overlap].",
)
@click.option(
    "--batch-size",
    type=int,
    help="Tiles per network call [default: as tilesegd run, ~2 megapixels per call].",
)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N.")
@click.option("--precision", default="auto", show_default=True, help="auto, fp32, fp16, bf16.")
@click.option("--save-predictions", is_flag=True, help="Also write pred/<stem>.png masks.")
@verbosity_options
def eval_cmd(ignore: tuple[str, ...], **opts: object) -> None:
    """Evaluate a model: writes metrics.json, metrics.csv and confusion.png into --output.

    Images go through the same tiled inference as tilesegd run. A model trained at a chosen
    resolution (the gsd or scale in its file) predicts each image resampled to it; scores are
    always counted at the masks' native resolution.

    \b
    tilesegd eval --model model.pt2 --images data/images --masks data/masks \\
        --classes classes.csv --output eval/
    """
    from tilesegd.api import evaluate

    doc = evaluate(ignore=ignore, **opts)  # type: ignore[arg-type]
    click.echo(
        f"mIoU {doc['miou'] or 0:.4f}  pixel accuracy {doc['pixel_accuracy'] or 0:.4f}  "
        f"mean Dice {doc['mean_dice'] or 0:.4f}  ({doc['pixels']} labelled pixels)"
    )
    for c in doc["per_class"]:
        iou = "n/a" if c["iou"] is None else f"{c['iou']:.4f}"
        click.echo(f"  {c['id']:3d} {c['name']:<24s} IoU {iou}")
    click.echo(f"report: {opts['output']}")

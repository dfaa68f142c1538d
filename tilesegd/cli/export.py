"""``tilesegd export``: a training checkpoint -> TorchScript or TensorRT model file."""

from __future__ import annotations

import click

from tilesegd.cli.options import verbosity_options


@click.command(context_settings={"max_content_width": 100})
@click.argument("ckpt", type=click.Path())
@click.option("--output", "-o", required=True, type=click.Path(), help="Model file to write.")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["torchscript", "tensorrt"]),
    default="torchscript",
    show_default=True,
    help="TorchScript (any device) or TensorRT (CUDA, needs tilesegd[tensorrt]).",
)
@click.option(
    "--precision",
    type=click.Choice(["fp32", "fp16"]),
    default="fp32",
    show_default=True,
    help="TensorRT kernel precision (TorchScript stays fp32).",
)
@click.option("--tile-size", type=int, help="Suggested (TensorRT: fixed) tile side, pixels.")
@click.option("--batch-size", type=int, help="TensorRT's fixed batch size (default 8).")
@verbosity_options
def export(
    ckpt: str,
    output: str,
    fmt: str,
    precision: str,
    tile_size: int | None,
    batch_size: int | None,
) -> None:
    """Export CKPT (RUNDIR/best.ckpt, last.ckpt or RUNDIR) to a model file with tilesegd.json.

    \b
    tilesegd export runs/a/best.ckpt --output model.ts
    tilesegd export runs/a/best.ckpt --output model_trt.ts --format tensorrt --precision fp16
    """
    from tilesegd.train.export import export_model

    report: dict = {}
    path = export_model(ckpt, output, fmt, precision, tile_size, batch_size, report=report)
    click.echo(
        f"{path}: {fmt}; parity vs eager: max abs logit diff {report['max_abs_diff']:.3g}, "
        f"argmax agreement {report['argmax_agreement'] * 100:.3f}%"
    )

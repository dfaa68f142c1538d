"""``tilesegd export``: a training checkpoint -> torch.export (``.pt2``), TorchScript (``.ts``),
TensorRT or ONNX model file."""

from __future__ import annotations

import click

from tilesegd.cli.options import verbosity_options


@click.command(context_settings={"max_content_width": 100})
@click.argument("ckpt", type=click.Path())
@click.option(
    "--output",
    "-o",
    required=True,
    type=click.Path(),
    help="Model file to write, e.g. model.pt2 (torch.export); a .ts name writes TorchScript.",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["torchscript", "tensorrt", "onnx"]),
    default="torchscript",
    show_default=True,
    help="torchscript: a torch.export .pt2 or a TorchScript .ts, by the --output suffix (any "
    "device); tensorrt (CUDA, needs tilesegd[tensorrt]); onnx (onnxruntime, QGIS Deepness, "
    "GeoDeep; needs tilesegd[onnx]).",
)
@click.option(
    "--precision",
    type=click.Choice(["fp32", "fp16"]),
    default="fp32",
    show_default=True,
    help="TensorRT kernel precision (.pt2 and .ts files stay fp32).",
)
@click.option("--tile-size", type=int, help="Suggested (TensorRT: fixed) tile side, pixels.")
@click.option("--batch-size", type=int, help="TensorRT's fixed batch size (default 8).")
@click.option(
    "--dynamic-size",
    is_flag=True,
    help="ONNX: dynamic input height/width (tilesegd only; Deepness and GeoDeep need the fixed "
    "tile size).",
)
@verbosity_options
def export(
    ckpt: str,
    output: str,
    fmt: str,
    precision: str,
    tile_size: int | None,
    batch_size: int | None,
    dynamic_size: bool,
) -> None:
    """Export CKPT (RUNDIR/best.ckpt, last.ckpt or RUNDIR) to a model file with tilesegd.json.

    \b
    tilesegd export runs/a/best.ckpt --output model.pt2
    tilesegd export runs/a/best.ckpt --output model.ts     # TorchScript
    tilesegd export runs/a/best.ckpt --output model_trt.ts --format tensorrt --precision fp16
    tilesegd export runs/a/best.ckpt --output model.onnx --format onnx
    """
    from tilesegd.api import export as export_model

    report: dict = {}
    path = export_model(
        ckpt,
        output,
        format=fmt,
        precision=precision,
        tile_size=tile_size,
        batch_size=batch_size,
        report=report,
        dynamic_size=dynamic_size,
    )
    kind = "torch.export" if fmt == "torchscript" and path.suffix == ".pt2" else fmt
    click.echo(
        f"{path}: {kind}; parity vs eager: max abs {report['diff_units']} diff "
        f"{report['max_abs_diff']:.3g}, argmax agreement {report['argmax_agreement'] * 100:.3f}%"
    )

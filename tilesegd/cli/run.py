"""``tilesegd run``: segment scenes into COG + Zarr masks and area reports."""

from __future__ import annotations

import click

from tilesegd.cli.options import is_quiet, verbosity_options
from tilesegd.config import COMPRESSIONS
from tilesegd.errors import EXIT_SCENES_FAILED
from tilesegd.inference.budget import CPU_BUDGET, CUDA_BUDGET_SHARE
from tilesegd.inference.runtimes import RUNTIMES


def _bands(ctx: click.Context, param: click.Parameter, value: str | None) -> list[int] | None:
    if value is None:
        return None
    try:
        return [int(v) for v in value.split(",")]
    except ValueError:
        raise click.BadParameter(
            "give 1-based band numbers separated by commas, e.g. 1,2,3"
        ) from None


def _floats(value: str | None, n: int, example: str) -> list[float] | None:
    if value is None:
        return None
    try:
        numbers = [float(v) for v in value.split(",")]
    except ValueError:
        numbers = []
    if len(numbers) != n:
        raise click.BadParameter(f"give {example}")
    return numbers


@click.command(context_settings={"max_content_width": 100})
@click.option(
    "--input",
    "-i",
    "inputs",
    multiple=True,
    type=click.Path(),
    help="Raster file or directory (searched recursively for .tif .tiff .vrt .jpg "
    ".jpeg .png); or an s3:// gs:// az:// prefix or object, an http(s):// URL, a GDAL /vsi "
    "path (read by range requests; credentials from the cloud's environment, AWS_ENDPOINT_URL "
    "for S3-compatible stores); or a STAC Item, ItemCollection, Catalog or Collection (.json, "
    "a file or URL): one scene per Item, named by its id (see --asset). Repeat for several.",
)
@click.option(
    "--asset",
    metavar="KEY",
    help="The asset of each STAC Item to segment (--input Item / ItemCollection / Catalog "
    "JSON, or --stac-api) [default: 'visual' when the Item has it, else its only asset with "
    "role 'data' and a GeoTIFF media type].",
)
@click.option(
    "--stac-api",
    metavar="URL",
    help="Segment what an item search of this STAC API returns (pages followed); the result "
    "is kept as DIR/search.json, so a rerun resumes the same scenes even if the catalog "
    "changed. Needs --collections.",
)
@click.option(
    "--collections",
    callback=lambda c, p, v: [x.strip() for x in v.split(",") if x.strip()] if v else None,
    metavar="C1[,C2]",
    help="The collections the --stac-api search covers.",
)
@click.option(
    "--bbox",
    callback=lambda c, p, v: _floats(v, 4, "W,S,E,N in degrees, e.g. 7.40,46.90,7.50,46.98"),
    metavar="W,S,E,N",
    help="The search's bounding box, degrees (EPSG:4326) [default: the --aoi's bounds].",
)
@click.option(
    "--datetime",
    metavar="RANGE",
    help="The search's RFC 3339 instant or range, e.g. 2024-05-01/2024-09-30 ('..' for an "
    "open end).",
)
@click.option(
    "--query",
    metavar="JSON",
    help='The search\'s query-extension filter, e.g. \'{"eo:cloud_cover": {"lt": 20}}\'.',
)
@click.option("--max-items", type=int, metavar="N", help="The most Items the search takes.")
@click.option(
    "--model",
    "-m",
    type=click.Path(),
    help="Model file: TorchScript (.ts) or torch.export (.pt2) with tilesegd.json, or ONNX "
    "(.onnx, tilesegd[onnx]) with tilesegd.json or QGIS Deepness / GeoDeep metadata; or its "
    "s3:// gs:// az:// http(s):// URL, fetched once into a cache keyed by its SHA-256 "
    "($TILESEGD_MODEL_CACHE, else ~/.cache/tilesegd/models).",
)
@click.option(
    "--output",
    "-o",
    type=click.Path(),
    help="Output directory: one folder per scene, plus summary.csv and run.json; or an "
    "object-storage prefix (s3://bucket/prefix/, gs://, az://) with the same layout.",
)
@click.option(
    "--scratch",
    type=click.Path(file_okay=False),
    help="Local folder where each scene's COGs, GeoPackages, CSVs and preview are built "
    "before upload to an object-storage --output (one scene at a time). [default: the temp "
    "folder]",
)
@click.option(
    "--tile-size",
    type=int,
    help="Network input side in pixels, a multiple of the model's multiple; used for every "
    "scene [default: chosen per scene from the model file's measured halo, the network's "
    "measured throughput per tile size (timed once per model file and machine, cached) and "
    "the memory budget of one network call (--memory-budget): the tile between 4 x halo and "
    "the largest that fits with the fewest predicted seconds; the model's tile_size for model "
    "files without a measured overlap].",
)
@click.option(
    "--memory-budget",
    metavar="SIZE",
    help="Memory one network call may use, e.g. 3GiB or 1500MB; bounds the default tile "
    "(peak memory stays flat in scene size) [default: an eighth of the machine's or "
    f"container's memory, at least {CPU_BUDGET / 2**30:g} GiB, on the CPU; "
    f"{CUDA_BUDGET_SHARE:.0%} of a GPU's memory].",
)
@click.option(
    "--seam-tolerance",
    type=float,
    metavar="SHARE",
    help="Trade seamlessness for speed: the share of pixels (e.g. 0.01) whose class may differ "
    "from whole-image inference; the overlap becomes the one the network needs for that "
    "agreement (measured once per model file, cached), never more than its measured overlap "
    "(tuned for 0.001) [default: the model file's measured overlap].",
)
@click.option(
    "--overlap",
    type=int,
    help="Pixels shared by neighbouring tiles; half of it is the halo cropped from "
    "each side [default: the model file's measured overlap (seamless), else 64, or a quarter "
    "of tiles under 256 px].",
)
@click.option(
    "--batch-size",
    type=int,
    help="Tiles per network call; halved automatically on CUDA out-of-memory [default: 8 "
    "tiles of up to 512 px, fewer of larger tiles (~2 megapixels per call)].",
)
@click.option("--device", help="auto | cpu | cuda | cuda:N [default: auto = CUDA if present].")
@click.option(
    "--precision",
    type=click.Choice(["auto", "fp32", "fp16", "bf16"]),
    help="Inference precision [default: auto = fp16 on CUDA, fp32 on CPU].",
)
@click.option(
    "--workers",
    type=int,
    help="Parallel reader / writer threads [default: CPU count, at most 8]; with "
    "--cluster local, the number of worker processes.",
)
@click.option(
    "--save-probs",
    is_flag=True,
    default=None,
    help="Also write stitched class probabilities (K, H, W) float16 to pred.zarr.",
)
@click.option(
    "--config",
    "config_file",
    type=click.Path(),
    help="YAML file with any of these options (flags override it); see configs/.",
)
@click.option(
    "--block-size",
    type=int,
    help="Approximate block side in pixels: the unit of reading, writing and resume "
    "(the Zarr chunk) [default: 2048].",
)
@click.option(
    "--bands",
    callback=_bands,
    help="Override the model's input bands, 1-based, comma-separated (e.g. 1,1,1 to "
    "feed a grey scene to an RGB model).",
)
@click.option(
    "--max-megapixels",
    type=float,
    help="Refuse scenes larger than this before reading [default: 20000].",
)
@click.option(
    "--allow-vrt",
    is_flag=True,
    default=None,
    help="Accept .tif files that are really VRTs, and VRTs reading from the network.",
)
@click.option(
    "--allow-no-georef",
    is_flag=True,
    default=None,
    help="Process GeoTIFFs with missing/corrupt georeferencing as plain images.",
)
@click.option(
    "--overwrite",
    is_flag=True,
    default=None,
    help="Recompute scenes already done (default: skip them and resume half-done ones).",
)
@click.option("--model-sha256", help="Refuse the model file unless its SHA-256 matches.")
@click.option(
    "--compress",
    type=click.Choice(COMPRESSIONS),
    help="mask.tif compression [default: deflate].",
)
@click.option(
    "--preview-size",
    type=int,
    help="Longest side of preview.png panels in pixels; 0 = no preview [default: 1024].",
)
@click.option(
    "--runtime",
    type=click.Choice(RUNTIMES),
    help="How the network runs. auto: on CUDA, TensorRT when torch-tensorrt is installed, "
    "else a captured CUDA graph; on the CPU, onnxruntime when installed (tilesegd[onnx]; a "
    ".ts / .pt2 file is converted to ONNX once and cached by its SHA-256), else eager. eager: "
    "plain PyTorch. compile: torch.compile (CPU or CUDA; slow first batch). cudagraph: CUDA "
    "graphs (CUDA). tensorrt: torch-tensorrt engine (CUDA, tilesegd[tensorrt]). onnxruntime: "
    "the ONNX conversion on any device. Every accelerated runtime falls back to eager with a "
    "warning if it cannot be built; run.json records the one used [default: auto].",
)
@click.option(
    "--compile",
    "compile_",
    is_flag=True,
    default=None,
    help="Shorthand for --runtime compile (torch.compile, on the CPU or CUDA).",
)
@click.option(
    "--scheduler",
    metavar="tcp://HOST:PORT",
    help="Run on an existing Dask cluster (its address, or the file of `dask scheduler "
    "--scheduler-file`): its workers segment blocks of every scene into the same stores "
    "(needs tilesegd[distributed] and a filesystem shared with the workers).",
)
@click.option(
    "--cluster",
    type=click.Choice(["local", "local-cuda"]),
    help="Start a Dask cluster for this run: local = --workers worker processes; "
    "local-cuda = one worker per GPU (dask-cuda).",
)
@click.option(
    "--shard",
    metavar="I/N",
    help="Process only scenes I, I+N, I+2N... of the sorted scene list (0-based), e.g. "
    "--shard $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT in a job array.",
)
@click.option(
    "--save-confidence",
    is_flag=True,
    default=None,
    help="Also write confidence.tif: the top class's softmax probability x 100 (uint8 0-100, "
    "nodata 255, averaged overviews, a magma QGIS style), aligned with mask.tif.",
)
@click.option(
    "--min-confidence",
    type=float,
    metavar="P",
    help="Pixels whose top-class probability is below P (0-1) become nodata in the mask and "
    "the areas; run.json counts them [default: keep every pixel].",
)
@click.option(
    "--aoi",
    type=click.Path(),
    metavar="FILE",
    help="Area of interest: a polygon file any GDAL/OGR driver reads (GeoPackage, GeoJSON, "
    "Shapefile...), any CRS. Only pixels whose centre is inside are segmented; the rest are "
    "nodata; blocks and tiles outside are never read or run (tiles at its edge keep their "
    "full context, so the mask inside is unchanged).",
)
@click.option("--aoi-crs", metavar="CRS", help="The AOI file's CRS when it has none (EPSG:4326).")
@click.option(
    "--zones",
    type=click.Path(),
    metavar="FILE",
    help="Polygons (parcels, districts, a grid...), any CRS: class areas per zone in "
    "<scene>/zones.csv and zones.gpkg (one <class>_m2 column per class, for a QGIS "
    "choropleth), and DIR/zones_summary.csv over all scenes. Each pixel counts for the zone "
    "containing its centre; where zones overlap, the first one in the file.",
)
@click.option("--zones-crs", metavar="CRS", help="The zones file's CRS when it has none.")
@click.option(
    "--zone-field",
    metavar="NAME",
    help="The zones' attribute naming them in zones.csv [default: the feature id].",
)
@click.option(
    "--vector",
    is_flag=True,
    default=None,
    help="Also write <scene>/polygons.gpkg: one polygon per 4-connected region of a class "
    "(holes kept), with class_id, class_name, area_m2, perimeter_m, pixels; traced block by "
    "block and merged across blocks in bounded memory. A rerun that adds --vector to "
    "finished scenes builds only the polygons, from the stored masks.",
)
@click.option(
    "--vector-classes",
    metavar="NAME[,NAME]",
    help="Classes to vectorise [default: all but one named background].",
)
@click.option(
    "--min-area",
    type=float,
    metavar="M2",
    help="Minimum mapping unit: regions smaller than M2 square metres are left out of "
    "polygons.gpkg (the mask and areas.csv keep them) [default: 0].",
)
@click.option(
    "--simplify",
    type=float,
    metavar="PX",
    help="Simplify polygon outlines with a tolerance of PX pixels, keeping shared edges "
    "shared (shapely coverage_simplify: no gaps or overlaps) [default: 0, exact pixel edges].",
)
@click.option(
    "--resample",
    type=click.Choice(["auto", "off"]),
    help="auto: a scene whose ground sampling distance differs from the model's (its gsd, or "
    "--gsd) by more than --gsd-tolerance is segmented on a grid of the model's GSD (GDAL "
    "average when shrinking, bilinear when enlarging) and its mask written back on the "
    "scene's own grid (nearest); off: run every scene as it is [default: auto].",
)
@click.option(
    "--gsd",
    type=float,
    metavar="M",
    help="The model's ground sampling distance, metres per pixel (overrides the model file's "
    "gsd) [default: the model file's].",
)
@click.option(
    "--gsd-tolerance",
    type=float,
    metavar="F",
    help="Relative GSD difference that still runs a scene as it is [default: 0.1 = 10%].",
)
@click.option(
    "--scene-gsd",
    type=float,
    metavar="M",
    help="The GSD (metres per pixel) of plain JPEG / PNG frames, which carry none; without it "
    "they run as they are.",
)
@verbosity_options
@click.pass_context
def run(
    ctx: click.Context,
    inputs: tuple[str, ...],
    config_file: str | None,
    compile_: bool,
    **opts: object,
) -> None:
    """Segment large scenes into class masks, stitched seamlessly, in bounded memory.

    Per scene, DIR/<scene>/ gets mask.tif (COG, uint8 class ids, nodata 255, colour table),
    pred.zarr (Zarr v3: mask, optional probs), areas.csv (pixels, m2, ha, percent) and
    preview.png; DIR gets summary.csv and run.json. Rerunning the same command skips finished
    scenes and resumes half-done ones.

    \b
    Example:
      tilesegd run --input scenes/ --model drone_unet.ts --output out/
    """
    from tilesegd.api import run as api_run
    from tilesegd.config import RunConfig, resolve

    overrides = dict(opts, input=list(inputs) or None, compile=compile_)
    cfg = resolve(RunConfig, config_file, overrides, section="run")
    quiet = is_quiet(ctx)
    doc = api_run(cfg, progress=not quiet)
    scenes = doc["scenes"]
    failed = {n: e for n, e in scenes.items() if e["status"] == "failed"}
    done = [n for n, e in scenes.items() if e["status"] == "done"]
    if not quiet:
        made = ["mask.tif", "mask.qml", "pred.zarr", "areas.csv"]
        made += ["confidence.tif"] * bool(cfg.save_confidence) + ["polygons.gpkg"] * cfg.vector
        made += ["zones.csv", "zones.gpkg"] * bool(cfg.zones) + ["preview.png"] * (
            cfg.preview_size > 0
        )
        run_files = "summary.csv, run.json" + ", zones_summary.csv" * bool(cfg.zones)
        click.echo(
            f"{len(done)} of {len(scenes)} scene(s) done -> {str(cfg.output).rstrip('/')}/ "
            f"(<scene>/{', '.join(made)}; {run_files})"
        )
    for name, e in failed.items():
        click.echo(f"FAILED {name}: {e['error']}", err=True)
    if failed:
        ctx.exit(EXIT_SCENES_FAILED)

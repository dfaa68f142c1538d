"""The Python API behind every command: :func:`run`, :func:`train`, :func:`export`,
:func:`evaluate`.

>>> import tilesegd                                                        # doctest: +SKIP
>>> report = tilesegd.run(input=["scenes/"], model="model.pt2", output="out/")  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shutil
import signal
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tilesegd.config import RunConfig, resolve
from tilesegd.errors import ConfigError

if TYPE_CHECKING:
    from tilesegd.training.config import TrainConfig

log = logging.getLogger(__name__)


@contextlib.contextmanager
def stop_on_signals() -> Iterator[threading.Event]:
    """An event set by SIGTERM / SIGINT while the block runs (main thread only)."""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handler(signum: int, frame: Any) -> None:
        log.warning(
            "received %s: finishing the blocks in hand, then stopping", signal.Signals(signum).name
        )
        stop.set()

    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield stop
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def with_local_model(cfg: RunConfig) -> RunConfig:
    """``cfg`` with a model URL (``s3://``, ``gs://``, ``az://``, ``https://``) replaced by its
    copy in the model cache, fetched now if the cache lacks it
    (:func:`tilesegd.storage.fetch.fetch_model`, checked against ``--model-sha256``): every
    later step, and each worker, reads that local file.

    Raises:
        ModelFileError: the model cannot be fetched, or its SHA-256 is not the pinned one.
    """
    from tilesegd.storage.urls import parse_location

    location = parse_location(cfg.model)
    if location is None:
        return cfg
    from tilesegd.storage.fetch import fetch_model

    local = fetch_model(location, cfg.model_sha256)
    log.info("model %s: %s", location, local)
    return dataclasses.replace(cfg, model=str(local))


def run(
    config: RunConfig | None = None,
    *,
    config_file: str | None = None,
    progress: bool = True,
    **options: Any,
) -> dict[str, Any]:
    """Segment every input scene and write per-scene outputs, ``summary.csv`` and ``run.json``.

    Args:
        config: a resolved :class:`RunConfig`; or build one from ``config_file`` + ``options``
            (option names as in :class:`RunConfig`).
        progress: show progress per scene (a bar on a terminal, log lines otherwise).

    Returns:
        The ``run.json`` document (``scenes`` maps scene name -> entry with ``status``).

    Raises:
        ConfigError: missing ``input`` / ``model`` / ``output`` or invalid settings.
        ModelFileError: the model file is unusable (no scene is attempted).
        LockedError: another run holds the output directory.
        OutputError: the output directory cannot be written (permissions, disk full).
        Interrupted: SIGTERM / SIGINT; finished work is kept, rerun to resume.
        Scene errors do not raise: they are recorded as ``failed`` in ``run.json``.
    """
    from tilesegd.batch.discovery import select_shard
    from tilesegd.batch.ledger import open_ledger
    from tilesegd.batch.sources import find_scenes
    from tilesegd.storage.objects import output_location

    cfg = config or resolve(RunConfig, config_file, options)
    if not (cfg.input or cfg.stac_api) or not cfg.model or not cfg.output:
        raise ConfigError("run needs --input (or --stac-api), --model and --output (flags or "
                          "config file)")  # fmt: skip
    with output_place(cfg) as (output, lock, local), lock, stop_on_signals() as stop:
        found = find_scenes(cfg, local, open_ledger(output, output_location(cfg.output)))
        paths, names = found.paths, found.names
        source_model, cfg = cfg.model, with_local_model(cfg)
        if cfg.shard:  # job arrays: scene i (by sorted path) goes to shard i % N
            paths, names = select_shard(paths, names, cfg.shard)
        from tilesegd.batch.folder import clean_stale

        clean_stale(output)
        if cfg.scheduler or cfg.cluster:  # blocks computed by Dask workers
            from tilesegd.batch.distributed import run_distributed

            remote_model = None if source_model == cfg.model else source_model
            return run_distributed(cfg, paths, names, output, stop=stop, progress=progress,
                                   model_url=remote_model, sources=found.sources)  # fmt: skip
        from tilesegd.batch.local import run_local

        return run_local(cfg, paths, names, output, stop=stop, progress=progress,
                         sources=found.sources)  # fmt: skip


@contextlib.contextmanager
def output_place(cfg: RunConfig) -> Iterator[tuple[Path, Any, Path | None]]:
    """The run's local output root, its (not yet entered) lock and its local output folder:
    the ``--output`` folder, created and checked, with its ``flock``, and that folder again
    (discovery leaves it out of the inputs); or, for an object-storage prefix (checked before
    any scene: bucket, listing, a probe write), a scratch folder for this run (removed
    afterwards), the prefix's lock (:func:`tilesegd.batch.objects.object_lock`) and ``None``.

    Raises:
        OutputError: the folder cannot be created or written. ConfigError: the prefix is
            wrong (a missing bucket, access denied, an unreachable endpoint: exit 1).
    """
    from tilesegd.storage.objects import ObjectFolder, output_location

    remote = output_location(cfg.output)
    if remote is None:
        from tilesegd.batch.folder import make_output_dir, output_lock

        output = Path(cfg.output or "")
        make_output_dir(output)
        yield output, output_lock(output), output
        return
    from tilesegd.batch.objects import object_lock, scratch_folder

    folder = ObjectFolder(remote)
    folder.check()
    scratch = scratch_folder(cfg.scratch, remote)
    try:
        yield scratch, object_lock(folder), None
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def train(
    config: TrainConfig | None = None,
    *,
    config_file: str | None = None,
    progress: bool = True,
    **options: Any,
) -> Path:
    """Train a segmentation network and write its run directory (``model.pt2``, checkpoints,
    ``metrics.csv``, ``config.yaml``; ``model.ts`` instead for a network that ``torch.export``
    cannot export with a dynamic input size).

    Args:
        config: a resolved :class:`~tilesegd.training.config.TrainConfig`; or build one from
            ``config_file`` (its ``train:`` section) + ``options`` (names as in ``TrainConfig``:
            ``images``, ``masks``, ``classes``, ``output``, ``epochs``...).
        progress: show progress per epoch (loss, tiles/s).

    Returns:
        The run directory.

    Raises:
        ConfigError: missing or invalid settings, or a resume with changed settings.
        DatasetError: unmatched pairs, unknown mask values or colours, mixed image types.
        DeviceError: the device is not available.
    """
    from tilesegd.training.config import TrainConfig
    from tilesegd.training.loop import train as train_model

    cfg = config or resolve(TrainConfig, config_file, options, section="train")
    return train_model(cfg, progress=progress)


def export(
    checkpoint: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    format: str = "torchscript",
    precision: str = "fp32",
    tile_size: int | None = None,
    batch_size: int | None = None,
    dynamic_size: bool = False,
    report: dict[str, Any] | None = None,
) -> Path:
    """Export a checkpoint (or a run directory: its ``best.ckpt``) to a self-describing model
    file, after a parity check against the eager network.

    Args:
        checkpoint: ``RUNDIR/best.ckpt``, ``last.ckpt`` or RUNDIR.
        output: the model file to write (``model.pt2``: torch.export; ``.ts``: TorchScript).
        format: ``torchscript`` (TorchScript or torch.export, by the suffix of ``output``),
            ``tensorrt`` or ``onnx``.
        precision: ``fp32``; ``fp16`` for ``tensorrt`` only.
        tile_size: the suggested (TensorRT, fixed-size ONNX: fixed) tile side in pixels.
        batch_size: TensorRT's fixed batch size.
        dynamic_size: ONNX only: dynamic input height / width.
        report: if given, filled with the parity figures (``max_abs_diff``, ``diff_units``,
            ``argmax_agreement``).

    Returns:
        The written path.

    Raises:
        ConfigError, ModelFileError, DeviceError: as
        :func:`tilesegd.training.export.export_model`.
    """
    from tilesegd.training.export import export_model

    return export_model(
        checkpoint,
        output,
        format,
        precision,
        tile_size,
        batch_size,
        report=report,
        dynamic_size=dynamic_size,
    )


def evaluate(
    model: str | os.PathLike[str],
    images: str | os.PathLike[str],
    masks: str | os.PathLike[str],
    output: str | os.PathLike[str],
    classes: str | os.PathLike[str] | None = None,
    *,
    ignore: Sequence[str] = (),
    device: str = "auto",
    precision: str = "auto",
    batch_size: int | None = None,
    tile_size: int | None = None,
    overlap: int | None = None,
    save_predictions: bool = False,
) -> dict[str, Any]:
    """Score ``model`` on image / mask pairs (paired by file stem) and write ``metrics.json``,
    ``metrics.csv`` and ``confusion.png`` into ``output``.

    Args:
        model: a model file with its ``tilesegd.json`` spec.
        images, masks: folders paired by file stem.
        output: the report folder (created).
        classes: the masks' classes CSV (default: the model's classes).
        ignore: class names left out of the scores.
        device, precision, batch_size, tile_size, overlap: as for :func:`run`; the tiles are
            those :func:`run` would use on this device for the same options
            (:func:`tilesegd.inference.geometry.geometry_for`).
        save_predictions: also write ``pred/<stem>.png``.

    Returns:
        The ``metrics.json`` document (``miou``, ``mean_dice``, ``pixel_accuracy``, ``per_class``,
        ``confusion_matrix``, ``per_image``).

    Raises:
        ModelFileError, DatasetError, IncompatibleInputError: as
        :func:`tilesegd.evaluation.evaluate.evaluate`.
    """
    from tilesegd.evaluation.evaluate import EvalConfig
    from tilesegd.evaluation.evaluate import evaluate as evaluate_model
    from tilesegd.inference.geometry import TilingOptions
    from tilesegd.inference.options import EngineOptions

    cfg = EvalConfig(
        model,
        images,
        masks,
        output,
        classes,
        ignore=tuple(ignore),
        engine=EngineOptions(device=device, precision=precision),
        tiling=TilingOptions(tile_size=tile_size, overlap=overlap, batch_size=batch_size),
        save_predictions=save_predictions,
    )
    return evaluate_model(cfg)

"""The Python API behind every command: :func:`run`, :func:`train`, :func:`export`,
:func:`evaluate`.

>>> from tilesegd.api import run                                  # doctest: +SKIP
>>> report = run(input=["scenes/"], model="model.ts", output="out/")  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tilesegd.config import RunConfig, resolve
from tilesegd.errors import ConfigError

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
    from tilesegd.ledger import clean_stale, make_output_dir, output_lock
    from tilesegd.scene import discover, scene_names, select_shard

    cfg = config or resolve(RunConfig, config_file, options)
    if not cfg.input or not cfg.model or not cfg.output:
        raise ConfigError("run needs --input, --model and --output (flags or config file)")
    output = Path(cfg.output)
    make_output_dir(output)
    paths = discover(cfg.input, output)
    names = scene_names(paths)
    if cfg.shard:  # job arrays: scene i (by sorted path) goes to shard i % N
        paths, names = select_shard(paths, names, cfg.shard)
    with output_lock(output), stop_on_signals() as stop:
        clean_stale(output)
        if cfg.scheduler or cfg.cluster:  # blocks computed by Dask workers
            from tilesegd.distributed import run_distributed

            return run_distributed(cfg, paths, names, output, stop=stop, progress=progress)
        from tilesegd.local import run_local

        return run_local(cfg, paths, names, output, stop=stop, progress=progress)


def train(*args: Any, **kwargs: Any) -> Path:
    """Train a model (see :func:`tilesegd.train.loop.train`)."""
    from tilesegd.train.loop import train as train_model

    return train_model(*args, **kwargs)


def export(*args: Any, **kwargs: Any) -> Path:
    """Export a checkpoint (see :func:`tilesegd.train.export.export_model`)."""
    from tilesegd.train.export import export_model

    return export_model(*args, **kwargs)


def evaluate(*args: Any, **kwargs: Any) -> dict[str, Any]:
    """Score a model against masks (see :func:`tilesegd.evaluate.evaluate`)."""
    from tilesegd.evaluate import evaluate as evaluate_model

    return evaluate_model(*args, **kwargs)

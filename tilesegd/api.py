"""The Python API behind every command: :func:`run`, :func:`train`, :func:`export`,
:func:`evaluate`.

>>> from tilesegd.api import run                                  # doctest: +SKIP
>>> report = run(input=["scenes/"], model="model.ts", output="out/")  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import hashlib
import json
import logging
import os
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tilesegd import __version__
from tilesegd.config import RunConfig, resolve
from tilesegd.errors import (
    ConfigError,
    Interrupted,
    LockedError,
    ModelFileError,
    OutputError,
    TilesegdError,
)

log = logging.getLogger(__name__)
RUN_JSON = "run.json"
SUMMARY_CSV = "summary.csv"


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to ``path`` through a temporary file and an atomic rename."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2, default=str)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


@contextlib.contextmanager
def output_lock(output: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``DIR/.tilesegd/lock`` (released by the OS on a kill).

    Raises:
        LockedError: another run holds it.
    """
    lock_dir = output / ".tilesegd"
    lock_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_dir / "lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LockedError(
                f"{output}: another tilesegd run is writing to this output directory; wait for "
                "it to finish or choose another --output"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        os.close(fd)


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


def fingerprint(model_sha: str, cfg: RunConfig, device: str, dtype: str) -> str:
    """Identify everything that changes the masks: model, geometry, bands, precision, device."""
    key = json.dumps(
        [
            __version__,
            model_sha,
            cfg.tile_size,
            cfg.overlap,
            cfg.block_size,
            cfg.bands,
            cfg.save_probs,
            device,
            dtype,
        ]
    )
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def clean_stale(output: Path) -> None:
    """Remove temporary files a killed run left at the top of the output directory."""
    for p in output.glob(".*.tmp-*"):
        with contextlib.suppress(OSError):
            p.unlink() if p.is_file() else shutil.rmtree(p)


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
        progress: show a progress bar per scene.

    Returns:
        The ``run.json`` document (``scenes`` maps scene name -> entry with ``status``).

    Raises:
        ConfigError: missing ``input`` / ``model`` / ``output`` or invalid settings.
        ModelFileError: the model file is unusable (no scene is attempted).
        LockedError: another run holds the output directory.
        Interrupted: SIGTERM / SIGINT; finished work is kept, rerun to resume.
        Scene errors do not raise: they are recorded as ``failed`` in ``run.json``.
    """
    from tilesegd.engine import Engine
    from tilesegd.model_file import file_sha256
    from tilesegd.runner import run_scene
    from tilesegd.scene import discover, scene_names

    cfg = config or resolve(RunConfig, config_file, options)
    if not cfg.input or not cfg.model or not cfg.output:
        raise ConfigError("run needs --input, --model and --output (flags or config file)")
    output = Path(cfg.output)
    try:
        output.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{output}: cannot create the output directory ({exc})") from None
    paths = discover(cfg.input)
    names = scene_names(paths)
    if cfg.shard:  # job arrays: scene i (by sorted path) goes to shard i % N
        from tilesegd.distributed import select_shard

        paths, names = select_shard(paths, names, cfg.shard)
    with output_lock(output), stop_on_signals() as stop:
        clean_stale(output)
        if cfg.scheduler or cfg.cluster:  # blocks computed by Dask workers
            from tilesegd.distributed import run_distributed

            return run_distributed(cfg, paths, names, output, stop=stop, progress=progress)
        model_sha = file_sha256(cfg.model) if Path(cfg.model).is_file() else ""
        engine = Engine.from_file(
            cfg.model,
            device=cfg.device,
            sha256=cfg.model_sha256,
            precision=cfg.precision,
            batch_size=cfg.batch_size,
            save_probs=cfg.save_probs,
            compile=cfg.compile,
        )
        cfg.geometry(engine.spec.tile_size, engine.spec.multiple)  # bad geometry: fail now
        fp = fingerprint(model_sha, cfg, str(engine.device), str(engine.dtype))
        run_path = output / RUN_JSON
        previous: dict[str, Any] = {}
        if run_path.exists():
            with contextlib.suppress(json.JSONDecodeError, OSError):
                previous = json.loads(run_path.read_text()).get("scenes", {})
        doc: dict[str, Any] = {
            "tilesegd_version": __version__,
            "model": {
                "path": str(Path(cfg.model).resolve()),
                "sha256": model_sha,
                "classes": [c.name for c in engine.spec.classes],
            },
            "device": str(engine.device),
            "precision": str(engine.dtype).replace("torch.", ""),
            "config": cfg.to_dict(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "status": "running",
            "scenes": {},
        }
        interrupted = None
        for path, name in zip(paths, names, strict=True):
            old = previous.get(name, {})
            if (
                not cfg.overwrite
                and old.get("status") == "done"
                and old.get("fingerprint") == fp
                and _outputs_present(output / name)
            ):
                log.info("%s: already done, skipping (use --overwrite to recompute)", name)
                doc["scenes"][name] = {**old, "skipped": True}
                continue
            if stop.is_set():
                interrupted = Interrupted("stopped by a signal before this scene")
                doc["scenes"][name] = {"status": "pending", "input": str(path)}
                continue
            if cfg.overwrite:
                from tilesegd.runner import work_dir

                shutil.rmtree(work_dir(output, name), ignore_errors=True)
            entry: dict[str, Any] = {"input": str(path), "fingerprint": fp}
            t0 = time.perf_counter()
            try:
                entry.update(
                    run_scene(path, name, engine, cfg, output, fp, stop=stop, progress=progress)
                )
                log.info(
                    "%s: done in %.1f s (%.2f MP/s)",
                    name,
                    entry["seconds"],
                    entry["megapixels_per_s"] or 0,
                )
            except Interrupted as exc:
                interrupted = exc
                entry.update(status="interrupted", error=str(exc))
            except ModelFileError:
                raise
            except TilesegdError as exc:
                entry.update(status="failed", error=str(exc))
                log.error("%s", exc)
            except OSError as exc:
                entry.update(status="failed", error=f"{path}: {exc}")
                log.error("%s: %s", path, exc)
                if exc.errno == 28:  # ENOSPC: nothing else can be written either
                    doc["scenes"][name] = entry
                    _finish(output, doc, "failed")
                    raise OutputError(
                        f"{output}: disk full while writing {name}; free space "
                        "and rerun the same command to resume"
                    ) from None
            except Exception as exc:  # never let one scene stop the others
                log.debug("unexpected error", exc_info=True)
                entry.update(
                    status="failed", error=f"{path}: internal error {type(exc).__name__}: {exc}"
                )
                log.error("%s", entry["error"])
            entry.setdefault("seconds", round(time.perf_counter() - t0, 3))
            doc["scenes"][name] = entry
            write_json_atomic(run_path, doc)
        statuses = {e["status"] for e in doc["scenes"].values()}
        status = "interrupted" if interrupted else "failed" if "failed" in statuses else "done"
        _finish(output, doc, status)
        if interrupted is not None:
            raise interrupted
    return doc


def _outputs_present(final: Path) -> bool:
    return (
        (final / "mask.tif").is_file()
        and (final / "pred.zarr").is_dir()
        and (final / "areas.csv").is_file()
    )


def _finish(output: Path, doc: dict[str, Any], status: str) -> None:
    doc["status"] = status
    doc["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    rows = []
    for name, entry in doc["scenes"].items():
        f = output / name / "areas.csv"
        if entry.get("status") == "done" and f.is_file():
            with open(f, newline="") as fh:
                rows += [{"scene": name, **r} for r in csv.DictReader(fh)]
    tmp = output / f".{SUMMARY_CSV}.tmp-{os.getpid()}"
    from tilesegd.areas import AREA_COLUMNS

    with open(tmp, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=("scene",) + AREA_COLUMNS)
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, output / SUMMARY_CSV)
    write_json_atomic(output / RUN_JSON, doc)


def train(*args: Any, **kwargs: Any) -> Path:
    """Train a model (see :func:`tilesegd.train.loop.train`)."""
    from tilesegd.train.loop import train as _train

    return _train(*args, **kwargs)


def export(*args: Any, **kwargs: Any) -> Path:
    """Export a checkpoint (see :func:`tilesegd.train.export.export_model`)."""
    from tilesegd.train.export import export_model

    return export_model(*args, **kwargs)


def evaluate(*args: Any, **kwargs: Any) -> dict[str, Any]:
    """Score a model against masks (see :func:`tilesegd.evaluate.evaluate`)."""
    from tilesegd.evaluate import evaluate as _evaluate

    return _evaluate(*args, **kwargs)

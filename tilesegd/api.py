"""The Python API behind every command: :func:`run`, :func:`train`, :func:`export`,
:func:`evaluate`.

>>> from tilesegd.api import run                                  # doctest: +SKIP
>>> report = run(input=["scenes/"], model="model.ts", output="out/")  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import csv
import errno
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
    OutputError,
    TilesegdError,
)

log = logging.getLogger(__name__)
RUN_JSON = "run.json"
SUMMARY_CSV = "summary.csv"


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to ``path`` through a temporary file and an atomic rename.

    Raises:
        OSError: the file cannot be written (the temporary file is removed; ``path`` keeps
            its previous content).
    """
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w") as f:
            json.dump(data, f, indent=2, default=str)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


def is_disk_full(exc: BaseException) -> bool:
    """True for "no space left" errors: ``OSError(ENOSPC / EDQUOT)`` or GDAL's messages."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(exc).lower()
    return "no space left" in text or "free disk space" in text or "disk quota" in text


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
    """Remove what a killed run left behind: ``DIR/.*.tmp-*`` (run.json, summary.csv),
    ``.*.tmp*`` files in the scenes' work folders (half-written GeoTIFFs) and folders replaced
    by a publish (``DIR/.tilesegd/trash/``). Work stores (``pred.zarr`` + ``blocks.done``) are
    kept: they are how a half-done scene resumes."""
    from tilesegd.runner import WORK_DIR

    stale = [*output.glob(".*.tmp-*"), *output.glob(f"{WORK_DIR}/work/*/.*.tmp*")]
    stale += output.glob(f"{WORK_DIR}/trash/*")
    for p in stale:
        log.debug("removing stale %s", p)
        with contextlib.suppress(OSError):
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()


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
            batch_size=cfg.batch_size or 8,
            save_probs=cfg.save_probs,
            compile=cfg.compile,
        )
        tile, _ = cfg.geometry(
            engine.spec.tile_size, engine.spec.multiple, engine.spec.overlap
        )  # bad: fail now
        engine.batch_size = cfg.batch_for(tile)
        engine.check((tile, tile))  # class count / output size vs tilesegd.json, before any scene
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
            # carry the previous entries forward so a run killed part-way loses no record
            "scenes": {n: previous[n] for n in names if n in previous},
        }
        interrupted = None
        for path, name in zip(paths, names, strict=True):
            old = previous.get(name, {})
            stat = _input_stat(path)
            if (
                not cfg.overwrite
                and old.get("status") == "done"
                and old.get("fingerprint") == fp
                and old.get("input_stat", stat) == stat
                and _outputs_present(output / name)
            ):
                log.info("%s: already done, skipping (use --overwrite to recompute)", name)
                doc["scenes"][name] = {**old, "skipped": True}
                continue
            if stop.is_set():
                interrupted = Interrupted("stopped by a signal before this scene")
                doc["scenes"][name] = {"status": "pending", "input": str(path)}
                continue
            _discard_stale_work(output, name, stat, cfg.overwrite)
            entry: dict[str, Any] = {"input": str(path), "fingerprint": fp, "input_stat": stat}
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
            except Exception as exc:  # one bad scene never stops the others...
                fatal = _scene_failed(entry, path, name, output, exc)
                if fatal is not None:  # ...unless no later scene could succeed either
                    doc["scenes"][name] = entry
                    _stop_run(output, doc, fatal)
            entry.setdefault("seconds", round(time.perf_counter() - t0, 3))
            doc["scenes"][name] = entry
            try:
                write_json_atomic(run_path, doc)
            except OSError as exc:
                _stop_run(output, doc, _output_error(output, exc))
        statuses = {e["status"] for e in doc["scenes"].values()}
        status = "interrupted" if interrupted else "failed" if "failed" in statuses else "done"
        try:
            _finish(output, doc, status)
        except OSError as exc:
            raise _output_error(output, exc) from None
        if interrupted is not None:
            raise Interrupted(
                f"{output}: stopped by a signal; finished scenes and blocks are kept (run.json "
                "says which); rerun the same command to resume"
            )
    return doc


def _output_error(output: Path, exc: OSError) -> OutputError:
    what = "the disk is full" if is_disk_full(exc) else "it cannot be written"
    return OutputError(
        f"{output}: {what} ({' '.join(str(exc).split())[:160]}); free space or fix permissions, "
        "then rerun the same command to resume"
    )


def _scene_failed(
    entry: dict[str, Any], path: Path, name: str, output: Path, exc: Exception
) -> TilesegdError | None:
    """Record ``exc`` in the scene's ``run.json`` entry as a failure and log it; return the
    error that must end the run (an output cannot be written, the disk is full), or ``None`` to
    go on with the next scene. (A model that fails on this scene's tile shape fails the scene
    only: the model itself was checked before the first scene.)"""
    fatal: TilesegdError | None = None
    if is_disk_full(exc):
        fatal = OutputError(
            f"{output}: disk full while writing {name} ({' '.join(str(exc).split())[:120]}); "
            "free space and rerun the same command to resume"
        )
        error = str(fatal)
    elif isinstance(exc, OutputError):
        fatal, error = exc, str(exc)
    elif isinstance(exc, TilesegdError):
        error = str(exc)
    elif isinstance(exc, OSError):
        error = f"{path}: {' '.join(str(exc).split())}"
    else:
        log.debug("unexpected error", exc_info=True)
        error = f"{path}: internal error {type(exc).__name__}: {exc}"
    entry.update(status="failed", error=error)
    if fatal is None:
        log.error("%s", error)
    return fatal


def _stop_run(output: Path, doc: dict[str, Any], exc: TilesegdError) -> None:
    """End the run on ``exc``: remove temporary files, record what is known, raise ``exc``."""
    clean_stale(output)
    with contextlib.suppress(OSError):  # the disk may be full: run.json keeps its last state
        _finish(output, doc, "failed")
    raise exc


def _input_stat(path: Path) -> list[int]:
    """``[size in bytes, mtime in ns]``: a changed input is recomputed, never resumed."""
    st = path.stat()
    return [st.st_size, st.st_mtime_ns]


def _discard_stale_work(output: Path, name: str, stat: list[int], overwrite: bool) -> None:
    """Remove the scene's work folder on ``--overwrite`` or when it was computed from another
    version of the input file (its ``pred.zarr`` attributes record the input's size/mtime)."""
    from tilesegd.runner import work_dir

    work = work_dir(output, name)
    if not work.exists():
        return
    if not overwrite:
        try:
            meta = json.loads((work / "pred.zarr" / "zarr.json").read_text())
            recorded = meta.get("attributes", {}).get("source_stat")
        except (OSError, ValueError):
            return  # no readable store: the store itself starts over
        if recorded in (None, stat):
            return
        log.info("%s: the input changed since the half-done run; starting over", name)
    shutil.rmtree(work, ignore_errors=True)


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

    try:
        with open(tmp, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=("scene",) + AREA_COLUMNS)
            w.writeheader()
            w.writerows(rows)
        os.replace(tmp, output / SUMMARY_CSV)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()
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

"""The run's bookkeeping: output layout, ``run.json`` / ``summary.csv``, skip / resume / discard.

One module owns every rule about what a run has done and what it may reuse, for local and
distributed runs alike (so either resumes the other's half-done scenes). It never imports
torch, the engine, the pipeline or the runner.

Output layout (``DIR`` = ``--output``)::

    DIR/run.json                    the run: model, device, config, one entry per scene
    DIR/summary.csv                 every finished scene's areas.csv rows, with a scene column
    DIR/zones_summary.csv           their zones.csv added up (absent when no scene has zones)
    DIR/<scene>/                    a finished scene (published in one rename)
    DIR/.tilesegd/lock              flock held by the running process
    DIR/.tilesegd/work/<scene>/     a scene in progress: work.json, pred.zarr, blocks.done...
    DIR/.tilesegd/trash/            folders replaced by a publish, removed right after

Rules:

* **skip**: a scene whose ``run.json`` entry is ``done`` with the same fingerprint (model and
  settings) and the same input size / mtime, and whose outputs are present, is not recomputed
  (``--overwrite`` recomputes).
* **resume**: a scene's work folder is reused when its ``work.json`` records the same
  fingerprint and input size / mtime; its store lists the blocks already done.
* **discard**: otherwise (or with ``--overwrite``) the work folder is removed first.
* **atomic**: ``run.json`` and ``summary.csv`` are written through a temporary file and a
  rename; a scene's outputs appear in one directory rename (:func:`publish`).
* **true**: a scene folder holds only what was made from its mask (a recomputed scene carries
  no older product over); ``run.json`` lists the files present (:func:`list_outputs`).
* **not an input**: a folder holding a run or a scene's outputs (:func:`holds_run`,
  :func:`outputs_present`) is never searched for scenes (:func:`tilesegd.raster.scene.discover`).
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
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from tilesegd import atomic
from tilesegd.errors import LockedError, OutputError, TilesegdError, output_failure, writing
from tilesegd.version import __version__

log = logging.getLogger(__name__)

RUN_JSON = "run.json"
SUMMARY_CSV = "summary.csv"
WORK_DIR = ".tilesegd"
WORK_JSON = "work.json"
DONE_LOG = "blocks.done"
ZONES_SUMMARY_CSV = "zones_summary.csv"
REQUIRED_OUTPUTS = ("mask.tif", "pred.zarr", "areas.csv")
PRODUCT_FILES = {"vector": ("polygons.gpkg",), "zones": ("zones.csv", "zones.gpkg")}
PRODUCT_FIELDS = {"vector": ("polygons", "polygons_per_class"), "zones": ("zones",)}
SCENE_OUTPUTS = (
    "mask.tif",
    "mask.qml",
    "mask.tif.aux.xml",
    "pred.zarr",
    "areas.csv",
    "confidence.tif",
    "confidence.qml",
    "polygons.gpkg",
    "zones.csv",
    "zones.gpkg",
    "preview.png",
)


def work_dir(output: Path, name: str) -> Path:
    """``DIR/.tilesegd/work/<name>``: the scene's private work folder."""
    return Path(output) / WORK_DIR / "work" / name


def input_stat(path: str | os.PathLike[str]) -> list[int] | None:
    """``[size in bytes, mtime in ns]`` of an input (a changed input is recomputed, never
    resumed); ``None`` when it cannot be read."""
    try:
        st = os.stat(path)
    except (OSError, TypeError):
        return None
    return [st.st_size, st.st_mtime_ns]


def fingerprint(model_sha: str, settings: Sequence[Any], device: str, dtype: str) -> str:
    """A 16-hex-digit id of everything that changes the masks: tilesegd's version, the model
    file, the resolved settings (geometry, bands, probabilities...), the device and precision."""
    key = json.dumps([__version__, model_sha, *settings, device, dtype], default=str)
    return hashlib.sha256(key.encode()).hexdigest()[:16]


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
        atomic.replace(tmp, path)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


def output_error(output: Path, exc: OSError) -> OutputError:
    """The :class:`OutputError` (exit 6) for a file under ``output`` that could not be written
    (:func:`tilesegd.errors.output_failure`)."""
    return output_failure(exc, output, writing=True) or OutputError(
        f"{output}: cannot be written ({' '.join(str(exc).split())[:160]}); check its "
        "permissions and free space, then rerun the same command to resume"
    )


def make_output_dir(output: Path) -> None:
    """Create ``output`` and check that it is writable.

    Raises:
        OutputError: it cannot be created or written (exit 6).
    """
    try:
        output.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{output}: cannot create the output directory ({exc})") from None
    if not os.access(output, os.W_OK | os.X_OK):
        raise OutputError(
            f"{output}: the output directory is not writable; fix its permissions or choose "
            "another --output"
        )


@contextlib.contextmanager
def output_lock(output: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``DIR/.tilesegd/lock`` (released by the OS on a kill).

    Raises:
        LockedError: another run holds it. OutputError: the lock cannot be created.
    """
    lock_dir = output / WORK_DIR
    try:
        lock_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock_dir / "lock", os.O_RDWR | os.O_CREAT, 0o666)  # less the umask
    except OSError as exc:
        raise output_error(output, exc) from None
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


def clean_stale(output: Path) -> None:
    """Remove what a killed run left behind: ``DIR/.*.tmp-*`` (run.json, summary.csv),
    ``.*.tmp*`` files in the scenes' work folders (half-written GeoTIFFs) and folders replaced
    by a publish (``DIR/.tilesegd/trash/``). Work stores are kept: they are how a half-done
    scene resumes."""
    stale = [*output.glob(".*.tmp-*"), *output.glob(f"{WORK_DIR}/work/*/.*.tmp*")]
    stale += output.glob(f"{WORK_DIR}/trash/*")
    for p in stale:
        log.debug("removing stale %s", p)
        with contextlib.suppress(OSError):
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()


def outputs_present(final: Path) -> bool:
    """Whether a published scene folder holds its required outputs."""
    return all((final / f).exists() for f in REQUIRED_OUTPUTS)


def output_paths(folder: Path) -> dict[str, str]:
    """``{file name: path}`` of the outputs present in a scene folder (:data:`SCENE_OUTPUTS`)."""
    return {k: str(folder / k) for k in SCENE_OUTPUTS if (folder / k).exists()}


def holds_run(folder: Path) -> bool:
    """Whether ``folder`` is a tilesegd run's output folder: it has the run's work folder
    (``.tilesegd/``) or a ``run.json`` written by tilesegd (one with ``tilesegd_version``)."""
    if (folder / WORK_DIR).is_dir():
        return True
    try:
        with open(folder / RUN_JSON) as fh:
            return "tilesegd_version" in json.load(fh)
    except (OSError, ValueError, TypeError):
        return False


def list_outputs(entry: dict[str, Any], folder: Path) -> dict[str, Any]:
    """``entry`` (a done scene's ``run.json`` entry) made true to ``folder``: ``outputs`` lists
    the files there, and a product whose files are gone leaves ``products`` with its fields."""
    entry = {**entry, "outputs": output_paths(folder)}
    products = dict(entry.get("products") or {})
    for p in [p for p in products if not all((folder / f).exists() for f in PRODUCT_FILES[p])]:
        del products[p]
        for k in PRODUCT_FIELDS[p]:
            entry.pop(k, None)
    entry["products"] = products
    return entry


def prepare_work(output: Path, name: str, stat: list[int] | None, fp: str, overwrite: bool) -> Path:
    """The scene's work folder, ready to resume or start: removed first on ``--overwrite`` or
    when its ``work.json`` records another fingerprint or another version of the input.

    Raises:
        OSError: the folder or ``work.json`` cannot be written.
    """
    work = work_dir(output, name)
    marker = {"fingerprint": fp, "input_stat": stat}
    if work.exists():
        try:
            kept = json.loads((work / WORK_JSON).read_text()) == marker and not overwrite
        except (OSError, ValueError):
            kept = False
        if kept:
            return work
        log.info("%s: discarding the half-done work (input, model or settings changed)", name)
        shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    write_json_atomic(work / WORK_JSON, marker)
    return work


def publish(work: Path, final: Path) -> Path:
    """Make a scene's finished work folder its final folder ``final`` in one directory rename.

    ``final`` never holds a mix of old and new outputs: a new folder is renamed in whole; an
    existing one (``--overwrite``, or left by a run killed before ``run.json`` recorded the
    scene) is swapped with the work folder atomically (Linux ``renameat2(RENAME_EXCHANGE)``), or,
    where that is not available, first moved to ``DIR/.tilesegd/trash/`` (then ``final`` is
    briefly absent, never partial). The old folder, ``work.json`` and ``blocks.done`` are then
    removed. The scene only counts as done once ``run.json`` says so (written after this).

    Raises:
        OSError: a rename failed (the work folder is left intact, so a rerun resumes).
    """
    if final.exists():
        if not exchange(work, final):
            trash = final.parent / WORK_DIR / "trash"
            trash.mkdir(parents=True, exist_ok=True)
            old = trash / f"{final.name}.{os.getpid()}"
            os.replace(final, old)
            os.replace(work, final)
            work = old
        shutil.rmtree(work, ignore_errors=True)  # after an exchange, ``work`` is the old folder
    else:
        os.replace(work, final)
    for bookkeeping in (DONE_LOG, WORK_JSON):
        (final / bookkeeping).unlink(missing_ok=True)
    return final


def exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux ``renameat2`` with ``RENAME_EXCHANGE``); False when the
    platform or filesystem cannot."""
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    rc = fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange)
    return rc == 0


class RunLedger:
    """``run.json`` and ``summary.csv`` of one run, and the per-scene decisions.

    Args:
        output: the output directory.
        names: this run's scene names (entries of other scenes in an old run.json are dropped;
            entries of these scenes are carried forward, so a run killed part-way loses no
            record).
        header: the run-level fields (model, device, precision, config...).
        fp: the run's fingerprint (see :func:`fingerprint`).
        overwrite: ``--overwrite``: recompute finished scenes.
    """

    def __init__(
        self, output: Path, names: Sequence[str], header: dict[str, Any], fp: str, overwrite: bool
    ) -> None:
        self.output, self.fp, self.overwrite = Path(output), fp, overwrite
        self.path = self.output / RUN_JSON
        self.previous: dict[str, Any] = {}
        if self.path.exists():
            with contextlib.suppress(json.JSONDecodeError, OSError, AttributeError):
                self.previous = json.loads(self.path.read_text()).get("scenes", {})
        self.doc: dict[str, Any] = {
            "tilesegd_version": __version__,
            **header,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "status": "running",
            "scenes": {n: self.previous[n] for n in names if n in self.previous},
        }

    @property
    def scenes(self) -> dict[str, dict[str, Any]]:
        """Scene name -> ``run.json`` entry."""
        return self.doc["scenes"]

    def skip(self, name: str, path: Path, products: dict[str, Any] | None = None) -> bool:
        """Apply the skip rule; a skipped scene keeps its old entry, marked ``skipped``.

        A finished scene that lacks some of ``products`` (or has them made with other
        settings) is not skipped: :meth:`products_to_add` then names what to add."""
        if not self.finished(name, path) or self.products_to_add(name, products):
            return False
        log.info("%s: already done, skipping (use --overwrite to recompute)", name)
        self.scenes[name] = list_outputs(
            {**self.previous[name], "skipped": True}, self.output / name
        )
        return True

    def finished(self, name: str, path: Path) -> bool:
        """Whether the scene was finished by a run with this fingerprint, from this version
        of its input, and its outputs are present (``--overwrite``: never)."""
        old = self.previous.get(name, {})
        stat = input_stat(path)
        return not (
            self.overwrite
            or old.get("status") != "done"
            or old.get("fingerprint") != self.fp
            or old.get("input_stat", stat) != stat
            or not outputs_present(self.output / name)
        )

    def products_to_add(self, name: str, products: dict[str, Any] | None) -> set[str]:
        """The products (``"vector"``, ``"zones"``) asked for that a finished scene lacks, or
        has with other settings (see :data:`PRODUCT_FILES`); products it has that are not
        asked for are kept."""
        have = self.previous.get(name, {}).get("products") or {}
        folder = self.output / name
        return {
            p
            for p, settings in (products or {}).items()
            if have.get(p) != settings or not all((folder / f).exists() for f in PRODUCT_FILES[p])
        }

    def added(self, name: str, fields: dict[str, Any], products: dict[str, Any]) -> None:
        """Record ``products`` added to a finished scene: its old entry is kept, updated with
        their ``run.json`` ``fields``."""
        old = dict(self.previous[name])
        old["products"] = {**(old.get("products") or {}), **products}
        old.update(fields)
        old["products_added"] = sorted(products)
        self.scenes[name] = list_outputs(old, self.output / name)

    def start(self, name: str, path: Path) -> dict[str, Any]:
        """Begin a scene: its work folder is prepared (resumed or discarded) and a new entry
        ``{"input", "fingerprint", "input_stat"}`` is registered and returned.

        Raises:
            OutputError: the work folder cannot be written (the run stops: see :meth:`stop`).
        """
        stat = input_stat(path)
        entry = {"input": str(path), "fingerprint": self.fp, "input_stat": stat}
        self.scenes[name] = entry
        try:
            prepare_work(self.output, name, stat, self.fp, self.overwrite)
        except OSError as exc:
            entry.update(status="failed", error=str(output_error(self.output, exc)))
            self.stop(output_error(self.output, exc))
        return entry

    def pending(self, name: str, path: Path) -> None:
        """Record a scene not started (the run was stopped before it)."""
        self.scenes[name] = {"status": "pending", "input": str(path)}

    def fail(self, entry: dict[str, Any], path: Path, exc: BaseException) -> TilesegdError | None:
        """Record ``exc`` as the scene's failure and log it; return the error that must end the
        run (an output cannot be written, the disk is full), or ``None`` to go on with the next
        scene (a bad scene never stops the others)."""
        fatal: TilesegdError | None = output_failure(exc, self.output)
        if fatal is not None:
            error = str(fatal)
        elif isinstance(exc, TilesegdError):
            error = str(exc)
        elif isinstance(exc, OSError):
            error = f"{path}: {' '.join(str(exc).split())}"
        else:
            log.debug("unexpected error", exc_info=exc)
            error = f"{path}: internal error {type(exc).__name__}: {exc}"
        entry.update(status="failed", error=error)
        if fatal is None:
            log.error("%s", error)
        return fatal

    def write(self) -> None:
        """Write ``run.json`` (atomically).

        Raises:
            OutputError: it cannot be written (exit 6).
        """
        with writing(self.path):
            write_json_atomic(self.path, self.doc)

    def finish(self, interrupted: bool) -> str:
        """Write ``summary.csv`` and the final ``run.json``; return the run's status
        (``interrupted``, ``failed`` if any scene failed, else ``done``).

        Raises:
            OutputError: they cannot be written.
        """
        statuses = {e.get("status") for e in self.scenes.values()}
        status = "interrupted" if interrupted else "failed" if "failed" in statuses else "done"
        try:
            self._finish(status)
        except OSError as exc:
            raise output_error(self.output, exc) from None
        return status

    def stop(self, exc: TilesegdError) -> None:
        """End the run on ``exc``: remove temporary files, record what is known, raise ``exc``."""
        clean_stale(self.output)
        with contextlib.suppress(OSError):  # the disk may be full: run.json keeps its last state
            self._finish("failed")
        raise exc

    def _zones_summary(self) -> None:
        """``DIR/zones_summary.csv``: the zones of every finished scene added up (zones that
        span several scenes become one row per class); removed when no finished scene has
        zones, so it never sums masks that are gone."""
        files = [
            self.output / n / "zones.csv"
            for n, e in self.scenes.items()
            if e.get("status") == "done" and (self.output / n / "zones.csv").is_file()
        ]
        if files:
            from tilesegd.outputs.zones import write_zones_summary

            write_zones_summary(files, self.output / ZONES_SUMMARY_CSV)
        else:
            (self.output / ZONES_SUMMARY_CSV).unlink(missing_ok=True)

    def _finish(self, status: str) -> None:
        from tilesegd.outputs.areas import AREA_COLUMNS

        self.doc["status"] = status
        self.doc["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        rows = []
        for name, entry in self.scenes.items():
            f = self.output / name / "areas.csv"
            if entry.get("status") == "done" and f.is_file():
                polygons = entry.get("polygons_per_class") or {}
                with open(f, newline="") as fh:
                    rows += [
                        {"scene": name, **r, "polygons": polygons.get(r["class_name"], "")}
                        for r in csv.DictReader(fh)
                    ]
        self._zones_summary()
        tmp = self.output / f".{SUMMARY_CSV}.tmp-{os.getpid()}"
        try:
            with writing(self.output / SUMMARY_CSV):
                with open(tmp, "w", newline="") as fh:
                    w = csv.DictWriter(fh, fieldnames=("scene", *AREA_COLUMNS, "polygons"))
                    w.writeheader()
                    w.writerows(rows)
                atomic.replace(tmp, self.output / SUMMARY_CSV)
        finally:
            with contextlib.suppress(OSError):
                tmp.unlink()
        run_files = (SUMMARY_CSV, ZONES_SUMMARY_CSV)
        self.doc["outputs"] = {
            f: str(self.output / f) for f in run_files if (self.output / f).is_file()
        }
        with writing(self.path):
            write_json_atomic(self.path, self.doc)

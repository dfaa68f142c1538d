"""The run's books: ``run.json`` and the per-scene decisions (skip / add products / start /
fail / pending), over the output layout (:mod:`tilesegd.batch.layout`), the folder's atomic
writes (:mod:`tilesegd.batch.folder`) and the summaries (:mod:`tilesegd.batch.summary`).

One module owns every rule about what a run has done and what it may reuse, for local and
distributed runs alike (so either resumes the other's half-done scenes). It never imports
torch, the engine, the pipeline or the runner.

* **skip**: a scene whose ``run.json`` entry is ``done`` with the same fingerprint (model and
  settings) and the same input size / mtime, and whose outputs are present, is not recomputed
  (``--overwrite`` recomputes).
* **true**: a scene folder holds only what was made from its mask (a recomputed scene carries
  no older product over); ``run.json`` lists the files present (:func:`list_outputs`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tilesegd.batch.folder import clean_stale, output_error, prepare_work, write_json_atomic
from tilesegd.batch.layout import (
    PRODUCT_FIELDS,
    PRODUCT_FILES,
    RUN_JSON,
    input_stat,
    output_paths,
    outputs_present,
)
from tilesegd.batch.summary import write_summaries
from tilesegd.errors import TilesegdError, output_failure, writing
from tilesegd.version import __version__

log = logging.getLogger(__name__)


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
            prepare_work(
                self.output, name, {"fingerprint": self.fp, "input_stat": stat}, self.overwrite
            )
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

    def _finish(self, status: str) -> None:
        self.doc["status"] = status
        self.doc["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        done = {n: e for n, e in self.scenes.items() if e.get("status") == "done"}
        self.doc["outputs"] = write_summaries(self.output, done)
        with writing(self.path):
            write_json_atomic(self.path, self.doc)

"""The scene state machine: one set of status rules for local and Dask runs.

:class:`RunStates` owns a run's ``run.json`` document and moves every scene through the states
below; the local runner (:mod:`tilesegd.batch.local`, blocks computed in this process) and the
distributed one (:mod:`tilesegd.batch.distributed`, blocks as Dask tasks) differ only in how
they compute blocks. The books are kept through a :class:`~tilesegd.batch.ledger.Ledger`
(no rename, no append). Never imports torch or the engine.

One scene (``run.json`` ``status`` in quotes)::

    admit(path, name)
      |-- finished before, nothing to add ---------------> skipped        "done", skipped: true
      |-- finished before, products to add, not stopped -> products added "done" (or "failed")
      |-- stop set -------------------------------------> pending        "pending"
      '-- otherwise: work area prepared (resumed or discarded)
            |
          started --planned()--> planned --blocks_done()--> blocks done --finished()--> "done"
          (no status)            "running"                  "running"
            |                      |                          |
            '----------------------+--------------------------+--failed()-------> "failed"
                                   (any of the three)         '--interrupted()--> "interrupted"

* **finished before** (the skip rule): the previous entry is ``done`` with this run's
  fingerprint (model and settings) and input size / mtime, and the scene is published
  (``--overwrite``: never).
* **failed**: a bad scene never stops the others, unless no later scene could succeed: an
  output cannot be written (:meth:`~tilesegd.batch.ledger.Ledger.output_failure`: a full disk)
  or the runner says so (``ends_run``). :meth:`SceneRun.failed` then raises that **fatal**
  error itself, the first time; so does a ``run.json`` that cannot be written.
* **run.json** is written whole at each scene's end (but a fatal one's), and at the close,
  after the summaries.

The run is ``"running"`` until :meth:`RunStates.close`: ``"interrupted"`` (raising
:class:`Interrupted`) when a stop left a scene pending or interrupted, else ``"failed"`` when a
scene failed, else ``"done"``; scenes still in flight then are interrupted. A fatal error ends
it ``"failed"`` (:meth:`RunStates.abort`), scenes still in flight failing with that error. A
scene ended by the run's end or by a fatal error records no ``seconds``.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tilesegd.batch.layout import PRODUCT_FIELDS, PRODUCT_FILES, input_stat
from tilesegd.batch.summary import catalog_text
from tilesegd.errors import Interrupted, OutputError, TilesegdError
from tilesegd.outputs.stac import CATALOG_JSON, run_catalog
from tilesegd.version import __version__

if TYPE_CHECKING:  # pragma: no cover
    from tilesegd.batch.ledger import Ledger

log = logging.getLogger(__name__)

#: why a scene cut short by SIGTERM / SIGINT stopped (its ``run.json`` ``error``)
STOPPED = "stopped by a signal; finished blocks are kept"
#: the transitions of a started scene (state -> the states it may go to)
MOVES = {
    "started": ("planned", "failed", "interrupted"),
    "planned": ("blocks done", "failed", "interrupted"),
    "blocks done": ("finished", "failed", "interrupted"),
}
#: the products a finished scene lacks are made by ``add_products(path, name, which)``, which
#: returns their ``run.json`` fields (:func:`tilesegd.batch.finish.add_scene_products`)
AddProducts = Callable[[Path, str, set[str]], dict[str, Any]]


class RunStates:
    """The ``run.json`` document of one run, and the state of each of its scenes; a context
    manager around the scene loop (a clean exit is :meth:`close`, an exception :meth:`abort`).

    Args:
        ledger: the store of the run's outputs.
        names: this run's scene names (old entries of other scenes are dropped; of these, kept
            until the scene is admitted, so a run stopped part-way loses no record).
        header: the run-level fields (model, device, precision, config...).
        fp: the run's fingerprint (:func:`tilesegd.batch.layout.fingerprint`).
        overwrite: ``--overwrite``: recompute finished scenes.
        stop: set by SIGTERM / SIGINT: no scene starts after it.
        products: the products asked for (:func:`tilesegd.batch.products.requested_products`).
        add_products: makes products for a finished scene (:data:`AddProducts`).
    """

    def __init__(
        self,
        ledger: Ledger,
        names: list[str],
        header: dict[str, Any],
        fp: str,
        *,
        overwrite: bool = False,
        stop: threading.Event | None = None,
        products: dict[str, Any] | None = None,
        add_products: AddProducts | None = None,
    ) -> None:
        self.ledger, self.fp, self.overwrite = ledger, fp, overwrite
        self.stop = stop or threading.Event()
        self.products, self.add_products = products or {}, add_products
        self.previous = ledger.previous_scenes()
        self.doc: dict[str, Any] = {
            "tilesegd_version": __version__,
            **header,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "status": "running",
            "scenes": {n: self.previous[n] for n in names if n in self.previous},
        }
        self.in_flight: dict[str, SceneRun] = {}
        self.fatal: BaseException | None = None
        self.interrupted = False
        self.cataloged: list[str] | None = None  # the scenes catalog.json lists

    @property
    def scenes(self) -> dict[str, dict[str, Any]]:
        """Scene name -> ``run.json`` entry."""
        return self.doc["scenes"]

    def __enter__(self) -> RunStates:
        return self

    def __exit__(self, kind: Any, exc: BaseException | None, tb: Any) -> None:
        if exc is None:
            self.close()
        else:
            self.abort(exc)

    def admit(self, path: Path, name: str) -> SceneRun | None:
        """Take the next scene: skip it, add the products it lacks, leave it pending (after a
        stop), or start it (its work area prepared) and return it for its runner. Raises the
        run's fatal error (OutputError: an output cannot be written)."""
        if self.fatal is not None:  # a caller went on after a fatal error
            raise self.fatal
        if self.finished(name, path):
            which = self.products_to_add(name)
            if not which:
                log.info("%s: already done, skipping (use --overwrite to recompute)", name)
                self.scenes[name] = self.listed({**self.previous[name], "skipped": True}, name)
                return None
            if not self.stop.is_set():
                self._add(path, name, which)
                return None
        if self.stop.is_set():
            self.interrupted = True
            self.scenes[name] = {"status": "pending", "input": str(path)}
            return None
        return self._start(path, name)

    def finished(self, name: str, path: Path) -> bool:
        """Whether the scene was finished by a run with this fingerprint, from this version
        of its input, and is published (``--overwrite``: never)."""
        old = self.previous.get(name, {})
        stat = input_stat(path)
        return not (
            self.overwrite
            or old.get("status") != "done"
            or old.get("fingerprint") != self.fp
            or old.get("input_stat", stat) != stat
            or not self.ledger.published(name)
        )

    def products_to_add(self, name: str) -> set[str]:
        """The products (``"vector"``, ``"zones"``) asked for that a finished scene lacks, or
        has with other settings (:data:`~tilesegd.batch.layout.PRODUCT_FILES`); products it
        has that are not asked for are kept."""
        have = self.previous.get(name, {}).get("products") or {}
        files = self.ledger.scene_files(name)
        return {
            p
            for p, settings in self.products.items()
            if have.get(p) != settings or not all(f in files for f in PRODUCT_FILES[p])
        }

    def listed(self, entry: dict[str, Any], name: str) -> dict[str, Any]:
        """``entry`` (a done scene's) made true to its published files: ``outputs`` lists
        them, and a product whose files are gone leaves ``products`` with its fields."""
        files = self.ledger.scene_files(name)
        entry = {**entry, "outputs": files}
        products = dict(entry.get("products") or {})
        for p in [p for p in products if not all(f in files for f in PRODUCT_FILES[p])]:
            del products[p]
            for k in PRODUCT_FIELDS[p]:
                entry.pop(k, None)
        entry["products"] = products
        return entry

    def _add(self, path: Path, name: str, which: set[str]) -> None:
        """Add products ``which`` to a finished scene: its old entry is kept, updated with
        their fields, or marked failed (a fatal error raises)."""
        try:
            fields = self.add_products(path, name, which)  # type: ignore[misc]
        except Exception as exc:
            entry = {**self.previous[name]}
            error, fatal = self.failure(exc, path)
            entry.update(status="failed", error=error)
            self.scenes[name] = entry
            if fatal is not None:
                self.stop_on(fatal)
        else:
            old = dict(self.previous[name])
            old["products"] = {
                **(old.get("products") or {}),
                **{p: self.products[p] for p in which},
            }
            old.update(fields)
            old["products_added"] = sorted(which)
            self.scenes[name] = self.listed(old, name)
        self.write()

    def _start(self, path: Path, name: str) -> SceneRun:
        marker = {"fingerprint": self.fp, "input_stat": input_stat(path)}
        scene = SceneRun(self, name, path, {"input": str(path), **marker})
        self.scenes[name] = dict(scene.start_fields)
        self.in_flight[name] = scene
        try:
            self.ledger.prepare_work(name, marker, self.overwrite)
        except OutputError as exc:
            scene.failed(exc)  # raises: no scene can be written
        scene.t0 = time.perf_counter()
        return scene

    def failure(
        self, exc: BaseException, path: Path, ends_run: bool = False, quiet: bool = False
    ) -> tuple[str, BaseException | None]:
        """The ``run.json`` error of a scene that failed with ``exc``, and the fatal error
        that must end the run (an output failure, or ``exc`` itself with ``ends_run``;
        ``None``: go on with the next scene). Logged unless ``quiet`` or fatal (a fatal
        error is raised, and reported once)."""
        fatal = self.ledger.output_failure(exc)
        if fatal is not None:
            return str(fatal), fatal
        if isinstance(exc, TilesegdError):
            error = str(exc)
        elif isinstance(exc, OSError):
            error = f"{path}: {' '.join(str(exc).split())}"
        else:
            log.debug("unexpected error", exc_info=exc)
            error = f"{path}: internal error {type(exc).__name__}: {exc}"
        if not quiet:
            log.error("%s", error)
        return error, exc if ends_run else None

    def stop_on(self, fatal: BaseException) -> None:
        """End the run on ``fatal``: raise it, the first time (a run that is already ending
        only records later errors, so the error reported is the first)."""
        if self.fatal is None:
            self.fatal = fatal
            raise fatal

    def record_end(self, scene: SceneRun, entry: dict[str, Any], write: bool = True) -> None:
        """Record a scene's final ``entry``; write ``run.json`` with ``write``."""
        self.scenes[scene.name] = entry
        self.in_flight.pop(scene.name, None)
        if write:
            self.write()

    def write(self) -> None:
        """Write ``run.json``; one that cannot be written ends the run (OutputError raised
        by :meth:`stop_on`)."""
        try:
            self.write_catalog()
            self.ledger.write_run(self.doc)
        except OutputError as exc:
            self.stop_on(exc)

    def write_catalog(self) -> None:
        """Write ``catalog.json`` when the finished scenes changed (:func:`run_catalog`)."""
        done = sorted(n for n, e in self.scenes.items() if e.get("status") == "done")
        if done != self.cataloged:
            self.ledger.write_json(CATALOG_JSON, run_catalog(done, **catalog_text(self.doc)))
            self.cataloged = done

    def close(self) -> dict[str, Any]:
        """End the run (scenes still in flight are interrupted), write the summaries and the
        final ``run.json``, and return it.

        Raises:
            Interrupted: a stop left scenes pending or interrupted (finished work is kept).
            OutputError: they cannot be written; or the run's fatal error, if a caller went on.
        """
        if self.fatal is not None:
            self.abort(self.fatal)
            raise self.fatal
        for scene in list(self.in_flight.values()):
            scene.cut("interrupted", STOPPED)
        statuses = {e.get("status") for e in self.scenes.values()}
        status = "interrupted" if self.interrupted else "failed" if "failed" in statuses else "done"
        self.write_final(status)
        if self.interrupted:
            raise Interrupted(
                f"{self.ledger.location}: stopped by a signal; finished scenes and blocks are "
                "kept (run.json says which); rerun the same command to resume"
            )
        return self.doc

    def abort(self, exc: BaseException) -> None:
        """End the run on ``exc`` (a fatal error, or one no runner caught): scenes still in
        flight fail with it, temporary files are removed, and what is known is recorded
        (``run.json`` keeps its last state when even that cannot be written)."""
        for scene in list(self.in_flight.values()):
            error = str(exc) if exc is self.fatal else self.failure(exc, scene.path, quiet=True)[0]
            scene.cut("failed", error)
        self.ledger.remove_temporaries()
        with contextlib.suppress(OSError):  # the disk may be full
            self.write_final("failed")

    def write_final(self, status: str) -> None:
        """Write the summaries of the finished scenes, then ``run.json`` with ``status``
        (OutputError: they cannot be written)."""
        self.doc["status"] = status
        self.doc["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        done = {n: e for n, e in self.scenes.items() if e.get("status") == "done"}
        self.write_catalog()
        self.doc["outputs"] = self.ledger.write_summaries(done)
        self.ledger.write_run(self.doc)


class SceneRun:
    """One started scene, made by :meth:`RunStates.admit` and moved by its runner.

    Attributes:
        name, path: the scene's output name and input.
        state: ``"started"``, ``"planned"``, ``"blocks done"`` or an end: ``"finished"``,
            ``"failed"``, ``"interrupted"``.
        start_fields: its first ``run.json`` fields (input, fingerprint, input stat).
        t0: ``time.perf_counter()`` when its work area was ready (``seconds`` count from it).
    """

    def __init__(
        self, states: RunStates, name: str, path: Path, start_fields: dict[str, Any]
    ) -> None:
        self.states, self.name, self.path = states, name, path
        self.state = "started"
        self.start_fields = start_fields
        self.planned_fields: dict[str, Any] = {}
        self.blocks_fields: dict[str, Any] = {}
        self.t0: float | None = None

    @property
    def entry(self) -> dict[str, Any]:
        """The scene's ``run.json`` entry as it stands."""
        return self.states.scenes[self.name]

    @property
    def ended(self) -> bool:
        """Whether the scene reached an end (finished, failed, interrupted)."""
        return self.state not in MOVES

    def planned(self, blocks_resumed: int, tile_size: int) -> None:
        """The scene is planned (profiled, checked, its store open): it is ``running``, with
        ``blocks_resumed`` of its blocks done before and tiles of ``tile_size`` px."""
        self.move("planned")
        self.planned_fields = {"blocks_resumed": blocks_resumed, "tile_size": tile_size}
        self.states.scenes[self.name] = {
            **self.start_fields, "status": "running", **self.planned_fields
        }  # fmt: skip

    def blocks_done(self, **fields: Any) -> None:
        """Every block is in the store; ``fields`` (``megapixels_per_s``, ``tiles_run``,
        ``tiles_skipped``, the runner's own such as ``workers``) go into the done entry."""
        self.move("blocks done")
        self.blocks_fields = fields

    def finished(self, fields: dict[str, Any]) -> None:
        """The scene is published: ``done``, with the finish step's ``fields`` (sizes,
        products, outputs, AOI...); ``run.json`` is written (OutputError: it cannot be)."""
        self.move("finished")
        entry = {**self.start_fields, "status": "done", "seconds": self.seconds()}
        self.states.record_end(self, {**entry, **self.blocks_fields, **self.planned_fields,
                                      **fields})  # fmt: skip

    def failed(self, exc: BaseException, *, ends_run: bool = False) -> None:
        """The scene's work raised ``exc``: recorded (``run.json`` written) and the run goes
        on, unless no later scene could succeed; ``ends_run``: the runner knows ``exc`` dooms
        every scene (a worker that cannot run the model).

        Raises:
            OutputError (or ``exc`` with ``ends_run``): the run's fatal error.
        """
        self.move("failed")
        error, fatal = self.states.failure(exc, self.path, ends_run)
        self.ended_as("failed", error, own=fatal is None)
        if fatal is not None:
            self.states.stop_on(fatal)

    def interrupted(self, why: str = STOPPED) -> None:
        """A stop cut the scene short (its finished blocks are kept: a rerun resumes)."""
        self.move("interrupted")
        self.states.interrupted = True
        self.ended_as("interrupted", why, own=True)

    def ended_as(self, status: str, error: str, own: bool) -> None:
        """End the scene ``status`` (``"failed"`` / ``"interrupted"``) with ``error``: on its
        own (with its ``seconds``; ``run.json`` written), or by a fatal error of its own (the
        run's last write records it)."""
        self.state = status
        seconds = {"seconds": self.seconds()} if own and self.t0 is not None else {}
        entry = {**self.start_fields, "status": status, "error": error, **seconds}
        self.states.record_end(self, entry, write=own)

    def cut(self, status: str, error: str) -> None:
        """The run ended while the scene was in flight: its entry as it stood, now
        ``status`` (``"failed"`` / ``"interrupted"``) with ``error``; the close writes it."""
        self.state = status
        self.states.interrupted |= status == "interrupted"
        self.states.record_end(self, {**self.entry, "status": status, "error": error}, False)

    def seconds(self) -> float:
        """Seconds since the scene's work area was ready."""
        return round(time.perf_counter() - (self.t0 or time.perf_counter()), 3)

    def move(self, to: str) -> None:
        """Go to state ``to``; RuntimeError when it does not follow (a tilesegd bug)."""
        if to not in MOVES.get(self.state, ()):
            raise RuntimeError(f"scene {self.name}: no transition {self.state} -> {to}")
        self.state = to

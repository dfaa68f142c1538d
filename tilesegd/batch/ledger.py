"""The ledger: where a run keeps its books, as the scene state machine sees it.

:class:`Ledger` is every operation the state machine (:mod:`tilesegd.batch.states`) asks of the
store that holds a run's outputs; :class:`FolderLedger` is that store on a local folder (the
layout is :mod:`tilesegd.batch.layout`). The state machine decides every status; the ledger
only reads and writes.

The interface assumes **no rename and no append**: each write is of one whole object, and the
order of writes is the state machine's, so a store where objects are only ever put whole (object
storage) can implement it:

* a scene's work area is (re)started by writing its marker whole (:meth:`Ledger.prepare_work`);
* a scene counts as published only once its outputs are all written and a completion mark
  exists (:meth:`Ledger.published`): a local folder is renamed into place in one step
  (:func:`tilesegd.batch.folder.publish`), an object store writes the scene's objects first and
  a completion marker last;
* ``summary.csv`` / ``zones_summary.csv`` are written whole after the scenes
  (:meth:`Ledger.write_summaries`), and ``run.json`` whole, last of all
  (:meth:`Ledger.write_run`); a reader sees the previous version or the new one, never a part.

A store must therefore provide: read a whole object, write (replace) a whole object, list the
objects under a scene's prefix, delete an object or a prefix. Never imports torch or the engine.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from tilesegd.batch.folder import (
    clean_stale,
    output_error,
    prepare_work,
    publish,
    write_json_atomic,
)
from tilesegd.batch.layout import RUN_JSON, output_paths, outputs_present
from tilesegd.batch.summary import write_summaries
from tilesegd.errors import OutputError, output_failure, writing

if TYPE_CHECKING:  # pragma: no cover
    from tilesegd.storage.urls import RemotePath


class Ledger(Protocol):
    """What the scene state machine needs from the store of a run's outputs.

    Attributes:
        location: where the outputs are (a folder, a URL), as messages name it.
    """

    location: str

    def previous_scenes(self) -> dict[str, dict[str, Any]]:
        """The scene entries of the ``run.json`` a previous run left (``{}`` when there is
        none or it cannot be read)."""
        ...

    def published(self, name: str) -> bool:
        """Whether scene ``name`` has been published: its required outputs are all there
        (on object storage: its completion marker exists, written after its objects)."""
        ...

    def scene_files(self, name: str) -> dict[str, str]:
        """``{file name: location}`` of the outputs present for scene ``name`` (one listing)."""
        ...

    def prepare_work(self, name: str, marker: dict[str, Any], discard: bool) -> None:
        """Make scene ``name``'s work area ready: kept (to resume) when it records ``marker``
        and not ``discard``; otherwise removed and started again with ``marker`` written whole.

        Raises:
            OutputError: it cannot be written.
        """
        ...

    def publish(self, name: str, work: Path) -> dict[str, str]:
        """Publish scene ``name`` from its finished local ``work`` folder (and its work store):
        afterwards :meth:`published` is true and its outputs are all in place.

        Returns:
            ``{file name: location}`` of the scene's outputs.

        Raises:
            OSError / OutputError: it cannot be published (the work is kept: a rerun resumes).
        """
        ...

    def products_work(self, name: str) -> tuple[Path, Path | str]:
        """Where products added later to the published scene ``name`` are built (a local
        folder) and the location of its published ``pred.zarr`` they are made from.

        Raises:
            OutputError: the folder cannot be made.
        """
        ...

    def deliver_products(self, name: str, work: Path) -> dict[str, str]:
        """Put the products built in ``work`` (:meth:`products_work`) in place beside the
        published scene's outputs.

        Returns:
            ``{file name: location}`` of the scene's outputs.

        Raises:
            OutputError: they cannot be written.
        """
        ...

    def read_json(self, name: str) -> Any:
        """The run-level JSON file ``name`` (``search.json``) parsed, or ``None`` when it is
        missing or not JSON."""
        ...

    def write_json(self, name: str, doc: Any) -> None:
        """Replace the run-level JSON file ``name`` with ``doc``, whole.

        Raises:
            OutputError: it cannot be written.
        """
        ...

    def write_run(self, doc: dict[str, Any]) -> None:
        """Replace ``run.json`` with ``doc``, whole (readers see the old or the new one).

        Raises:
            OutputError: it cannot be written.
        """
        ...

    def write_summaries(self, done: Mapping[str, Mapping[str, Any]]) -> dict[str, str]:
        """Replace ``summary.csv`` / ``zones_summary.csv`` with those of the finished scenes
        ``done`` (name -> ``run.json`` entry), whole, and return ``{file name: location}`` of
        the run-level files present (called before the final :meth:`write_run`).

        Raises:
            OutputError: they cannot be written.
        """
        ...

    def output_failure(self, exc: BaseException) -> OutputError | None:
        """The :class:`OutputError` ``exc`` amounts to when it means this store cannot be
        written (a full disk: no later scene could succeed), else ``None``."""
        ...

    def remove_temporaries(self) -> None:
        """Remove what half-done writes left (temporary files, replaced folders); never the
        work areas a later run resumes from. Errors are ignored."""
        ...


class FolderLedger:
    """The :class:`Ledger` of a local output folder: whole files through a temporary file and
    a rename (:func:`tilesegd.batch.folder.write_json_atomic`).

    Args:
        output: the output directory (``--output``).
    """

    def __init__(self, output: Path) -> None:
        self.output = Path(output)
        self.location = str(output)
        self.path = self.output / RUN_JSON

    def previous_scenes(self) -> dict[str, dict[str, Any]]:
        """See :meth:`Ledger.previous_scenes`."""
        previous: dict[str, dict[str, Any]] = {}
        if self.path.exists():
            with contextlib.suppress(json.JSONDecodeError, OSError, AttributeError):
                previous = json.loads(self.path.read_text()).get("scenes", {})
        return previous

    def published(self, name: str) -> bool:
        """See :meth:`Ledger.published`: ``DIR/<name>/`` holds the required outputs."""
        return outputs_present(self.output / name)

    def scene_files(self, name: str) -> dict[str, str]:
        """See :meth:`Ledger.scene_files`: paths in ``DIR/<name>/``."""
        return output_paths(self.output / name)

    def prepare_work(self, name: str, marker: dict[str, Any], discard: bool) -> None:
        """See :meth:`Ledger.prepare_work`: ``DIR/.tilesegd/work/<name>/work.json``."""
        try:
            prepare_work(self.output, name, marker, discard)
        except OSError as exc:
            raise output_error(self.output, exc) from None

    def publish(self, name: str, work: Path) -> dict[str, str]:
        """See :meth:`Ledger.publish`: one directory rename
        (:func:`tilesegd.batch.folder.publish`)."""
        return output_paths(publish(work, self.output / name))

    def products_work(self, name: str) -> tuple[Path, Path | str]:
        """See :meth:`Ledger.products_work`: the scene's own folder (each product is written
        atomically there)."""
        return self.output / name, self.output / name / "pred.zarr"

    def deliver_products(self, name: str, work: Path) -> dict[str, str]:
        """See :meth:`Ledger.deliver_products`: they are in place already."""
        return output_paths(self.output / name)

    def read_json(self, name: str) -> Any:
        """See :meth:`Ledger.read_json`."""
        try:
            return json.loads((self.output / name).read_text())
        except (OSError, ValueError):
            return None

    def write_json(self, name: str, doc: Any) -> None:
        """See :meth:`Ledger.write_json` (through a temporary file and a rename)."""
        with writing(self.output / name):
            write_json_atomic(self.output / name, doc)

    def write_run(self, doc: dict[str, Any]) -> None:
        """See :meth:`Ledger.write_run`."""
        with writing(self.path):
            write_json_atomic(self.path, doc)

    def write_summaries(self, done: Mapping[str, Mapping[str, Any]]) -> dict[str, str]:
        """See :meth:`Ledger.write_summaries` (:func:`tilesegd.batch.summary.write_summaries`)."""
        try:
            return write_summaries(self.output, done)
        except OSError as exc:
            raise output_error(self.output, exc) from None

    def output_failure(self, exc: BaseException) -> OutputError | None:
        """See :meth:`Ledger.output_failure` (:func:`tilesegd.errors.output_failure`)."""
        return output_failure(exc, self.output)

    def remove_temporaries(self) -> None:
        """See :meth:`Ledger.remove_temporaries` (:func:`tilesegd.batch.folder.clean_stale`)."""
        clean_stale(self.output)


def open_ledger(output: Path, remote: RemotePath | None = None) -> Ledger:
    """The ledger of a run's outputs: the folder ``output``, or, with ``remote``, that prefix on
    object storage with ``output`` as its local scratch folder
    (:class:`tilesegd.batch.objects.ObjectLedger`)."""
    if remote is None:
        return FolderLedger(output)
    from tilesegd.batch.objects import ObjectLedger

    return ObjectLedger(remote, output)

"""A run's outputs on object storage (``--output s3://bucket/prefix/``): the
:class:`~tilesegd.batch.ledger.Ledger` of a prefix, its publication of scenes and its lock.

The layout under the prefix is the local folder's (:mod:`tilesegd.batch.layout`); object stores
have no rename and no append, so:

* a scene's ``pred.zarr`` is written straight to ``PREFIX/.tilesegd/work/<scene>/pred.zarr``
  (one object per chunk) with its ``blocks.done/`` entries beside it (one object per block:
  :class:`~tilesegd.outputs.donelog.ObjectDoneLog`); a killed run resumes from them;
* the other outputs are built in a local scratch folder (one scene at a time) and published by
  :meth:`ObjectLedger.publish`: the completion marker ``PREFIX/.tilesegd/published/<scene>.json``
  is removed, the old ``PREFIX/<scene>/`` objects deleted, the new files uploaded and
  ``pred.zarr`` copied server-side, and only then the marker written again; a scene counts as
  published only while its marker exists (:meth:`ObjectLedger.published`); the work prefix
  is then deleted in the background;
* ``summary.csv`` / ``zones_summary.csv`` and then ``run.json`` are put whole, last;
* one writer: :func:`object_lock` holds ``PREFIX/.tilesegd/lock``, created by a conditional
  write and renewed while the run lives (see its docstring for what is guaranteed).

Never imports torch or the engine.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from tilesegd.batch.folder import clean_stale
from tilesegd.batch.layout import (
    RUN_FILES,
    RUN_JSON,
    SCENE_OUTPUTS,
    WORK_DIR,
    WORK_JSON,
    work_dir,
)
from tilesegd.batch.summary import write_summaries
from tilesegd.errors import LockedError, OutputError, output_failure
from tilesegd.storage.objects import ObjectFolder
from tilesegd.storage.urls import RemotePath

log = logging.getLogger(__name__)

LOCK_KEY = f"{WORK_DIR}/lock"
#: seconds a lock outlives its last renewal (``TILESEGD_LOCK_TTL_S`` overrides)
LOCK_TTL_S = 60.0
#: error kinds (:func:`tilesegd.storage.faults.kind_of`) that no later scene would escape
FATAL_KINDS = ("denied", "missing-bucket", "extra")


def work_key(name: str) -> str:
    """``.tilesegd/work/<name>/``: the scene's work prefix (store, log, ``work.json``)."""
    return f"{WORK_DIR}/work/{name}/"


def marker_key(name: str) -> str:
    """``.tilesegd/published/<name>.json``: the scene's completion marker."""
    return f"{WORK_DIR}/published/{name}.json"


def scene_store_url(root: RemotePath, name: str, model_grid: bool = False) -> str:
    """The URL of scene ``name``'s work ``pred.zarr`` under the output prefix ``root`` (on the
    model grid: ``.../model_grid/pred.zarr``)."""
    sub = "model_grid/pred.zarr" if model_grid else "pred.zarr"
    return root.as_prefix().url + work_key(name) + sub


class ObjectLedger:
    """The :class:`~tilesegd.batch.ledger.Ledger` of an output prefix on object storage.

    Args:
        root: the output prefix (``s3://bucket/prefix/``).
        scratch: the local folder where scene outputs are built before upload.
    """

    def __init__(self, root: RemotePath, scratch: Path) -> None:
        self.folder = ObjectFolder(root)
        self.scratch = Path(scratch)
        self.location = str(self.folder.root)

    def previous_scenes(self) -> dict[str, dict[str, Any]]:
        """See :meth:`Ledger.previous_scenes`."""
        doc = self.folder.read_json(RUN_JSON)
        return doc.get("scenes", {}) if isinstance(doc, dict) else {}

    def published(self, name: str) -> bool:
        """See :meth:`Ledger.published`: the scene's completion marker exists."""
        return self.folder.exists(marker_key(name))

    def scene_files(self, name: str) -> dict[str, str]:
        """See :meth:`Ledger.scene_files`: URLs under ``PREFIX/<name>/``."""
        present = {k[len(name) + 1 :].split("/", 1)[0] for k in self.folder.find(f"{name}/")}
        return {f: self.folder.url(f"{name}/{f}") for f in SCENE_OUTPUTS if f in present}

    def prepare_work(self, name: str, marker: dict[str, Any], discard: bool) -> None:
        """See :meth:`Ledger.prepare_work`: ``PREFIX/.tilesegd/work/<name>/work.json``; the
        local scratch folder of the scene is started empty."""
        key = work_key(name)
        if discard or self.folder.read_json(key + WORK_JSON) != marker:
            if self.folder.find(key):
                log.info("%s: discarding the half-done work (input, model or settings changed)",
                         name)  # fmt: skip
                self.folder.remove(key, recursive=True)
            self.folder.put_json(key + WORK_JSON, marker)
        self.empty_scratch(name)

    def publish(self, name: str, work: Path) -> dict[str, str]:
        """Publish scene ``name``: its files built in the local ``work`` folder and its work
        ``pred.zarr`` become ``PREFIX/<name>/``, then its completion marker is written (see
        the module docstring); the work prefix and ``work`` are then removed.

        Returns:
            ``{file name: URL}`` of the scene's outputs.

        Raises:
            OutputError: a request failed (the work prefix is intact: a rerun publishes again).
        """
        files = sorted(p for p in work.iterdir() if p.is_file() and p.name in SCENE_OUTPUTS)
        self.folder.remove(marker_key(name))
        self.folder.remove(f"{name}/", recursive=True)
        self.folder.put_files({f"{name}/{f.name}": f for f in files})
        self.folder.copy_tree(work_key(name) + "pred.zarr/", f"{name}/pred.zarr/")
        names = [f.name for f in files] + ["pred.zarr"]
        self.folder.put_json(marker_key(name), {"scene": name, "files": names, "time": time.time()})
        self.folder.remove_later(work_key(name))  # garbage now: nothing waits for it
        shutil.rmtree(work, ignore_errors=True)
        return self.scene_files(name)

    def products_work(self, name: str) -> tuple[Path, Path | str]:
        """See :meth:`Ledger.products_work`: an empty scratch folder and the URL of
        ``PREFIX/<name>/pred.zarr``."""
        return self.empty_scratch(name), self.folder.url(f"{name}/pred.zarr")

    def empty_scratch(self, name: str) -> Path:
        """Scene ``name``'s local scratch folder, made anew and empty.

        Raises:
            OutputError: it cannot be made.
        """
        local = work_dir(self.scratch, name)
        shutil.rmtree(local, ignore_errors=True)
        try:
            local.mkdir(parents=True)
        except OSError as exc:
            raise output_failure(exc, self.scratch, writing=True) or OutputError(str(exc)) from None
        return local

    def deliver_products(self, name: str, work: Path) -> dict[str, str]:
        """See :meth:`Ledger.deliver_products`: the files in ``work`` are uploaded to
        ``PREFIX/<name>/`` (concurrently), then ``work`` is removed."""
        files = [p for p in work.iterdir() if p.is_file() and p.name in SCENE_OUTPUTS]
        self.folder.put_files({f"{name}/{f.name}": f for f in files})
        shutil.rmtree(work, ignore_errors=True)
        return self.scene_files(name)

    def read_json(self, name: str) -> Any:
        """See :meth:`Ledger.read_json`: ``PREFIX/<name>``."""
        return self.folder.read_json(name)

    def write_json(self, name: str, doc: Any) -> None:
        """See :meth:`Ledger.write_json`: one whole ``PREFIX/<name>``."""
        self.folder.put_json(name, doc)

    def write_run(self, doc: dict[str, Any]) -> None:
        """See :meth:`Ledger.write_run`: one whole ``PREFIX/run.json``."""
        self.folder.put_json(RUN_JSON, doc)

    def write_summaries(self, done: Mapping[str, Mapping[str, Any]]) -> dict[str, str]:
        """See :meth:`Ledger.write_summaries`: each finished scene's ``areas.csv`` and
        ``zones.csv`` are read from the store, the summaries built in scratch and put whole
        (a run-level file no longer wanted is deleted)."""
        local = self.scratch / "summaries"
        shutil.rmtree(local, ignore_errors=True)
        for name in done:
            (local / name).mkdir(parents=True, exist_ok=True)
            for f in ("areas.csv", "zones.csv"):
                data = self.folder.read_bytes(f"{name}/{f}")
                if data is not None:
                    (local / name / f).write_bytes(data)
        try:
            present = write_summaries(local, done)
            for f in RUN_FILES:
                if f in present:
                    self.folder.put_file(local / f, f)
                else:
                    self.folder.remove(f)
        finally:
            shutil.rmtree(local, ignore_errors=True)
        return {f: self.folder.url(f) for f in present}

    def output_failure(self, exc: BaseException) -> OutputError | None:
        """See :meth:`Ledger.output_failure`: access denied, a missing bucket, or a local
        scratch folder that cannot be written; a failed request otherwise fails one scene."""
        if isinstance(exc, OutputError):
            kind = getattr(exc, "kind", None)
            return exc if kind is None or kind in FATAL_KINDS else None
        return output_failure(exc, self.scratch)

    def remove_temporaries(self) -> None:
        """See :meth:`Ledger.remove_temporaries`: the scratch folder's half-written files."""
        clean_stale(self.scratch)


def scratch_folder(scratch: str | None, root: RemotePath) -> Path:
    """A new local folder for this run's scene outputs before upload, under ``--scratch`` (or
    the temp folder): one scene's files at a time, removed after each upload and at the end.

    Raises:
        OutputError: it cannot be created.
    """
    import hashlib
    import tempfile

    base = Path(scratch) if scratch else Path(tempfile.gettempdir())
    tag = hashlib.sha256(root.url.encode()).hexdigest()[:10]
    try:
        base.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f"tilesegd-{tag}-", dir=base))
    except OSError as exc:
        raise OutputError(
            f"{base}: cannot create the scratch folder for {root} ({exc}); choose another "
            "--scratch DIR (a local folder with room for one scene's outputs)"
        ) from None


def lock_ttl() -> float:
    """Seconds a lock outlives its last renewal: ``TILESEGD_LOCK_TTL_S`` or :data:`LOCK_TTL_S`."""
    with contextlib.suppress(ValueError):
        return max(1.0, float(os.environ.get("TILESEGD_LOCK_TTL_S", LOCK_TTL_S)))
    return LOCK_TTL_S


def stale(held: Any, now: float) -> bool:
    """Whether a lock document belongs to no live run: expired, unreadable, or held by a
    process of this host that is gone (a killed run on this machine)."""
    if not isinstance(held, dict) or not isinstance(held.get("expires"), int | float):
        return True
    if held["expires"] < now:
        return True
    if held.get("host") == socket.gethostname() and isinstance(held.get("pid"), int):
        try:
            os.kill(held["pid"], 0)
        except ProcessLookupError:
            return True
        except OSError:
            return False
    return False


@contextlib.contextmanager
def object_lock(folder: ObjectFolder) -> Iterator[None]:
    """Hold ``PREFIX/.tilesegd/lock`` for the block's duration.

    The lock is created with a conditional write (S3 ``If-None-Match: *``), so of two runs
    starting together exactly one gets it; it records host, pid and an expiry renewed every
    third of :func:`lock_ttl` by a background thread, and is deleted on exit. A run killed
    without cleanup leaves it until it expires (at once on the same host: its pid is gone).
    Where a store has no conditional writes, two runs starting in the same instant can both
    take it (said in the README).

    Raises:
        LockedError: another live run holds it (exit 5). OutputError: it cannot be written.
    """
    ttl, token = lock_ttl(), uuid.uuid4().hex

    def doc() -> bytes:
        me = {"host": socket.gethostname(), "pid": os.getpid(), "token": token,
              "expires": time.time() + ttl}  # fmt: skip
        return json.dumps(me).encode()

    if not folder.create(LOCK_KEY, doc()):
        held = folder.read_json(LOCK_KEY)
        if not stale(held, time.time()):
            left = max(0, round(held["expires"] - time.time()))
            raise LockedError(
                f"{folder.root}: another tilesegd run (host {held.get('host')}, pid "
                f"{held.get('pid')}) is writing to this output prefix; wait for it to finish "
                f"or choose another --output (a killed run's lock expires in {left} s)"
            )
        log.info("%s: taking over the lock of a run that is gone", folder.root)
        folder.remove(LOCK_KEY)
        if not folder.create(LOCK_KEY, doc()):
            raise LockedError(f"{folder.root}: another tilesegd run took the lock just now; "
                              "wait for it to finish or choose another --output")  # fmt: skip
    stop = threading.Event()

    def renew() -> None:
        while not stop.wait(ttl / 3):
            with contextlib.suppress(Exception):
                if (folder.read_json(LOCK_KEY) or {}).get("token") == token:
                    folder.put_bytes(LOCK_KEY, doc())

    beat = threading.Thread(target=renew, name="tilesegd-lock", daemon=True)
    beat.start()
    try:
        yield
    finally:
        stop.set()
        beat.join(timeout=5)
        with contextlib.suppress(Exception):
            if (folder.read_json(LOCK_KEY) or {}).get("token") == token:
                folder.remove(LOCK_KEY)

"""The output layout of a run: file names, where a scene's work and outputs live, and the ids
that say whether a scene's outputs are still those of its input (fingerprint, input stat).

Output layout (``DIR`` = ``--output``)::

    DIR/run.json                    the run: model, device, config, one entry per scene
    DIR/summary.csv                 every finished scene's areas.csv rows, with a scene column
    DIR/zones_summary.csv           their zones.csv added up (absent when no scene has zones)
    DIR/catalog.json                a STAC Catalog linking each finished scene's item.json
    DIR/search.json                 the --stac-api search's Items (a rerun resumes them)
    DIR/<scene>/                    a finished scene (:data:`SCENE_OUTPUTS`; item.json: its
                                    STAC Item)
    DIR/.tilesegd/lock              flock held by the running process
    DIR/.tilesegd/work/<scene>/     a scene in progress: work.json, pred.zarr, blocks.done...
    DIR/.tilesegd/trash/            folders replaced by a publish, removed right after

A folder holding a run or a scene's outputs (:func:`holds_run`, :func:`outputs_present`) is
never searched for scenes (:func:`tilesegd.batch.discovery.discover`). This module only reads;
the writes are in :mod:`tilesegd.batch.folder` (never imports torch or the engine).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tilesegd.version import __version__

RUN_JSON = "run.json"
SUMMARY_CSV = "summary.csv"
WORK_DIR = ".tilesegd"
WORK_JSON = "work.json"
DONE_LOG = "blocks.done"
ZONES_SUMMARY_CSV = "zones_summary.csv"
RUN_FILES = (SUMMARY_CSV, ZONES_SUMMARY_CSV)
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
    "item.json",
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

"""The run's summaries on a local folder: ``summary.csv`` (every finished scene's
``areas.csv`` rows, with a scene column and its polygon count per class) and
``zones_summary.csv`` (their ``zones.csv`` added up). Both are written whole, through a
temporary file and a rename; never imports torch or the engine.
"""

from __future__ import annotations

import contextlib
import csv
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tilesegd import atomic
from tilesegd.batch.layout import RUN_FILES, SUMMARY_CSV, ZONES_SUMMARY_CSV
from tilesegd.errors import writing


def write_summaries(output: Path, done: Mapping[str, Mapping[str, Any]]) -> dict[str, str]:
    """Write ``DIR/summary.csv`` and ``DIR/zones_summary.csv`` for the finished scenes
    ``done`` (scene name -> its ``run.json`` entry, whose ``polygons_per_class`` fills the
    ``polygons`` column).

    ``zones_summary.csv`` is removed when no finished scene has a ``zones.csv``, so it never
    sums masks that are gone. A scene folder without ``areas.csv`` adds no rows.

    Returns:
        ``{file name: path}`` of the run-level files present afterwards (``run.json``'s
        ``outputs``).

    Raises:
        OutputError: a summary cannot be written. OSError: a scene's ``areas.csv`` or
            ``zones.csv`` cannot be read.
    """
    from tilesegd.outputs.areas import AREA_COLUMNS

    rows = []
    for name, entry in done.items():
        f = output / name / "areas.csv"
        if f.is_file():
            polygons = entry.get("polygons_per_class") or {}
            with open(f, newline="") as fh:
                rows += [
                    {"scene": name, **r, "polygons": polygons.get(r["class_name"], "")}
                    for r in csv.DictReader(fh)
                ]
    write_zones_summary(output, list(done))
    tmp = output / f".{SUMMARY_CSV}.tmp-{os.getpid()}"
    try:
        with writing(output / SUMMARY_CSV):
            with open(tmp, "w", newline="") as fh:
                w = csv.DictWriter(fh, fieldnames=("scene", *AREA_COLUMNS, "polygons"))
                w.writeheader()
                w.writerows(rows)
            atomic.replace(tmp, output / SUMMARY_CSV)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()
    return {f: str(output / f) for f in RUN_FILES if (output / f).is_file()}


def write_zones_summary(output: Path, done: list[str]) -> None:
    """``DIR/zones_summary.csv``: the zones of the finished scenes ``done`` added up (zones
    that span several scenes become one row per class); removed when none of them has zones.

    Raises:
        OutputError: it cannot be written.
    """
    files = [output / n / "zones.csv" for n in done if (output / n / "zones.csv").is_file()]
    if files:
        from tilesegd.outputs.zones import write_zones_summary as merge

        merge(files, output / ZONES_SUMMARY_CSV)
    else:
        (output / ZONES_SUMMARY_CSV).unlink(missing_ok=True)


def catalog_text(doc: Mapping[str, Any]) -> dict[str, str]:
    """The ``title`` and ``description`` of a run's ``catalog.json``, from its ``run.json``
    document (the model and its classes)."""
    model = doc.get("model") if isinstance(doc.get("model"), dict) else {}
    name = Path(str(model.get("path") or "the model")).name
    classes = ", ".join(model.get("classes") or [])
    return {
        "title": f"tilesegd segmentation with {name}",
        "description": f"Class masks ({classes}) segmented by tilesegd "
        f"{doc.get('tilesegd_version', '')} with the model {name}; one Item per finished scene.",
    }

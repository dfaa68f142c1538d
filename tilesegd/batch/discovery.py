"""Input discovery: the raster files a run segments, their output names, and a job-array shard.

Directories are searched recursively for raster suffixes; tilesegd's own outputs (a run's
folder, scene folders, the ``--output`` folder) are never read as scenes. Object-storage
prefixes (``s3://bucket/scenes/``, ``gs://``, ``az://``) are listed the same way, and objects and
URLs are taken as files (:mod:`tilesegd.storage`): they become
:class:`~tilesegd.storage.urls.RemotePath` entries, read by GDAL with range requests.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from tilesegd.batch.layout import REQUIRED_OUTPUTS, RUN_JSON, WORK_DIR, holds_run, outputs_present
from tilesegd.config import parse_shard
from tilesegd.errors import InputError
from tilesegd.storage.urls import RemotePath, parse_location

log = logging.getLogger(__name__)
RASTER_SUFFIXES = (".tif", ".tiff", ".vrt", ".jpg", ".jpeg", ".png")


def discover(
    inputs: list[str | os.PathLike[str]], output: str | os.PathLike[str] | None = None
) -> list[Path | RemotePath]:
    """Expand files and directories into the list of raster files to process.

    Directories are searched recursively for ``.tif .tiff .vrt .jpg .jpeg .png`` (any case);
    hidden files and folders (``.name``) are skipped, and so are tilesegd's own outputs (see
    :func:`output_folder`): the ``output`` folder, folders holding a run, and scene folders,
    so a rerun into a folder inside its input never reads its masks and previews as scenes.
    One warning names the folders skipped. Files named in ``inputs`` are always taken. Order
    is sorted and stable. Object-storage prefixes follow the same rules
    (:func:`search_prefix`); objects, HTTP(S) URLs and GDAL ``/vsi`` paths are files.

    Raises:
        InputError: an input path does not exist, or nothing was found; a remote location is
            wrong (missing bucket or object, access denied, unreachable endpoint), named with
            its fix.
    """
    found: list[Path | RemotePath] = []
    skipped: dict[Path | RemotePath, str] = {}
    out = Path(output).resolve() if output is not None else None
    for item in inputs:
        remote = parse_location(item)
        if remote is not None:
            found += search_location(remote, skipped)
            continue
        p = Path(item)
        if p.is_dir():
            found += search_folder(p, out, skipped)
        elif p.is_file():
            found.append(p)
        else:
            raise InputError(f"{p}: no such file or directory; check the --input path")
    said = "; ".join(f"{d} ({why})" for d, why in skipped.items())
    if not found:
        where = ", ".join(map(str, inputs)) + (
            f" (skipped tilesegd outputs: {said})" if said else ""
        )
        raise InputError(f"no raster files (.tif .tiff .vrt .jpg .jpeg .png) found in {where}")
    if skipped:
        log.warning("searching the inputs for scenes, skipped tilesegd outputs: %s", said)
    seen: set[Path | RemotePath] = set()
    return [f for f in found if not (same(f) in seen or seen.add(same(f)))]


def same(found: Path | RemotePath) -> Path | RemotePath:
    """What makes two inputs the same file: a local path resolved, a location as it is."""
    return found if isinstance(found, RemotePath) else found.resolve()


def is_raster_name(name: str) -> bool:
    """A visible file name with one of the :data:`RASTER_SUFFIXES` (any case)."""
    return not name.startswith(".") and Path(name).suffix.lower() in RASTER_SUFFIXES


def search_location(
    location: RemotePath, skipped: dict[Path | RemotePath, str]
) -> list[RemotePath]:
    """An object or URL as one file; a prefix searched as :func:`search_prefix` does.

    Raises:
        InputError: the location is wrong (:func:`tilesegd.storage.listing.expand`).
    """
    from tilesegd.storage.listing import expand

    is_prefix, objects = expand(location)
    if not is_prefix:
        return objects
    return search_prefix(location.as_prefix(), objects, skipped)


def search_prefix(
    root: RemotePath, objects: list[RemotePath], skipped: dict[Path | RemotePath, str]
) -> list[RemotePath]:
    """The raster objects among ``objects`` (every object under the prefix ``root``), by the
    local folder's rules: raster suffixes only, nothing under a hidden ``.name`` folder, and no
    tilesegd output folder entered (a scene's outputs, a run's folder with ``run.json`` and
    its ``.tilesegd/`` work folder), each one added to ``skipped``; ``root`` itself is skipped
    only when it holds a scene's outputs."""
    keys = [o.key[len(root.key) :] for o in objects if o.key.startswith(root.key)]
    folders: dict[str, set[str]] = {}  # folder (relative, "" = root) -> names directly in it
    for key in keys:
        parts = key.split("/")
        for depth in range(len(parts)):
            folders.setdefault("/".join(parts[:depth]), set()).add(parts[depth])
    out_folders = {}
    for folder, names in folders.items():
        if all(n in names for n in REQUIRED_OUTPUTS):
            out_folders[folder] = "a tilesegd scene's outputs"
        elif folder and RUN_JSON in names and WORK_DIR in names:
            out_folders[folder] = "a tilesegd run's outputs, run.json"
    if "" in out_folders:
        skipped[root] = out_folders[""]
        return []
    found = []
    for key, obj in zip(keys, objects, strict=True):
        parts = key.split("/")
        within = ["/".join(parts[:d]) for d in range(1, len(parts))]
        if any(p.startswith(".") for p in parts[:-1]) or not is_raster_name(parts[-1]):
            continue
        hit = next((f for f in within if f in out_folders), None)
        if hit is not None:
            skipped[root.child(root.key + hit + "/")] = out_folders[hit]
            continue
        found.append(obj)
    return sorted(found)


def search_folder(root: Path, output: Path | None, skipped: dict[Path, str]) -> list[Path]:
    """The raster files under ``root``, sorted; folders of tilesegd outputs are not entered
    and are added to ``skipped`` (folder -> reason). ``root`` itself is searched unless it is
    a scene folder: a run's folder named as input gives the scenes beside its outputs."""
    found: list[Path] = []
    why = output_folder(root, None, top=True)
    if why:
        skipped[root] = why
        return found
    for here, dirs, files in os.walk(root):
        keep = []
        for sub in (Path(here, d) for d in dirs if not d.startswith(".")):
            why = output_folder(sub, output)
            if why:
                skipped[sub] = why
            else:
                keep.append(sub.name)
        dirs[:] = keep  # os.walk enters only these
        found += [
            Path(here, f)
            for f in files
            if not f.startswith(".")
            and Path(f).suffix.lower() in RASTER_SUFFIXES
            and Path(here, f).is_file()
        ]
    return sorted(found)


def output_folder(folder: Path, output: Path | None, *, top: bool = False) -> str | None:
    """Why ``folder`` holds tilesegd outputs rather than scenes (``None``: it does not): it is
    the run's ``output`` folder (resolved), a folder holding a tilesegd run (``run.json``, see
    :func:`tilesegd.batch.layout.holds_run`), or a published scene folder (``mask.tif``,
    ``pred.zarr``, ``areas.csv``). With ``top`` (a folder named as input) only the last."""
    if outputs_present(folder):
        return "a tilesegd scene's outputs"
    if top:
        return None
    if output is not None and folder.resolve() == output:
        return "the --output folder"
    if holds_run(folder):
        return "a tilesegd run's outputs, run.json"
    return None


def scene_names(paths: list[Path | RemotePath]) -> list[str]:
    """Output names: each file's stem, with ``__2``, ``__3``... added to repeated stems."""
    return unique_names([p.stem for p in paths])


def unique_names(bases: list[str]) -> list[str]:
    """``bases`` (file stems, STAC Item ids) with ``__2``, ``__3``... added to repeats, in
    order; a name that would clash with one given or made is numbered further."""
    taken = set(bases)
    counts: dict[str, int] = {}
    names = []
    for base in bases:
        n = counts.get(base, 0) + 1
        name = base if n == 1 else f"{base}__{n}"
        while n > 1 and name in taken:
            n += 1
            name = f"{base}__{n}"
        counts[base] = n
        taken.add(name)
        names.append(name)
    return names


def select_shard(
    paths: list[Path | RemotePath], names: list[str], shard: str
) -> tuple[list[Path | RemotePath], list[str]]:
    """Keep this shard's scenes: sorted by path, scene ``i`` goes to shard ``i % N``.

    Deterministic and scheduler-free, for job arrays (``--shard $SLURM_ARRAY_TASK_ID/N``).
    Output names are the ones the full list gives, so shards never rename a scene.

    Raises:
        ConfigError: ``shard`` is not ``I/N`` with ``0 <= I < N``.
    """
    i, n = parse_shard(shard)
    pairs = sorted(zip(paths, names, strict=True), key=lambda pn: str(pn[0]))
    kept = [pn for k, pn in enumerate(pairs) if k % n == i]
    return [p for p, _ in kept], [nm for _, nm in kept]

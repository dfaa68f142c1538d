"""Labelled data shared by evaluation and training: class maps, image/mask pairs, whole-raster
reads.

Masks are either single-band class *values* or colour-coded RGB(A). A classes CSV maps them to
contiguous class ids ``0..K-1``; classes listed as ignored (``--ignore NAME``, and any class
named ``nodata``) map to :data:`IGNORE_INDEX` (255) and are not model outputs. Two CSV layouts
are accepted:

* ``value,name,r,g,b`` (LoveDA style: mask value -> class; colour used for colour-coded masks),
* ``name,r,g,b`` (the Semantic Drone Dataset's ``class_dict.csv``: the value is the row order).
"""

from __future__ import annotations

import contextlib
import csv
import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tilesegd.errors import ConfigError, DatasetError

log = logging.getLogger(__name__)

IGNORE_INDEX = 255
IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".bmp", ".vrt")
DEFAULT_IGNORED = ("nodata",)


@dataclass(frozen=True)
class ClassEntry:
    """One row of a classes CSV: raw mask ``value``, ``name``, ``color`` (r, g, b 0-255)."""

    value: int
    name: str
    color: tuple[int, int, int]
    ignored: bool = False


@dataclass
class ClassMap:
    """Mapping between raw mask values / colours and contiguous class ids.

    Attributes:
        entries: every CSV row, in file order.
        source: where it came from (for messages).

    Class ids are the positions of the non-ignored entries (``0..K-1``); ignored entries map to
    :data:`IGNORE_INDEX`.
    """

    entries: list[ClassEntry]
    source: str = "<classes>"
    _ids: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        ids, k = [], 0
        for e in self.entries:
            ids.append(IGNORE_INDEX if e.ignored else k)
            k += not e.ignored
        if k == 0:
            raise ConfigError(f"{self.source}: every class is ignored; keep at least one")
        if k > 254:
            raise ConfigError(f"{self.source}: {k} classes; at most 254 are supported")
        self._ids = np.asarray(ids, np.uint8)
        values = [e.value for e in self.entries]
        if len(set(values)) != len(values):
            raise ConfigError(f"{self.source}: duplicate mask values {values}")
        self._vorder = np.argsort(values)
        self._values = np.asarray(values, np.int64)[self._vorder]
        codes = [(c[0] << 16) | (c[1] << 8) | c[2] for c in (e.color for e in self.entries)]
        if len(set(codes)) == len(codes):
            self._corder = np.argsort(codes)
            self._codes = np.asarray(codes, np.int64)[self._corder]
        else:
            self._codes = None  # colours not unique: colour-coded masks are refused

    @property
    def classes(self) -> list[ClassEntry]:
        """The K output classes (ignored entries removed), id = position."""
        return [e for e in self.entries if not e.ignored]

    @property
    def names(self) -> list[str]:
        """Names of the K output classes."""
        return [e.name for e in self.classes]

    @property
    def ignored_names(self) -> list[str]:
        """Names of the ignored classes."""
        return [e.name for e in self.entries if e.ignored]

    @property
    def num_classes(self) -> int:
        """K, the number of output classes."""
        return len(self.classes)

    def encode(self, mask: np.ndarray, path: str | Path = "<mask>") -> np.ndarray:
        """Raw mask -> class ids.

        Args:
            mask: (H, W) or (1, H, W) class values (any integer dtype), or (3|4, H, W) uint8
                colours (an alpha band is dropped).
            path: the mask file, named in errors.

        Returns:
            (H, W) uint8 ids in ``0..K-1``, :data:`IGNORE_INDEX` for ignored classes.

        Raises:
            DatasetError: a value or colour is not in the classes CSV (names the file and the
                first few unknown values).
        """
        if mask.ndim == 3 and mask.shape[0] == 1:
            mask = mask[0]
        if mask.ndim == 2:
            if mask.dtype.kind == "f":
                if not np.all(np.isfinite(mask)) or np.any(mask != np.round(mask)):
                    raise DatasetError(
                        f"{path}: mask holds non-integer values; masks must be "
                        "integer class values or RGB colours"
                    )
            keys, table, order, what = mask.astype(np.int64), self._values, self._vorder, "value"
        elif mask.ndim == 3 and mask.shape[0] in (3, 4):
            if self._codes is None:
                raise DatasetError(
                    f"{path}: colour-coded mask, but the colours in {self.source}"
                    " are not unique; give each class its own r,g,b"
                )
            m = mask[:3].astype(np.int64)
            keys, table, order, what = (
                (m[0] << 16) | (m[1] << 8) | m[2],
                self._codes,
                self._corder,
                "colour",
            )
        else:
            raise DatasetError(
                f"{path}: mask has shape {mask.shape}; expected 1 band of class "
                "values or 3 bands (RGB) of class colours"
            )
        pos = np.clip(np.searchsorted(table, keys), 0, len(table) - 1)
        bad = table[pos] != keys
        if bad.any():
            unknown = np.unique(keys[bad])[:5]
            if what == "colour":
                shown = ", ".join(f"({u >> 16}, {(u >> 8) & 255}, {u & 255})" for u in unknown)
            else:
                shown = ", ".join(str(int(u)) for u in unknown)
            raise DatasetError(
                f"{path}: {int(bad.sum())} pixel(s) with mask {what}(s) {shown} not listed in "
                f"{self.source}; add them to the classes CSV (or fix the mask)"
            )
        return self._ids[order[pos]]

    def decode(self, ids: np.ndarray, mode: str = "color") -> np.ndarray:
        """Class ids -> raw mask values (``mode="value"``, (H, W) int64) or colours
        (``mode="color"``, (3, H, W) uint8). Ignored pixels get the first ignored class (or
        value 255 / black when none is ignored). The inverse of :meth:`encode`."""
        ign = [e for e in self.entries if e.ignored]
        fill = ign[0] if ign else ClassEntry(IGNORE_INDEX, "ignore", (0, 0, 0))
        cls = self.classes + [fill] * (256 - self.num_classes)
        if mode == "value":
            return np.asarray([e.value for e in cls], np.int64)[ids]
        lut = np.asarray([e.color for e in cls], np.uint8)
        return lut[ids].transpose(2, 0, 1).copy()

    @classmethod
    def from_names(
        cls, names: Sequence[str], colors: Sequence[Sequence[int]], source: str = "<model>"
    ) -> ClassMap:
        """Masks that hold class ids directly (value = id, 255 = ignore), e.g. for ``eval``
        without ``--classes``; colours are the model's."""
        entries = [
            ClassEntry(i, n, tuple(int(v) for v in c[:3]))
            for i, (n, c) in enumerate(zip(names, colors, strict=True))
        ]
        if len(entries) < IGNORE_INDEX:
            entries.append(ClassEntry(IGNORE_INDEX, "ignore", (1, 2, 3), ignored=True))
        return cls(entries, source)


def read_classes(path: str | Path, ignore: Sequence[str] = ()) -> ClassMap:
    """Parse a classes CSV (``value,name,r,g,b`` or ``name,r,g,b``; see the module docstring).

    Args:
        path: the CSV file.
        ignore: class names to ignore (case-insensitive); a class named ``nodata`` is always
            ignored.

    Raises:
        ConfigError: missing file, unknown header, bad numbers, or an ``ignore`` name that is
            not in the file.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: classes CSV not found; pass --classes FILE")
    with open(path, newline="", encoding="utf-8-sig") as f:
        rows = [r for r in csv.reader(f) if r and any(c.strip() for c in r)]
    if not rows:
        raise ConfigError(f"{path}: classes CSV is empty")
    header = [h.strip().lower() for h in rows[0]]
    want_ignore = {n.strip().lower() for n in ignore}
    if header[:5] == ["value", "name", "r", "g", "b"]:
        has_value = True
    elif header[:4] == ["name", "r", "g", "b"]:
        has_value = False
    else:
        raise ConfigError(
            f"{path}: header {rows[0]} not understood; use value,name,r,g,b or "
            "name,r,g,b (Semantic Drone Dataset class_dict.csv)"
        )
    entries = []
    for i, row in enumerate(rows[1:]):
        try:
            cells = [c.strip() for c in row]
            value, rest = (int(cells[0]), cells[1:]) if has_value else (i, cells)
            name = rest[0]
            color = tuple(int(float(v)) for v in rest[1:4])
            if len(color) != 3 or not all(0 <= v <= 255 for v in color):
                raise ValueError("r,g,b must be 0..255")
        except (ValueError, IndexError) as exc:
            raise ConfigError(f"{path}: line {i + 2} {row}: {exc}") from None
        low = name.lower()
        entries.append(ClassEntry(value, name, color, low in want_ignore or low in DEFAULT_IGNORED))
    missing = want_ignore - {e.name.lower() for e in entries}
    if missing:
        raise ConfigError(
            f"{path}: --ignore {', '.join(sorted(missing))}: no such class; "
            f"classes are {', '.join(e.name for e in entries)}"
        )
    return ClassMap(entries, str(path))


@dataclass(frozen=True)
class Pair:
    """An image file and its mask file (same stem)."""

    image: Path
    mask: Path

    @property
    def name(self) -> str:
        return self.image.stem


def _listing(folder: Path) -> dict[str, Path]:
    if not folder.is_dir():
        raise ConfigError(f"{folder}: not a directory; pass an existing folder")
    files = sorted(
        p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
    )
    out: dict[str, Path] = {}
    for p in files:
        if p.stem in out:
            raise DatasetError(
                f"{folder}: two files share the stem {p.stem!r} ({out[p.stem].name}, "
                f"{p.name}); keep one per image"
            )
        out[p.stem] = p
    return out


def find_pairs(images: str | Path, masks: str | Path) -> list[Pair]:
    """Match ``images/`` and ``masks/`` by file stem (``0.png`` <-> ``0.png``, ``a.jpg`` <->
    ``a.png``), sorted by stem.

    Raises:
        ConfigError: a folder is missing.
        DatasetError: no pairs, or images without a mask (named).
    """
    imgs, msks = _listing(Path(images)), _listing(Path(masks))
    lonely = sorted(set(imgs) - set(msks))
    if lonely:
        raise DatasetError(
            f"{masks}: no mask for image(s) {', '.join(lonely[:5])}"
            f"{' ...' if len(lonely) > 5 else ''}; masks are matched by file stem"
        )
    extra = sorted(set(msks) - set(imgs))
    if extra:
        log.warning("%s: %d mask(s) without an image ignored (%s)", masks, len(extra), extra[:3])
    if not imgs:
        raise DatasetError(f"{images}: no images ({', '.join(IMAGE_SUFFIXES)})")
    return [Pair(imgs[s], msks[s]) for s in sorted(imgs)]


@contextlib.contextmanager
def open_raster(path: str | Path):
    """``rasterio.open`` (a context manager) without the not-georeferenced warning (PNG/JPEG
    pairs are normal); GDAL errors become :class:`DatasetError` naming the file."""
    import rasterio
    import rasterio.errors

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
            with rasterio.open(path) as ds:
                yield ds
    except rasterio.errors.RasterioError as exc:
        raise DatasetError(f"{path}: cannot read ({exc}); is it a valid image?") from None


def band_indexes(path: str | Path, count: int, bands: Sequence[int] | None) -> list[int]:
    """The 1-based band numbers to read from a raster of ``count`` bands (all when ``bands`` is
    ``None`` or empty).

    Raises:
        DatasetError: a band number out of range, naming the file.
    """
    if not bands:
        return list(range(1, count + 1))
    if min(bands) < 1 or max(bands) > count:
        raise DatasetError(f"{path}: has {count} band(s), bands {list(bands)} asked")
    return list(bands)


def read_raster(path: Path, bands: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Read a whole raster: ``(data (C, H, W) native dtype, valid (H, W) bool)``.

    ``valid`` is False where GDAL's dataset mask says nodata (nodata value, alpha, internal mask).

    Raises:
        DatasetError: unreadable file or a band number out of range.
    """
    from rasterio.enums import MaskFlags

    with open_raster(path) as ds:
        data = ds.read(band_indexes(path, ds.count, bands))
        if all(MaskFlags.all_valid in f for f in ds.mask_flag_enums):
            valid = np.ones(data.shape[1:], bool)
        else:  # nodata value, alpha band or internal mask
            valid = ds.dataset_mask() > 0
    return data, valid


def raster_height(path: str | Path) -> int:
    """Height in pixels from the file's header (nothing is decoded).

    Raises:
        DatasetError: the file cannot be opened.
    """
    with open_raster(path) as ds:
        return int(ds.height)

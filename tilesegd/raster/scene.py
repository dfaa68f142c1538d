"""Scene profiling: what a raster is, checked before any pixel is read.

A :class:`Scene` records size, bands, dtype, CRS, transform and nodata of one input raster, and
the checks here turn every way a file can be unusable into an :class:`~tilesegd.errors.InputError`
that names the file and the fix: 0-byte or non-image files, a ``.tif`` that is really a VRT,
VRTs reaching the network, sizes over the pixel budget, and missing or corrupt georeferencing.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tilesegd.errors import IncompatibleInputError, InputError
from tilesegd.raster.exif import acquisition_time, exif_orientation
from tilesegd.raster.gdalenv import open_raster, quiet_georef
from tilesegd.storage.redact import redact
from tilesegd.storage.urls import RemotePath, parse_location

log = logging.getLogger(__name__)
PLAIN_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
SUPPORTED_DTYPES = ("uint8", "uint16", "int16", "uint32", "int32", "float32", "float64")
_NETWORK_PREFIXES = (
    *("/vsicurl", "/vsis3", "/vsigs", "/vsiaz", "/vsihttp", "/vsiadls", "/vsioss", "/vsiswift"),
    *("http://", "https://", "ftp://"),
)


@dataclass
class Scene:
    """One input raster.

    Attributes:
        path: the file, or a :class:`~tilesegd.storage.urls.RemotePath` (an object or URL
            GDAL reads with range requests).
        name: output folder name (the file stem, de-duplicated across inputs).
        width, height: pixels.
        count: number of bands.
        dtype: NumPy dtype name of band 1 (all bands read as this).
        crs: ``rasterio.crs.CRS`` or ``None`` when not georeferenced.
        transform: ``affine.Affine`` pixel -> CRS transform, ``None`` when not georeferenced.
        nodata: the nodata value, or ``None``.
        has_mask: True when some pixels may be invalid (nodata value, alpha band, internal
            mask) so the reader must fetch the mask.
        driver: GDAL driver short name.
        colorinterp: GDAL colour interpretation of each band.
        acquired: when the image was taken (ISO 8601, no zone), from its EXIF or TIFF
            date tags (:func:`tilesegd.raster.exif.acquisition_time`), or ``None``.
        orientation: the EXIF ``Orientation`` tag (1-8; 1 = as stored, also when absent): how
            a photo viewer turns the stored pixels for display. tilesegd never turns them: the
            outputs follow the stored pixel order (:func:`tilesegd.raster.exif.orientation_note`).
    """

    path: Path | RemotePath
    name: str
    width: int
    height: int
    count: int
    dtype: str
    crs: Any = None
    transform: Any = None
    nodata: float | None = None
    has_mask: bool = False
    driver: str = ""
    colorinterp: list[str] = field(default_factory=list)
    orientation: int = 1
    acquired: str | None = None

    @property
    def georeferenced(self) -> bool:
        """True when the scene has a CRS and a non-identity transform."""
        return self.crs is not None and self.transform is not None

    @property
    def megapixels(self) -> float:
        """width * height / 1e6."""
        return self.width * self.height / 1e6


def check_vrt(path: Path, allow_vrt: bool) -> None:
    """Refuse, before GDAL opens it, a VRT named other than ``.vrt`` and a VRT that reads from
    the network (unless ``allow_vrt``). A file is a VRT when GDAL's VRT driver takes it: its
    first 1024 bytes (GDAL's header) hold ``<VRTDataset`` before any NUL byte, whatever comes
    first (a BOM, an XML declaration, comments).

    Raises:
        InputError: naming the file and ``--allow-vrt``.
    """
    with open(path, "rb") as f:
        head = f.read(1024)
    if b"<VRTDataset" not in head.split(b"\0", 1)[0]:
        return
    if path.suffix.lower() != ".vrt" and not allow_vrt:
        raise InputError(
            f"{path}: this {path.suffix} file is really a GDAL VRT that points at other files; "
            "refused by default (pass --allow-vrt, or name it .vrt, if you trust it)"
        )
    text = path.read_text(errors="replace")
    if any(pref in text for pref in _NETWORK_PREFIXES) and not allow_vrt:
        raise InputError(
            f"{path}: this VRT reads from a network location; refused by default "
            "(pass --allow-vrt if you trust it)"
        )


def _check_png_complete(path: Path) -> None:
    """A PNG ends with an ``IEND`` chunk; a cut file does not. GDAL's PNG driver returns
    garbage without an error when the whole image is read from a truncated file, so check."""
    with open(path, "rb") as f:
        if f.read(8) != b"\x89PNG\r\n\x1a\n":
            return  # not a PNG: GDAL decides below
        f.seek(max(0, path.stat().st_size - 4096))
        tail = f.read()
    if b"IEND" not in tail:
        raise InputError(
            f"{path}: the PNG is truncated (no IEND chunk at its end); re-copy the file"
        )


def open_scene(
    path: str | os.PathLike[str],
    name: str | None = None,
    *,
    max_megapixels: float = 20_000.0,
    allow_vrt: bool = False,
    allow_no_georef: bool = False,
) -> Scene:
    """Profile one raster without reading its pixels.

    Args:
        path: the raster file, or a location (``s3://...``, ``https://...``, ``/vsi...``):
            the local file checks (0 bytes, a VRT in disguise, a cut PNG) need the whole file,
            so a remote one is only opened; a VRT there is refused without ``allow_vrt``.
        name: output name (default: the file stem).
        max_megapixels: pixel budget; larger declared sizes are refused before reading.
        allow_vrt: accept VRTs disguised as ``.tif`` and VRTs that reach the network.
        allow_no_georef: accept a GeoTIFF whose georeferencing is missing or corrupt.

    Raises:
        InputError: 0-byte file, not a raster, truncated PNG, VRT refused, too large,
            unsupported dtype, corrupt georeferencing.
    """
    from rasterio.enums import MaskFlags
    from rasterio.errors import RasterioIOError

    remote = parse_location(path)  # None for a local file
    path = remote or Path(path)
    if not remote and not path.is_file():
        raise InputError(f"{path}: no such file")
    if not remote and path.stat().st_size == 0:
        raise InputError(f"{path}: the file is empty (0 bytes); re-copy or remove it")
    if not remote:  # these read the file's head and tail
        check_vrt(path, allow_vrt)
        _check_png_complete(path)
    with quiet_georef() as caught:
        try:
            ds = open_raster(path)
        except RasterioIOError as exc:
            raise InputError(
                f"{path}: not a readable raster ({redact(exc)[:200]}); "
                + (remote_hint(path) if remote else "is it truncated or not an image?")
            ) from None
    with ds:
        if ds.driver == "VRT" and remote is not None and not allow_vrt:
            raise InputError(
                f"{path}: a GDAL VRT from a remote location may point at any file; refused by "
                "default (pass --allow-vrt if you trust it)"
            )
        not_georef = bool(caught)
        h, w = ds.height, ds.width
        if h < 1 or w < 1 or ds.count < 1:
            raise InputError(f"{path}: the raster has no pixels or no bands")
        if h * w / 1e6 > max_megapixels:
            declared, budget = megapixel_figures(h * w / 1e6, max_megapixels)
            raise InputError(
                f"{path}: declares {w} x {h} pixels ({declared} megapixels), over the pixel "
                f"budget of {budget} megapixels; raise --max-megapixels if it is real"
            )
        dtype = ds.dtypes[0]
        if dtype not in SUPPORTED_DTYPES:
            raise IncompatibleInputError(
                f"{path}: pixel type {dtype} is not supported; convert to one of "
                f"{', '.join(SUPPORTED_DTYPES)} (e.g. with gdal_translate -ot)"
            )
        crs, transform = scene_georeferencing(path, ds, not_georef, allow_no_georef)
        flags, tags = ds.mask_flag_enums, ds.tags()
        has_mask = any(f != [MaskFlags.all_valid] for f in flags) or dtype.startswith("float")
        return Scene(
            path=path,
            name=name or path.stem,
            width=w,
            height=h,
            count=ds.count,
            dtype=dtype,
            crs=crs,
            transform=transform,
            nodata=ds.nodata,
            has_mask=has_mask,
            driver=ds.driver,
            colorinterp=[c.name for c in ds.colorinterp],
            orientation=exif_orientation(tags),
            acquired=acquisition_time(tags),
        )


def remote_hint(location: RemotePath) -> str:
    """How to fix a remote scene GDAL could not open (the fault is in GDAL's words before)."""
    if location.scheme == "s3":
        return (
            "check the URL, the credentials (AWS_ACCESS_KEY_ID / AWS_PROFILE, or "
            "AWS_NO_SIGN_REQUEST=YES) and AWS_ENDPOINT_URL"
        )
    return "check the URL, the credentials and the network"


def megapixel_figures(value: float, budget: float) -> tuple[str, str]:
    """``value`` and ``budget`` (megapixels) as text with thousands separators and the fewest
    significant digits (at least 3) that tell them apart: ``(0.42, 0.1) -> ("0.42", "0.1")``,
    ``(20000.4, 20000) -> ("20,000.4", "20,000")``."""

    def text(v: float, digits: int) -> str:
        magnitude = math.floor(math.log10(abs(v))) if v else 0
        out = f"{v:,.{max(0, digits - 1 - magnitude)}f}"
        return out.rstrip("0").rstrip(".") if "." in out else out

    for digits in range(3, 16):
        figures = text(value, digits), text(budget, digits)
        if figures[0] != figures[1]:
            return figures
    return repr(value), repr(budget)


def open_run_scene(cfg: Any, path: str | os.PathLike[str], name: str) -> Scene:
    """:func:`open_scene` under a run's input checks: ``cfg`` is a
    :class:`~tilesegd.config.RunConfig` (``max_megapixels``, ``allow_vrt``,
    ``allow_no_georef``).

    Raises:
        InputError: as :func:`open_scene`.
    """
    return open_scene(
        path,
        name,
        max_megapixels=cfg.max_megapixels,
        allow_vrt=cfg.allow_vrt,
        allow_no_georef=cfg.allow_no_georef,
    )


def scene_georeferencing(
    path: Path, ds: Any, not_georef: bool, allow_no_georef: bool
) -> tuple[Any, Any]:
    """``(crs, transform)`` of an open dataset, or ``(None, None)`` for a plain image.

    Args:
        not_georef: rasterio warned that the dataset is not georeferenced.
        allow_no_georef: process a GeoTIFF without (valid) georeferencing as a plain image.

    Raises:
        InputError: a GeoTIFF without georeferencing, with a corrupt transform, or with a
            transform but no CRS (unless ``allow_no_georef``); JPEG / PNG frames are plain.
    """
    crs = ds.crs
    transform = ds.transform
    plain = path.suffix.lower() in PLAIN_IMAGE_SUFFIXES
    bad_transform = (
        transform.is_identity
        or not all(math.isfinite(v) for v in transform[:6])
        or transform.determinant == 0
    )
    if crs is None and (not_georef or transform.is_identity):
        if not plain and not allow_no_georef:
            raise InputError(
                f"{path}: the GeoTIFF has no georeferencing (no CRS, identity transform); "
                "masks and areas would not be placed on the map. Pass --allow-no-georef to "
                "process it as a plain image"
            )
        return None, None
    if bad_transform:
        if not allow_no_georef:
            raise InputError(
                f"{path}: corrupt georeferencing (CRS {crs.to_string() if crs else None} with "
                f"transform {tuple(transform)[:6]}); fix it (gdal_edit.py -a_ullr / -a_srs) "
                "or pass --allow-no-georef to process it as a plain image"
            )
        return None, None
    if crs is None:
        if not allow_no_georef:
            raise InputError(
                f"{path}: the raster has a transform but no CRS, so areas cannot be "
                "computed; set one (gdal_edit.py -a_srs EPSG:...) or pass --allow-no-georef"
            )
        return None, None
    return crs, transform


def check_compatible(scene: Scene, bands: tuple[int, ...], dtypes: Sequence[str] | None) -> None:
    """Check that ``scene`` can feed a model reading ``bands`` (1-based).

    Args:
        dtypes: the model's accepted dtypes (``tilesegd.json`` ``dtypes``), or ``None`` = any.

    Raises:
        IncompatibleInputError: a band is missing or the dtype is not one the model takes.
    """
    if max(bands) > scene.count:
        raise IncompatibleInputError(
            f"{scene.path}: the model reads band(s) {list(bands)} but the scene has "
            f"{scene.count} band(s); use a model trained on {scene.count}-band imagery, or map "
            f"bands with --bands (e.g. --bands {','.join(['1'] * len(bands))})"
        )
    if dtypes and scene.dtype not in dtypes:
        raise IncompatibleInputError(
            f"{scene.path}: pixel type {scene.dtype}, but the model was trained on "
            f"{'/'.join(dtypes)} imagery; convert the scene (gdal_translate -ot {dtypes[0]} "
            "-scale) or use a model trained on this type"
        )

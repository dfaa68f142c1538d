"""EXIF orientation of photo frames: what viewers do with the stored pixels, and tilesegd does not.

A camera held upright stores its pixels as the sensor reads them and records in the EXIF
``Orientation`` tag how a viewer must turn them (6: 90 degrees clockwise). GDAL reads the stored
pixels and gives the tag as ``EXIF_Orientation`` metadata; tilesegd segments the stored pixels,
so every output follows them, and says so once per scene (:func:`orientation_note`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from tilesegd.raster.scene import Scene


EXIF_TURNS = {
    2: "mirror it left to right",
    3: "turn it 180 degrees",
    4: "mirror it top to bottom",
    5: "mirror it and turn it 90 degrees counter-clockwise",
    6: "turn it 90 degrees clockwise",
    7: "mirror it and turn it 90 degrees clockwise",
    8: "turn it 90 degrees counter-clockwise",
}
"""What photo viewers do to the stored pixels for each EXIF ``Orientation`` (1: nothing)."""


def exif_orientation(tags: dict[str, str]) -> int:
    """The EXIF ``Orientation`` (1-8) from a dataset's default-domain metadata (GDAL's JPEG
    driver gives ``EXIF_Orientation``); 1 when absent or not a valid value."""
    try:
        value = int(str(tags.get("EXIF_Orientation", "1")).strip())
    except ValueError:
        return 1
    return value if value in EXIF_TURNS else 1


#: metadata items holding when an image was taken, most specific first (GDAL's names: EXIF
#: of JPEG / TIFF drone frames, then the TIFF DateTime tag, which may be the file's writing)
DATETIME_TAGS = ("EXIF_DateTimeOriginal", "EXIF_DateTimeDigitized", "TIFFTAG_DATETIME",
                 "EXIF_DateTime")  # fmt: skip


def acquisition_time(tags: dict[str, str]) -> str | None:
    """When the image was taken, as ISO 8601 (``2024-05-02T09:30:00``, no zone: EXIF has
    none), from the first of :data:`DATETIME_TAGS` that holds ``YYYY:MM:DD HH:MM:SS``; ``None``
    when none does."""
    import re

    for key in DATETIME_TAGS:
        m = re.fullmatch(r"\s*(\d{4})[:-](\d{2})[:-](\d{2})[ T](\d{2}):(\d{2}):(\d{2})\s*",
                         str(tags.get(key, "")))  # fmt: skip
        if m and m.group(1) != "0000":
            y, mo, d, h, mi, sec = m.groups()
            return f"{y}-{mo}-{d}T{h}:{mi}:{sec}"
    return None


def orientation_note(scene: Scene) -> str | None:
    """What to tell the user about ``scene``'s EXIF orientation, or ``None`` (1: as stored):
    viewers show the photo turned or mirrored, the outputs follow the stored pixels."""
    if scene.orientation not in EXIF_TURNS:
        return None
    w, h = scene.width, scene.height
    shown = f"{h} x {w}" if scene.orientation >= 5 else f"{w} x {h}"
    return (
        f"{scene.path}: EXIF Orientation {scene.orientation}: photo viewers "
        f"{EXIF_TURNS[scene.orientation]} and show {shown} pixels (width x height), but the mask "
        f"and every output follow the stored pixels, {w} x {h}; turn the image itself first "
        "(e.g. exiftran -ai, or ImageMagick -auto-orient) if the outputs must match the photo "
        "as viewers show it"
    )
